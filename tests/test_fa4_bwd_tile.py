"""benchmarks/fa4_bwd_tile.py on CPU: the tile forcing (against a fake of flash-attn-4's SM90 tile choice), the derived
ratios, and the refusal without a Hopper GPU. The kernels themselves run on the device (gpu_run.sh fa4-bwd-tile)."""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest
import torch

from benchmarks import fa4_bwd_tile as tile


@dataclass
class _Cfg:
    m_block_size: int


def _fake_interface() -> types.SimpleNamespace:
    def choose(head_dim, head_dim_v, causal, local, sparse_block_size_q=None):
        # flash-attn-4 4.0.0b36, head dim 128 non-causal: 80 rows, 64 when 80 does not divide the sparse block
        m = 80
        if sparse_block_size_q is not None and sparse_block_size_q % m:
            m = 64
        return _Cfg(m)

    return types.SimpleNamespace(_tile_size_bwd_sm90=choose)


def test_forcing_gives_the_sparse_tile_and_restores_it():
    interface = _fake_interface()
    shipped = interface._tile_size_bwd_sm90
    assert tile.bwd_tile_rows(interface, sparse=False) == 80
    assert tile.bwd_tile_rows(interface, sparse=True) == 64
    with tile.forced_bwd_tile(interface):
        assert interface._tile_size_bwd_sm90(128, 128, False, False).m_block_size == 64
        assert interface._tile_size_bwd_sm90(128, 128, False, False, 256).m_block_size == 64
    assert interface._tile_size_bwd_sm90 is shipped
    with pytest.raises(RuntimeError), tile.forced_bwd_tile(interface):
        raise RuntimeError("a kernel failed")
    assert interface._tile_size_bwd_sm90 is shipped


def test_derived_ratios():
    row = {
        "block_density": 0.25,
        "dense-80": {"fwd_ms": 100.0, "bwd_ms": 260.0},
        "dense-64": {"fwd_ms": 100.0, "bwd_ms": 286.0},
        "sparse-all": {"fwd_ms": 101.0, "bwd_ms": 300.0},
        "radial": {"fwd_ms": 26.0, "bwd_ms": 80.0},
        "radial-q64": {"bwd_ms": 76.0, "radial_bwd_ms_same_rounds": 80.0},
    }
    d = tile.derived(row)
    assert d["tile_cost_bwd"] == pytest.approx(1.1)
    assert d["sparse_bookkeeping_bwd"] == pytest.approx(300 / 286)
    assert d["radial_block_efficiency_bwd"] == pytest.approx(0.25 * 300 / 80)
    assert d["radial_vs_ideal_bwd"] == pytest.approx(0.25 * 260 / 80)
    assert d["radial_vs_ideal_fwd"] == pytest.approx(25 / 26)
    assert d["bwd_over_fwd_dense"] == pytest.approx(2.6)
    assert d["radial_bwd_ms_at_dense_tile"] == pytest.approx(80 / 1.1)
    assert d["radial_q64_over_radial_bwd"] == pytest.approx(0.95)
    band = {"bwd_ms_by_count": {"8": 10.0}, "intercept_ms": 2.0, "ms_per_count": 1.0, "fixed_cost_in_q_blocks": 2.0}
    band |= {"radial_mean_count": 5.0, "radial_bwd_ms_predicted": 7.0, "radial_bwd_ms_measured": 7.5}
    text = tile.markdown(
        [{**row, **d, "case": "x", "tokens": 1, "band": band}], {"card": "c", "date": "d", "torch": "t", "fa4": "f"}
    )
    assert "| x | 8: 10.0 | 2.00 | 1.0000 | 2.0 | 5.0 | 7.0 / 7.5 |" in text
    assert "| x |" in tile.markdown(
        [{**row, **d, "case": "x", "tokens": 1}], {"card": "c", "date": "d", "torch": "t", "fa4": "f"}
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_without_hopper(tmp_path):
    with pytest.raises(SystemExit, match="Hopper"):
        tile.main(["--out", str(tmp_path)])


def test_q64_lists_split_each_query_block_in_two():
    import radial
    from radial.kernels import fa4

    plan = radial.make_plan(6, 96, model="wan")  # 576 tokens: 4.5 blocks of 128, 9 of 64
    bst = lambda *t, block_size: (t, block_size)  # noqa: E731
    (mask_cnt, mask_idx, full_cnt, full_idx), size = tile.q64_bwd_tensors(plan, fa4, bst, torch.device("cpu"))
    assert size == (64, 128) and int(mask_cnt.sum()) == 0
    for kv in range(plan.num_blocks):
        got = full_idx[0, 0, kv, : int(full_cnt[0, 0, kv])].tolist()
        want = [r for r in range(9) if bool(plan.block_mask[r // 2, kv])]
        assert got == want


def test_alternating_times_in_abba_order(monkeypatch):
    order = []
    monkeypatch.setattr(tile, "timed", lambda fn: (fn(), []))
    fns = {"a": lambda: order.append("a") or 2.0, "b": lambda: order.append("b") or 1.0}
    assert tile.alternating(fns, rounds=4) == {"a": 2.0, "b": 1.0}
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_band_mask_gives_every_key_block_the_same_count():
    for count in (1, 3, 4, 9):
        m = tile.band_mask(9, count)
        assert m.sum(dim=0).tolist() == [count] * 9
        for kv in range(9):  # contiguous
            rows = m[:, kv].nonzero().flatten().tolist()
            assert rows == list(range(rows[0], rows[0] + count))
        assert bool(m[torch.arange(9), torch.arange(9)].all())  # the diagonal is always in


def test_fit_line():
    a, b = tile.fit_line([1.0, 2.0, 4.0], [5.0, 7.0, 11.0])
    assert (a, b) == (pytest.approx(3.0), pytest.approx(2.0))


def test_pattern_masks_keep_the_work_and_change_one_property():
    import radial

    plan = radial.make_plan(9, 300, model="wan")  # 2700 tokens: 21.1 blocks, frames straddle blocks
    m = plan.block_mask
    masks = tile.pattern_masks(plan)
    for name, mask in masks.items():
        assert mask.shape == m.shape and int(mask.sum()) == int(m.sum()), name
    # counts-band: every key block keeps its count, contiguous
    band = masks["counts-band"]
    assert band.sum(dim=0).tolist() == m.sum(dim=0).tolist()
    for kv in range(plan.num_blocks):
        rows = band[:, kv].nonzero().flatten().tolist()
        assert rows == list(range(rows[0], rows[0] + len(rows)))
    # permutations: the same columns (rows) in another order, the last block last
    for name, order in (("kv-spatial", tile.spatial_order(plan)), ("kv-random", tile.random_order(plan.num_blocks))):
        assert sorted(order.tolist()) == list(range(plan.num_blocks)) and int(order[-1]) == plan.num_blocks - 1
        assert torch.equal(masks[name], m[:, order])
    assert torch.equal(masks["q-spatial"], m[tile.spatial_order(plan)])
    first = tile.spatial_order(plan)[:3].tolist()  # position 0 of the first three frames' starts
    assert [b * 128 % 300 // 128 for b in first] == [0, 0, 0]
