"""`AttentionCall`: one attention call as every registered backend receives it, checked once where it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from radial.frame_decay import FrameDecay
from radial.plan import RadialPlan


def softmax_scale(query: torch.Tensor, scale: float | None) -> float:
    """`scale` as a float, 1 / sqrt(head dim) where None."""
    return query.shape[-1] ** -0.5 if scale is None else float(scale)


@dataclass(frozen=True)
class AttentionCall:
    """Query, key and value [B, S, H, D] (S = video tokens, then text) under a plan; key_padding_mask [B, S] True =
    attend; `decay` an extrapolation decay that applies (None: none). The softmax scale is 1 / sqrt(D).

    Building one checks what every backend needs (one shape for q, k, v; the plan's sequence length; the
    padding mask's shape); each backend checks only its own limits (head dims, dtypes, block sizes, devices)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    plan: RadialPlan
    key_padding_mask: torch.Tensor | None = None
    decay: FrameDecay | None = None

    def __post_init__(self) -> None:
        query, key, value = self.query, self.key, self.value
        if query.dim() != 4 or key.shape != query.shape or value.shape != query.shape:
            raise ValueError(
                f"query, key and value must share one [B, S, H, D] shape, got {tuple(query.shape)}, "
                f"{tuple(key.shape)}, {tuple(value.shape)}"
            )
        plan = self.plan
        if query.shape[1] != plan.seq_len:
            raise ValueError(
                f"sequence length {query.shape[1]} does not match the plan ({plan.num_frames} frames x "
                f"{plan.tokens_per_frame} tokens + {plan.text_tokens} text = {plan.seq_len})"
            )
        mask = self.key_padding_mask
        if mask is not None and tuple(mask.shape) != (query.shape[0], query.shape[1]):
            raise ValueError(f"key_padding_mask must be [B, S] = {tuple(query.shape[:2])}, got {tuple(mask.shape)}")

    @property
    def softmax_scale(self) -> float:
        """1 / sqrt(head dim)."""
        return softmax_scale(self.query, None)

    def replace(self, **changes) -> AttentionCall:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)
