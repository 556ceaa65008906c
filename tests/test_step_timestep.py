"""The timestep the training step gives the model is the one the family's diffusers pipeline gives it at the same
noise level: read off the pipeline's own call of its transformer, not from a written constant.

A tiny random model learns under any timestep scale, so only this comparison notices a training step that
conditions the model on the wrong noise level (e.g. `sigmas` instead of `sigmas * 1000`).
"""

from __future__ import annotations

import diffusers
import pytest
import torch

from radial.models import get_adapter
from train.flow import FlowMatching
from train.step import flow_matching_loss
from train.tiny_pipeline import build_tiny_pipeline

# The published pipelines' scheduler settings that change what reaches the transformer (scheduler_config.json of
# genmo/mochi-1-preview: invert_sigmas); the others use FlowMatchEulerDiscreteScheduler's defaults plus a shift.
# wan22_ti2v: expand_timesteps (one timestep per token); hunyuan15: its guidance is a component (the tiny one: 1).
SCHEDULERS = {
    "wan": {"shift": 3.0},
    "hunyuan": {"shift": 7.0},
    "mochi": {"invert_sigmas": True},
    "hunyuan15": {"shift": 5.0},
    "wan22_ti2v": {"shift": 5.0},
}
STEP = 2  # a step inside the schedule (step 0 is pure noise, where a sign or scale error can hide)


class FixedSigma(FlowMatching):
    """Flow matching that draws one given noise level (the pipeline's), so both calls see the same sigma."""

    def __init__(self, sigma: float):
        super().__init__()
        object.__setattr__(self, "sigma", sigma)

    def sample_sigmas(self, batch, generator, device="cpu"):
        return torch.full((batch,), self.sigma)


def record_timesteps(transformer: torch.nn.Module) -> list[torch.Tensor]:
    """Every `timestep` the transformer is called with, in call order (a forward pre-hook)."""
    seen: list[torch.Tensor] = []
    transformer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["timestep"].detach().clone()), with_kwargs=True
    )
    return seen


def noise_level(scheduler, step: int) -> float:
    """The noise level s (x = (1 - s) x0 + s noise) of the latents the pipeline denoises at `step`: the scheduler's
    sigma, or 1 - sigma where it inverts its sigmas (Mochi, whose model predicts x0 - noise)."""
    sigma = float(scheduler.sigmas[step])
    return 1.0 - sigma if scheduler.config.invert_sigmas else sigma


@pytest.mark.parametrize("family", sorted(SCHEDULERS))
def test_step_timestep_equals_the_pipelines(family):
    """Guards train/step.py's `sigmas * 1000` and each adapter's timestep convention (Mochi's 1000 - t): the model
    sees, for a noise level, exactly the timestep the family's pipeline passes it at that noise level."""
    torch.manual_seed(0)
    pipe = build_tiny_pipeline(family)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**SCHEDULERS[family])
    seen = record_timesteps(pipe.transformer)
    with torch.no_grad():
        pipe(prompt="a red ball", num_frames=9, height=32, width=32, num_inference_steps=4, output_type="latent",
             **({} if family == "hunyuan15" else {"guidance_scale": 1.0}))  # fmt: skip
    assert len(seen) == 4, f"{family}: one transformer call per step expected, got {len(seen)}"
    piped = seen[STEP].float()
    sigma = noise_level(pipe.scheduler, STEP)
    assert 0.02 < sigma < 0.98

    adapter = get_adapter(family)
    model = pipe.transformer
    latents = adapter.make_dummy_latents(model, 1, 3, 4, 4)
    conditions = adapter.make_dummy_conditions(model, 1, latent_shape=latents.shape)
    seen.clear()
    with torch.no_grad():
        flow_matching_loss(adapter, model, FixedSigma(sigma), latents, conditions, torch.Generator(), torch.float32)
    (trained,) = seen
    # Both come from the same fp32 sigma: equal up to the rounding of how each side multiplies it out (1000 * s in
    # the step, the scheduler's own float32 arithmetic), far below the gap between neighbouring noise levels.
    torch.testing.assert_close(trained.float(), piped.expand_as(trained).float(), rtol=0, atol=1e-3)
