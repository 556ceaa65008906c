"""Selective activation checkpointing: recompute each block in backward except its attention, whose outputs are kept.

Plain block checkpointing runs every attention forward twice (forward, then again in backward). Attention is the
costliest op of a long-video block while its outputs are small (out [B, S, H, D] and an fp32 LSE), so saving them
and recomputing the rest (projections, norms, MLP) removes a third of the attention work at little memory cost.
Built on PyTorch's selective checkpoint contexts; plug into diffusers with
`transformer.enable_gradient_checkpointing(gradient_checkpointing_func=attention_saving_checkpoint)`, or with
`enable_checkpointing`, which also takes a recompute budget: only the last `count` blocks are checkpointed, the
others keep their activations (memory traded for the recomputed forward).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn
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


def plain_checkpoint(function, *args, **kwargs):
    """`torch.utils.checkpoint.checkpoint` (non-reentrant): the whole block recomputed in backward."""
    return checkpoint(function, *args, use_reentrant=False, **kwargs)


# A block attribute (read through radial's bound-block wrapper as well): False runs the block without checkpointing.
RECOMPUTE_ATTR = "_radial_recompute"


def _budgeted(checkpoint_fn: Callable, block, *args, **kwargs):
    if getattr(block, RECOMPUTE_ATTR, True):
        return checkpoint_fn(block, *args, **kwargs)
    return block(*args, **kwargs)


def enable_checkpointing(
    transformer: nn.Module, blocks: Sequence[nn.Module], *, save_attention: bool = True, count: int | None = None
) -> int:
    """Gradient checkpointing on a diffusers transformer, for the last `count` of its `blocks` (None: all); returns
    how many are checkpointed. save_attention: keep attention outputs (`attention_saving_checkpoint`)."""
    fn = attention_saving_checkpoint if save_attention else plain_checkpoint
    transformer.enable_gradient_checkpointing(functools.partial(_budgeted, fn))
    return set_checkpointed_blocks(blocks, len(blocks) if count is None else count)


def set_checkpointed_blocks(blocks: Sequence[nn.Module], count: int) -> int:
    """Checkpoint the last `count` blocks, run the first ones plainly (their activations kept); returns `count`.

    The last ones: the first blocks are the dense layers, whose attention costs most to recompute (plain
    checkpointing recomputes it)."""
    if not 0 <= count <= len(blocks):
        raise ValueError(f"checkpointed blocks must be in [0, {len(blocks)}], got {count}")
    for i, block in enumerate(blocks):
        setattr(block, RECOMPUTE_ATTR, i >= len(blocks) - count)
    return count


def checkpointed_blocks(blocks: Sequence[nn.Module]) -> list[int]:
    """Indices of the blocks that run under checkpointing."""
    return [i for i, b in enumerate(blocks) if getattr(b, RECOMPUTE_ATTR, True)]
