"""A temporal sliding-window block mask: the simple sparse baseline that radial attention is compared against.

Query frame i sees key frames j with |i - j| <= window_frames (and key frame 0 when the model keeps an attention
sink), at block granularity: a block is kept when any of its token pairs is. Text rows and columns stay dense, as
in the radial mask. The density is set by `window_frames`; `benchmarks/extension.py` picks it to match radial's.
"""

from __future__ import annotations

import numpy as np

from radial.mask.options import MaskOptions


def window_block_mask_numpy(
    num_frames: int, tokens_per_frame: int, opts: MaskOptions, text_tokens: int = 0
) -> np.ndarray:
    """The [nb, nb] bool window block mask (opts.window_frames >= 1 frames on each side)."""
    if opts.window_frames < 1:
        raise ValueError(f"window_frames must be >= 1 for a window mask, got {opts.window_frames}")
    bs, tpf = opts.block_size, tokens_per_frame
    video = num_frames * tpf
    nb = -(-(video + text_tokens) // bs)
    starts = np.arange(nb) * bs
    first = np.minimum(starts, video - 1) // tpf  # frames a block spans (clamped into the video)
    last = np.minimum(starts + bs - 1, video - 1) // tpf
    # Distance between the frame intervals [first_r, last_r] and [first_c, last_c] (0 when they overlap).
    gap = np.maximum(first[None, :] - last[:, None], first[:, None] - last[None, :]).clip(min=0)
    mask = gap <= opts.window_frames
    if opts.sink:
        mask[:, first == 0] = True
    border = video // bs
    mask[border:, :] = True
    mask[:, border:] = True
    return mask
