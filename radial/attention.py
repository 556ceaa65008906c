"""`radial_attention`: one entry point over every backend, with the checks that make a wrong call fail loudly."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from radial.plan import RadialPlan


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
) -> torch.Tensor:
    """Radial attention over [B, S, H, D] tensors (S = video tokens, then text); key_padding_mask True = attend."""
    _check_inputs(query, key, value, plan, key_padding_mask)
    name = resolve_backend(backend, query.device, plan.block_size)
    return get_backend(name)(query, key, value, plan, key_padding_mask)
