"""Rectified-flow matching as HunyuanVideo and Wan were trained: x_t = (1 - t) x0 + t eps, target eps - x0."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from radial.errors import ConfigError

SAMPLINGS = ("logit_normal", "uniform", "mode")
WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class FlowMatching:
    """How training timesteps are drawn and losses weighted.

    sampling: logit_normal (SD3), uniform, or mode (SD3's mode sampling with `mode_scale`); then the shift
    t' = shift * t / (1 + (shift - 1) * t) moves mass to high noise, as the models' schedulers do at inference.
    sigma_range: only noise levels in [lo, hi] are trained (a Wan2.2 A14B expert's share of the schedule), drawn by
    rejection so that the distribution keeps its shape inside the range.
    """

    sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0
    weighting: str = "none"
    sigma_range: tuple[float, float] = (0.0, 1.0)
    # > 1: the guidance-augmented target u + w * (target - u) for a guidance-distilled base, u the base's (LoRA off)
    # unconditional prediction (train.step.flow_matching_loss)
    distill_guidance: float = 1.0

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"train.timestep_sampling={self.sampling!r}: expected one of {list(SAMPLINGS)}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"train.loss_weighting={self.weighting!r}: expected one of {list(WEIGHTINGS)}")
        if not self.shift > 0:
            raise ConfigError(f"model.flow_shift={self.shift}: expected > 0")
        if not self.distill_guidance >= 1:
            raise ConfigError(f"train.distill_guidance={self.distill_guidance}: expected >= 1 (1 = off)")
        if not self.logit_std > 0:
            raise ConfigError(f"train.logit_std={self.logit_std}: expected > 0")
        r = list(self.sigma_range)
        if len(r) != 2 or not 0 <= r[0] < r[1] <= 1:
            hint = f" (reversed? train.timestep_range=[{r[1]},{r[0]}])" if len(r) == 2 and 0 <= r[1] < r[0] <= 1 else ""
            raise ConfigError(f"train.timestep_range={r}: expected [lo, hi] noise levels with 0 <= lo < hi <= 1{hint}")

    def sample_sigmas(self, batch: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """Noise levels t in (0, 1) (inside `sigma_range`) for a batch, drawn on the CPU from `generator`
        (reproducible on any device)."""
        sigmas = self._draw(batch, generator)
        lo, hi = self.sigma_range
        if (lo, hi) != (0.0, 1.0):
            kept = sigmas[(sigmas >= lo) & (sigmas <= hi)]
            for _ in range(1000):
                if kept.numel() >= batch:
                    break
                more = self._draw(max(256, batch), generator)
                kept = torch.cat([kept, more[(more >= lo) & (more <= hi)]])
            else:
                raise ConfigError(
                    f"train.timestep_range={[lo, hi]}: the {self.sampling} distribution (shift {self.shift}) almost "
                    "never falls there; widen the range or change train.timestep_sampling / model.flow_shift"
                )
            sigmas = kept[:batch]
        return sigmas.to(device)

    def _draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        if self.sampling == "logit_normal":
            u = torch.sigmoid(torch.randn(batch, generator=generator) * self.logit_std + self.logit_mean)
        else:
            u = torch.rand(batch, generator=generator)
            if self.sampling == "mode":
                u = 1 - u - self.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        u = u.clamp(1e-5, 1 - 1e-5)
        return self.shift * u / (1 + (self.shift - 1) * u)

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


def flow_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted mean squared error in fp32, averaged over elements then the batch; with `mask` (broadcast to the
    latents, 0 on clean conditioning such as Wan2.2 TI2V's first frame) over the masked-in elements only."""
    err = (pred.float() - target.float()).pow(2)
    if mask is None:
        per_sample = err.flatten(1).mean(1)
    else:
        m = mask.float().expand_as(err)
        per_sample = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return (per_sample * weights.float()).mean()
