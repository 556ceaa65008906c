"""Dense-masked reference attention in fp32: the CPU path and the oracle every other backend is tested against."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from radial.kernels.call import AttentionCall
from radial.kernels.registry import Backend, register

# Scores of one query chunk are [B, H, chunk, S] fp32; keep them near this many bytes.
_CHUNK_BYTES = 256 * 2**20


def _expand(block_rows: torch.Tensor, block_size: int, rows: int, cols: int) -> torch.Tensor:
    """Token-level bool mask [rows, cols] of a slice of block rows."""
    return block_rows.repeat_interleave(block_size, 0)[:rows].repeat_interleave(block_size, 1)[:, :cols]


def _chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float, bias: torch.Tensor | None
) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~allowed, float("-inf"))
    # Rows with no allowed key give zero output (softmax of all -inf would be NaN).
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.matmul(probs, v)


def reference_attention(call: AttentionCall) -> torch.Tensor:
    """Attention [B, S, H, D] under the plan's block mask expanded to tokens; padded keys get zero weight.

    Math in fp32, in query chunks of whole blocks so that no S x S tensor exists; with gradients each chunk is
    recomputed in backward (checkpointed), so memory stays O(chunk x S). `decay` adds its logit bias per chunk.
    """
    query, key, value, plan, key_padding_mask, decay = (
        call.query, call.key, call.value, call.plan, call.key_padding_mask, call.decay
    )  # fmt: skip
    b, s, h, _ = query.shape
    bs = plan.block_size
    scale = call.softmax_scale
    q, k, v = (t.transpose(1, 2).float() for t in (query, key, value))
    pad = None if key_padding_mask is None else key_padding_mask.to(torch.bool)[:, None, None, :]
    chunk_blocks = max(1, _CHUNK_BYTES // (4 * b * h * s * bs))
    outs = []
    for start in range(0, s, chunk_blocks * bs):
        stop = min(s, start + chunk_blocks * bs)
        allowed = _expand(plan.block_mask[start // bs : -(-stop // bs)], bs, stop - start, s)[None, None]
        if pad is not None:
            allowed = allowed & pad
        bias = None if decay is None else decay.bias(plan, slice(start, stop), q.device)
        args = (q[:, :, start:stop], k, v, allowed, scale, bias)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
            outs.append(checkpoint(_chunk, *args, use_reentrant=False))
        else:
            outs.append(_chunk(*args))
    return torch.cat(outs, dim=2).transpose(1, 2).to(query.dtype)


BACKEND = register(
    Backend(
        name="reference",
        function=reference_attention,
        deterministic=True,
        description="dense masked attention in PyTorch: the CPU path and the tests' oracle",
        auto=True,
        score_bias=True,
    )
)
