"""`radial_attention`: one entry point over every backend, with the checks that make a wrong call fail loudly."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from radial.frame_decay import FrameDecay
from radial.kernels import registry  # importing the package registers every backend
from radial.kernels.call import AttentionCall
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


def get_backend(name: str) -> Callable[[AttentionCall], torch.Tensor]:
    """The attention function of a backend, AttentionCall -> out [B, S, H, D]."""
    return registry.get(name).function


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
    if decay is not None and not decay.applies(plan.num_frames):
        decay = None
    call = AttentionCall(query, key, value, plan, key_padding_mask, decay)
    name = resolve_backend(backend, query.device, plan.block_size)
    if decay is not None:
        if name == "dense":
            dense = _dense_plan(plan.num_frames, plan.tokens_per_frame, plan.text_tokens, plan.block_size, plan.device)
            call = call.replace(plan=dense)
        name = decay_backend(name, query.device)
    return get_backend(name)(call)


def decay_backend(name: str, device: torch.device) -> str:
    """The backend that runs attention with an extrapolation decay: one that takes a score bias (`reference`,
    `flex`) as asked; any other falls back to flex on CUDA, reference elsewhere, logged once."""
    return registry.with_score_bias(name, device)


@functools.lru_cache(maxsize=16)
def _dense_plan(frames: int, tokens_per_frame: int, text: int, block_size: int, device: torch.device) -> RadialPlan:
    return dense_plan(frames, tokens_per_frame, text_tokens=text, block_size=block_size, device=device)
