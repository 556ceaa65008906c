"""Dense attention through torch SDPA (cuDNN / flash on GPU): no sparsity, the speed baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radial.plan import RadialPlan


def dense_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: RadialPlan | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full attention [B, S, H, D]; padded keys (key_padding_mask False) get zero weight. The plan is ignored."""
    if key_padding_mask is None:
        return _sdpa(query, key, value)
    valid = key_padding_mask.to(torch.bool)
    if torch.compiler.is_compiling():  # data-dependent shapes below would break the graph
        return _sdpa(query, key, value, valid[:, None, None, :])
    # A boolean mask sends SDPA to its memory-efficient kernel, about half cuDNN's speed at long lengths; dropping the
    # padded keys instead keeps every call on the unmasked fast path (one host sync per call, nothing at these sizes).
    if bool(valid.all()):
        return _sdpa(query, key, value)
    out = []
    for b in range(query.shape[0]):
        keep = valid[b].nonzero().squeeze(1)
        if keep.numel() == 0:  # no key to attend to: zeros, as the sparse kernels return for an empty row
            out.append(torch.zeros_like(query[b : b + 1]))
            continue
        k, v = (t[b : b + 1].index_select(1, keep) for t in (key, value))
        out.append(_sdpa(query[b : b + 1], k, v))
    return torch.cat(out)


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None):
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
