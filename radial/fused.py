"""Fused projections: several linear layers of one input (q, k, v) as one matmul, their PEFT LoRAs as one more.

The base weights are concatenated ([Wq; Wk; Wv] x, one read of the activations instead of three) and so are the
LoRA A matrices ([Aq; Ak; Av] x); each B then takes its own slice of the rank dimension (the block-diagonal B, as
three small matmuls). The result equals the separate PEFT layers up to float rounding, and gradients reach the
same parameters. Layers this cannot fuse exactly (LoRA dropout, DoRA and other variants, merged or disabled or
several adapters, layerwise-cast base weights, a base without Linear weights) run unfused, layer by layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _lora_parts(layer: nn.Module) -> tuple[nn.Linear, tuple | None] | None:
    """(base Linear, (A, B, scaling) or None without LoRA), or None when the layer cannot be fused exactly."""
    base = getattr(layer, "base_layer", None)
    if base is None:
        return (layer, None) if type(layer) is nn.Linear and not _has_hooks(layer) else None
    if type(base) is not nn.Linear or _has_hooks(base) or layer.merged or layer.disable_adapters:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) > 1:
        return None
    if not active:
        return base, None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or not isinstance(layer.lora_dropout[name], nn.Identity):
        return None
    if getattr(layer, "lora_bias", {}).get(name, False) or _has_hooks(layer.lora_A[name], layer.lora_B[name]):
        return None
    return base, (layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name])


def _has_hooks(*modules: nn.Module) -> bool:
    # What a hook does at call time the fused matmul would skip: diffusers' layerwise casting (model.storage_dtype),
    # DeepSpeed ZeRO-3 gathering the weights, Accelerate's offloading.
    return any(
        m._forward_pre_hooks or m._forward_hooks or getattr(m, "_diffusers_hook", None) or hasattr(m, "_hf_hook")
        for m in modules
    )


def fused_linears(layers: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """`[layer(x) for layer in layers]` with one matmul for the base weights and one for the stacked LoRA A."""
    parts = [_lora_parts(layer) for layer in layers]
    biases = [p[0].bias for p in parts if p is not None]
    if any(p is None for p in parts) or (any(b is None for b in biases) and any(b is not None for b in biases)):
        return [layer(x) for layer in layers]
    bases = [p[0] for p in parts]
    weight = torch.cat([b.weight for b in bases])
    bias = torch.cat(biases) if biases[0] is not None else None
    outs = list(F.linear(x, weight, bias).split([b.out_features for b in bases], dim=-1))
    loras = [(i, p[1]) for i, p in enumerate(parts) if p[1] is not None]
    if not loras:
        return [out.contiguous() for out in outs]
    a = torch.cat([lora[0] for _, lora in loras])
    hidden = F.linear(x.to(a.dtype), a).split([lora[0].shape[0] for _, lora in loras], dim=-1)
    for (i, (_, b, scaling)), h in zip(loras, hidden, strict=True):
        outs[i] = (outs[i] + F.linear(h, b) * scaling).to(outs[i].dtype)
    return [out.contiguous() for out in outs]  # the projections without LoRA are column slices: kernels want rows
