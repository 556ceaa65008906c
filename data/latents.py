"""Latent normalisation: how raw VAE latents become the latents a transformer is trained on, and back.

Every family's diffusers pipeline normalises differently:

- Wan 2.1 / 2.2 (``AutoencoderKLWan``): ``(raw - latents_mean) / latents_std`` (per channel, from the VAE config).
- HunyuanVideo (``AutoencoderKLHunyuanVideo``): ``raw * scaling_factor``.
- Mochi-1 (``AutoencoderKLMochi``): ``(raw - latents_mean) * scaling_factor / latents_std``.

All three are one affine map per channel, ``normalized = (raw - shift) * scale``; prepare stores *normalized*
latents (ready for the transformer) and records ``{"convention", "shift", "scale", "formula"}`` in every shard
and in the index, so that a trainer that decodes samples for validation can undo it with `denormalize_latents`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FORMULA = "normalized = (raw - shift) * scale"


def make_latent_norm(convention: str, shift: Sequence[float], scale: Sequence[float]) -> dict:
    """The JSON-able record of a per-channel affine normalisation."""
    shift = [float(v) for v in shift]
    scale = [float(v) for v in scale]
    if len(shift) != len(scale):
        raise ValueError(f"latent norm {convention}: {len(shift)} shift values but {len(scale)} scale values")
    if any(v == 0 for v in scale):
        raise ValueError(f"latent norm {convention}: a scale of 0 cannot be inverted")
    return {"convention": convention, "shift": shift, "scale": scale, "formula": FORMULA}


def _view(values: Sequence[float], like: torch.Tensor, channel_dim: int) -> torch.Tensor:
    shape = [1] * like.ndim
    shape[channel_dim] = len(values)
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(shape)


def _check(norm: dict, latents: torch.Tensor, channel_dim: int) -> None:
    channels = latents.shape[channel_dim]
    if len(norm["shift"]) != channels:
        raise ValueError(
            f"latent norm {norm.get('convention')}: has {len(norm['shift'])} channels, latents have {channels} "
            f"(dim {channel_dim} of shape {tuple(latents.shape)})"
        )


def normalize_latents(raw: torch.Tensor, norm: dict, channel_dim: int = -4) -> torch.Tensor:
    """Raw VAE latents [..., C, F, H, W] -> normalized latents (float32)."""
    _check(norm, raw, channel_dim)
    raw = raw.float()
    return (raw - _view(norm["shift"], raw, channel_dim)) * _view(norm["scale"], raw, channel_dim)


def denormalize_latents(latents: torch.Tensor, norm: dict, channel_dim: int = -4) -> torch.Tensor:
    """Normalized latents [..., C, F, H, W] (as stored by prepare) -> raw VAE latents for ``vae.decode`` (float32)."""
    _check(norm, latents, channel_dim)
    latents = latents.float()
    return latents / _view(norm["scale"], latents, channel_dim) + _view(norm["shift"], latents, channel_dim)
