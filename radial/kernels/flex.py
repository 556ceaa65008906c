"""`flex` backend: PyTorch FlexAttention (forward and backward) on a BlockMask built from the plan.

Every kept block is a "full" block (no mask_mod work) except, with a key padding mask, the blocks that hold padded
keys: those are partial blocks whose mask_mod reads the padding. On CUDA the attention runs through
torch.compile(flex_attention) (the fused Triton kernels); elsewhere flex_attention runs eagerly (slow, for checks).
"""

from __future__ import annotations

import weakref

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from radial.kernels.call import AttentionCall
from radial.kernels.registry import Backend, needs_cuda, register
from radial.plan import RadialPlan

_compiled = None
_mask_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flex_fn():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def _split_full_partial(kv_indices, kv_counts, boundary):
    """Split each ascending list into its full prefix (blocks < boundary[b]) and partial suffix, per batch.

    kv_indices [nb, w], kv_counts [nb], boundary [B] -> (partial_counts, partial_idx, full_counts, full_idx), [B, 1, nb, (w)].
    """
    width = kv_indices.shape[1]
    slot = torch.arange(width, device=kv_indices.device)
    valid = slot[None, None, :] < kv_counts[None, :, None]
    partial = (kv_indices[None] >= boundary[:, None, None]) & valid
    full_counts = (valid & ~partial).sum(-1, dtype=torch.int32)
    partial_counts = partial.sum(-1, dtype=torch.int32)
    shifted = (slot[None, None, :] + full_counts[..., None]).clamp(max=width - 1)
    partial_idx = torch.gather(kv_indices[None].expand(boundary.shape[0], -1, -1), 2, shifted)
    full_idx = kv_indices[None].expand(boundary.shape[0], -1, -1)
    return (
        partial_counts[:, None].contiguous(),
        partial_idx[:, None].to(torch.int32).contiguous(),
        full_counts[:, None].contiguous(),
        full_idx[:, None].to(torch.int32).contiguous(),
    )


def block_mask_from_plan(
    plan: RadialPlan, device: torch.device, key_padding_mask: torch.Tensor | None = None
) -> BlockMask:
    """A FlexAttention BlockMask equal to the plan (plus per-batch key padding, if given)."""
    kv_counts = plan.kv_counts.to(device)
    # FlexAttention takes the index lists' width for the number of key blocks (it transposes them for backward).
    kv_indices = torch.nn.functional.pad(plan.kv_indices.to(device), (0, plan.num_blocks - plan.kv_indices.shape[1]))
    seq = plan.seq_len
    bs = plan.block_size
    # The mask_mod states the whole mask (eager flex_attention applies only it); the compiled kernels skip it on
    # full blocks, so it costs work only in the partial blocks that hold padded keys.
    blocks = plan.block_mask.to(device)
    if key_padding_mask is None:
        boundary = torch.full((1,), plan.num_blocks, device=device, dtype=torch.int32)

        def mask_mod(b, h, q_idx, kv_idx):
            return blocks[q_idx // bs, kv_idx // bs]

    else:
        keep = key_padding_mask.to(device=device, dtype=torch.bool)
        first_pad = torch.where(keep.all(1), seq, torch.argmin(keep.to(torch.uint8), dim=1))
        boundary = (first_pad // bs).to(torch.int32)

        def mask_mod(b, h, q_idx, kv_idx):
            return blocks[q_idx // bs, kv_idx // bs] & keep[b, kv_idx]

    pc, pi, fc, fi = _split_full_partial(kv_indices, kv_counts, boundary)
    return BlockMask.from_kv_blocks(pc, pi, fc, fi, BLOCK_SIZE=bs, mask_mod=mask_mod, seq_lengths=(seq, seq))


def cached_block_mask(plan: RadialPlan, device: torch.device) -> BlockMask:
    """The plan's BlockMask without padding, built once per (plan, device)."""
    per_plan = _mask_cache.setdefault(plan, {})
    key = str(device)
    if key not in per_plan:
        per_plan[key] = block_mask_from_plan(plan, device)
    return per_plan[key]


def flex_attention_backend(call: AttentionCall) -> torch.Tensor:
    """Radial attention [B, S, H, D] through FlexAttention; rows with no allowed key give 0. `decay` becomes the
    score_mod (radial.frame_decay), computed in the kernel: no S x S bias exists."""
    plan, device = call.plan, call.query.device
    if call.key_padding_mask is None:
        block_mask = cached_block_mask(plan, device)
    else:
        block_mask = block_mask_from_plan(plan, device, call.key_padding_mask)
    q, k, v = (t.transpose(1, 2) for t in (call.query, call.key, call.value))
    fn = _flex_fn() if device.type == "cuda" else flex_attention
    score_mod = None if call.decay is None else call.decay.score_mod(plan)
    out = fn(q, k, v, block_mask=block_mask, score_mod=score_mod)
    return out.transpose(1, 2)


BACKEND = register(
    Backend(
        name="flex",
        function=flex_attention_backend,
        deterministic=False,
        description="PyTorch FlexAttention",
        auto_reason=needs_cuda,  # where an extrapolation decay falls back to it
        score_bias=True,
    )
)
