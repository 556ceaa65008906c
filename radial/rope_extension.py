"""RIFLEx: the intrinsic temporal RoPE frequency lowered so that one period covers the whole (longer) clip.

Zhao et al. 2025, "RIFLEx: A Free Lunch for Length Extrapolation in Video Diffusion Transformers". Of the temporal
rotary frequencies theta_j = base^(-2j/d) (j = 0 .. d/2 - 1, d the temporal rotary channels), the intrinsic one,
k, is the one whose period N_j = round(2 pi / theta_j) is closest to a reference length N (ties: the first j,
as `identify_k` in the official code, github.com/thu-ml/RIFLEx riflex_utils.py, which is 1-based). For a clip of
F > train_frames latent frames, theta_k becomes 0.9 * 2 pi / F (one period spans 1/0.9 of the clip; the official
code's 0.9 keeps the tail frames from repeating); every other frequency and axis is unchanged.

What is followed, and where it differs from the official code:
- N: the official code takes "the first observed repetition frame" of the base model's extrapolated samples (its
  README gives 66 latent frames for HunyuanVideo, 2x its 33 training frames, hence k = 4 there). No samples are
  observed here, so N = `train_frames` (the issue-25 brief's rule): for HunyuanVideo (base 256, d = 16) trained on
  33 frames this gives the frequency of period 25, one index higher than the official k = 4 (period 50).
- When: the official training-free script swaps the rotary module when F exceeds N_k; here every forward with
  F > train_frames is modified and forwards with F <= train_frames are left exactly as they were.

Where: a forward hook on the transformer's rotary module (`RotarySpec`, from the family's adapter) rewrites the two
interleaved columns of frequency k in the cos / sin tables the module returned for this forward, from the
forward's own frame count. The module's buffers (Wan's precomputed tables) are never written, so a later shorter
forward sees the stock tables. The angles are computed in the family's own precision (Wan float64, HunyuanVideo
float32), as a from-scratch table with the modified frequency would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ROPE_EXTENSIONS = ("none", "riflex")
RIFLEX_SCALE = 0.9


@dataclass(frozen=True, eq=False)
class RotarySpec:
    """A family's temporal rotary embedding: the module whose forward returns the (cos, sin) tables, rows = video
    tokens in (frame, height, width) order, the last axis starting with the `temporal_dim` frame channels (each
    frequency twice, interleaved)."""

    module: nn.Module
    temporal_dim: int
    base: float
    dtype: torch.dtype  # what the module computes its angles in
    patch_t: int
    patch_hw: tuple[int, int]


def temporal_frequencies(base: float, dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The temporal rotary frequencies base^(-2j/dim), j = 0 .. dim/2 - 1, as diffusers computes them."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=dtype)[: dim // 2] / dim))


def intrinsic_index(base: float, dim: int, reference_frames: int) -> int:
    """0-based index k of the frequency whose period round(2 pi / theta_k) is closest to `reference_frames`."""
    periods = [round(2 * math.pi / float(f)) for f in temporal_frequencies(base, dim)]
    gaps = [abs(p - reference_frames) for p in periods]
    return gaps.index(min(gaps))


def riflex_frequency(frames: int) -> float:
    """The lowered intrinsic frequency for a clip of `frames` latent frames: 0.9 of one period over the clip."""
    return RIFLEX_SCALE * 2 * math.pi / frames


class RiflexHook:
    """Forward hook of a rotary module: frequency k of the frame axis set to `riflex_frequency(F)` when F exceeds
    `train_frames`. `remove()` takes it off."""

    def __init__(self, spec: RotarySpec, train_frames: int):
        self.spec = spec
        self.train_frames = train_frames
        self.index = intrinsic_index(spec.base, spec.temporal_dim, train_frames)
        self._handle = spec.module.register_forward_hook(self._after)

    def remove(self) -> None:
        self._handle.remove()

    def _after(self, module, args, output):
        latents = args[0] if args else None
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5:
            return None
        spec = self.spec
        frames = latents.shape[2] // spec.patch_t
        if frames <= self.train_frames:
            return None
        tokens_per_frame = (latents.shape[3] // spec.patch_hw[0]) * (latents.shape[4] // spec.patch_hw[1])
        return tuple(
            self._rewrite(t, fn, frames, tokens_per_frame) for t, fn in zip(output, (torch.cos, torch.sin), strict=True)
        )

    def _rewrite(self, table: torch.Tensor, fn, frames: int, tokens_per_frame: int) -> torch.Tensor:
        flat = table.reshape(-1, table.shape[-1])
        if flat.shape[0] != frames * tokens_per_frame:
            raise RuntimeError(
                f"attention.rope_extension=riflex: the rotary table has {flat.shape[0]} rows, not the forward's "
                f"{frames} x {tokens_per_frame} video tokens (a sequence-parallel split is not supported)"
            )
        positions = torch.arange(frames, dtype=self.spec.dtype, device=table.device)
        column = fn(positions * torch.tensor(riflex_frequency(frames), dtype=self.spec.dtype)).to(table.dtype)
        column = column.repeat_interleave(tokens_per_frame)
        flat = flat.clone()  # the module's output may view its buffers; never write those
        flat[:, 2 * self.index] = column
        flat[:, 2 * self.index + 1] = column
        return flat.reshape(table.shape)
