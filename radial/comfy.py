"""LoRA export in ComfyUI / original-checkpoint keys, including fused projections.

Original checkpoints fuse projections that diffusers splits (HunyuanVideo's img_attn_qkv and single-block linear1,
Mochi's qkv_x). A fused LoRA stacks the parts' down matrices (rank = sum of ranks) and places each part's up matrix
in its own rows and columns, so up @ down equals the parts' updates side by side, exactly. The LoRA scale
(alpha / rank) is folded into the up matrices and no alpha is written, which both ComfyUI and diffusers' loaders of
original-format LoRAs read as scale 1. Keys: `diffusion_model.<original module>.lora_A.weight` / `.lora_B.weight`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

PREFIX = "diffusion_model."


@dataclass(frozen=True)
class ComfyRule:
    """Map diffusers modules matching `pattern` to the original module `target` (regex groups allowed).

    For a fused target, `slot` is this part's position and `parts` names every part's diffusers module (templates
    expanded with the same match), whose output sizes give the row layout of the fused weight.
    """

    pattern: str
    target: str
    slot: int | None = None
    parts: tuple[str, ...] = ()


def fused(prefix: str, target: str, parts: Sequence[str]) -> list[ComfyRule]:
    """Rules for one fused original module. `prefix` and `target` hold `{i}` for the block index, e.g.
    fused("transformer_blocks.{i}.attn.", "double_blocks.{i}.img_attn_qkv", ["to_q", "to_k", "to_v"])."""
    pattern = re.escape(prefix).replace(re.escape("{i}"), r"(\d+)")
    templates = tuple(prefix.replace("{i}", r"\1") + p for p in parts)
    return [
        ComfyRule(pattern + re.escape(p), target.replace("{i}", r"\1"), slot=k, parts=templates)
        for k, p in enumerate(parts)
    ]


def _module_of(key: str) -> tuple[str, str]:
    for kind in ("lora_A", "lora_B"):
        marker = f".{kind}."
        if marker in key:
            return key.split(marker)[0], kind
    raise ValueError(f"not a PEFT LoRA key: {key!r}")


def to_comfy(
    lora_sd: Mapping[str, torch.Tensor],
    rules: Sequence[ComfyRule],
    transformer: torch.nn.Module,
    scale: float,
) -> dict[str, torch.Tensor]:
    """Convert PEFT LoRA weights (diffusers module names) to original-format keys; unknown modules are an error."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in lora_sd.items():
        module, kind = _module_of(key)
        parts.setdefault(module, {})[kind] = tensor
    groups: dict[str, list[tuple[int, torch.Tensor, torch.Tensor, list[str]]]] = {}
    out: dict[str, torch.Tensor] = {}
    for module, ab in parts.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise ValueError(f"LoRA of {module} lacks {sorted({'lora_A', 'lora_B'} - set(ab))}")
        rule, match = _match(module, rules)
        target = match.expand(rule.target)
        down, up = ab["lora_A"].float(), ab["lora_B"].float() * scale
        if rule.slot is None:
            out[f"{PREFIX}{target}.lora_A.weight"] = down
            out[f"{PREFIX}{target}.lora_B.weight"] = up
        else:
            names = [match.expand(t) for t in rule.parts]
            groups.setdefault(target, []).append((rule.slot, down, up, names))
    for target, members in groups.items():
        members.sort(key=lambda m: m[0])
        sizes = [transformer.get_submodule(name).out_features for name in members[0][3]]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        down = torch.cat([m[1] for m in members], dim=0)
        up = torch.zeros(sum(sizes), down.shape[0], dtype=down.dtype)
        col = 0
        for slot, d, u, _ in members:
            if u.shape[0] != sizes[slot]:
                raise ValueError(f"{target} part {slot}: {u.shape[0]} outputs, expected {sizes[slot]}")
            up[offsets[slot] : offsets[slot] + u.shape[0], col : col + d.shape[0]] = u
            col += d.shape[0]
        out[f"{PREFIX}{target}.lora_A.weight"] = down
        out[f"{PREFIX}{target}.lora_B.weight"] = up
    return out


def _match(module: str, rules: Sequence[ComfyRule]) -> tuple[ComfyRule, re.Match]:
    for rule in rules:
        m = re.fullmatch(rule.pattern, module)
        if m:
            return rule, m
    raise ValueError(f"no ComfyUI / original key is known for the LoRA module {module!r}")


def fused_delta(comfy_sd: Mapping[str, torch.Tensor], target: str) -> torch.Tensor:
    """The weight update up @ down of one original-format module (for checks)."""
    return comfy_sd[f"{PREFIX}{target}.lora_B.weight"] @ comfy_sd[f"{PREFIX}{target}.lora_A.weight"]
