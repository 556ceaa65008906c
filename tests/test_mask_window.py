"""The temporal-window block mask (attention.window_frames) against a token-level brute force, over geometries that
exercise its edges: frames that do not fill blocks, blocks spanning several frames, text tokens, sink on and off,
windows wider than the clip, and the plan built from it."""

import numpy as np
import pytest

from radial.mask import MaskOptions
from radial.mask.window import window_block_mask_numpy
from radial.plan import make_plan


def brute_force(frames: int, tpf: int, bs: int, window: int, sink: bool, text: int) -> np.ndarray:
    """Token pairs (query frame i, key frame j) with |i - j| <= window, or j = 0 with a sink, reduced to blocks (a
    block is kept when any of its pairs is); text rows and columns dense from the block holding the video's end."""
    frame = np.arange(frames * tpf) // tpf
    tokens = np.abs(frame[:, None] - frame[None, :]) <= window
    if sink:
        tokens |= frame[None, :] == 0
    nb = -(-(frames * tpf + text) // bs)
    padded = np.zeros((nb * bs, nb * bs), dtype=bool)
    padded[: frames * tpf, : frames * tpf] = tokens
    want = padded.reshape(nb, bs, nb, bs).any(axis=(1, 3))
    border = frames * tpf // bs
    want[border:, :] = True
    want[:, border:] = True
    return want


GEOMETRIES = [  # frames, tokens per frame, block, window, sink, text tokens
    (7, 24, 16, 2, True, 0),  # blocks straddle frame boundaries
    (7, 24, 16, 2, False, 0),
    (5, 16, 16, 1, False, 0),  # one block per frame
    (4, 64, 16, 1, True, 0),  # several blocks per frame
    (9, 10, 32, 3, True, 0),  # a block spans three or four frames
    (6, 40, 16, 2, False, 24),  # text after the video, a partial last block
    (6, 40, 64, 1, True, 100),
    (3, 16, 16, 5, False, 0),  # window wider than the clip: dense
    (1, 48, 16, 1, True, 8),  # one frame
    (12, 33, 48, 4, False, 7),
]


@pytest.mark.parametrize("frames, tpf, bs, window, sink, text", GEOMETRIES)
def test_window_mask_equals_token_level_brute_force(frames, tpf, bs, window, sink, text):
    """Guards the interval-gap rule (frames a block spans, clamped into the video), the sink column, the dense text
    border and the block count."""
    opts = MaskOptions.create(block_size=bs, window_frames=window, sink=sink)
    mask = window_block_mask_numpy(frames, tpf, opts, text_tokens=text)
    assert np.array_equal(mask, brute_force(frames, tpf, bs, window, sink, text))


@pytest.mark.parametrize("seed", range(6))
def test_window_mask_equals_brute_force_on_random_geometries(seed):
    rng = np.random.default_rng(seed)
    frames, tpf, bs = int(rng.integers(1, 14)), int(rng.integers(1, 80)), 16 * int(rng.integers(1, 5))
    window, sink, text = (
        int(rng.integers(1, 6)),
        bool(rng.integers(0, 2)),
        int(rng.integers(0, 2)) * int(rng.integers(1, 50)),
    )
    opts = MaskOptions.create(block_size=bs, window_frames=window, sink=sink)
    mask = window_block_mask_numpy(frames, tpf, opts, text_tokens=text)
    assert np.array_equal(mask, brute_force(frames, tpf, bs, window, sink, text)), (frames, tpf, bs, window, sink, text)


def test_plan_uses_the_window_mask():
    """make_plan with window_frames builds its block lists from this mask (not the radial one)."""
    frames, tpf, bs, window = 8, 32, 16, 2
    plan = make_plan(frames, tpf, block_size=bs, window_frames=window, model="hunyuan")
    assert np.array_equal(plan.block_mask.cpu().numpy(), brute_force(frames, tpf, bs, window, False, 0))


def test_window_below_one_frame_is_refused():
    with pytest.raises(ValueError, match="window_frames must be >= 1 for a window mask, got 0"):
        window_block_mask_numpy(4, 16, MaskOptions.create(block_size=16))
