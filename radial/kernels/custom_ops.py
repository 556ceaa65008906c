"""What the kernel backends wrapped as torch.library custom ops (fa4, triton) share: the fake (meta) outputs that
torch.compile traces the ops through, and the autograd formula that runs a backward op."""

from __future__ import annotations

import torch


def fake_out_lse(query: torch.Tensor, lse_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A forward op's fake outputs: out like the query (contiguous) and an fp32 log-sum-exp [B, H, lse_len]."""
    b, _, h, _ = query.shape
    lse = query.new_empty((b, h, lse_len), dtype=torch.float32)
    return torch.empty_like(query, memory_format=torch.contiguous_format), lse


def fake_grads(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A backward op's fake outputs: one contiguous gradient like each input."""
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in inputs)


def register_autograd(forward_op, backward_op, saved_lists: slice) -> None:
    """Differentiate `forward_op` (query, key, value, *lists, block_size, scale) -> (out, lse) by `backward_op`
    (grad_out, query, key, value, out, lse, *lists[saved_lists], block_size, scale) -> (dq, dk, dv)."""

    def setup_context(ctx, inputs, output):
        query, key, value, *lists, block_size, scale = inputs
        out, lse = output
        ctx.save_for_backward(query, key, value, out, lse, *lists[saved_lists])
        ctx.block_size, ctx.scale, ctx.num_lists = block_size, scale, len(lists)
        ctx.mark_non_differentiable(lse)

    def backward(ctx, grad_out, grad_lse):
        dq, dk, dv = backward_op(grad_out, *ctx.saved_tensors, ctx.block_size, ctx.scale)
        return (dq, dk, dv) + (None,) * (ctx.num_lists + 2)

    forward_op.register_autograd(backward, setup_context=setup_context)
