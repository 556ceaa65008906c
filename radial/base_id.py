"""What base a LoRA belongs to: its task variant, a hash of its transformer config and a cheap weight fingerprint.

Written into the LoRA header at training (`base_model`) and compared at generation: a variant that does not fit is
refused, another config or other weights give a warning (e.g. the demo's LoRA onto a fresh random base when
`--transformer` was forgotten). The fingerprint hashes a few sampled tensors, so it costs milliseconds on a 14B
model; it is the same whether the base is loaded in fp32, bf16 or fp16.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

#: the adapter's image_input (radial.models) -> the task variant recorded in the header
VARIANTS = {"none": "T2V", "required": "I2V", "optional": "TI2V"}
FINGERPRINT_TENSORS = 6
FINGERPRINT_VALUES = 4096


def task_variant(adapter, config: Mapping[str, Any]) -> str:
    """T2V, I2V or TI2V for a transformer `config` of the adapter's family."""
    return VARIANTS[adapter.image_input(config)]


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A transformer config as JSON data (tuples as lists), without diffusers' bookkeeping keys (`_class_name`,
    `_name_or_path`, ...: a loaded model has them, a built one not): what from_config needs to rebuild its shape."""
    c = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return json.loads(json.dumps(c, default=list))


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (16 hex digits) of the transformer's plain_config."""
    return hashlib.sha256(json.dumps(plain_config(config), sort_keys=True).encode()).hexdigest()[:16]


def _base_name(name: str) -> str | None:
    """A frozen base weight's name as the plain model has it (PEFT moves it under `base_layer`); None for LoRA and
    attention weights (LoRA layers and the fused q/k/v of train.fuse_qkv rename those)."""
    if "lora_" in name or "attn" in name:
        return None
    return name.replace(".base_layer", "")


@torch.no_grad()
def weight_fingerprint(transformer: torch.nn.Module) -> str:
    """sha256 (16 hex digits) over the first values of a few evenly spaced non-attention weights, rounded to bf16."""
    params = {}
    for name, p in transformer.named_parameters():
        base = _base_name(name)
        if base is not None and p.numel() and p.device.type != "meta":
            params[base] = p
    names = sorted(params)
    if not names:
        return ""
    picked = [names[round(i * (len(names) - 1) / max(FINGERPRINT_TENSORS - 1, 1))] for i in range(FINGERPRINT_TENSORS)]
    h = hashlib.sha256()
    for name in dict.fromkeys(picked):
        values = params[name].detach().reshape(-1)[:FINGERPRINT_VALUES].to("cpu", torch.bfloat16).float()
        h.update(name.encode())
        h.update(values.numpy().tobytes())
    return h.hexdigest()[:16]


def base_identity(adapter, transformer: torch.nn.Module) -> dict[str, str]:
    """The header's record of a base: variant, config hash and weight fingerprint."""
    return {
        "variant": task_variant(adapter, transformer.config),
        "config_hash": config_hash(transformer.config),
        "weights": weight_fingerprint(transformer),
    }


def base_differences(recorded: Mapping[str, Any], actual: Mapping[str, str]) -> list[str]:
    """Which of the recorded config hash and weight fingerprint differ from the actual base ([] when all agree or
    the header records none)."""
    out = []
    if recorded.get("config_hash") and recorded["config_hash"] != actual.get("config_hash"):
        out.append("config")
    elif recorded.get("weights") and actual.get("weights") and recorded["weights"] != actual["weights"]:
        out.append("weights")
    return out
