"""Generation benchmark: Wan2.1-T2V-1.3B (full-size architecture, random weights) at 4x length, radial vs dense.

The generator's own path (radial.generation: WanPipeline, prompt embeddings, `generate` with per-step timing and
the radial handle driven by the pipeline callback), the same seed for every mode, so the outputs are comparable:

    dense          stock diffusers attention (SDPA: flash / cuDNN), no injection
    dense-fa4      every layer through our dense backend on flash-attn-4's dense kernel (RADIAL_DENSE_KERNEL=fa4)
    radial         radial attention, --backends (triton; e.g. triton fa4), every layer and step sparse
    radial-dense   radial with the first --dense-layers layers and the first --dense-timesteps steps dense
                   (the paper's inference recipe, scaled to the short schedule)

    python benchmarks/generate.py --out $OUT                   # 480x832, 321 frames = 81 latent frames, 6 steps
    python benchmarks/generate.py --out $OUT --steps 8 --decode none --modes dense radial
    python benchmarks/generate.py --out $OUT --decode none --modes dense dense-fa4 radial --backends triton fa4
    python benchmarks/generate.py --smoke --device cpu --out /tmp/x   # tiny models: a CPU check of the script

Reported per mode: first step (includes kernel compilation), mean of the other steps, denoising total, an estimate
without compilation (mean step x steps), peak CUDA memory, mask and effective attention density; against dense:
speed-up (and against the fastest dense mode of the run), latent relative error and, with --decode tiny, PSNR / SSIM per frame of the decoded videos.

No text encoder (random prompt embeddings, 512 x 4096) and guidance 1 (no CFG: one transformer pass per step; real
sampling with CFG doubles every step time equally). --decode tiny decodes with a tiny random Wan VAE of the real
class and compression (4x temporal, 8x spatial): the frame metrics then measure how far radial attention moves the
output of this random model, not the quality of a trained one; latent error is the primary number.
Results: --out (else $OUT, else benchmarks/results/): generate.json (every number) and generate.md (the table).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

MODES = ("dense", "dense-fa4", "radial", "radial-dense")
DENSE_MODES = ("dense", "dense-fa4")


def _pipeline(args, device: str):
    import diffusers

    from radial.models import get_adapter

    adapter = get_adapter("wan")
    if args.smoke:
        transformer = adapter.build_tiny(seed=0, dtype=torch.float32, device=device)
    else:
        transformer = adapter.build_full(args.variant, dtype=torch.bfloat16, device=device, seed=0)
    vae = None
    if args.decode == "tiny":
        from data.encoders import load_encoders

        vae = load_encoders("wan", tiny=True, seed=0, device=device).vae
    pipe = diffusers.WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=args.shift),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _embeds(pipe, args):
    from radial.generation import PromptEmbeds

    cfg = pipe.transformer.config
    g = torch.Generator().manual_seed(1234)
    length = 16 if args.smoke else 512
    embeds = torch.randn(1, length, cfg.text_dim, generator=g)
    valid = length // 4  # a typical prompt: the rest is the pipeline's zero padding
    embeds[:, valid:] = 0
    tensors = {"prompt_embeds": embeds, "prompt_attention_mask": (torch.arange(length) < valid)[None].long()}
    if args.guidance > 1:
        tensors["negative_prompt_embeds"] = torch.zeros_like(embeds)
        tensors["negative_prompt_attention_mask"] = tensors["prompt_attention_mask"]
    return PromptEmbeds(tensors, prompt="random embeddings (benchmark)", source="random")


def _settings(mode: str, args, backend: str | None):
    from radial.generation import RadialSettings

    if mode == "dense":
        return RadialSettings(enabled=False)
    if mode == "dense-fa4":
        return RadialSettings(backend="dense", block_size=args.block_size)
    dense = mode == "radial-dense"
    return RadialSettings(
        backend=backend,
        block_size=args.block_size,
        decay_factor=args.decay_factor,
        dense_layers=args.dense_layers if dense else 0,
        dense_timesteps=args.dense_timesteps if dense else 0,
    )


def run(args) -> dict:
    from radial.generation import ClipSpec, apply_radial, generate

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = _pipeline(args, device)
    embeds = _embeds(pipe, args)
    clip = ClipSpec(
        frames=args.frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        fps=16,
    )
    from radial.kernels.dense import DENSE_KERNEL_ENV

    rows, outputs = [], {}
    runs = [(m, None) if m in DENSE_MODES else (m, b) for m in args.modes for b in args.backends]
    for mode, backend in dict.fromkeys(runs):
        settings = _settings(mode, args, backend)
        label = f"{mode} {backend}" if backend is not None and len(args.backends) > 1 else mode
        os.environ[DENSE_KERNEL_ENV] = "fa4" if mode == "dense-fa4" else "auto"
        handles = apply_radial(pipe, settings, "wan")
        print(
            f"[{label}] generating {clip.frames} frames at {clip.height}x{clip.width}, {clip.num_inference_steps} steps",
            flush=True,
        )
        try:
            result = generate(pipe, clip, embeds=embeds, handles=handles, decode=args.decode != "none", family="wan")
        except torch.cuda.OutOfMemoryError:
            rows.append({"mode": label, "error": "OOM"})
            continue
        except Exception as err:  # e.g. dense-fa4 without flash-attn-4: the other modes still run
            rows.append({"mode": label, "error": f"{type(err).__name__}: {str(err)[:200]}"})
            continue
        finally:
            os.environ.pop(DENSE_KERNEL_ENV, None)
            if handles is not None:
                handles.remove()
        steps = result.step_times_s
        rest = steps[1:] or steps
        mean_step = sum(rest) / len(rest)
        row = {
            "mode": label,
            "backend": (result.attention.get("backend") or settings.backend) if settings.enabled else "sdpa (stock)",
            "dense_layers": settings.dense_layers,
            "dense_timesteps": settings.dense_timesteps,
            "mask_density": result.attention.get("mask_token_density", 1.0),
            "effective_density": result.attention.get("effective_density", 1.0),
            "video_tokens": result.attention.get("video_tokens"),
            "first_step_s": steps[0],
            "mean_step_s": mean_step,
            "step_s": steps,
            "denoise_s": result.denoise_time_s,
            "denoise_steady_s": mean_step * len(steps),
            "decode_s": result.decode_time_s,
            "peak_memory_gb": result.peak_memory.get(
                "cuda_peak_allocated_gb", result.peak_memory["process_peak_rss_gb"]
            ),
            "finite": bool(torch.isfinite(result.latents).all()),
        }
        rows.append(row)
        outputs[label] = result
        print(
            f"[{label}] mean step {mean_step:.3f} s, first {steps[0]:.3f} s, peak {row['peak_memory_gb']:.1f} GB",
            flush=True,
        )
        gc.collect()
    _compare(rows, outputs, device)
    grid = next((r["video_tokens"] for r in rows if r.get("video_tokens")), None)
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "model": "tiny wan (smoke)" if args.smoke else f"Wan2.1 {args.variant}, random weights, bf16",
        "clip": {"frames": args.frames, "height": args.height, "width": args.width, "video_tokens": grid},
        "steps": args.steps,
        "guidance": args.guidance,
        "decode": args.decode,
        "seed": args.seed,
        "versions": _versions(),
        "rows": rows,
    }


def _compare(rows: list[dict], outputs: dict, device: str) -> None:
    from train.eval.metrics import compare_videos

    ref = outputs.get("dense")
    dense_rows = [r for r in rows if r["mode"] in DENSE_MODES and "mean_step_s" in r]
    fastest = min(dense_rows, key=lambda r: r["mean_step_s"]) if dense_rows else None
    for row in rows:
        result = outputs.get(row["mode"])
        if fastest is not None and result is not None and row is not fastest:
            row["speedup_vs_fastest_dense"] = fastest["mean_step_s"] / row["mean_step_s"]
            row["fastest_dense"] = fastest["mode"]
        if ref is None or result is None or row["mode"] == "dense":
            continue
        row["speedup_steady"] = next(r["mean_step_s"] for r in rows if r["mode"] == "dense") / row["mean_step_s"]
        row["speedup_total"] = next(r["denoise_s"] for r in rows if r["mode"] == "dense") / row["denoise_s"]
        report = compare_videos(
            result.frames, ref.frames, result.latents, ref.latents, names=(row["mode"], "dense"), device=device
        )
        row.update({k: v for k, v in report["summary"].items() if k != "frames"})
        row["per_frame"] = report["per_frame"]


def _versions() -> dict:
    from radial.generation.run import versions

    return versions()


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(report: dict) -> str:
    lines = [
        f"# Generation benchmark: {report['model']}",
        "",
        f"{report['device']}, {report['clip']['frames']} frames at {report['clip']['height']}x{report['clip']['width']} "
        f"({report['clip']['video_tokens']} video tokens), {report['steps']} steps, guidance {report['guidance']}, "
        f"decode {report['decode']}, seed {report['seed']}, {report['date']}",
        "",
        "| mode | backend | dense layers / steps | density mask / effective | first step s | mean step s | denoise s "
        "| steady s | speed-up (steady) | vs fastest dense | peak GB | latent rel. err | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['error']} |" + " |" * 12)
            continue
        lines.append(
            f"| {r['mode']} | {r['backend']} | {r['dense_layers']} / {r['dense_timesteps']} "
            f"| {r['mask_density']:.3f} / {r['effective_density']:.3f} | {r['first_step_s']:.2f} "
            f"| {r['mean_step_s']:.3f} | {r['denoise_s']:.2f} | {r['denoise_steady_s']:.2f} "
            f"| {_fmt(r.get('speedup_steady'), '.2f')} | {_fmt(r.get('speedup_vs_fastest_dense'), '.2f')} "
            f"| {r['peak_memory_gb']:.1f} "
            f"| {_fmt(r.get('latent_rel_error'), '.4f')} | {_fmt(r.get('psnr_mean'), '.2f')} "
            f"| {_fmt(r.get('ssim_mean'), '.4f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else benchmarks/results)")
    p.add_argument("--modes", nargs="+", default=["dense", "radial", "radial-dense"], choices=MODES)
    p.add_argument("--variant", default="t2v-1.3b")
    p.add_argument("--frames", type=int, default=321, help="pixel frames (321 = 81 latent frames = 4x)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=6, help="denoising steps")
    p.add_argument("--guidance", type=float, default=1.0, help="> 1 adds CFG (two passes per step)")
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="triton", help="the radial backend (one)")
    p.add_argument(
        "--backends", nargs="+", default=None, help="radial backends timed one after another (default --backend)"
    )
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--decay-factor", type=float, default=1.0)
    p.add_argument("--dense-layers", type=int, default=1, help="radial-dense: first k layers dense")
    p.add_argument("--dense-timesteps", type=int, default=None, help="radial-dense: first t steps (default steps/4)")
    p.add_argument("--decode", choices=("tiny", "none"), default="tiny", help="VAE decode with a tiny random Wan VAE")
    p.add_argument("--device", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny models, 17 frames at 64x64 (a CPU check of the script)")
    args = p.parse_args(argv)
    if args.smoke:
        args.frames, args.height, args.width = 17, 64, 64
        args.block_size = 16
        if args.backend == "triton" and (args.device == "cpu" or not torch.cuda.is_available()):
            args.backend = "reference"
    args.backends = args.backends or [args.backend]
    if args.dense_timesteps is None:
        args.dense_timesteps = max(1, round(args.steps / 4))
    out = args.out or Path(os.environ.get("OUT") or "benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    (out / "generate.json").write_text(json.dumps(report, indent=1, default=str))
    text = table(report)
    (out / "generate.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
