"""Options beyond parity, statistics and input validation of the radial mask."""

import numpy as np
import pytest
import torch

from radial import mask_stats, radial_block_mask
from radial.mask import MaskOptions


def test_model_default_sink_and_override():
    wan = radial_block_mask(12, 512, model="wan")
    hun = radial_block_mask(12, 512, model="hunyuan")
    assert wan[:, :4].all() and not hun[:, :4].all()
    assert torch.equal(radial_block_mask(12, 512, model="hunyuan", sink=True), wan)
    assert torch.equal(radial_block_mask(12, 512, model="wan", sink=False), hun)


def test_decay_adjacent_is_sparser_and_keeps_diagonal():
    base = radial_block_mask(16, 1560)
    sparse = radial_block_mask(16, 1560, decay_adjacent=True)
    assert sparse.sum() < base.sum()
    assert (sparse & ~base).sum() == 0
    assert sparse.diagonal().all()


def test_smaller_decay_is_sparser():
    assert radial_block_mask(21, 1560, decay_factor=0.5).sum() < radial_block_mask(21, 1560).sum()


def test_text_rows_and_columns_dense():
    m = radial_block_mask(9, 900, model="hunyuan", text_tokens=77)
    border = 9 * 900 // 128
    assert m[border:].all() and m[:, border:].all()
    assert m.shape == (64, 64)


def test_stats_match_counts():
    m = radial_block_mask(21, 1560)
    s = mask_stats(m, 21 * 1560, 128)
    assert s.kept_blocks == int(m.sum())
    assert s.block_density == pytest.approx(m.float().mean().item())
    sizes = np.full(m.shape[0], 128.0)
    sizes[-1] = 21 * 1560 - 127 * 128 - (m.shape[0] - 128) * 128
    assert s.token_density == pytest.approx(sizes @ m.numpy() @ sizes / (21 * 1560) ** 2)
    assert s.ideal_speedup == pytest.approx(1 / s.token_density)
    with pytest.raises(ValueError, match="does not fit"):
        mask_stats(m, 10, 128)


def test_device_argument():
    """The mask lands on the device asked for (the meta device stands in for a GPU on a CPU-only machine)."""
    assert radial_block_mask(3, 200, device="cpu").device.type == "cpu"
    assert radial_block_mask(3, 200).device.type == "cpu"
    on_meta = radial_block_mask(3, 200, device="meta")
    assert on_meta.device.type == "meta" and on_meta.shape == radial_block_mask(3, 200).shape


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="sora"), "model must be one of"),
        (dict(block_size=100), "block_size"),
        (dict(block_size=0), "block_size"),
        (dict(decay_factor=0.0), "decay_factor"),
        (dict(decay_factor=float("nan")), "decay_factor"),
        (dict(decay_factor="1"), "decay_factor"),
        (dict(sink="yes"), "sink"),
        (dict(decay_adjacent=1), "decay_adjacent"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        radial_block_mask(4, 256, **kwargs)


@pytest.mark.parametrize(
    "args, match",
    [((0, 256), "num_frames"), ((4, 0), "tokens_per_frame"), ((4.0, 256), "num_frames"), ((True, 256), "num_frames")],
)
def test_bad_layout(args, match):
    with pytest.raises(ValueError, match=match):
        radial_block_mask(*args)
    with pytest.raises(ValueError, match="text_tokens"):
        radial_block_mask(4, 256, text_tokens=-1)


def test_options_are_hashable_and_resolved():
    a = MaskOptions.create(model="hunyuan")
    assert a == MaskOptions.create(model="mochi") and not a.sink
    assert hash(a) == hash(MaskOptions.create(model="hunyuan", sink=False))
