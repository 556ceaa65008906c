"""`radial_attention`: one entry point over every backend, with the checks that make a wrong call fail loudly."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from radial.frame_decay import FrameDecay
from radial.plan import RadialPlan, dense_plan


# Each backend is imported on first use (a function-level import, which torch.compile traces without a graph break),
# so that optional backends (triton, flashinfer) cost nothing until chosen.
def _reference(query, key, value, plan, key_padding_mask):
    from radial.kernels.reference import reference_attention

    return reference_attention(query, key, value, plan, key_padding_mask)


def _dense(query, key, value, plan, key_padding_mask):
    from radial.kernels.dense import dense_attention

    return dense_attention(query, key, value, plan, key_padding_mask)


def _triton(query, key, value, plan, key_padding_mask):
    from radial.kernels.triton import triton_attention

    return triton_attention(query, key, value, plan, key_padding_mask)


def _flex(query, key, value, plan, key_padding_mask):
    from radial.kernels.flex import flex_attention_backend

    return flex_attention_backend(query, key, value, plan, key_padding_mask)


def _fa4(query, key, value, plan, key_padding_mask):
    from radial.kernels.fa4 import fa4_attention

    return fa4_attention(query, key, value, plan, key_padding_mask)


def _flashinfer(query, key, value, plan, key_padding_mask):
    from radial.kernels.flashinfer import flashinfer_attention

    return flashinfer_attention(query, key, value, plan, key_padding_mask)


# name -> attention function (query, key, value, plan, key_padding_mask) -> out [B, S, H, D].
BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": _reference,
    "dense": _dense,
    "fa4": _fa4,
    "triton": _triton,
    "flex": _flex,
    "flashinfer": _flashinfer,
}


def resolve_backend(backend: str, device: torch.device, block_size: int = 128) -> str:
    """The backend that runs: `auto` is fa4 on CUDA 9.x with flash-attn-4 installed (128-token blocks, not in a
    deterministic run), triton elsewhere on CUDA, reference off CUDA; an explicit `fa4` that cannot run this block
    size or a deterministic run resolves to triton. The choice is logged once."""
    from radial.kernels import fa4

    device = torch.device(device)
    if backend == "auto":
        if device.type != "cuda":
            return "reference"
        why = fa4.auto_reason(device, block_size)
        if why is not None:
            fa4.log_once(f"attention backend auto -> triton: {why}")
            return "triton"
        fa4.log_once("attention backend auto -> fa4 (flash-attn-4 block-sparse)", logging.INFO)
        return "fa4"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    if backend == "fa4" and device.type == "cuda":
        why = fa4.unsupported_reason(block_size)
        if why is not None:
            fa4.log_once(f"attention backend fa4 -> triton: {why}")
            return "triton"
    return backend


def get_backend(name: str) -> Callable[..., torch.Tensor]:
    """The attention function of a backend, (q, k, v, plan, key_padding_mask) -> out."""
    return BACKENDS[name]


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
        from radial.kernels.flex import flex_attention_backend
        from radial.kernels.reference import reference_attention

        if name == "dense":
            plan = _dense_plan(plan.num_frames, plan.tokens_per_frame, plan.text_tokens, plan.block_size, plan.device)
        name = decay_backend(name, query.device)
        fn = reference_attention if name == "reference" else flex_attention_backend
        return fn(query, key, value, plan, key_padding_mask, decay=decay)
    return get_backend(name)(query, key, value, plan, key_padding_mask)


DECAY_BACKENDS = ("reference", "flex")


def decay_backend(name: str, device: torch.device) -> str:
    """The backend that runs attention with an extrapolation decay: `reference` and `flex` as asked; any other
    (fa4, triton, flashinfer and dense take no score bias) falls back to flex on CUDA, reference elsewhere, logged
    once."""
    if name in DECAY_BACKENDS:
        return name
    from radial.kernels import fa4

    fallback = "flex" if torch.device(device).type == "cuda" else "reference"
    fa4.log_once(f"attention backend {name} -> {fallback}: attention.extrapolation_decay needs a score bias")
    return fallback


@functools.lru_cache(maxsize=16)
def _dense_plan(frames: int, tokens_per_frame: int, text: int, block_size: int, device: torch.device) -> RadialPlan:
    return dense_plan(frames, tokens_per_frame, text_tokens=text, block_size=block_size, device=device)
