"""The radial block mask, bit-identical to the official generator, built analytically per block.

The official `gen_log_mask_shrinked` (mit-han-lab/radial-attention, radial_attn/attn_mask.py) materialises a
token-level mask for every frame pair and reduces it to blocks. Each reduction only asks, per column of a block,
how many rows of the block are set; for a band |col - row| <= W that count is a trapezoid in the column, so the
columns passing each threshold form one interval. We compute those intervals in closed form, once per distinct
(row offset, column offset, band) triple, and scatter the results: no token-level array is ever built.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from radial.mask.options import MaskOptions

# The official frequency reduction compares against a hard-coded 128, whatever the block size.
_SPLIT_THRESHOLD = 128


def _frame_windows(num_frames: int, tpf: int, opts: MaskOptions) -> tuple[np.ndarray, np.ndarray]:
    """Per frame distance d: (active, half-width W) of the token band; W >= tpf means the whole frame pair."""
    active = np.ones(num_frames, dtype=bool)
    width = np.full(num_frames, tpf, dtype=np.int64)
    tpf_pow = 2 ** tpf.bit_length()
    for d in range(num_frames):
        group = d.bit_length()
        split_len = tpf_pow / 2**group
        if split_len < _SPLIT_THRESHOLD:
            active[d] = d % int(_SPLIT_THRESHOLD / split_len) == 0
        if d <= 1 and not (d == 1 and opts.decay_adjacent):
            continue
        w = tpf_pow / 2**group * opts.decay_factor
        # The official code compares integer offsets with this float in float32 (torch's default dtype).
        w_int = math.floor(np.float32(w)) if w >= opts.block_size else opts.block_size
        width[d] = min(w_int, tpf)
    return active, width


def _block_counts(lo: np.ndarray, hi: np.ndarray, block_size: int, nblocks: int) -> np.ndarray:
    """Length of [lo, hi] intersected with each block [b*B, b*B+B-1]; lo/hi [...], result [..., nblocks]."""
    starts = np.arange(nblocks) * block_size
    a = np.maximum(lo[..., None], starts)
    b = np.minimum(hi[..., None], starts + block_size - 1)
    return np.clip(b - a + 1, 0, None)


def _pair_block_masks(rem_r: np.ndarray, rem_c: np.ndarray, width: np.ndarray, tpf: int, block_size: int) -> np.ndarray:
    """Block masks [n, K, K] of n frame pairs whose token bands sit at offsets (rem_r, rem_c) with half-width W."""
    bs = block_size
    k = -(-tpf // bs)
    span = k * bs  # the official reduction drops local rows/columns at or past K*B
    row_start = np.arange(k) * bs
    a_lo = np.maximum(row_start[None, :], rem_r[:, None])  # [n, K]
    a_hi = np.minimum(np.minimum(row_start[None, :] + bs - 1, (rem_r + tpf - 1)[:, None]), span - 1)
    c_lo = rem_c[:, None]
    c_hi = np.minimum(rem_c + tpf, span)[:, None] - 1
    delta = (rem_r - rem_c)[:, None]
    w = width[:, None]

    def columns_with_at_least(m: int) -> np.ndarray:
        """Per (pair, row block, column block): how many valid columns have >= m band rows in the row block."""
        lo = np.maximum(a_lo - w + m - 1 - delta, c_lo)
        hi = np.minimum(a_hi + w - m + 1 - delta, c_hi)
        ok = (a_hi - a_lo >= m - 1) & (2 * w >= m - 1)
        hi = np.where(ok, hi, lo - 1)
        return _block_counts(lo, hi, bs, k)

    nonzero = columns_with_at_least(1)
    # A column is "high" when more than a third of the block's rows are set: count * 3 > B.
    high = columns_with_at_least(bs // 3 + 1)
    # Kept when more than 60% of the non-empty columns are high: high / nonzero > 0.6, exactly.
    return 5 * high > 3 * nonzero


def radial_block_mask_numpy(
    num_frames: int, tokens_per_frame: int, opts: MaskOptions, text_tokens: int = 0
) -> np.ndarray:
    """The [nb, nb] bool block mask as a numpy array (see `radial_block_mask`)."""
    f, tpf, bs = num_frames, tokens_per_frame, opts.block_size
    video = f * tpf
    nb = -(-(video + text_tokens) // bs)
    mask = np.zeros((nb, nb), dtype=bool)

    active, width = _frame_windows(f, tpf, opts)
    i, j = np.meshgrid(np.arange(f), np.arange(f), indexing="ij")
    i, j = i.ravel(), j.ravel()
    d = np.abs(i - j)
    pair_w = width[d]
    pair_on = active[d]
    if opts.sink:
        pair_on = pair_on | (j == 0)
        pair_w = np.where(j == 0, tpf, pair_w)
    i, j, pair_w = i[pair_on], j[pair_on], pair_w[pair_on]

    rem_r, rem_c = (i * tpf) % bs, (j * tpf) % bs
    keys, inverse = np.unique(np.stack([rem_r, rem_c, pair_w], axis=1), axis=0, return_inverse=True)
    blocks = _pair_block_masks(keys[:, 0], keys[:, 1], keys[:, 2], tpf, bs)

    row0, col0 = (i * tpf) // bs, (j * tpf) // bs
    flat = mask.reshape(-1)
    order = np.argsort(inverse.ravel(), kind="stable")
    bounds = np.searchsorted(inverse.ravel()[order], np.arange(len(keys) + 1))
    for key in range(len(keys)):
        members = order[bounds[key] : bounds[key + 1]]
        da, db = np.nonzero(blocks[key])
        if members.size == 0 or da.size == 0:
            continue
        rows = row0[members][:, None] + da[None, :]
        cols = col0[members][:, None] + db[None, :]
        flat[(rows * nb + cols).ravel()] = True

    border = video // bs
    mask[border:, :] = True
    mask[:, border:] = True
    return mask


def radial_block_mask(
    num_frames: int,
    tokens_per_frame: int,
    *,
    block_size: int = 128,
    decay_factor: float = 1.0,
    model: str = "wan",
    text_tokens: int = 0,
    sink: bool | None = None,
    decay_adjacent: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Radial Attention's [nb, nb] bool block mask, nb = ceil((frames * tokens_per_frame + text) / block_size).

    With the defaults it equals the official generator bit for bit. `sink` overrides the model's attention sink
    (key frame 0 dense: on for Wan, off for HunyuanVideo); `decay_adjacent` narrows adjacent frame pairs too.
    """
    opts = MaskOptions.create(
        block_size=block_size, decay_factor=decay_factor, model=model, sink=sink, decay_adjacent=decay_adjacent
    )
    check_layout(num_frames, tokens_per_frame, text_tokens)
    mask = radial_block_mask_numpy(num_frames, tokens_per_frame, opts, text_tokens)
    return torch.from_numpy(mask).to(device) if device is not None else torch.from_numpy(mask)


def check_layout(num_frames: int, tokens_per_frame: int, text_tokens: int) -> None:
    for name, value, least in (("num_frames", num_frames, 1), ("tokens_per_frame", tokens_per_frame, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if not isinstance(text_tokens, (int, np.integer)) or isinstance(text_tokens, bool) or text_tokens < 0:
        raise ValueError(f"text_tokens must be an integer >= 0, got {text_tokens!r}")
