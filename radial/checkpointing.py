"""Selective activation checkpointing: recompute each block in backward except its attention, whose outputs are kept.

Plain block checkpointing runs every attention forward twice (forward, then again in backward). Attention is the
costliest op of a long-video block while its outputs are small (out [B, S, H, D] and an fp32 LSE), so saving them
and recomputing the rest (projections, norms, MLP) removes a third of the attention work at little memory cost.
Built on PyTorch's selective checkpoint contexts; plug into diffusers with
`transformer.enable_gradient_checkpointing(gradient_checkpointing_func=attention_saving_checkpoint)`.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts


@functools.cache
def saved_ops() -> frozenset:
    """Attention ops whose outputs are saved: our Triton and flash-attn-4 forwards and torch's SDPA kernels."""
    import radial.kernels.fa4  # noqa: F401 - registers torch.ops.radial.fa4_attn_fwd
    import radial.kernels.triton  # noqa: F401 - registers torch.ops.radial.sparse_attn_fwd

    aten = torch.ops.aten
    names = (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    )
    ops = {getattr(aten, n).default for n in names if hasattr(aten, n)}
    ops.add(torch.ops.radial.sparse_attn_fwd.default)
    ops.add(torch.ops.radial.fa4_attn_fwd.default)
    return frozenset(ops)


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def attention_saving_checkpoint(function, *args, **kwargs):
    """`torch.utils.checkpoint.checkpoint` (non-reentrant) that keeps attention outputs instead of recomputing them."""
    context = functools.partial(create_selective_checkpoint_contexts, _policy)
    return checkpoint(function, *args, use_reentrant=False, context_fn=context, **kwargs)
