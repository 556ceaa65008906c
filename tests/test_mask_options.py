"""Options beyond parity, statistics and input validation of the radial mask."""

import numpy as np
import pytest
import torch

from radial import mask_stats, radial_block_mask
from radial.mask import MaskOptions
from radial.mask.build import radial_block_mask_numpy


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(block_size=32.0), "block_size must be a positive multiple of 16 (64 or 128 for the kernels), got 32.0"),
        (dict(block_size=True), "block_size must be a positive multiple of 16 (64 or 128 for the kernels), got True"),
        (dict(window_frames=-1), "window_frames must be an integer >= 0 (0 = radial), got -1"),
        (dict(window_frames=1.0), "window_frames must be an integer >= 0 (0 = radial), got 1.0"),
        (dict(window_frames=True), "window_frames must be an integer >= 0 (0 = radial), got True"),
    ],
)
def test_option_types_are_checked_one_by_one(kwargs, message):
    """Each clause of the type checks refuses on its own (a float that is a multiple of 16, a negative window, a
    bool): the mask group's mutants that joined the clauses with `and` passed the older tests."""
    with pytest.raises(ValueError) as e:
        MaskOptions.create(**kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 256, 0), "num_frames must be an integer >= 1, got 0"),
        ((4, 0, 0), "tokens_per_frame must be an integer >= 1, got 0"),
        ((4, 256, True), "text_tokens must be an integer >= 0, got True"),
        ((4, 256, 1.5), "text_tokens must be an integer >= 0, got 1.5"),
        ((4, 256, -1), "text_tokens must be an integer >= 0, got -1"),
    ],
)
def test_layout_messages_name_the_argument(args, message):
    frames, tpf, text = args
    with pytest.raises(ValueError) as e:
        radial_block_mask(frames, tpf, text_tokens=text)
    assert str(e.value) == message


def test_numpy_builder_defaults_to_no_text():
    opts = MaskOptions.create()  # 4 x 256 tokens fill 8 blocks exactly: one text token would add a ninth
    assert np.array_equal(radial_block_mask_numpy(4, 256, opts), radial_block_mask(4, 256).numpy())
