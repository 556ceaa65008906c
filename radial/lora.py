"""PEFT LoRA on a diffusers transformer: attach, state dicts, and export that diffusers pipelines load.

LoRA layers are PEFT's (through diffusers' `add_adapter`); export goes through the family pipeline's own
`save_lora_weights`, so the keys are exactly what `Pipeline.load_lora_weights(dir)` expects. Our training facts
(base model, rank, radial settings, frames, resolution) are added to the safetensors header.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from radial.errors import LoraFileError
from radial.files import fsync_dir, fsync_file, share_like_umask

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "radial_lora"


def attach_lora(
    transformer: torch.nn.Module,
    *,
    rank: int,
    alpha: float,
    target_modules: str | Sequence[str],
    dropout: float = 0.0,
    init: str | bool = True,
    exclude_modules: Sequence[str] = (),
) -> LoraConfig:
    """Freeze the transformer and add a trainable PEFT LoRA adapter; returns its config.

    `target_modules` is PEFT's: a regex (full match on module names) or a list of name suffixes; `exclude_modules`
    (full module names) get no adapter even where the targets match them.
    """
    if rank < 1:
        raise ValueError(f"lora.rank must be >= 1, got {rank}")
    if not 0 <= dropout < 1:
        raise ValueError(f"lora.dropout must be in [0, 1), got {dropout}")
    if not target_modules:
        raise ValueError("lora.target_modules is empty: name at least one module (e.g. to_q)")
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    if exclude_modules:
        targets = _excluding(targets, exclude_modules)
    transformer.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, init_lora_weights=init)
    transformer.add_adapter(config)
    if not any(p.requires_grad for p in transformer.parameters()):
        raise ValueError(
            f"lora.target_modules {list(target_modules)} matched no module of {type(transformer).__name__}"
        )
    return config


def lora_target_names(
    transformer: torch.nn.Module, target_modules: str | Sequence[str], exclude_modules: Sequence[str] = ()
) -> list[str]:
    """The linear layers of `transformer` that `attach_lora` with these targets adapts, by PEFT's own matching;
    nothing is attached (a meta-device model will do)."""
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    if exclude_modules:
        targets = _excluding(targets, exclude_modules)
    config = LoraConfig(target_modules=targets)
    return [
        name
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and check_target_module_exists(config, name)
    ]


def _excluding(targets: str | list[str], exclude: Sequence[str]) -> str:
    """One regex (PEFT full-matches it) for the targets less the excluded names. Not PEFT's `exclude_modules`: the
    exported adapter metadata keeps the pattern, and diffusers' loader, which targets the file's modules, warns
    about a pattern that selects more than them (or about an exclusion that removed nothing)."""
    if not isinstance(targets, str):  # PEFT's list form: exact names or dot-separated suffixes
        targets = r"(?:.*\.)?(?:" + "|".join(map(re.escape, targets)) + ")"
    return "(?!(?:" + "|".join(map(re.escape, exclude)) + ")$)(?:" + targets + ")"


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights with PEFT keys (`blocks.0.attn1.to_q.lora_A.weight`), detached, contiguous."""
    sd = get_peft_model_state_dict(transformer)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def load_lora_state_dict(
    transformer: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path | None = None
) -> None:
    """Load adapter weights saved by `lora_state_dict`; keys this transformer's adapter lacks are a LoraFileError
    naming `source` (the file)."""
    result = set_peft_model_state_dict(transformer, dict(state_dict))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        where = f"{source}: " if source is not None else ""
        raise LoraFileError(
            f"{where}LoRA weights do not fit this transformer's adapter: {len(unexpected)} unexpected keys "
            f"({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''}); it was written for other "
            "LoRA targets (lora.projections, lora.text, lora.target_modules) or another model"
        )


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    share_like_umask(path)  # safetensors writes 0600; a LoRA is meant to be shared


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Our training metadata from a LoRA safetensors header ({} if the file has none)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def add_metadata(path: str | Path, info: Mapping[str, Any]) -> None:
    """Rewrite a safetensors file with `info` (JSON) added to its header under `radial_lora`."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    meta[METADATA_KEY] = json.dumps(dict(info), sort_keys=True, default=str)
    _atomic_save(tensors, path, meta)


def lora_saver(pipeline_class: type) -> type:
    """The pipeline class's LoRA saver; pipelines without a LoRA mixin (HunyuanVideo-1.5's in diffusers 0.42) get the
    transformer-only one, whose file ("transformer."-prefixed PEFT keys + adapter metadata) their transformer loads
    with `load_lora_adapter(..., prefix="transformer")` (radial.generation.load_loras does)."""
    if hasattr(pipeline_class, "save_lora_weights"):
        return pipeline_class
    from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin

    return HunyuanVideoLoraLoaderMixin


def adapter_metadata(config: LoraConfig) -> dict[str, Any]:
    """The adapter settings diffusers stores beside the weights (and reads back to rebuild the LoRA config)."""
    targets = config.target_modules
    return {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "target_modules": targets if isinstance(targets, str) else sorted(targets),
        "lora_dropout": config.lora_dropout,
    }


def write_diffusers_lora(
    layers: Mapping[str, torch.Tensor],
    pipeline_class: type,
    out_dir: str | Path,
    adapter_meta: Mapping[str, Any],
    info: Mapping[str, Any],
) -> Path:
    """Write PEFT-keyed LoRA weights as `pytorch_lora_weights.safetensors` with the pipeline's own saver (keys
    `transformer.*`, so `load_lora_weights` accepts it), our `info` in the header."""
    out_dir = Path(out_dir)
    layers = {k: v.detach().to("cpu").contiguous() for k, v in layers.items()}
    lora_saver(pipeline_class).save_lora_weights(
        out_dir, transformer_lora_layers=layers, transformer_lora_adapter_metadata=dict(adapter_meta)
    )
    path = out_dir / DIFFUSERS_WEIGHT_NAME
    add_metadata(path, info)
    return path


def export_diffusers(
    transformer: torch.nn.Module,
    pipeline_class: type,
    out_dir: str | Path,
    config: LoraConfig,
    info: Mapping[str, Any],
) -> Path:
    """Write the transformer's adapter as `pytorch_lora_weights.safetensors` (write_diffusers_lora)."""
    return write_diffusers_lora(lora_state_dict(transformer), pipeline_class, out_dir, adapter_metadata(config), info)


def export_comfy(state_dict: Mapping[str, torch.Tensor], out_path: str | Path, info: Mapping[str, Any]) -> Path:
    """Write an already key-converted ComfyUI / original-format LoRA state dict with our metadata."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    _atomic_save(tensors, out_path, {"format": "pt", METADATA_KEY: json.dumps(dict(info), sort_keys=True, default=str)})
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m radial.lora info FILE`: a LoRA's base, settings and matching ComfyUI inputs (radial.lora_info)."""
    from radial.lora_info import main as info

    return info(argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
