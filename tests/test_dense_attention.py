"""The dense (SDPA) backend: padded keys dropped per sample give masked SDPA's outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radial.kernels.call import AttentionCall
from radial.kernels.dense import dense_attention
from radial.plan import dense_plan


def _masked_sdpa(q, k, v, valid):
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :]).transpose(1, 2)


@pytest.mark.parametrize("pattern", ["none", "all_valid", "tail", "scattered"])
def test_dense_matches_masked_sdpa(pattern):
    torch.manual_seed(0)
    b, s, h, d = 3, 70, 2, 16
    q, k, v = (torch.randn(b, s, h, d, requires_grad=True) for _ in range(3))
    valid = torch.ones(b, s, dtype=torch.bool)
    if pattern == "tail":  # text padding: each sample keeps a different prefix
        for i, n in enumerate((70, 55, 41)):
            valid[i, n:] = False
    elif pattern == "scattered":
        valid = torch.rand(b, s) > 0.4
    mask = None if pattern == "none" else valid
    out = dense_attention(AttentionCall(q, k, v, dense_plan(1, s, block_size=16), mask))
    ref = _masked_sdpa(q, k, v, valid)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_sample_without_keys_gives_zeros():
    q, k, v = (torch.randn(2, 8, 1, 4) for _ in range(3))
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[1] = False
    out = dense_attention(AttentionCall(q, k, v, dense_plan(1, 8, block_size=8), valid))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[:1], _masked_sdpa(q[:1], k[:1], v[:1], valid[:1]))
