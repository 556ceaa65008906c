"""`python -m train.generate`: videos with radial attention and LoRAs, from a diffusers pipeline or a tiny one.

    python -m train.generate --model /models/Wan2.1-T2V-1.3B-Diffusers --prompt "a red fox runs through snow" \\
        --length 4x --steps 50 --backend triton --dense-layers 1 --dense-timesteps 12 \\
        --lora outputs/wan_4x/lora:1.0 --lora other_style.safetensors:0.5 --seed 0 1 --out outputs/gen
    python -m train.generate --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers ...   # a Hub id already in the HF cache
    python -m train.generate --model /models/HunyuanVideo --prompt-embeds prompts.safetensors --length 2x ...
    python -m train.generate --tiny wan --transformer outputs/demo/base_transformer --lora outputs/demo/lora \\
        --prompt "a red ball" --compare-dense --out outputs/gen        # + metrics.json and metrics.png

Writes, per prompt and seed, NAME.mp4, NAME.latents.safetensors and NAME.json (the sidecar: prompt, seed, family,
size, frames, steps, guidance, radial settings and mask density, LoRAs with scales, wall time, per-step time,
peak memory, versions), and generate_summary.json. `--prompt-embeds FILE` (see radial.generation.embeds) skips
loading the text encoders. `--attention dense` keeps the stock attention (the baseline; same seeds give the same
noise); `--compare-dense` generates both and compares them (PSNR / SSIM per frame, latent error, flicker).

Radial settings left unset follow the first LoRA trained by this framework (its header records every attention
setting, radial.attention_settings: decay_factor, dense_layers, block_size, sink, window_frames, the length-extension
settings train_frames, rope_extension, extrapolation_decay, ...; the backend is this machine's); otherwise the
defaults below. `--rope-extension riflex` and `--extrapolation-decay LAMBDA`
(with `--train-frames N`) are training-free length extension, with radial or with `--attention dense`. `--tiny FAMILY`
(tiny random-init pipelines of the real classes, for tests and the CPU demo; train.tiny_pipeline) and `--save-tiny`.

This CLI is an application (it stands on data/ for the tiny pipelines): the library `radial` keeps the functions it
calls (radial.generation) and depends on nothing of ours.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from radial.attention_settings import recorded_settings
from radial.errors import USER_ERRORS, cli_errors
from radial.families import family_spec
from radial.generation.embeds import load_prompt_embeds
from radial.generation.loras import check_lora_specs, load_loras, lora_metadata
from radial.generation.pipeline import (
    apply_radial,
    apply_text_settings,
    check_first_frame,
    check_pipeline_folder,
    family_of_folder,
    load_pipeline,
    pipeline_family,
    read_text_settings,
    resolve_prompt_template,
    transformer_config_of,
)
from radial.generation.run import build_sidecar, generate, load_image, save_result
from radial.generation.settings import ClipSpec, LoraSpec, RadialSettings, frames_for_length
from radial.help_format import DefaultsHelpFormatter
from radial.hub import resolve_pipeline_path
from radial.kernels import registry
from radial.mask.stats import density_text
from radial.models import get_adapter
from radial.rope_extension import ROPE_EXTENSIONS
from train import tiny_pipeline as tools

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
DTYPES.update({"fp32": torch.float32, "float32": torch.float32})


def add_arguments(p: argparse.ArgumentParser, *, model_required: bool = True) -> argparse.ArgumentParser:
    src = p.add_argument_group("model")
    src.add_argument(
        "--model",
        required=model_required,
        help="diffusers pipeline: a local folder (model_index.json) or a Hub id already in the Hugging Face cache",
    )
    src.add_argument("--transformer", help="another transformer folder to use instead of MODEL/transformer")
    src.add_argument("--family", help="model family (default: from the pipeline; 'wan22' for Wan2.2 A14B)")
    src.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="transformer dtype (VAE stays fp32)")
    src.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    src.add_argument("--no-text-encoder", action="store_true", help="don't load text encoders (with --prompt-embeds)")
    src.add_argument(
        "--offload", choices=("none", "model"), default="none", help="model: diffusers' model CPU offload (less memory)"
    )
    src.add_argument("--vae-tiling", action="store_true", help="decode in tiles (long / large videos)")

    what = p.add_argument_group("what to generate")
    what.add_argument("--prompt", action="append", help="text prompt (repeatable)")
    what.add_argument(
        "--image",
        default=None,
        help="first frame for image-to-video pipelines (Wan2.1 I2V, Wan2.2 A14B I2V, TI2V-5B, HunyuanVideo-1.5 I2V)",
    )
    what.add_argument("--prompt-embeds", action="append", help="precomputed embeddings (.safetensors/.pt; repeatable)")
    what.add_argument("--negative-prompt", default=None)
    what.add_argument("--length", default=None, help="1x, 2x, 3x, 4x of the base model's clip (Wan 1x = 81 frames)")
    what.add_argument("--frames", type=int, default=None, help="pixel frames (k * temporal factor + 1)")
    what.add_argument("--height", type=int, default=None)
    what.add_argument("--width", type=int, default=None)
    what.add_argument("--steps", type=int, default=50, help="denoising steps")
    what.add_argument(
        "--guidance-scale", type=float, default=None, help="default: the pipeline's (Wan 5, HunyuanVideo 6, Mochi 4.5)"
    )
    what.add_argument("--true-cfg-scale", type=float, default=None, help="HunyuanVideo real CFG (needs negatives)")
    what.add_argument("--guidance-scale-2", type=float, default=None, help="Wan2.2 A14B low-noise expert guidance")
    what.add_argument("--shift", type=float, default=None, help="scheduler flow shift override")
    what.add_argument("--max-sequence-length", type=int, default=None)
    what.add_argument("--seed", type=int, nargs="+", default=[0])
    what.add_argument("--fps", type=int, default=None, help="mp4 frame rate (default: the family's)")

    att = p.add_argument_group("radial attention")
    att.add_argument("--attention", choices=("radial", "dense"), default="radial", help="dense = stock attention")
    att.add_argument("--backend", choices=registry.backend_choices(), default="auto")
    att.add_argument("--decay-factor", type=float, default=None)
    att.add_argument("--dense-layers", type=int, default=None, help="first k attention layers dense")
    att.add_argument("--dense-timesteps", type=int, default=None, help="first t denoising steps dense")
    att.add_argument("--block-size", type=int, default=None)
    att.add_argument("--sink", action=argparse.BooleanOptionalAction, default=None, help="key frame 0 dense")
    att.add_argument(
        "--decay-adjacent", action=argparse.BooleanOptionalAction, default=None, help="a band at frame distance 1 too"
    )
    att.add_argument(
        "--window-frames",
        type=int,
        default=None,
        help="> 0: a temporal-window mask of that many frames each side instead of radial (a window LoRA's own)",
    )
    ext = p.add_argument_group("training-free length extension (also with --attention dense)")
    ext.add_argument("--train-frames", type=int, default=None, help="latent frames the base model was trained on")
    ext.add_argument(
        "--rope-extension", choices=ROPE_EXTENSIONS, default=None, help="riflex: lower the intrinsic RoPE frequency"
    )
    ext.add_argument(
        "--extrapolation-decay",
        type=float,
        default=None,
        metavar="LAMBDA",
        help="0 < LAMBDA <= 1: attention weights of keys >= train-frames frames away times LAMBDA (1 = off)",
    )

    lora = p.add_argument_group("LoRAs")
    lora.add_argument(
        "--lora", action="append", default=[], metavar="PATH[:SCALE[:NAME]]", help="LoRA folder or file (repeatable)"
    )

    out = p.add_argument_group("output")
    out.add_argument("--out", default="outputs/generate", help="output folder")
    out.add_argument("--name", default=None, help="file name stem (default: FAMILY_FRAMESf_ATTENTION)")
    out.add_argument("--no-decode", action="store_true", help="skip the VAE: latents and sidecar only")
    out.add_argument("--no-latents", action="store_true", help="don't save the final latents")
    out.add_argument("--no-progress", action="store_true", help="no per-step progress bar")
    out.add_argument("--debug", action="store_true", help="full tracebacks for errors (also RADIAL_DEBUG=1)")

    repo = p.add_argument_group("tiny pipelines and comparison (this repository's data/ and train/ packages)")
    repo.add_argument(
        "--tiny",
        metavar="FAMILY",
        help="tiny random-init pipeline of FAMILY (wan, wan22, wan22_ti2v, hunyuan, hunyuan15, mochi, h3)",
    )
    repo.add_argument("--tiny-seed", type=int, default=0, help="seed of the tiny components")
    repo.add_argument("--save-tiny", metavar="DIR", help="write the tiny pipeline as a diffusers folder and exit")
    repo.add_argument(
        "--compare-dense", action="store_true", help="also generate with dense attention and compare each pair"
    )
    return p


def build_parser(prog: str = "python -m train.generate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Generate videos with radial attention and LoRAs from a diffusers pipeline (or a tiny one).",
        formatter_class=DefaultsHelpFormatter,
    )
    return add_arguments(p, model_required=False)


def resolve_radial(args: argparse.Namespace, loras: Sequence[LoraSpec]) -> tuple[RadialSettings, str]:
    """The first radial LoRA's attention settings, whole (radial.attention_settings: every option it was trained with
    but the machine's own, backend and deterministic), with the options given here on top, else the defaults; and
    where they came from."""
    trained: dict = {}
    origin = "defaults"
    for spec in loras:
        path = Path(spec.path)
        file = path / "pytorch_lora_weights.safetensors" if path.is_dir() else path
        if file.is_file():
            trained = recorded_settings(lora_metadata(file))
            if trained:
                origin = f"LoRA {spec.path}"
                break
    given = {name: getattr(args, name, None) for name in RadialSettings.names()}  # the options are named as the fields
    given["enabled"] = args.attention == "radial"
    return RadialSettings.restore(trained, **given), origin


def _device(args) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_from_args(args: argparse.Namespace):
    """The pipeline named by --model (text encoders skipped with --no-text-encoder or embeddings only)."""
    # The LoRA files and the folders are checked before minutes of loading.
    check_pipeline_folder(args.model)
    check_lora_specs(
        [LoraSpec.parse(s) for s in args.lora],
        args.family or family_of_folder(args.model),
        transformer_config_of(args.model, args.transformer),
    )
    text = not (args.no_text_encoder or (args.prompt_embeds and not args.prompt))
    offload = getattr(args, "offload", "none") == "model"
    pipe = load_pipeline(
        args.model,
        text_encoder=text,
        dtype=DTYPES[args.dtype],
        device=None if offload else _device(args),
        transformer_path=args.transformer,
        image=args.image is not None,
    )
    if offload:
        pipe.enable_model_cpu_offload(device=_device(args))
    return pipe


def _vae_tiling(pipe, args) -> None:
    if getattr(args, "vae_tiling", False) and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()


def clip_from_args(args, family: str, text_settings: dict) -> ClipSpec:
    from radial.families import geometry

    g = geometry(family)
    if args.length is not None and args.frames is not None:
        raise ValueError("give --length or --frames, not both")
    frames = frames_for_length(g, args.length or "1x") if args.frames is None else frames_for_length(g, args.frames)
    return ClipSpec(
        frames=frames,
        height=args.height or g.base_height,
        width=args.width or g.base_width,
        num_inference_steps=args.steps,
        guidance_scale=family_spec(family).guidance_scale if args.guidance_scale is None else args.guidance_scale,
        true_cfg_scale=args.true_cfg_scale,
        guidance_scale_2=args.guidance_scale_2,
        shift=args.shift,
        fps=args.fps or g.fps,
        negative_prompt=args.negative_prompt,
        max_sequence_length=args.max_sequence_length or text_settings.get("max_sequence_length"),
        image=args.image,
        extra={"prompt_template": text_settings["prompt_template"]} if "prompt_template" in text_settings else {},
    )


def run(
    args: argparse.Namespace,
    pipe,
    *,
    source: str | None = None,
    text_settings: dict | None = None,
    results: list | None = None,
) -> list[dict]:
    """Generate every prompt x seed with `pipe` as the arguments say; returns the sidecars (with file paths).

    `text_settings` (max_sequence_length, prompt_template of non-default encoders) default to those saved in the
    pipeline folder `source`. `results`, when given, receives each GenerationResult (frames, latents in memory).
    """
    family = args.family or pipeline_family(pipe)
    text_settings = read_text_settings(source) if text_settings is None else text_settings
    specs = [LoraSpec.parse(s) for s in args.lora]
    radial_settings, origin = resolve_radial(args, specs)
    if "prompt_template" in text_settings:
        text_settings = {
            **text_settings,
            "prompt_template": resolve_prompt_template(pipe, text_settings["prompt_template"]),
        }
    apply_text_settings(pipe, text_settings)
    base = clip_from_args(args, family, text_settings)
    text_len = base.max_sequence_length or get_adapter(family).text_len
    jobs: list[tuple[str, object]] = [(p, None) for p in (args.prompt or [])]
    for path in args.prompt_embeds or []:
        jobs += [(None, e) for e in load_prompt_embeds(path, text_len=text_len, family=family)]
    if not jobs:
        raise ValueError("nothing to generate: give --prompt TEXT or --prompt-embeds FILE")
    _vae_tiling(pipe, args)
    handles = apply_radial(pipe, radial_settings, family)
    try:
        lora_records = load_loras(pipe, specs, family=family, radial=radial_settings)
        stem = args.name or f"{family}_{base.frames}f"
        tag = "radial" if radial_settings.enabled else "dense"
        records = []
        for i, (prompt, embeds) in enumerate(jobs):
            for seed in args.seed:
                clip = ClipSpec(**{**base.__dict__, "seed": seed, "prompt": prompt})
                result = generate(pipe, clip, embeds=embeds, handles=handles, decode=not args.no_decode, family=family)
                name = f"{stem}_p{i}_s{seed}_{tag}" if len(jobs) > 1 else f"{stem}_s{seed}_{tag}"
                sidecar = build_sidecar(
                    result, radial=radial_settings, loras=lora_records, pipeline=source, radial_settings_from=origin
                )
                sidecar["files"] = save_result(result, args.out, name, sidecar, save_latents=not args.no_latents)
                sidecar["name"] = name
                records.append(sidecar)
                if results is not None:
                    results.append(result)
                if not sidecar["finite"]:
                    print(f"warning: {name}: the latents contain NaN or inf", file=sys.stderr)
                att = result.attention
                density = "dense attention"
                if "mask_block_density" in att:
                    density = density_text(att["mask_block_density"], att["model_block_density"], "dense layers, steps")
                print(
                    f"{name}: {result.wall_time_s:.2f} s ({result.denoise_time_s:.2f} s denoising), {density} -> "
                    f"{sidecar['files'].get('video') or sidecar['files'].get('latents')}"
                )
        return records
    finally:
        if handles is not None:
            handles.remove()


def main(argv: Sequence[str] | None = None, *, parser=None) -> dict:
    """CLI entry; returns {"generated": sidecars} (+ "dense" and "comparisons" with --compare-dense)."""
    parser = parser or build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if bool(args.tiny) == bool(args.model):
        parser.exit(2, "error: give --model (a diffusers pipeline folder or cached Hub id) or --tiny FAMILY\n")
    if args.save_tiny and not args.tiny:
        parser.exit(2, "error: --save-tiny needs --tiny FAMILY\n")
    # Option values are checked with ValueError by the settings dataclasses too: all are one-line errors here.
    with cli_errors(args.debug, expected=(*USER_ERRORS, ValueError, FileNotFoundError)):
        if args.image is not None:  # a bad image fails before minutes of loading
            load_image(args.image)
        resolve_radial(args, [LoraSpec.parse(s) for s in args.lora])  # bad attention options, before loading too
        if args.save_tiny:
            path = tools.save_tiny_pipeline(
                args.save_tiny,
                args.tiny,
                seed=args.tiny_seed,
                transformer=args.transformer,
                image=args.image is not None,
            )
            print(f"tiny {args.tiny} pipeline written to {path}")
            return {"saved": str(path)}
        if args.tiny:
            if args.image is None and args.transformer:
                check_first_frame(args.tiny, args.transformer, "--transformer")
            tools.tiny_defaults(args, argv)
            text = not (args.no_text_encoder or (args.prompt_embeds and not args.prompt))
            pipe = tools.build_tiny_pipeline(
                args.tiny,
                seed=args.tiny_seed,
                transformer=args.transformer,
                text_encoder=text,
                dtype=DTYPES[args.dtype],
                device=args.device,
                image=args.image is not None,
            )
            source, text_settings = None, pipe._radial_text_settings
            args.family = args.family or args.tiny
        else:
            args.model = str(resolve_pipeline_path(args.model))
            if args.image is None:
                folder = args.transformer or Path(args.model) / "transformer"
                check_first_frame(
                    args.family or family_of_folder(args.model),
                    folder,
                    "--transformer" if args.transformer else "--model",
                )
            pipe, source, text_settings = load_from_args(args), args.model, None
        # the pipeline's own per-step bar (off when pipelines are built, e.g. for samples inside the training bar)
        pipe.set_progress_bar_config(disable=args.no_progress, desc="denoising", leave=False)
        kept: list = []
        records = run(args, pipe, source=source, text_settings=text_settings, results=kept)
        result: dict = {"generated": records}
        if args.compare_dense and args.attention == "radial":
            args.attention = "dense"
            kept_dense: list = []
            dense = run(args, pipe, source=source, text_settings=text_settings, results=kept_dense)
            result["dense"] = dense
            names = [(a["name"], b["name"]) for a, b in zip(records, dense, strict=True)]
            result["comparisons"] = tools.compare_pairs(kept, kept_dense, names, Path(args.out))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "generate_summary.json").write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
