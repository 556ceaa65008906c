"""`python -m radial.lora info FILE`: what a LoRA file says about itself, and the matching ComfyUI radial settings.

Prints the base (family, source, variant, config hash, weight fingerprint), rank and alpha, targets, the attention
settings it was trained with, the training layout, and the inputs that run the same mask at inference in ComfyUI:
ComfyUI-RadialAttn's PatchRadialAttn node and ComfyUI-WanVideoWrapper's WanVideoSetRadialAttention node (both
Wan models only; blocks of 64 or 128 tokens; the official mask, which is ours with default options).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radial.attention_settings import recorded_settings
from radial.families import FAMILIES

#: the block sizes the ComfyUI nodes offer
COMFY_BLOCK_SIZES = (64, 128)


def comfy_settings(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ComfyUI nodes' inputs that match the LoRA's training attention (empty for other families)."""
    base, radial = info.get("base_model") or {}, recorded_settings(info)
    if base.get("family") not in FAMILIES or not FAMILIES[base["family"]].comfy_radial_nodes or not radial:
        return {}
    decay, dense = radial.get("decay_factor", 1.0), radial.get("dense_layers", 0)
    block = radial.get("block_size", 128)
    block = block if block in COMFY_BLOCK_SIZES else 128
    return {
        "ComfyUI-RadialAttn PatchRadialAttn": {
            "decay_factor": decay,
            "dense_block": dense,
            "dense_timestep": 0,
            "last_dense_timestep": 0,
            "block_size": block,
        },
        "WanVideoWrapper WanVideoSetRadialAttention": {
            "decay_factor": decay,
            "dense_blocks": dense,
            "dense_timesteps": 0,
            "block_size": block,
        },
    }


def _notes(info: dict[str, Any]) -> list[str]:
    """Where the ComfyUI nodes cannot run what the LoRA was trained with."""
    radial = recorded_settings(info)
    notes = []
    if radial.get("block_size", 128) not in COMFY_BLOCK_SIZES:
        notes.append(f"trained with {radial['block_size']}-token blocks; the nodes offer 64 or 128")
    if radial.get("decay_adjacent"):
        notes.append("trained with decay_adjacent (band at frame distance 1), which the nodes' mask does not have")
    if radial.get("sink") is False:
        notes.append("trained without the attention sink; the nodes keep key frame 0 dense (Wan)")
    return notes


def _text(value: Any) -> str:
    if value is None:
        return "family default"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def describe(path: str | Path) -> str:
    """The report `python -m radial.lora info` prints for a LoRA file or folder."""
    from radial.generation.loras import LORA_WEIGHT_NAME, check_lora_file

    file = Path(path)
    if file.is_dir():  # a LoRA folder, or a run / checkpoint folder holding lora/
        inside = [f for f in (file / LORA_WEIGHT_NAME, file / "lora" / LORA_WEIGHT_NAME) if f.is_file()]
        file = inside[0] if inside else file / LORA_WEIGHT_NAME
    if not file.is_file():
        from radial.errors import MissingPathError

        raise MissingPathError(
            f"{path}: no such LoRA file (a .safetensors file or a folder holding {LORA_WEIGHT_NAME})"
        )
    info = check_lora_file(file, str(path))
    if not info:
        return f"file:       {file}\nno radial_lora header: not written by this trainer (base, variant and settings unknown)"
    base, radial, training = info.get("base_model") or {}, recorded_settings(info), info.get("training") or {}
    kinds = {"tiny": "tiny random-init (its base_transformer/ beside the run)", "full": "full-size, random weights"}
    source = base.get("path") or kinds.get(base.get("source"), base.get("source", "?"))
    lines = [
        f"file:       {file}",
        f"base:       {base.get('family', '?')} {base.get('variant', '?')}, {source}"
        + (f", expert {base['expert']}" if base.get("expert") else ""),
        f"identity:   config {base.get('config_hash', 'not recorded')}, weights {base.get('weights', 'not recorded')}",
        f"rank:       {info.get('rank', '?')} (alpha {info.get('alpha', '?')})",
        f"targets:    {info.get('target_modules', '?')}",
        "attention:  "
        + ", ".join(f"{k} {_text(radial[k])}" for k in ("backend", "decay_factor", "dense_layers", "block_size", "sink", "decay_adjacent") if k in radial),
        f"trained:    {training.get('steps', '?')} steps at {training.get('latent_frames', '?')} latent frames"
        + (f" ({training['frames']} frames)" if training.get("frames") else "")
        + f", {training.get('latent_height', '?')}x{training.get('latent_width', '?')} latents",
    ]  # fmt: skip
    settings = comfy_settings(info)
    if not settings:
        lines.append(
            f"ComfyUI:    the radial-attention nodes run Wan models only; this LoRA is for {base.get('family')}"
        )
    for node, values in settings.items():
        lines.append(f"{node}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    lines += [f"note:       {n}" for n in _notes(info) if settings]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m radial.lora info FILE [FILE ...]`."""
    from radial.errors import cli_errors

    p = argparse.ArgumentParser(prog="python -m radial.lora", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a LoRA's base, variant, rank, targets, attention and ComfyUI settings")
    info.add_argument(
        "files", nargs="+", help="LoRA .safetensors files, or folders holding one (a run's or checkpoint's: in lora/)"
    )
    args = p.parse_args(argv)
    with cli_errors():
        print("\n\n".join(describe(f) for f in args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
