"""End-to-end LoRA training step at long lengths: radial backends against dense kernels in the same run.

The step is the trainer's own: `train.components.build_model` (radial attention injected, PEFT LoRA rank 128 on
q/k/v/o, gradient checkpointing, fp32 LoRA parameters), Accelerate bf16 autocast, `train.step.flow_matching_loss`,
backward, AdamW step. Full-size architectures with random weights (speed does not depend on weight values).

    python benchmarks/train_step.py --out $OUT [--cases wan1x wan2x wan4x hun4x] [--steps 2]
    torchrun --standalone --nproc_per_node 2 benchmarks/train_step.py --sp 2 --cases hun4x --out $OUT/sp2
    python benchmarks/train_step.py --out $OUT --cases wan4x --backends dense-cudnn dense-fa4 triton fa4 fa4+plain
    python benchmarks/train_step.py --out $OUT --cases wan4x --backends dense-fa4 fa4 --compile --checkpoint-blocks auto --fuse-qkv
    python benchmarks/train_step.py --out $OUT --cases wan_i2v4x --backends fa4 triton --warmup 1 --steps 1   # I2V-14B
    python benchmarks/train_step.py --out $OUT --cases hy15_i2v2x --backends dense-fa4 fa4 --warmup 1 --steps 1 \
        --hy15-layers 54   # HunyuanVideo-1.5 I2V (8.3B)
    python benchmarks/train_step.py --out $OUT --cases h3_2x h3_4x --backends dense-fa4 fa4 --warmup 1 --steps 2 \
        --h3-layers 4   # MiniMax-H3 (33B: 50 blocks; per-block time x 50 for the whole model)

`--backends`: dense kernels `dense-cudnn` (torch SDPA), `dense-fa4` (flash-attn-4's dense kernel), `dense` (the dense
backend's own choice); radial backends `triton`, `fa4`, `auto`, `flex`; a `+plain` suffix runs that entry with plain
block checkpointing instead of `--save-attention`. Speed-ups are over the fastest dense entry of the run and over
dense-cudnn when it ran. `--compile` (regional compilation), `--checkpoint-blocks auto|all|N` (the recompute
budget) and `--fuse-qkv` apply to every entry alike; with `auto` each entry decides from its own memory after its warm-up steps.

HunyuanVideo-13B cases build `--hun-double` double-stream and `--hun-single` single-stream blocks (the real model
has 20 + 40); the table reports them as measured and the per-layer scaling is stated beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from radial.errors import ConfigError  # noqa: E402
from radial.kernels.dense import DENSE_KERNEL_ENV  # noqa: E402

# Dense entries of --backends: name -> RADIAL_DENSE_KERNEL
DENSE_ENTRIES = {"dense": "auto", "dense-cudnn": "sdpa", "dense-fa4": "fa4"}

# Kernel names counted as attention: torch's SDPA kernels and ours (radial/kernels/triton_*.py).
ATTENTION_KERNEL_HINTS = ("attn", "fmha", "flash", "cudnn", "sdpa", "_fwd_kernel", "_dkdv_kernel", "_dq_kernel")
ATTENTION_KERNEL_HINTS += ("_preprocess_kernel", "flashattention", "fmha")  # flash-attn-4's CuTe kernels

# The rest of the step by kernel kind: cuBLAS / CUTLASS GEMMs, and inductor's generated Triton kernels.
OTHER_KERNEL_KINDS = (
    (("gemm", "nvjet", "xmma", "cublas", "cutlass"), "matmul"),
    (("triton_",), "triton (fused by inductor)"),
)

CASES = {
    # name: (family, latent frames, latent height, latent width)
    "wan1x": ("wan", 21, 60, 104),
    "wan2x": ("wan", 41, 60, 104),
    "wan4x": ("wan", 81, 60, 104),
    "hun2x": ("hunyuan", 65, 90, 160),
    "hun4x": ("hunyuan", 129, 90, 160),
    "wan14b4x": ("wan", 81, 60, 104),  # Wan2.1 T2V-14B 480p at 4x
    "wan_i2v4x": ("wan", 81, 60, 104),  # Wan2.1 I2V-14B 480p at 4x: image states and mask + first-frame channels
    # HunyuanVideo-1.5 I2V 480p at 2x (241 frames): SigLIP states and first-frame latent + mask channels
    "hy15_i2v2x": ("hunyuan15", 61, 30, 53),
    # MiniMax-H3 T2VA at 768x1344 (its canvas), 2x and 4x of its 5 s clip: 243 and 481 frames (72 and 142 latent
    # frames of 1,008 tokens), with its packed text and stereo audio rows dense (--h3-layers: blocks built)
    "h3_2x": ("h3", 72, 48, 84),
    "h3_4x": ("h3", 142, 48, 84),
}
# Cases of another architecture than the family's default: case -> (full-size variant, tiny variant for --smoke)
VARIANTS = {"wan_i2v4x": ("i2v-14b", "i2v"), "hy15_i2v2x": ("i2v", "i2v"), "wan14b4x": ("t2v-14b", None)}


def _config(
    family: str,
    backend: str,
    dense_layers: int,
    save_attention: bool,
    step_settings: tuple[str, ...] = (),
    variant: str | None = None,
):
    """The trainer's config of one entry (`variant`: the full-size variant the case builds, None: the family's
    default); `step_settings` (train.compile, train.checkpoint_blocks, ...) are the same for every entry, so the
    ratios compare attention alone."""
    from train.config import compose, validate

    return validate(
        compose(
            [
                f"model={family}_full",
                *([f"model.variant={variant}"] if variant else []),
                f"attention.backend={backend}",
                f"attention.dense_layers={dense_layers}",
                "attention.block_size=128",
                "lora.rank=128",
                "lora.alpha=128",
                "train.gradient_checkpointing=true",
                f"train.save_attention={str(save_attention).lower()}",
                "train.mixed_precision=bf16",
                "logging.trackers=[]",
                *step_settings,
            ]
        )
    )


def _entry(entry: str, args) -> tuple[str, bool]:
    """(attention.backend, save_attention) of a --backends entry."""
    name, plain = (entry[: -len("+plain")], True) if entry.endswith("+plain") else (entry, False)
    backend = "dense" if name in DENSE_ENTRIES else name
    return backend, args.save_attention and not plain


def _build(case: str, entry: str, args, device, tiny_dtype: torch.dtype = torch.float32) -> tuple:
    """The trainer's model of one --backends entry (tiny in `tiny_dtype` under --smoke), its latents and conditions."""
    from radial.models import get_adapter
    from train.components import build_model

    family, frames, h, w = CASES[case]
    backend, save_attention = _entry(entry, args)
    full_variant, tiny_variant = VARIANTS.get(case, (None, None))
    dense_layers = args.dense_layers if backend != "dense" else 0
    cfg = _config(family, backend, dense_layers, save_attention, _settings(args), full_variant)
    adapter = get_adapter(family)
    device = torch.device(device)
    if args.smoke:  # CPU check of this script: tiny model, tiny latents, the same code path
        transformer = adapter.build_tiny(device=device, variant=tiny_variant, dtype=tiny_dtype)
        frames, h, w = 3, 8, 8
    else:
        transformer = adapter.build_full(full_variant, dtype=torch.bfloat16, device=device, **_layers(family, args))
    memory_plan = None
    if device.type == "cuda":  # --memory auto: the trainer's planner for this case's tokens (and --memory-cap-gb)
        from train.memory_plan import plan_config

        _, ph, pw = adapter.patch_size(transformer)
        # planned for the transformer built here (its variant, its --*-layers blocks), not the config's default
        rows = adapter.sequence_rows(frames, frames * (h // ph) * (w // pw))
        memory_plan = plan_config(cfg, frames, rows, device, transformer)
    with torch.random.fork_rng(devices=[]):  # the same LoRA initialisation on every rank (sequence parallelism)
        torch.manual_seed(0)
        parts = build_model(cfg, device, transformer=transformer)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, adapter.latent_channels(transformer), frames, h, w, generator=gen).to(device)
    conds = adapter.make_dummy_conditions(transformer, 1, latent_shape=latents.shape)
    return cfg, parts, latents, conds, memory_plan


def _layers(family: str, args) -> dict[str, int]:
    """build_full's block-count overrides of a case's family (none: the real model's blocks)."""
    if family == "hunyuan":
        return {"num_layers": args.hun_double, "num_single_layers": args.hun_single}
    layers = {"hunyuan15": args.hy15_layers, "wan": args.wan_layers, "h3": args.h3_layers}.get(family)
    return {} if layers is None else {"num_layers": layers}


def _settings(args) -> tuple[str, ...]:
    """The training-step settings of issue 17, as trainer overrides, for every entry alike."""
    out = [f"train.checkpoint_blocks={args.checkpoint_blocks}", f"train.compile={str(args.compile).lower()}"]
    out.append(f"train.fuse_qkv={str(args.fuse_qkv).lower()}")
    # the memory options (saved_activations.py's args have none: off)
    out += [
        f"train.memory={getattr(args, 'memory', 'off')}",
        f"train.memory_cap_gb={getattr(args, 'memory_cap_gb', 0)}",
    ]
    out.append(f"train.offload_activations={str(getattr(args, 'offload_activations', False)).lower()}")
    out.append(f"train.offload_blocks={str(getattr(args, 'offload_blocks', False)).lower()}")
    if args.compile:
        out.append(f"train.compile_backend={args.compile_backend}")
    return tuple(out)


def _cuda() -> bool:
    return torch.cuda.is_available()


def _sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


def _reset_memory() -> None:
    if _cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if _cuda() else float("nan")


def _peak_reserved_gb() -> float:
    """The card memory the caching allocator held at its peak, GiB. Unlike max_memory_allocated it counts blocks
    freed while a side stream's copy or a recorded stream still used them (weight streaming, activation offload):
    they are not reusable until the GPU catches up with the CPU."""
    return torch.cuda.max_memory_reserved() / 2**30 if _cuda() else float("nan")


def _alloc_retries() -> int:
    """cudaMalloc failures the allocator recovered from by synchronising and freeing every cached block so far."""
    return torch.cuda.memory_stats().get("num_alloc_retries", 0) if _cuda() else 0


def _attention_share(prof) -> tuple[float, float, dict[str, float]]:
    """Attention and total device time (ms) of a profiled step, and per-kernel times: the four slowest attention
    kernels (which SDPA ran) and the rest of the step by kind ("other: matmul", "other: triton (fused by inductor)",
    "other: elementwise and copies")."""
    total = attn = 0.0
    kernels: dict[str, float] = {}
    rest: dict[str, float] = {}
    for evt in prof.key_averages():
        t = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0.0)
        if _cuda() and not str(getattr(evt, "device_type", "")).endswith("CUDA"):
            continue
        total += t
        key = evt.key.lower()
        if any(k in key for k in ATTENTION_KERNEL_HINTS):
            attn += t
            kernels[evt.key[:80]] = kernels.get(evt.key[:80], 0.0) + t / 1e3
            continue
        kind = next(
            (name for hints, name in OTHER_KERNEL_KINDS if any(h in key for h in hints)), "elementwise and copies"
        )
        rest[f"other: {kind}"] = rest.get(f"other: {kind}", 0.0) + t / 1e3
    top = dict(sorted(kernels.items(), key=lambda kv: -kv[1])[:4])
    return attn / 1e3, total / 1e3, {**top, **rest}


def run_case(case: str, backend: str, args) -> dict:
    """One --backends entry on one case; dense entries pick the dense kernel (RADIAL_DENSE_KERNEL) for the run."""
    name = backend.removesuffix("+plain")
    kernel = DENSE_ENTRIES.get(name, "auto")  # radial entries: their dense layers use the dense backend's choice
    previous = os.environ.get(DENSE_KERNEL_ENV)
    os.environ[DENSE_KERNEL_ENV] = kernel
    try:
        return _run_case(case, backend, args)
    finally:
        if previous is None:
            os.environ.pop(DENSE_KERNEL_ENV, None)
        else:
            os.environ[DENSE_KERNEL_ENV] = previous


def _run_case(case: str, backend: str, args) -> dict:
    from accelerate import Accelerator

    from radial.compile import CompileWatch
    from radial.parallel import enable as enable_sequence_parallel
    from radial.parallel import init_sequence_parallel
    from train.flow import FlowMatching
    from train.step import flow_matching_loss
    from train.weight_stream import device_placement

    _reset_memory()
    if args.compile:  # each entry compiles its own graphs (its warm-up), none inherited from the entry before
        torch._dynamo.reset()
    acc = Accelerator(mixed_precision="bf16")
    device = acc.device if acc.num_processes > 1 else torch.device(args.device)
    cfg, parts, latents, conds, memory_plan = _build(case, backend, args, device)
    if memory_plan and acc.is_main_process:
        print(f"{case} {backend}: {memory_plan.strip()}", flush=True)
    # --sp K: the processes form Ulysses groups of K that train one sample together, as the trainer does.
    sp = init_sequence_parallel(args.sp, device) if args.sp > 1 else None
    sp_handle = enable_sequence_parallel(parts.handle, sp) if sp is not None else None
    loss_scale = sp.loss_scale if sp is not None else 1.0
    params = [p for p in parts.transformer.parameters() if p.requires_grad]
    placement = device_placement(acc, parts.streamer, 2)  # streamed weights stay on the host (not model.to(device))
    model, opt = acc.prepare(parts.transformer, torch.optim.AdamW(params, lr=1e-5), device_placement=placement)
    flow = FlowMatching(shift=cfg.model.flow_shift)
    model_dtype = next(p.dtype for p in model.parameters() if not p.requires_grad)

    def step(i: int) -> float:
        gen = torch.Generator().manual_seed(i)
        with acc.autocast():
            loss = flow_matching_loss(parts.adapter, model, flow, latents, conds, gen, model_dtype)
        acc.backward(loss * loss_scale)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    watch = CompileWatch()
    # Warm-up: compilation, and train.checkpoint_blocks=auto's two measured steps (it decides after the third).
    warmup = max(args.warmup, 3) if parts.recompute is not None and parts.recompute.auto else args.warmup
    for i in range(warmup):
        step(i)
        for line in (parts.recompute.after_step() if parts.recompute is not None else None, watch.check(case)):
            if line and acc.is_main_process:
                print(f"{case} {backend}: {line}", flush=True)
    _sync()
    _reset_memory()
    retries_before = _alloc_retries()
    times, losses = [], []
    for i in range(args.steps):
        start = time.perf_counter()
        losses.append(step(100 + i))
        _sync()
        times.append(time.perf_counter() - start)
    peak, peak_reserved, retries = _peak_gb(), _peak_reserved_gb(), _alloc_retries() - retries_before
    attn_ms = total_ms = float("nan")
    kernels: dict[str, float] = {}
    if args.profile:  # one more step under the profiler: the attention share (skip it for long dense steps)
        activity = torch.profiler.ProfilerActivity.CUDA if _cuda() else torch.profiler.ProfilerActivity.CPU
        with torch.profiler.profile(activities=[activity]) as prof:
            step(999)
            _sync()
        attn_ms, total_ms, kernels = _attention_share(prof)
    grid = parts.handle.last_grid
    plan = parts.handle.last_plan
    step_s = sorted(times)[len(times) // 2]
    result = {
        "case": case,
        "backend": backend,
        "attention_backend": parts.backend,  # `auto` resolved, or the fallback that ran
        "save_attention": cfg.train.save_attention,
        "compile": cfg.train.compile,
        "fuse_qkv": cfg.train.fuse_qkv,
        "checkpointed_blocks": parts.recompute.count if parts.recompute is not None else 0,
        "blocks": len(parts.adapter.blocks(parts.transformer)),
        "compiled_while_timed": watch.check(case) is not None,  # a recompile inside the timed steps
        "sp": args.sp,
        "gpus": acc.num_processes,
        "tokens": grid.video_tokens,
        "frames": grid.frames,
        "layers": parts.handle.num_layers,
        "step_s": step_s,
        "tokens_per_s": grid.video_tokens / step_s,
        "peak_gb": peak,
        "peak_reserved_gb": peak_reserved,  # what the card held: freed blocks still in use by a stream included
        "alloc_retries": retries,  # the timed steps' out-of-memory recoveries (each a device-wide synchronisation)
        "attention_ms": attn_ms,
        "profiled_ms": total_ms,
        "attention_share": attn_ms / total_ms if total_ms and args.profile else float("nan"),
        "attention_kernels_ms": kernels,
        "density": plan.stats.block_density if plan is not None and not _is_dense(backend) else 1.0,
        "memory_plan": memory_plan,  # --memory auto: the planner's line
        "offload_activations": cfg.train.offload_activations,
        "offload_blocks": cfg.train.offload_blocks,
        "memory_cap_gb": args.memory_cap_gb,
        "peak_host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "loss": losses[-1],
    }
    if sp_handle is not None:
        sp_handle.remove()
    parts.handle.remove()
    acc.free_memory()
    _reset_memory()
    if acc.is_main_process:
        print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--cases", nargs="+", default=["wan1x", "wan2x", "wan4x", "hun4x"], choices=sorted(CASES))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dense-layers", type=int, default=2, help="first k blocks dense in the radial run (paper: 2)")
    p.add_argument("--hun-double", type=int, default=1)
    p.add_argument("--hun-single", type=int, default=1)
    p.add_argument("--hy15-layers", type=int, default=None, help="HunyuanVideo-1.5 blocks (default: the real 54)")
    p.add_argument("--wan-layers", type=int, default=None, help="Wan blocks (default: the real model's)")
    p.add_argument("--h3-layers", type=int, default=None, help="MiniMax-H3 blocks (default: the real 50)")
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--save-attention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep attention outputs through checkpointing (train.save_attention, the trainer's default)",
    )
    p.add_argument(
        "--checkpoint-blocks",
        default="all",
        help="train.checkpoint_blocks for every entry: auto (from free CUDA memory), all, or a number of blocks",
    )
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="train.compile, every entry")
    p.add_argument(
        "--fuse-qkv", action=argparse.BooleanOptionalAction, default=False, help="train.fuse_qkv, every entry"
    )
    p.add_argument("--compile-backend", default="inductor", help="train.compile_backend (smoke runs: eager)")
    p.add_argument(
        "--memory", choices=("auto", "off"), default="off", help="train.memory: auto plans the savers for each case"
    )
    p.add_argument(
        "--memory-cap-gb", type=float, default=0.0, help="use at most this many GB of the card (emulates a smaller one)"
    )
    p.add_argument(
        "--offload-activations", action=argparse.BooleanOptionalAction, default=False,
        help="train.offload_activations, every entry",
    )  # fmt: skip
    p.add_argument(
        "--offload-blocks",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train.offload_blocks, every entry",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profile one extra step (attention share)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny models on --device (a CPU check of the script)")
    p.add_argument("--sp", type=int, default=1, help="Ulysses group size; launch with torchrun --nproc_per_node K")
    p.add_argument("--backends", nargs="+", default=None, help="default: dense and triton (see the module doc)")
    args = p.parse_args(argv)
    args.backends = args.backends or ["dense", _radial_backend(args)]
    for entry in args.backends:
        name = entry.removesuffix("+plain")
        if name not in DENSE_ENTRIES and name not in ("triton", "fa4", "auto", "flex", "reference"):
            p.error(f"--backends {entry!r}: expected {sorted(DENSE_ENTRIES)} or triton, fa4, auto, flex (+plain)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases:
        for backend in args.backends:
            try:
                rows.append(run_case(case, backend, args))
            except torch.cuda.OutOfMemoryError as err:
                print(f"{case} {backend}: out of memory ({err})", flush=True)
                rows.append({"case": case, "backend": backend, "error": "out of memory"})
                _reset_memory()
            except ConfigError as err:  # --memory auto found no plan that fits: its one line is the result
                print(f"{case} {backend}: {err}", flush=True)
                rows.append({"case": case, "backend": backend, "error": str(err)})
            if int(os.environ.get("RANK", "0")) == 0:  # after every row, so a run cut short keeps what it measured
                print(write_results(rows, args), flush=True)


def _radial_backend(args) -> str:
    return "reference" if args.smoke else "triton"  # the smoke run has no GPU for triton


def _is_dense(entry: str) -> bool:
    return entry.removesuffix("+plain") in DENSE_ENTRIES


def write_results(rows: list[dict], args) -> str:
    """Write train_step.json and train_step.md under args.out; return the markdown table."""
    import triton

    meta = {
        "card": torch.cuda.get_device_name() if _cuda() else "cpu (smoke)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": str(datetime.date.today()),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "train_step.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "| case | tokens | layers | backend (ran) | checkpointing | step s | speed-up vs fastest dense | vs dense-cudnn "
        "| tokens/s | peak GB | attention share | density |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in dict.fromkeys(r["case"] for r in rows):
        here = [r for r in rows if r["case"] == case]
        dense = [r for r in here if _is_dense(r["backend"]) and "step_s" in r]
        fastest = min(dense, key=lambda r: r["step_s"]) if dense else None
        cudnn = next((r for r in dense if r["backend"] == "dense-cudnn"), None)
        for r in here:
            if "step_s" not in r:
                lines.append(f"| {case} | | | {r['backend']} | | {r.get('error', '')} | | | | | | |")
                continue
            vs_best = f"{fastest['step_s'] / r['step_s']:.2f}x ({fastest['backend']})" if fastest else ""
            vs_cudnn = f"{cudnn['step_s'] / r['step_s']:.2f}x" if cudnn else ""
            ckpt = "save attention" if r.get("save_attention") else "plain"
            if "checkpointed_blocks" in r:
                ckpt += f", {r['checkpointed_blocks']}/{r['blocks']} blocks" + (", compiled" if r["compile"] else "")
                ckpt += ", fused qkv" if r.get("fuse_qkv") else ""
            lines.append(
                f"| {case} | {r['tokens']} | {r['layers']} | {r['backend']} ({r.get('attention_backend', '?')}) "
                f"| {ckpt} | {r['step_s']:.2f} | {vs_best} | {vs_cudnn} | {r['tokens_per_s']:.0f} "
                f"| {r['peak_gb']:.1f} | {r['attention_share']:.0%} | {r['density']:.3f} |"
            )
    table = "\n".join(lines)
    (args.out / "train_step.md").write_text(
        f"# LoRA training step, radial vs dense (sp={args.sp}; dense layers run the dense backend's fastest kernel)\n\n{meta['card']}, torch {meta['torch']}, "
        f"triton {meta['triton']}, {meta['date']}; args {meta['args']}\n\n{table}\n"
    )
    return table


if __name__ == "__main__":
    main()
