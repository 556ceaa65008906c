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
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    mask = None if key_padding_mask is None else key_padding_mask.to(torch.bool)[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
