"""make_plan and dense_plan hand their options through unchanged, and their defaults are the documented ones
(the paper's Wan setting: 128-token blocks, decay 1, Wan's attention sink, no adjacent decay, radial not window)."""

import math

import numpy as np
import pytest
import torch

import radial.plan as plan_module
from radial.mask import MaskOptions, radial_block_mask
from radial.mask.window import window_block_mask_numpy
from radial.plan import _canonical_device, block_index_lists, dense_plan, make_plan, plan_for


def test_make_plan_defaults_are_the_papers_wan_setting():
    """Guards make_plan's defaults: the options it builds and the mask they give."""
    plan = make_plan(9, 256)
    assert plan.options == MaskOptions(
        block_size=128, decay_factor=1.0, sink=True, decay_adjacent=False, window_frames=0
    )
    assert np.array_equal(plan.block_mask.numpy(), radial_block_mask(9, 256, model="wan"))
    assert plan.text_tokens == 0 and plan.seq_len == 9 * 256


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        (dict(sink=False), "sink", False),
        (dict(model="hunyuan"), "sink", False),
        (dict(model="hunyuan", sink=True), "sink", True),
        (dict(decay_adjacent=True), "decay_adjacent", True),
        (dict(decay_factor=0.5), "decay_factor", 0.5),
        (dict(block_size=64), "block_size", 64),
        (dict(window_frames=2), "window_frames", 2),
    ],
)
def test_make_plan_forwards_each_option(kwargs, field, value):
    """Guards that every option reaches the mask: the plan's options carry it and its mask is the one the mask
    function builds with it."""
    plan = make_plan(9, 256, block_size=kwargs.pop("block_size", 128), **kwargs)
    assert getattr(plan.options, field) == value
    if field == "window_frames":
        want = window_block_mask_numpy(9, 256, plan.options)
    else:
        want = radial_block_mask(9, 256, block_size=plan.options.block_size, **kwargs)
    assert np.array_equal(plan.block_mask.numpy(), want)


def test_dense_plan_defaults():
    """Guards dense_plan's defaults: no text tokens, 128-token blocks, every block kept."""
    plan = dense_plan(5, 100)
    nb = math.ceil(500 / 128)
    assert plan.text_tokens == 0 and plan.block_size == 128 and plan.block_mask.shape == (nb, nb)
    assert bool(plan.block_mask.all())


def test_window_mask_without_text_has_the_videos_blocks_only():
    """Guards window_block_mask_numpy's default of no text tokens: a video of whole blocks gives exactly its blocks."""
    mask = window_block_mask_numpy(4, 32, MaskOptions.create(block_size=16, window_frames=1))
    assert mask.shape == (8, 8) and not mask.all()


def test_block_index_lists_of_any_mask():
    """Guards block_index_lists on a non-square mask (R rows of C columns, as the backward's per-row-block lists
    use): int32 lists of each row's ascending columns, padded with the row's last index (0 for an empty row),
    int32 counts; a mask without rows gives [0, 1]."""
    mask = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    lists, counts = block_index_lists(mask)
    assert lists.dtype == counts.dtype == torch.int32
    assert lists.tolist() == [[1, 3, 4], [0, 0, 0], [0, 0, 0]] and counts.tolist() == [3, 0, 1]
    empty, none = block_index_lists(torch.zeros(0, 4, dtype=torch.bool))
    assert empty.shape == (0, 1) and none.numel() == 0


def test_canonical_device_keeps_a_given_device():
    """Guards _canonical_device: a given device is kept (the plan cache keys on it); none means the CPU."""
    assert _canonical_device("meta") == torch.device("meta") and _canonical_device(None) == torch.device("cpu")


def test_canonical_device_names_the_current_cuda_device(monkeypatch):
    """Guards the CUDA branch of _canonical_device: "cuda" becomes the current device's index (so "cuda" and
    "cuda:N" share one cached plan), an explicit index stays (torch.cuda.current_device stands in for a GPU)."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _canonical_device("cuda") == torch.device("cuda", 3)
    assert _canonical_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert _canonical_device("cuda:1") == torch.device("cuda", 1)


def test_the_device_asked_for_reaches_the_plan_builder(monkeypatch):
    """Guards the device plumbing of make_plan, plan_for and dense_plan: the device given (canonical) is the one the
    mask is built on (recorded before the block lists, which need data the meta device does not have)."""
    seen = []
    monkeypatch.setattr(plan_module, "_cached_plan", lambda *args: seen.append(args[-1]))
    monkeypatch.setattr(plan_module, "plan_from_mask", lambda mask, *args: seen.append(mask.device))
    make_plan(3, 200, device="meta")
    plan_for(3, 200, MaskOptions.create(), device="meta")
    dense_plan(3, 200, device="meta")
    assert seen == [torch.device("meta")] * 3
    make_plan(3, 200)
    dense_plan(3, 200)
    assert seen[3:] == [torch.device("cpu")] * 2


def test_plan_for_defaults_to_no_text():
    opts = MaskOptions.create()  # 4 x 256 tokens fill 8 blocks exactly: one text token would add a ninth
    assert plan_for(4, 256, opts).seq_len == make_plan(4, 256).seq_len == 1024


def test_block_lists_stay_on_the_masks_device_under_a_default_device():
    """Guards the `device=block_mask.device` of block_index_lists: a plan built inside `with torch.device(...)` (as
    models are built on a GPU) keeps its lists on the mask's device; the meta default stands in for a GPU."""
    mask = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    with torch.device("meta"):
        lists, counts = block_index_lists(mask)
    assert lists.device.type == counts.device.type == "cpu"
    assert lists.tolist() == [[0, 2, 2], [0, 0, 0], [0, 1, 2]] and counts.tolist() == [2, 0, 3]  # padded with the last
