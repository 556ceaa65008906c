"""What the kernel backends wrapped as torch.library custom ops (fa4, triton) share: the check of the query against
the plan, the default softmax scale, and the fake (meta) outputs that torch.compile traces the ops through."""

from __future__ import annotations

import torch

from radial.plan import RadialPlan


def check_sequence(query: torch.Tensor, plan: RadialPlan) -> None:
    """ValueError unless the query [B, S, H, D] has the plan's sequence length."""
    if query.shape[1] != plan.seq_len:
        raise ValueError(f"sequence length {query.shape[1]} does not match the plan's seq_len={plan.seq_len}")


def softmax_scale(query: torch.Tensor, scale: float | None) -> float:
    """`scale` as a float, 1 / sqrt(head dim) where None."""
    return query.shape[-1] ** -0.5 if scale is None else float(scale)


def fake_out_lse(query: torch.Tensor, lse_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A forward op's fake outputs: out like the query (contiguous) and an fp32 log-sum-exp [B, H, lse_len]."""
    b, _, h, _ = query.shape
    lse = query.new_empty((b, h, lse_len), dtype=torch.float32)
    return torch.empty_like(query, memory_format=torch.contiguous_format), lse


def fake_grads(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A backward op's fake outputs: one contiguous gradient like each input."""
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in inputs)
