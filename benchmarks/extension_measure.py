"""Measurements of one model of the extension experiment (benchmarks/extension.py): held-out flow-matching loss over
all tokens and over the content tokens, scored samples, and a run's cost from its metrics.jsonl."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from benchmarks.extension_data import ClipGeometry, derive, object_token_mask, text_states
from benchmarks.extension_score import mean_scores, score_clip


def heldout_loss(trainer, root: Path, truth: dict, geom: ClipGeometry, preset: dict, seed: int) -> dict:
    """Held-out flow-matching loss over all tokens and over the content tokens, and the denoising probe: the scores
    of the model's one-step clean-clip predictions x0^ = x_t - sigma v at `eval.probe_sigma` (`probe`, the scores'
    means over the clips), and for information at each level of `eval.probe_report` (`probes`, by level; verdicts
    use `eval.probe_sigma` only, fixed before the arms ran). The noise of each item and level comes from the
    experiment seed alone (`root`: a split, `truth`: its tracks.json items), so every arm is measured on the same
    draws (a paired comparison)."""
    from data import LatentDataset, collate
    from train.flow import noisy_latents
    from train.step import conditions_of, input_dtype

    ds = LatentDataset(root, model="wan")
    model = trainer.model
    was_training = model.training
    model.eval()
    device = trainer.accelerator.device
    dtype = input_dtype(model)
    total, content = [], []
    probes: dict[str, list] = {}
    # (noise draw, level): the loss levels' draws as before the probe existed; the probe draws its own
    levels = [(("heldout", j), float(x)) for j, x in enumerate(preset["eval"]["timesteps"])]
    levels.append((("probe",), float(preset["eval"]["probe_sigma"])))
    levels += [(("probe", float(x)), float(x)) for x in preset["eval"].get("probe_report", [])]
    try:
        with torch.no_grad(), trainer.averaged_weights():  # a base trained with train.ema_decay: its average
            for i in range(min(len(ds), preset["eval"]["heldout"])):
                item = ds[i]
                key = item["meta"]["key"]
                batch = collate([item])
                x0 = batch["latents"].to(device, torch.float32)
                conds = conditions_of(batch, device, dtype)
                mask = object_token_mask(truth[key], geom, x0.shape[2]).to(device)
                for draw, sigma in levels:
                    gen = torch.Generator().manual_seed(derive(seed, draw[0], key, *draw[1:]))
                    noise = torch.randn(x0.shape, generator=gen).to(device)
                    sig = torch.full((1,), sigma, device=device)
                    x_t, target = noisy_latents(x0, noise, sig)
                    with trainer.accelerator.autocast():
                        pred = trainer.parts.adapter.predict(model, x_t.to(dtype), sig * 1000, conds)
                    if draw[0] == "probe":  # what the model makes of the clip in one step: scored like a sample
                        level = "probe" if len(draw) == 1 else str(sigma)
                        probes.setdefault(level, []).append(score_clip((x_t - sigma * pred.float())[0].cpu(), geom))
                        continue
                    err = ((pred.float() - target) ** 2).mean(1)  # [1, F, H, W]
                    tokens = torch.nn.functional.avg_pool2d(err, 2)[0]  # [F, H/2, W/2]: Wan's 2x2 patches
                    total.append(float(tokens.mean()))
                    content.append(float(tokens[mask].mean()))
    finally:
        model.train(was_training)
    means = {level: mean_scores(v) for level, v in probes.items()}
    probe = means.pop("probe")
    return {"loss": statistics.fmean(total), "loss_content": statistics.fmean(content), "probe": probe, "probes": means}


def sample_scores(
    trainer, frames: int, count: int, tag: str, geom: ClipGeometry, preset: dict, seed: int
) -> tuple[list[dict], torch.Tensor]:
    """`count` clips of `frames` latent frames sampled from the trainer's model (seeded by the experiment seed
    and the sample index alone: every arm starts from the same noise), their scores, and the first clip."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from radial.generation import ClipSpec, PromptEmbeds, generate

    p = preset
    model = trainer.unwrapped()
    was_training = model.training
    model.eval()
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=model,
        vae=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=p["flow_shift"]),
    )
    pipe.set_progress_bar_config(disable=True)
    embeds = PromptEmbeds(
        {
            "prompt_embeds": text_states(p["text_len"], p["text_dim"])[None],
            "prompt_attention_mask": torch.ones(1, p["text_len"], dtype=torch.int64),
        },
        prompt="synthetic",
    )
    scores, first = [], None
    try:
        for k in range(count):
            clip = ClipSpec(
                frames=4 * (frames - 1) + 1,
                height=8 * p["latent_size"],
                width=8 * p["latent_size"],
                num_inference_steps=p["eval"]["sample_steps"],
                guidance_scale=1.0,
                seed=derive(seed, "sample", tag, k),
                max_sequence_length=p["text_len"],
            )
            with trainer.averaged_weights(), trainer.accelerator.autocast():
                result = generate(pipe, clip, embeds=embeds, handles=trainer.parts.handle, decode=False, family="wan")
            latents = result.latents[0].float().cpu()
            scores.append(score_clip(latents, geom))
            first = latents if first is None else first
    finally:
        model.train(was_training)
    return scores, first


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [x for x in lines if "step_time_s" in x]  # training steps (validation lines hold val/* only)


def run_cost(run: Path) -> dict:
    """Step time (median after two warm-up steps), training time (sum of step times), peak memory of a run."""
    m = [x for x in _metrics(run) if "step_time_s" in x]
    times = [x["step_time_s"] for x in m]
    steady = times[2:] or times
    return {
        "step_s": statistics.median(steady) if steady else math.nan,
        "train_s": sum(times),
        "peak_memory_gb": max((x.get("peak_memory_gb", 0.0) for x in m), default=math.nan),
        "attention_density": m[-1].get("block_density", 1.0) if m else math.nan,
    }
