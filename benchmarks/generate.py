"""Generation benchmark: Wan2.1-T2V-1.3B or HunyuanVideo 13B (full-size architecture, random weights) at 4x length,
radial vs dense.

The generator's own path (radial.generation: WanPipeline / HunyuanVideoPipeline, prompt embeddings, `generate` with
per-step timing and the radial handle driven by the pipeline callback), the same seed for every mode, so the outputs
are comparable:

    dense          stock diffusers attention (SDPA: flash / cuDNN), no injection
    dense-fa4      every layer through our dense backend on flash-attn-4's dense kernel (RADIAL_DENSE_KERNEL=fa4)
    radial         radial attention, --backends (triton; e.g. triton fa4), every layer and step sparse
    radial-dense   radial with the first --dense-layers layers and the first --dense-timesteps steps dense
                   (the paper's inference recipe, scaled to the short schedule)

    python benchmarks/generate.py --out $OUT                   # 480x832, 321 frames = 81 latent frames, 6 steps
    python benchmarks/generate.py --out $OUT --steps 8 --decode none --modes dense radial
    python benchmarks/generate.py --out $OUT --decode none --modes dense dense-fa4 radial --backends triton fa4
    python benchmarks/generate.py --smoke --device cpu --out /tmp/x   # tiny models: a CPU check of the script

HunyuanVideo (`--family hunyuan`): the 13B transformer (20 double-stream + 40 single-stream blocks, bf16 weights
26 GB) at 720x1280 and 4x its 129 frames: 513 frames = 129 latent frames, 464,400 video + 256 text tokens; random
Llama states (256 x 4096, 64 real tokens) and CLIP pooled state (768); the pipeline's distilled guidance (6, one
transformer pass per step); no VAE (`--decode none`); radial-dense is the official 4x recipe (2 dense layers, 2 dense
steps). `--hun-double N --hun-single M` build a subset of the blocks; every block is timed per step (CUDA events), and
the whole model's step and its `--fit-steps` denoising (50, the pipeline's default) are fitted from those per-block
times (JSON `whole_model`, the MD's second table, both say "fitted"); with all 60 blocks they are measured.
One dense step of the whole model is estimated at ~4 min with flash-attn-4's dense kernel (dense-fa4) and ~8 min
with stock SDPA (its boolean text mask sends it to the memory-efficient kernel, half cuDNN's rate): the forward is
about a quarter of train_step.md's checkpointed training step, 17.1 s per dense block there. A radial step (fa4) is
estimated the same way at about 40 s.

    python benchmarks/generate.py --family hunyuan --hun-double 1 --hun-single 1 --modes dense dense-fa4 radial \
        radial-dense --backends fa4 --out $OUT                   # per-block times, whole model fitted (~3 min)
    python benchmarks/generate.py --family hunyuan --modes radial --backends fa4 --out $OUT      # whole model, ~3 min
    python benchmarks/generate.py --family hunyuan --modes dense-fa4 --steps 1 --out $OUT     # one dense step, ~4 min
    python benchmarks/generate.py --smoke --device cpu --family hunyuan --out /tmp/x

Reported per mode: first step (includes kernel compilation), mean of the other steps, denoising total, an estimate
without compilation (mean step x steps), peak CUDA memory, mask and effective attention density; against dense:
speed-up (and against the fastest dense mode of the run), latent relative error and, with --decode tiny, PSNR / SSIM per frame of the decoded videos.

No text encoder (random prompt embeddings, Wan 512 x 4096) and, for Wan, guidance 1 (no CFG: one transformer pass
per step; real sampling with CFG doubles every step time equally). --decode tiny decodes with a tiny random VAE of
the family's class and compression (4x temporal, 8x spatial): the frame metrics then measure how far radial attention
moves the output of this random model, not the quality of a trained one; latent error is the primary number.
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

from radial.errors import ConfigError, cli_errors  # noqa: E402

MODES = ("dense", "dense-fa4", "radial", "radial-dense")
DENSE_MODES = ("dense", "dense-fa4")
# Per family: the benchmark's sampling and the radial-dense recipe; the clip is 4x the family's base length at its
# base size (radial.families), the flow shift that of configs/model/<family>_full.yaml. `fit`: time every block and
# report the whole model (measured, or fitted from a subset of the blocks).
PRESETS = {
    "wan": dict(variant="t2v-1.3b", steps=6, guidance=1.0, decode="tiny", dense_layers=1, dense_timesteps=None),
    "hunyuan": dict(variant="t2v", steps=3, guidance=6.0, decode="none", dense_layers=2, dense_timesteps=2, fit=True),
}
# HunyuanVideo's block-count options -> the transformer config keys they set
HUN_LAYERS = {"hun_double": "num_layers", "hun_single": "num_single_layers"}


def _layers(args) -> dict[str, int]:
    return {key: getattr(args, name) for name, key in HUN_LAYERS.items() if getattr(args, name) is not None}


def _pipeline(args, device: str):
    import inspect

    import diffusers

    from radial.generation.pipeline import TEXT_COMPONENTS
    from radial.models import get_adapter

    adapter = get_adapter(args.family)
    if args.smoke:
        transformer = adapter.build_tiny(seed=0, dtype=torch.float32, device=device, **_layers(args))
    else:
        transformer = adapter.build_full(args.variant, dtype=torch.bfloat16, device=device, seed=0, **_layers(args))
    vae = None
    if args.decode == "tiny":
        from data.encoders import load_encoders

        vae = load_encoders(args.family, tiny=True, seed=0, device=device).vae
    cls = getattr(diffusers, adapter.pipeline_class_name)
    text = {k: None for k in TEXT_COMPONENTS if k in inspect.signature(cls.__init__).parameters}
    pipe = cls(
        **text,
        vae=vae,
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=args.shift),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _embeds(pipe, args):
    """Random prompt states of the shapes the family's pipeline takes (text states, mask, pooled state)."""
    from radial.generation import PromptEmbeds
    from radial.models import get_adapter

    adapter = get_adapter(args.family)
    cfg = pipe.transformer.config
    g = torch.Generator().manual_seed(1234)
    length = 16 if args.smoke else adapter.text_len
    embeds = torch.randn(1, length, cfg.get("text_dim") or cfg.get("text_embed_dim"), generator=g)
    valid = length // 4  # a typical prompt: the rest is the pipeline's zero padding
    embeds[:, valid:] = 0
    tensors = {"prompt_embeds": embeds, "prompt_attention_mask": (torch.arange(length) < valid)[None].long()}
    if "pooled_prompt_embeds" in adapter.spec.text_fields:  # HunyuanVideo's CLIP pooled state
        tensors["pooled_prompt_embeds"] = torch.randn(1, cfg.pooled_projection_dim, generator=g)
    if args.guidance > 1 and not adapter.spec.true_cfg:  # true-CFG families embed the guidance: one pass
        tensors["negative_prompt_embeds"] = torch.zeros_like(embeds)
        tensors["negative_prompt_attention_mask"] = tensors["prompt_attention_mask"]
    return PromptEmbeds(tensors, prompt="random embeddings (benchmark)", source="random")


def _block_classes(transformer, family: str) -> list[str]:
    """The block class of every attention layer of a transformer, in layer order."""
    from benchmarks.block_times import blocks_of
    from radial.models import get_adapter

    layers = get_adapter(family).attention_layers(transformer)
    return [type(b).__name__ for b in blocks_of(transformer, layers)]


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
    from benchmarks.block_times import BlockTimer, blocks_of
    from radial.generation import ClipSpec, apply_radial, generate
    from radial.models import get_adapter

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
        fps=get_adapter(args.family).geometry.fps,
    )
    fit = PRESETS[args.family].get("fit", False)
    from radial.kernels.dense import DENSE_KERNEL_ENV

    rows, outputs = [], {}
    runs = [(m, None) if m in DENSE_MODES else (m, b) for m in args.modes for b in args.backends]
    for mode, backend in dict.fromkeys(runs):
        settings = _settings(mode, args, backend)
        label = f"{mode} {backend}" if backend is not None and len(args.backends) > 1 else mode
        os.environ[DENSE_KERNEL_ENV] = "fa4" if mode == "dense-fa4" else "auto"
        handles = apply_radial(pipe, settings, args.family)
        timer = None
        if fit:
            layers = get_adapter(args.family).attention_layers(pipe.transformer)
            timer = BlockTimer(blocks_of(pipe.transformer, layers), cuda=device == "cuda")
        print(
            f"[{label}] generating {clip.frames} frames at {clip.height}x{clip.width}, {clip.num_inference_steps} steps",
            flush=True,
        )
        try:
            result = generate(
                pipe,
                clip,
                embeds=embeds,
                handles=handles,
                decode=args.decode != "none",
                family=args.family,
                callback=None if timer is None else timer.callback,
            )
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
            if timer is not None:
                timer.remove()
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
        if timer is not None:
            row["step_blocks_s"] = timer.steps
        rows.append(row)
        outputs[label] = result
        print(
            f"[{label}] mean step {mean_step:.3f} s, first {steps[0]:.3f} s, peak {row['peak_memory_gb']:.1f} GB",
            flush=True,
        )
        gc.collect()
    _compare(rows, outputs, device)
    grid = next((r["video_tokens"] for r in rows if r.get("video_tokens")), None)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "model": _model_name(args, pipe.transformer),
        "clip": {"frames": args.frames, "height": args.height, "width": args.width, "video_tokens": grid},
        "steps": args.steps,
        "guidance": args.guidance,
        "decode": args.decode,
        "seed": args.seed,
        "versions": _versions(),
        "rows": rows,
    }
    if fit:
        from benchmarks.block_times import whole_model

        adapter = get_adapter(args.family)
        built = _block_classes(pipe.transformer, args.family)
        whole = _block_classes(adapter.build_full(args.variant, device="meta"), args.family)
        report["whole_model"] = whole_model(rows, built, whole, args.fit_steps, DENSE_MODES)
    return report


def _model_name(args, transformer) -> str:
    from radial.models import get_adapter

    if args.smoke:
        return f"tiny {args.family} (smoke)"
    spec = get_adapter(args.family).spec
    layers = _layers(args)
    subset = f" ({', '.join(f'{k}={v}' for k, v in layers.items())})" if layers else ""
    return f"{spec.title} {args.variant}{subset}, random weights, bf16"


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
    whole = report.get("whole_model")
    if whole:
        lines += _whole_table(whole)
    return "\n".join(lines) + "\n"


def _whole_table(whole: dict) -> list[str]:
    how = (
        "measured"
        if whole["source"] == "measured"
        else f"**fitted** from the measured per-block times of {whole['built']} (and the measured overhead)"
    )
    lines = [
        "",
        f"## Whole model ({whole['blocks']}), {whole['steps']} denoising steps: {how}",
        "",
        "| mode | source | dense step s | radial step s | dense steps | denoise s | speed-up | vs fastest dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, e in whole["rows"].items():
        lines.append(
            f"| {mode} | {e['source']} | {_fmt(e.get('dense_step_s'), '.2f')} | {_fmt(e.get('radial_step_s'), '.2f')} "
            f"| {e['dense_steps']} | {_fmt(e['denoise_s'], '.1f')} | {_fmt(e.get('speedup'), '.2f')} "
            f"| {_fmt(e.get('speedup_vs_fastest_dense'), '.2f')} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else benchmarks/results)")
    p.add_argument("--family", choices=sorted(PRESETS), default="wan", help="the model family (default wan)")
    p.add_argument("--modes", nargs="+", default=["dense", "radial", "radial-dense"], choices=MODES)
    p.add_argument("--variant", default=None, help="the full-size architecture (wan: t2v-1.3b, hunyuan: t2v)")
    p.add_argument(
        "--frames", type=int, default=None, help="pixel frames (default 4x: wan 321 = 81 latent, hunyuan 513)"
    )
    p.add_argument("--height", type=int, default=None, help="default the family's base height (wan 480, hunyuan 720)")
    p.add_argument("--width", type=int, default=None, help="default the family's base width (wan 832, hunyuan 1280)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (wan 6; hunyuan 3: a dense step of the whole 720p 4x model is ~4 min with dense-fa4, "
        "~8 min with stock SDPA, estimated)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="wan: > 1 adds CFG (two passes per step; default 1); hunyuan: the distilled guidance (default 6)",
    )
    p.add_argument("--shift", type=float, default=None, help="flow shift (default configs/model/<family>_full.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="triton", help="the radial backend (one)")
    p.add_argument(
        "--backends", nargs="+", default=None, help="radial backends timed one after another (default --backend)"
    )
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--decay-factor", type=float, default=1.0)
    p.add_argument(
        "--dense-layers", type=int, default=None, help="radial-dense: first k layers dense (wan 1, hunyuan 2)"
    )
    p.add_argument(
        "--dense-timesteps", type=int, default=None, help="radial-dense: first t steps (wan steps/4, hunyuan 2)"
    )
    p.add_argument(
        "--decode",
        choices=("tiny", "none"),
        default=None,
        help="VAE decode with a tiny random VAE of the family (default: wan tiny, hunyuan none)",
    )
    p.add_argument("--hun-double", type=int, default=None, help="hunyuan: double-stream blocks built (default 20)")
    p.add_argument("--hun-single", type=int, default=None, help="hunyuan: single-stream blocks built (default 40)")
    p.add_argument(
        "--fit-steps", type=int, default=50, help="hunyuan: the whole model's denoising is reported for these steps"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny models, 17 frames at 64x64 (a CPU check of the script)")
    args = p.parse_args(argv)
    with cli_errors():
        _defaults(args)
    out = args.out or Path(os.environ.get("OUT") or "benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    (out / "generate.json").write_text(json.dumps(report, indent=1, default=str))
    text = table(report)
    (out / "generate.md").write_text(text)
    print(text)
    return report


def _defaults(args) -> None:
    """The family's preset for what the command line left out; bad values end in a ConfigError naming the option."""
    from omegaconf import OmegaConf

    from radial.generation import frames_for_length
    from radial.models import get_adapter

    preset = PRESETS[args.family]
    geometry = get_adapter(args.family).geometry
    for key in ("variant", "steps", "guidance", "decode", "dense_layers"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.frames = args.frames or frames_for_length(geometry, "4x")
    args.height = args.height or geometry.base_height
    args.width = args.width or geometry.base_width
    if args.shift is None:
        model_config = Path(__file__).resolve().parents[1] / "configs" / "model" / f"{args.family}_full.yaml"
        args.shift = float(OmegaConf.load(model_config).flow_shift)
    whole = get_adapter(args.family).variants.get(args.variant, {})
    for name, key in HUN_LAYERS.items():
        value = getattr(args, name)
        option = "--" + name.replace("_", "-")
        if value is not None and not preset.get("fit"):
            raise ConfigError(f"{option} {value}: only with --family hunyuan (it sets the built blocks)")
        if value is not None and not 1 <= value <= whole.get(key, value):
            raise ConfigError(f"{option} {value}: expected 1 to {whole.get(key)} (the whole model's {key})")
    try:
        geometry.latent_frames(args.frames)
    except ValueError as e:
        raise ConfigError(f"--frames {args.frames}: {e}") from None
    for name in ("steps", "fit_steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected an integer >= 1")
    if args.smoke:
        args.frames, args.height, args.width = 17, 64, 64
        args.block_size = 16
        if args.backend == "triton" and (args.device == "cpu" or not torch.cuda.is_available()):
            args.backend = "reference"
    args.backends = args.backends or [args.backend]
    if args.dense_timesteps is None:
        args.dense_timesteps = preset["dense_timesteps"]
    if args.dense_timesteps is None:
        args.dense_timesteps = max(1, round(args.steps / 4))


if __name__ == "__main__":
    main()
