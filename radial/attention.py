"""`radial_attention`: one entry point over every backend, with the checks that make a wrong call fail loudly."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from radial.frame_decay import FrameDecay
from radial.kernels import registry  # importing the package registers every backend
from radial.plan import RadialPlan, dense_plan

BACKENDS = registry.backend_names()


def resolve_backend(
    backend: str, device: torch.device, block_size: int = 128, deterministic: bool | None = None
) -> str:
    """The backend that runs (`radial.kernels.registry.resolve`): `auto` is fa4 on CUDA 9.x with flash-attn-4
    installed (128-token blocks, not in a deterministic run), triton elsewhere on CUDA, reference off CUDA; an explicit
    backend that cannot run this device, block size or run (fa4: block 64, deterministic) runs its fallback (triton).
    `deterministic` None reads torch's flag. Every choice is logged once."""
    return registry.resolve(backend, device, block_size, deterministic)


def get_backend(name: str) -> Callable[..., torch.Tensor]:
    """The attention function of a backend, (q, k, v, plan, key_padding_mask) -> out."""
    return registry.get(name).function


def _check_inputs(query, key, value, plan: RadialPlan, key_padding_mask) -> None:
    if query.dim() != 4 or key.shape != query.shape or value.shape != query.shape:
        raise ValueError(
            f"query, key and value must share one [B, S, H, D] shape, got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[1] != plan.seq_len:
        raise ValueError(
            f"sequence length {query.shape[1]} does not match the plan ({plan.num_frames} frames x "
            f"{plan.tokens_per_frame} tokens + {plan.text_tokens} text = {plan.seq_len})"
        )
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (query.shape[0], query.shape[1]):
        raise ValueError(
            f"key_padding_mask must be [B, S] = {tuple(query.shape[:2])}, got {tuple(key_padding_mask.shape)}"
        )


def radial_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: RadialPlan,
    *,
    backend: str = "auto",
    key_padding_mask: torch.Tensor | None = None,
    decay: FrameDecay | None = None,
) -> torch.Tensor:
    """Radial attention over [B, S, H, D] tensors (S = video tokens, then text); key_padding_mask True = attend.

    `decay` (radial.frame_decay) down-weights keys past the training window when the clip is longer than it; only
    `reference` and `flex` take a score bias, so such calls run there (see `decay_backend`), the `dense` backend
    with a full mask."""
    _check_inputs(query, key, value, plan, key_padding_mask)
    name = resolve_backend(backend, query.device, plan.block_size)
    if decay is not None and decay.applies(plan.num_frames):
        if name == "dense":
            plan = _dense_plan(plan.num_frames, plan.tokens_per_frame, plan.text_tokens, plan.block_size, plan.device)
        name = decay_backend(name, query.device)
        return get_backend(name)(query, key, value, plan, key_padding_mask, decay=decay)
    return get_backend(name)(query, key, value, plan, key_padding_mask)


def decay_backend(name: str, device: torch.device) -> str:
    """The backend that runs attention with an extrapolation decay: one that takes a score bias (`reference`,
    `flex`) as asked; any other falls back to flex on CUDA, reference elsewhere, logged once."""
    return registry.with_score_bias(name, device)


@functools.lru_cache(maxsize=16)
def _dense_plan(frames: int, tokens_per_frame: int, text: int, block_size: int, device: torch.device) -> RadialPlan:
    return dense_plan(frames, tokens_per_frame, text_tokens=text, block_size=block_size, device=device)
