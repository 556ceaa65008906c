"""Plans: index lists equal the mask, transposes agree, caching by layout, custom and dense plans."""

import pytest
import torch

from radial import dense_plan, make_plan, plan_from_mask
from radial.mask import MaskOptions
from radial.plan import block_index_lists


@pytest.mark.parametrize("layout", [(21, 1560, 0, "wan"), (9, 900, 77, "hunyuan"), (5, 300, 13, "mochi")])
def test_index_lists_match_mask(layout):
    frames, tpf, text, model = layout
    plan = make_plan(frames, tpf, text_tokens=text, model=model)
    m = plan.block_mask
    assert plan.seq_len == frames * tpf + text and plan.num_blocks == m.shape[0]
    for r in range(plan.num_blocks):
        kv = plan.kv_indices[r, : plan.kv_counts[r]].tolist()
        assert kv == m[r].nonzero().flatten().tolist()
        assert (plan.kv_indices[r, plan.kv_counts[r] :] == kv[-1]).all()
        assert plan.q_indices[r, : plan.q_counts[r]].tolist() == m[:, r].nonzero().flatten().tolist()
    assert plan.kv_counts.sum() == plan.q_counts.sum() == m.sum()
    assert plan.kv_indices.dtype == plan.q_indices.dtype == torch.int32


def test_plans_are_cached_by_layout_and_options():
    a = make_plan(8, 512, model="wan")
    assert make_plan(8, 512, model="wan", device="cpu") is a
    assert make_plan(8, 512, model="wan", decay_factor=0.5) is not a
    assert make_plan(9, 512, model="wan") is not a


def test_empty_rows_are_safe():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1, 2] = True
    idx, counts = block_index_lists(mask)
    assert counts.tolist() == [0, 1, 0, 0] and idx.shape == (4, 1) and idx[1, 0] == 2


def test_custom_and_dense_plans():
    opts = MaskOptions(block_size=64)
    with pytest.raises(ValueError, match="block_mask must be bool"):
        plan_from_mask(torch.ones(3, 3, dtype=torch.bool), 2, 100, 0, opts)
    plan = dense_plan(2, 100, text_tokens=20, block_size=64)
    assert plan.block_mask.all() and plan.stats.token_density == 1.0 and plan.kv_counts.tolist() == [4] * 4


def test_bad_layout_is_reported():
    with pytest.raises(ValueError, match="tokens_per_frame"):
        make_plan(4, -1)
