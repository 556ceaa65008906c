"""Rectified-flow matching as HunyuanVideo and Wan were trained: x_t = (1 - t) x0 + t eps, target eps - x0."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SAMPLINGS = ("logit_normal", "uniform", "mode")
WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class FlowMatching:
    """How training timesteps are drawn and losses weighted.

    sampling: logit_normal (SD3), uniform, or mode (SD3's mode sampling with `mode_scale`); then the shift
    t' = shift * t / (1 + (shift - 1) * t) moves mass to high noise, as the models' schedulers do at inference.
    """

    sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0
    weighting: str = "none"

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"train.timestep_sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"train.loss_weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not self.shift > 0:
            raise ValueError(f"model.flow_shift must be > 0, got {self.shift}")
        if not self.logit_std > 0:
            raise ValueError(f"train.logit_std must be > 0, got {self.logit_std}")

    def sample_sigmas(self, batch: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """Noise levels t in (0, 1) for a batch, drawn on the CPU from `generator` (reproducible on any device)."""
        if self.sampling == "logit_normal":
            u = torch.sigmoid(torch.randn(batch, generator=generator) * self.logit_std + self.logit_mean)
        else:
            u = torch.rand(batch, generator=generator)
            if self.sampling == "mode":
                u = 1 - u - self.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        u = u.clamp(1e-5, 1 - 1e-5)
        sigmas = self.shift * u / (1 + (self.shift - 1) * u)
        return sigmas.to(device)

    def loss_weight(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights (SD3's options); ones for `none`."""
        if self.weighting == "sigma_sqrt":
            return (sigmas**-2.0).clamp(max=1e4)
        if self.weighting == "cosmap":
            bot = 1 - 2 * sigmas + 2 * sigmas**2
            return 2 / (math.pi * bot)
        return torch.ones_like(sigmas)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity) for clean latents x0 [B, ...], noise like x0 and per-sample t [B]."""
    t = sigmas.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * noise, noise - x0


def flow_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean squared error in fp32, averaged over elements then the batch."""
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (per_sample * weights.float()).mean()
