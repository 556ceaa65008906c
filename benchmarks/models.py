"""GPU benchmark of the model adapters: full-size architectures with random weights, a LoRA training step (forward +
backward, gradient checkpointing, bf16) and an inference forward, per attention backend.

    python benchmarks/models.py                                   # default cases and backends
    python benchmarks/models.py --cases wan-4x --backends triton,dense --repeats 3 --out DIR

Results go to --out, else $OUT, else benchmarks/results/: models.json (every number) and models.md (a table).
Timings are medians of --repeats steps after one warm-up step (which also compiles the kernels); memory is the peak
allocated during the timed steps. A case that runs out of memory is recorded as OOM and the run goes on.

Cases (all at the paper's settings: batch 1, LoRA on the radial attention's q/k/v/o, text at the pipeline length):
    wan-4x          Wan2.1-T2V-1.3B, 480x832, 321 frames = 81 latent frames (4x length), 126,360 tokens
    wan-1x          Wan2.1-T2V-1.3B, 480x832, 81 frames = 21 latent frames, 32,760 tokens
    hunyuan-blocks  HunyuanVideo at full width, 2 double + 2 single-stream blocks, 720x1280, 129 frames = 33 latent
                    frames, 118,800 video + 256 text tokens (128 of them padding)
    hunyuan-blocks-2x   the same at 257 frames = 65 latent frames, 234,000 + 256 tokens
    mochi-blocks    Mochi-1 at full width, 4 blocks, 480x848, 163 frames = 28 latent frames, 44,520 + 256 tokens
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import radial  # noqa: E402
from radial.models import get_adapter  # noqa: E402

# name -> (family, variant, config overrides, pixel frames, height, width, modes)
CASES = {
    "wan-4x": ("wan", "t2v-1.3b", {}, 321, 480, 832, ("train", "infer")),
    "wan-1x": ("wan", "t2v-1.3b", {}, 81, 480, 832, ("train", "infer")),
    "hunyuan-blocks": ("hunyuan", "t2v", {"num_layers": 2, "num_single_layers": 2}, 129, 720, 1280, ("train",)),
    "hunyuan-blocks-2x": ("hunyuan", "t2v", {"num_layers": 2, "num_single_layers": 2}, 257, 720, 1280, ("train",)),
    "mochi-blocks": ("mochi", "preview", {"num_layers": 4}, 163, 480, 848, ("train",)),
}
DEFAULT_CASES = "wan-4x,hunyuan-blocks,mochi-blocks"


def _sync_time(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _measure(step, repeats: int) -> tuple[list[float], float]:
    step()  # warm-up: kernel compilation, autotuning, allocator
    torch.cuda.reset_peak_memory_stats()
    times = [_sync_time(step) for _ in range(repeats)]
    return times, torch.cuda.max_memory_allocated() / 2**30


def run_case(name: str, backends: list[str], args) -> list[dict]:
    family, variant, overrides, frames, height, width, modes = CASES[name]
    adapter = get_adapter(family)
    print(f"[{name}] building {family} {variant} {overrides or ''}", flush=True)
    model = adapter.build_full(variant, dtype=torch.bfloat16, device="cuda", **overrides)
    model.requires_grad_(False)
    from peft import LoraConfig

    model.add_adapter(
        LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, target_modules=adapter.lora_target_modules())
    )
    model.enable_gradient_checkpointing()
    shape = adapter.latent_shape(frames, height, width)
    latents = adapter.make_dummy_latents(model, 1, *shape[2:])
    cond = adapter.make_dummy_conditions(
        model, 1, latent_shape=latents.shape, valid_text=adapter.text_len // 2 if family != "wan" else None
    )
    timestep = torch.tensor([600.0], device="cuda")

    def train_step():
        model.zero_grad(set_to_none=True)
        loss = adapter.predict(model, latents, timestep, cond).float().square().mean()
        loss.backward()
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss")

    def infer_step():
        with torch.no_grad():
            adapter.predict(model, latents, timestep, cond)

    rows = []
    for backend in backends:
        handle = radial.inject(model, backend=backend, block_size=args.block_size, dense_layers=args.dense_layers)
        for mode in modes:
            model.train(mode == "train")
            row = {
                "case": name,
                "family": family,
                "variant": variant,
                "overrides": overrides,
                "pixel_frames": frames,
                "height": height,
                "width": width,
                "latent_shape": list(shape),
                "backend": backend,
                "mode": mode,
                "dense_layers": args.dense_layers,
                "block_size": args.block_size,
            }
            try:
                times, peak = _measure(train_step if mode == "train" else infer_step, args.repeats)
                plan = handle.last_plan
                row.update(
                    time_s=statistics.median(times),
                    times_s=times,
                    peak_mem_gib=peak,
                    video_tokens=plan.video_tokens,
                    text_tokens=plan.text_tokens,
                    block_density=plan.stats.block_density,
                    token_density=plan.stats.token_density,
                    ideal_attention_speedup=plan.stats.ideal_speedup,
                )
                print(f"[{name}] {backend:10s} {mode:5s} {row['time_s']:8.3f} s  {peak:6.1f} GiB", flush=True)
            except torch.cuda.OutOfMemoryError as e:
                row.update(error="OOM", detail=str(e).splitlines()[0])
                print(f"[{name}] {backend:10s} {mode:5s} OOM", flush=True)
            except Exception as e:  # record and go on: one backend failing must not lose the other numbers
                row.update(error=type(e).__name__, detail=str(e)[:500])
                print(f"[{name}] {backend:10s} {mode:5s} {type(e).__name__}: {e}", flush=True)
            model.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            rows.append(row)
        handle.remove()
    return rows  # the model is freed with this frame (main collects)


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Model adapter benchmark",
        "",
        f"{meta['date']}, {meta['device']}, torch {meta['torch']}, bf16, batch 1, LoRA r={meta['lora_rank']}, "
        f"gradient checkpointing, block {meta['block_size']}, dense_layers {meta['dense_layers']}. "
        f"Median of {meta['repeats']} steps after a warm-up. Speed-up: against the `dense` backend (SDPA).",
        "",
        "| case | mode | backend | tokens (video+text) | density | time (s) | speed-up | ideal attn speed-up | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    dense = {(r["case"], r["mode"]): r.get("time_s") for r in rows if r["backend"] == "dense"}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['mode']} | {r['backend']} | | | {r['error']} | | | |")
            continue
        base = dense.get((r["case"], r["mode"]))
        speedup = f"{base / r['time_s']:.2f}x" if base else ""
        radial_row = r["backend"] != "dense"
        density = f"{r['token_density']:.3f}" if radial_row else "1"
        ideal = f"{r['ideal_attention_speedup']:.2f}x" if radial_row else ""
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['backend']} | {r['video_tokens']:,}+{r['text_tokens']} | "
            f"{density} | {r['time_s']:.3f} | {speedup} | {ideal} | {r['peak_mem_gib']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated, from {sorted(CASES)}")
    p.add_argument("--backends", default="triton,dense", help="comma-separated: triton, flex, dense, reference")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--dense-layers", type=int, default=0)
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT, else benchmarks/results)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/models.py needs a CUDA GPU")
    out = args.out or Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        sys.exit(f"unknown cases {unknown}; known: {sorted(CASES)}")
    backends = [b for b in args.backends.split(",") if b]
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "repeats": args.repeats,
        "block_size": args.block_size,
        "dense_layers": args.dense_layers,
        "lora_rank": args.lora_rank,
    }
    rows = []
    for case in cases:
        rows += run_case(case, backends, args)
        gc.collect()
        torch.cuda.empty_cache()
        (out / "models.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))  # partial results
    (out / "models.md").write_text(to_markdown(rows, meta))
    print(to_markdown(rows, meta))
    print(f"wrote {out / 'models.json'} and {out / 'models.md'}")


if __name__ == "__main__":
    main()
