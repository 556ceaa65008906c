"""Block mask -> the index lists that block-sparse kernels walk, built on the target device and cached by layout."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from radial.mask import MaskOptions, MaskStats, mask_stats, radial_block_mask_numpy
from radial.mask.build import check_layout
from radial.mask.window import window_block_mask_numpy


@dataclass(frozen=True, eq=False)
class RadialPlan:
    """A block-sparse layout for one sequence: S = video tokens, then text tokens, cut into blocks of `block_size`.

    kv_indices[q] lists, ascending, the key blocks that query block q attends (kv_counts[q] of them, the rest of
    the row padded with the last valid index); q_indices/q_counts are the transpose, for the dK/dV pass.
    """

    num_frames: int
    tokens_per_frame: int
    text_tokens: int
    options: MaskOptions
    block_mask: torch.Tensor
    kv_indices: torch.Tensor
    kv_counts: torch.Tensor
    q_indices: torch.Tensor
    q_counts: torch.Tensor
    stats: MaskStats

    @property
    def block_size(self) -> int:
        return self.options.block_size

    @property
    def video_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        return self.video_tokens + self.text_tokens

    @property
    def num_blocks(self) -> int:
        return self.block_mask.shape[0]

    @property
    def device(self) -> torch.device:
        return self.block_mask.device


def block_index_lists(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise ascending column indices of a bool [R, C] mask as int32 [R, max(1, max count)], and the counts."""
    rows = block_mask.shape[0]
    counts = block_mask.sum(dim=1, dtype=torch.int32)
    width = max(1, int(counts.max()) if counts.numel() else 1)
    row, col = block_mask.nonzero(as_tuple=True)  # row-major, so columns ascend within a row
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(row.numel(), device=block_mask.device) - starts[row]
    out = torch.zeros(rows, width, dtype=torch.int32, device=block_mask.device)
    out[row, slot] = col.to(torch.int32)
    # Pad each row with its last valid index, so that a kernel prefetching past the count reads a real block.
    last = out.gather(1, (counts.clamp(min=1) - 1).long()[:, None])
    pad = torch.arange(width, device=block_mask.device)[None, :] >= counts[:, None]
    return torch.where(pad, last, out).contiguous(), counts


def plan_from_mask(
    block_mask: torch.Tensor, num_frames: int, tokens_per_frame: int, text_tokens: int, options: MaskOptions
) -> RadialPlan:
    """Wrap any [nb, nb] block mask (radial, dense, custom) in a plan for the given layout."""
    seq_len = num_frames * tokens_per_frame + text_tokens
    nb = -(-seq_len // options.block_size)
    if block_mask.dtype != torch.bool or tuple(block_mask.shape) != (nb, nb):
        raise ValueError(
            f"block_mask must be bool [{nb}, {nb}] for {seq_len} tokens, got {block_mask.dtype} {tuple(block_mask.shape)}"
        )
    kv_indices, kv_counts = block_index_lists(block_mask)
    q_indices, q_counts = block_index_lists(block_mask.t())
    stats = mask_stats(block_mask, seq_len, options.block_size)
    return RadialPlan(
        num_frames,
        tokens_per_frame,
        text_tokens,
        options,
        block_mask,
        kv_indices,
        kv_counts,
        q_indices,
        q_counts,
        stats,
    )


def _canonical_device(device: torch.device | str | None) -> torch.device:
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@functools.lru_cache(maxsize=64)
def _cached_plan(num_frames: int, tpf: int, text: int, options: MaskOptions, device: torch.device) -> RadialPlan:
    build = window_block_mask_numpy if options.window_frames else radial_block_mask_numpy
    mask = torch.from_numpy(build(num_frames, tpf, options, text)).to(device)
    return plan_from_mask(mask, num_frames, tpf, text, options)


def make_plan(
    num_frames: int,
    tokens_per_frame: int,
    *,
    text_tokens: int = 0,
    device: torch.device | str | None = None,
    **mask_options,
) -> RadialPlan:
    """The radial plan for a layout, built once per (layout, options, device) and reused by every layer and step.

    `mask_options` are `MaskOptions.create`'s (block_size, decay_factor, model, sink, decay_adjacent, window_frames;
    its defaults); `window_frames` > 0 builds the temporal-window baseline instead (radial.mask.window)."""
    options = MaskOptions.create(**mask_options)
    return plan_for(num_frames, tokens_per_frame, options, text_tokens=text_tokens, device=device)


def plan_for(
    num_frames: int,
    tokens_per_frame: int,
    options: MaskOptions,
    *,
    text_tokens: int = 0,
    device: torch.device | str | None = None,
) -> RadialPlan:
    """`make_plan` for validated mask options (`AttentionSettings.mask_options`: what the injector's calls use)."""
    check_layout(num_frames, tokens_per_frame, text_tokens)
    return _cached_plan(int(num_frames), int(tokens_per_frame), int(text_tokens), options, _canonical_device(device))


def dense_plan(
    num_frames: int, tokens_per_frame: int, *, text_tokens: int = 0, block_size: int = 128, device=None
) -> RadialPlan:
    """A plan whose every block is kept: the same layout, no sparsity (dense layers, dense timesteps, baselines)."""
    seq_len = num_frames * tokens_per_frame + text_tokens
    nb = -(-seq_len // block_size)
    mask = torch.ones(nb, nb, dtype=torch.bool, device=_canonical_device(device))
    return plan_from_mask(mask, num_frames, tokens_per_frame, text_tokens, MaskOptions(block_size=block_size))
