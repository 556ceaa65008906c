"""Tiny random pipelines and the radial-vs-dense comparison behind `python -m train.generate --tiny / --compare-dense`.

This lives in train/ because tiny components come from data/ (radial/ depends on nothing of ours).
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from radial.generation.assemble import assemble_pipeline, pipeline_name
from radial.generation.pipeline import apply_text_settings, check_local_folder

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
    image: bool = False,
):
    """A diffusers pipeline of `family` from tiny random-init components (tests, the CPU demo).

    `transformer`: a module, a saved folder (e.g. outputs/<run>/base_transformer), or None for
    `adapter.build_tiny(seed=seed)` (what the trainer's tiny model is). Encoders use `seed` as data.prepare does.
    `image`: the image-to-video pipeline, WanImageToVideoPipeline (wan: the tiny "i2v" transformer and CLIP encoder;
    wan22: the tiny "i2v" experts, no CLIP; wan22_ti2v: expand_timesteps, the clean first latent frame) or
    HunyuanVideo15ImageToVideoPipeline (hunyuan15: the tiny "i2v" transformer and SigLIP encoder).
    Families with experts (wan22, Wan2.2 A14B) get both, switched at the variant's boundary_ratio; both start from
    `transformer` (a tiny run trains either expert from that same base), each its own copy so a LoRA goes into one.
    """
    import diffusers

    from data.encoders import IMAGE_FAMILIES, load_encoders
    from radial.models import get_adapter

    adapter = get_adapter(family)
    if image and family not in IMAGE_FAMILIES:
        raise ValueError(
            f"--image: tiny image-to-video pipelines exist for {', '.join(IMAGE_FAMILIES)}, not {family!r}"
        )
    variant = "i2v" if image and "i2v" in adapter.tiny_variants else None
    if transformer is None:
        transformer = adapter.build_tiny(seed=seed, dtype=dtype, variant=variant)
    elif not isinstance(transformer, torch.nn.Module):
        folder = check_local_folder(transformer, "--transformer", "a local diffusers transformer folder")
        transformer = adapter.transformer_class.from_pretrained(str(folder), torch_dtype=dtype)
    channels = transformer.config.in_channels
    if image and adapter.image_input(transformer.config) == "none":
        raise ValueError(
            f"--image: the {family} transformer is text-to-video (in_channels {channels}); image-to-video needs the "
            "mask and first-frame channels (a tiny run with model.variant=i2v)"
        )
    enc = load_encoders(family, tiny=True, seed=seed, image=image)
    components = {name: getattr(enc, name) for name in enc.components}
    if not text_encoder:
        components = {k: (None if k.startswith(("text_encoder", "tokenizer")) else v) for k, v in components.items()}
    extra: dict = {}
    if adapter.experts:
        extra["transformer_2"] = copy.deepcopy(transformer)
        extra["boundary_ratio"] = adapter.boundary_ratios[variant or adapter.default_variant]
    pipe = assemble_pipeline(
        adapter,
        pipeline_name(adapter, image),
        transformer,
        diffusers.FlowMatchEulerDiscreteScheduler(shift=shift),
        {**components, **extra},
        guidance_scale=TINY_DEFAULTS["guidance_scale"],  # train.generate sets it per clip
        family_config=image,  # the tiny text-to-video pipelines keep their defaults
    )
    pipe.to(device)
    pipe._radial_text_settings = enc.text_settings()
    apply_text_settings(pipe, pipe._radial_text_settings)
    fixed = adapter.fixed_text_len(transformer.config)
    if image and fixed:  # diffusers splits Wan2.1 I2V states at 512 text tokens
        pipe._radial_text_settings["max_sequence_length"] = fixed
    return pipe


def save_tiny_pipeline(
    out: str | Path, family: str = "wan", *, seed: int = 0, transformer=None, image: bool = False
) -> Path:
    """Write a tiny pipeline as a diffusers folder (with the tiny encoders' text settings beside it); `image`: the
    image-to-video pipeline, as build_tiny_pipeline."""
    from radial.generation.pipeline import TEXT_SETTINGS_FILE

    out = Path(out)
    pipe = build_tiny_pipeline(family, seed=seed, transformer=transformer, image=image)
    pipe.save_pretrained(str(out))
    if pipe._radial_text_settings:
        (out / TEXT_SETTINGS_FILE).write_text(json.dumps(pipe._radial_text_settings, indent=1))
    return out


def tiny_defaults(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Small sizes for --tiny unless given (the tiny models have 16 tokens per frame at 64x64: block 16)."""
    from radial.families import geometry

    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    if args.frames is None and args.length is None:
        g = geometry(args.tiny)
        args.frames = TINY_DEFAULTS["frames"] if g.longest_frames(TINY_DEFAULTS["frames"]) == 17 else g.base_frames
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
