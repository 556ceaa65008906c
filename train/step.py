"""One flow-matching training loss on a batch: the code path shared by the trainer and the step benchmark."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from train.flow import FlowMatching, flow_loss, noisy_latents

BATCH_ONLY = ("latents", "meta", "cursor")


def conditions_of(batch: Mapping[str, Any], device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The model conditions of a collated batch (text embeddings, masks, ...), on `device`; floating-point ones in
    `dtype` (the model's), since prepared text states may be stored in another precision (bf16 by default)."""
    return {k: _to(v, device, dtype) for k, v in batch.items() if k not in BATCH_ONLY}


def _to(value: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if dtype is not None and value.is_floating_point():
        return value.to(device, dtype)
    return value.to(device)


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model's inputs are given in: that of its frozen weights (model.dtype), fp32 when every weight
    trains (train.mode=full keeps fp32 masters; autocast computes in bf16)."""
    return next((p.dtype for p in model.parameters() if not p.requires_grad), torch.float32)


def flow_matching_loss(
    adapter,
    model: torch.nn.Module,
    flow: FlowMatching,
    x0: torch.Tensor,
    conditions: Mapping[str, Any],
    generator: torch.Generator,
    model_dtype: torch.dtype,
    uncond_text: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Noise clean latents x0 [B, C, F, H, W] at sampled t, predict the velocity, return the weighted MSE.

    Noise and t come from `generator` on the CPU (reproducible on any device); math outside the model in fp32.
    Streams the family denoises with the video (FamilySpec.joint_latents: MiniMax-H3's sound track) are noised at the
    same t and their losses added. `flow.distill_guidance` w > 1 trains towards u + w * (target - u), u the base's
    (LoRA off) prediction with the text states `uncond_text` (the empty prompt's, batched), for guidance-distilled
    bases whose one forward must stay the guided one (see README, "guidance-distilled bases").
    """
    device = x0.device
    x0 = x0.float()
    sigmas = flow.sample_sigmas(x0.shape[0], generator)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    x_t, target = noisy_latents(x0, noise, sigmas.to(device))
    weight = flow.loss_weight(sigmas).to(device)
    timestep = sigmas.to(device) * 1000
    joint = adapter.spec.joint_latents
    targets = {}
    if joint:
        conditions = dict(conditions)
        for name in joint:
            clean = conditions[name].float()
            stream_noise = torch.randn(clean.shape, generator=generator).to(device)
            noisy, targets[name] = noisy_latents(clean, stream_noise, sigmas.to(device))
            conditions[name] = noisy.to(model_dtype)
    if flow.distill_guidance != 1.0:
        if uncond_text is None:
            raise ValueError("train.distill_guidance > 1 needs the unconditional text states (uncond_text)")
        with torch.no_grad(), adapters_off(model):
            base = adapter.predict_joint(model, x_t.to(model_dtype), timestep, {**conditions, **uncond_text})
        w = flow.distill_guidance
        target = base[0].float() + w * (target - base[0].float())
        targets = {n: base[1][n].float() + w * (t - base[1][n].float()) for n, t in targets.items()}
    pred, preds = adapter.predict_joint(model, x_t.to(model_dtype), timestep, conditions)
    # Clean conditioning latents (Wan2.2 TI2V's first frame, mask 0) are input, not something to denoise.
    loss = flow_loss(pred, target, weight, conditions.get("first_frame_mask"))
    return loss + sum(flow_loss(preds[n], targets[n], weight) for n in joint) if joint else loss


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module):
    """The model without its LoRA (PEFT tuner layers disabled) inside the block: the base's prediction."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A generator for one micro-step's noise and timesteps: reproducible across resumes and device types.

    `rank` is the data-parallel rank: the ranks of one sequence-parallel group draw the same noise."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
