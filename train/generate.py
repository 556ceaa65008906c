"""`python -m train.generate`: `radial.generate` plus tiny random pipelines and a radial-vs-dense comparison.

    python -m train.generate --tiny wan --prompt "a red ball" --frames 17 --height 64 --width 64 --steps 4
    python -m train.generate --tiny wan --transformer outputs/demo/base_transformer --lora outputs/demo/lora \\
        --prompt "a red ball" --compare-dense --out outputs/gen        # + metrics.json and metrics.png
    python -m train.generate --model /models/Wan2.1-T2V-1.3B-Diffusers --prompt ... --compare-dense

Same options as `python -m radial.generate` (see there); additions:
  --tiny FAMILY       a tiny random-init pipeline of the real classes: transformer from radial.models, VAE + text
                      encoder + tokenizer from data.encoders (seeded, the ones the synthetic demo data used)
  --compare-dense     after the radial videos, the same prompts and seeds with stock (dense) attention, and per
                      pair PSNR / SSIM per frame, latent relative error and temporal flicker (train.eval.metrics)
  --save-tiny DIR     write the tiny pipeline as a diffusers folder (loadable by `radial.generate --model DIR`)

This lives in train/ because tiny components come from data/ (radial/ depends on nothing of ours).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from radial.errors import USER_ERRORS, cli_errors
from radial.generate import DTYPES, add_arguments, load_from_args, run
from radial.generation.pipeline import check_local_folder

TINY_DEFAULTS = {"frames": 17, "height": 64, "width": 64, "steps": 4, "block_size": 16, "guidance_scale": 1.0}


def build_tiny_pipeline(
    family: str = "wan",
    *,
    seed: int = 0,
    transformer: torch.nn.Module | str | Path | None = None,
    text_encoder: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    shift: float = 3.0,
):
    """A diffusers pipeline of `family` from tiny random-init components (tests, the CPU demo).

    `transformer`: a module, a saved folder (e.g. outputs/<run>/base_transformer), or None for
    `adapter.build_tiny(seed=seed)` (what the trainer's tiny model is). Encoders use `seed` as data.prepare does.
    """
    import diffusers

    from data.encoders import load_encoders
    from radial.models import get_adapter

    adapter = get_adapter(family)
    if transformer is None:
        transformer = adapter.build_tiny(seed=seed, dtype=dtype)
    elif not isinstance(transformer, torch.nn.Module):
        folder = check_local_folder(transformer, "--transformer", "a local diffusers transformer folder")
        transformer = adapter.transformer_class.from_pretrained(str(folder), torch_dtype=dtype)
    enc = load_encoders(family if family != "wan22" else "wan", tiny=True, seed=seed)
    components = {name: getattr(enc, name) for name in enc.components}
    if not text_encoder:
        components = {k: (None if k.startswith(("text_encoder", "tokenizer")) else v) for k, v in components.items()}
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe = getattr(diffusers, get_adapter(family).pipeline_class_name)(
        transformer=transformer, scheduler=scheduler, **components
    )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe._radial_text_settings = enc.text_settings()
    return pipe


def save_tiny_pipeline(out: str | Path, family: str = "wan", *, seed: int = 0, transformer=None) -> Path:
    """Write a tiny pipeline as a diffusers folder (with the tiny encoders' text settings beside it)."""
    from radial.generation.pipeline import TEXT_SETTINGS_FILE

    out = Path(out)
    pipe = build_tiny_pipeline(family, seed=seed, transformer=transformer)
    pipe.save_pretrained(str(out))
    if pipe._radial_text_settings:
        (out / TEXT_SETTINGS_FILE).write_text(json.dumps(pipe._radial_text_settings, indent=1))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.generate",
        description="radial.generate with tiny random pipelines (--tiny FAMILY) and --compare-dense.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p, model_required=False)
    extra = p.add_argument_group("train.generate")
    extra.add_argument("--tiny", metavar="FAMILY", help="tiny random-init pipeline of FAMILY (wan, hunyuan, mochi)")
    extra.add_argument("--tiny-seed", type=int, default=0, help="seed of the tiny components")
    extra.add_argument("--save-tiny", metavar="DIR", help="write the tiny pipeline as a diffusers folder and exit")
    extra.add_argument("--compare-dense", action="store_true", help="also generate with dense attention and compare")
    return p


def _tiny_defaults(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Small sizes for --tiny unless given (the tiny models have 16 tokens per frame at 64x64: block 16)."""
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    if args.frames is None and args.length is None:
        args.frames = TINY_DEFAULTS["frames"]
    for key in ("height", "width", "block_size"):
        if getattr(args, key) is None:
            setattr(args, key, TINY_DEFAULTS[key])
    if "--steps" not in given:
        args.steps = TINY_DEFAULTS["steps"]
    if "--guidance-scale" not in given:
        args.guidance_scale = TINY_DEFAULTS["guidance_scale"]
    if "--dtype" not in given:
        args.dtype = "fp32"
    if "--device" not in given:
        args.device = "cpu"


def compare_pairs(radial: list, dense: list, names: list[tuple[str, str]], out: Path) -> list[dict]:
    """PSNR / SSIM per frame, latent relative error and flicker between each radial result and its dense twin.

    Compares the decoded frames in memory (before mp4 compression) and the final latents.
    """
    from train.eval.metrics import compare_videos, save_report

    reports = []
    for a, b, (name_a, name_b) in zip(radial, dense, names, strict=True):
        report = compare_videos(a.frames, b.frames, a.latents, b.latents, names=(name_a, name_b))
        stem = name_a.removesuffix("_radial")
        paths = save_report(report, out / f"{stem}_metrics.json", out / f"{stem}_metrics.png")
        report["files"] = paths
        summary = report["summary"]
        print(
            f"{stem}: PSNR {summary.get('psnr_mean', float('nan')):.2f} dB, SSIM {summary.get('ssim_mean', float('nan')):.4f}, "
            f"latent rel. error {summary.get('latent_rel_error', float('nan')):.4f}"
        )
        reports.append(report)
    return reports


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if bool(args.tiny) == bool(args.model):
        parser.exit(2, "error: give --model DIR (a local diffusers pipeline) or --tiny FAMILY\n")
    if args.save_tiny:
        if not args.tiny:
            parser.exit(2, "error: --save-tiny needs --tiny FAMILY\n")
        path = save_tiny_pipeline(args.save_tiny, args.tiny, seed=args.tiny_seed, transformer=args.transformer)
        print(f"tiny {args.tiny} pipeline written to {path}")
        return {"saved": str(path)}
    # Option values are checked with ValueError by the settings dataclasses too: all are one-line errors here.
    with cli_errors(args.debug, expected=(*USER_ERRORS, ValueError, FileNotFoundError)):
        if args.tiny:
            _tiny_defaults(args, argv)
            text = not (args.no_text_encoder or (args.prompt_embeds and not args.prompt))
            pipe = build_tiny_pipeline(
                args.tiny,
                seed=args.tiny_seed,
                transformer=args.transformer,
                text_encoder=text,
                dtype=DTYPES[args.dtype],
                device=args.device,
            )
            source, text_settings = None, pipe._radial_text_settings
            args.family = args.family or (args.tiny if args.tiny == "wan22" else None)
        else:
            pipe, source, text_settings = load_from_args(args), args.model, None
        kept: list = []
        records = run(args, pipe, source=source, text_settings=text_settings, results=kept)
        result: dict = {"generated": records}
        if args.compare_dense and args.attention == "radial":
            args.attention = "dense"
            kept_dense: list = []
            dense = run(args, pipe, source=source, text_settings=text_settings, results=kept_dense)
            result["dense"] = dense
            names = [(a["name"], b["name"]) for a, b in zip(records, dense, strict=True)]
            result["comparisons"] = compare_pairs(kept, kept_dense, names, Path(args.out))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "generate_summary.json").write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
