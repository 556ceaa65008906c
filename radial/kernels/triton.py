"""`triton` backend: the block-sparse flash attention kernels wrapped as torch.library custom ops with autograd.

The custom ops (radial::sparse_attn_fwd / radial::sparse_attn_bwd) make the kernels opaque to torch.compile, which
traces them through their fake (meta) implementations and differentiates them through `register_autograd`.
"""

from __future__ import annotations

import weakref

import torch

from radial.kernels.call import AttentionCall
from radial.kernels.custom_ops import fake_grads, fake_out_lse, register_autograd
from radial.kernels.registry import Backend, needs_cuda, register
from radial.plan import RadialPlan


def _kernel_inputs(key_padding_mask: torch.Tensor | None, *tensors: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """The [B, S, H, D] tensors made contiguous, then the key padding as the kernels take it (the first padded key of
    each batch, the mask as bytes; None, None without padding). The kernels import triton: on first use, so that the
    registry lists this backend where triton is missing."""
    from radial.kernels.triton_common import key_mask_bytes, pad_starts

    tensors = tuple(t if t.is_contiguous() else t.contiguous() for t in tensors)
    return (*tensors, pad_starts(key_padding_mask, tensors[0].shape[1]), key_mask_bytes(key_padding_mask))


@torch.library.custom_op("radial::sparse_attn_fwd", mutates_args=())
def sparse_attn_fwd(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_counts: torch.Tensor,
    q_indices: torch.Tensor,
    q_counts: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, S, H, D], lse2 fp32 [B, H, num_blocks * block_size]) of block-sparse attention.

    q_indices/q_counts (the transposed lists) are unused here; they are inputs so that backward can reach them.
    """
    q, k, v, pad_start, key_mask = _kernel_inputs(key_padding_mask, query, key, value)
    from radial.kernels.triton_fwd import attention_forward

    return attention_forward(q, k, v, kv_indices, kv_counts, pad_start, key_mask, block_size, scale)


@sparse_attn_fwd.register_fake
def _(query, key, value, kv_indices, kv_counts, q_indices, q_counts, key_padding_mask, block_size, scale):
    return fake_out_lse(query, kv_counts.shape[0] * block_size)


@torch.library.custom_op("radial::sparse_attn_bwd", mutates_args=())
def sparse_attn_bwd(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_counts: torch.Tensor,
    q_indices: torch.Tensor,
    q_counts: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `sparse_attn_fwd`."""
    do, q, k, v, o, pad_start, key_mask = _kernel_inputs(key_padding_mask, grad_out, query, key, value, out)
    from radial.kernels.triton_bwd import attention_backward

    return attention_backward(
        do, q, k, v, o, lse, kv_indices, kv_counts, q_indices, q_counts, pad_start, key_mask, block_size, scale
    )


@sparse_attn_bwd.register_fake
def _(grad_out, query, key, value, *rest):
    return fake_grads(query, key, value)


register_autograd(sparse_attn_fwd, sparse_attn_bwd, slice(None))  # saves every list and the padding mask


# Plan index tensors moved to another device, once per (plan, device).
_device_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plan_tensors(plan: RadialPlan, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(kv_indices, kv_counts, q_indices, q_counts) of the plan on `device`, cached."""
    tensors = (plan.kv_indices, plan.kv_counts, plan.q_indices, plan.q_counts)
    if plan.device == device:
        return tensors
    per_plan = _device_copies.setdefault(plan, {})
    key = str(device)
    if key not in per_plan:
        per_plan[key] = tuple(t.to(device).contiguous() for t in tensors)
    return per_plan[key]


def triton_attention(call: AttentionCall) -> torch.Tensor:
    """Block-sparse attention [B, S, H, D] under the plan, forward and backward in Triton."""
    from radial.kernels.triton_common import check_tensors

    query, plan, key_padding_mask = call.query, call.plan, call.key_padding_mask
    check_tensors(query, plan.block_size)
    kv_indices, kv_counts, q_indices, q_counts = plan_tensors(plan, query.device)
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.to(device=query.device, dtype=torch.bool)
    out, _ = sparse_attn_fwd(
        query, call.key, call.value, kv_indices, kv_counts, q_indices, q_counts, key_padding_mask, plan.block_size,
        call.softmax_scale,
    )  # fmt: skip
    return out


BACKEND = register(
    Backend(
        name="triton",
        function=triton_attention,
        deterministic=True,
        description="our block-sparse kernels, forward and backward",
        auto=True,
        auto_reason=needs_cuda,
    )
)
