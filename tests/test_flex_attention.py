"""The FlexAttention backend on CPU (eager flex_attention; its backward runs on CUDA only, see tests/gpu)."""

from __future__ import annotations

import warnings

import pytest
import torch

import radial
from radial.kernels.call import AttentionCall
from radial.kernels.flex import _split_full_partial, block_mask_from_plan
from radial.kernels.reference import reference_attention
from radial.mask import MaskOptions


def run(plan, batch, heads, dim, kpm=None):
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, plan.seq_len, heads, dim) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is unfused
        out = radial.radial_attention(q, k, v, plan, backend="flex", key_padding_mask=kpm)
    ref = reference_attention(AttentionCall(q, k, v, plan, kpm))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_flex_radial_plan():
    run(radial.make_plan(8, 64, text_tokens=13, block_size=64), 1, 2, 64)


def test_flex_padding_per_batch():
    plan = radial.make_plan(6, 100, text_tokens=37, block_size=64)
    kpm = torch.ones(2, plan.seq_len, dtype=torch.bool)
    kpm[0, -10:] = False
    kpm[1, -30:] = False
    run(plan, 2, 2, 64, kpm)


def test_flex_empty_rows():
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(3)) < 0.4
    mask[2] = False
    run(radial.plan_from_mask(mask, 3, 100, 50, MaskOptions(block_size=64)), 1, 1, 64)


def test_block_mask_lists_equal_plan():
    plan = radial.make_plan(8, 64, text_tokens=13, block_size=64)
    bm = block_mask_from_plan(plan, torch.device("cpu"))
    dense = bm.to_dense()[0, 0].bool()
    assert torch.equal(dense, plan.block_mask)
    assert int(bm.kv_num_blocks.sum()) == 0  # every kept block is a full block without padding


@pytest.mark.parametrize("boundary", [0, 3, 9])
def test_split_full_partial(boundary):
    plan = radial.make_plan(8, 64, text_tokens=13, block_size=64)
    pc, pi, fc, fi = _split_full_partial(plan.kv_indices, plan.kv_counts, torch.tensor([boundary]))
    for row in range(plan.num_blocks):
        kept = plan.kv_indices[row, : plan.kv_counts[row]].tolist()
        assert fi[0, 0, row, : fc[0, 0, row]].tolist() == [c for c in kept if c < boundary]
        assert pi[0, 0, row, : pc[0, 0, row]].tolist() == [c for c in kept if c >= boundary]
