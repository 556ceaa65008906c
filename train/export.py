"""End of training: the LoRA in diffusers and ComfyUI formats with metadata, the loss curve, the mask picture."""

from __future__ import annotations

import json
from pathlib import Path

import radial
from radial.lora import export_comfy, export_diffusers, lora_state_dict
from radial.mask.plot import frame_block_edges, save_mask_png
from train.records import json_safe


def lora_info(trainer) -> dict:
    """What a LoRA file should tell about how it was made (stored in the safetensors header)."""
    cfg, parts = trainer.cfg, trainer.parts
    grid = parts.handle.last_grid
    meta = trainer.dataset.items[0] if hasattr(trainer.dataset, "items") and trainer.dataset.items else {}
    return {
        "format": "radial-lora/1",
        "radial_lora_version": radial.__version__,
        "base_model": {
            "family": cfg.model.family,
            "source": cfg.model.source,
            "path": cfg.model.path,
            "expert": cfg.model.expert,  # Wan2.2 A14B: the expert this LoRA belongs to
        },
        "rank": cfg.lora.rank,
        "alpha": cfg.lora.alpha,
        "target_modules": parts.target_modules,
        "radial": {
            "backend": parts.backend,  # `auto` resolved: the kernel the LoRA was trained with
            "decay_factor": cfg.attention.decay_factor,
            "dense_layers": cfg.attention.dense_layers,
            "block_size": cfg.attention.block_size,
            "sink": cfg.attention.sink,
            "decay_adjacent": cfg.attention.decay_adjacent,
            "train_frames": cfg.attention.train_frames,
            "rope_extension": cfg.attention.rope_extension,
            "extrapolation_decay": cfg.attention.extrapolation_decay,
        },
        "training": {
            "steps": trainer.state.step,
            "latent_frames": grid.frames if grid else None,
            "latent_height": grid.height if grid else None,
            "latent_width": grid.width if grid else None,
            "frames": meta.get("frames") if isinstance(meta, dict) else None,
            "timestep_range": cfg.train.timestep_range,  # the noise levels trained (null: all)
        },
    }


def save_loss_curve(losses: list[tuple[int, float]], path: Path) -> Path:
    """Loss per step and its running mean, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([s for s, _ in losses])
    values = np.array([v for _, v in losses])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, values, lw=0.8, alpha=0.5, label="loss")
    if len(values) >= 5:
        k = max(2, len(values) // 10)
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def export_full(trainer, folder: Path, info: dict) -> Path:
    """train.mode=full: the whole transformer in diffusers format (`save_pretrained`: config.json + safetensors,
    loadable by its class's `from_pretrained`, so usable as `model.path` of a later run), with how it was trained
    beside it in radial_training.json."""
    transformer = trainer._unwrapped()
    transformer.save_pretrained(folder, safe_serialization=True)
    (folder / "radial_training.json").write_text(json.dumps(info, indent=1))
    return folder


def export_run(trainer) -> dict:
    """Write lora/ (diffusers), the ComfyUI file, loss_curve.png and mask.png under the run; returns their paths.

    train.mode=full writes transformer/ (the whole model, diffusers format) instead of the LoRA files."""
    import diffusers

    cfg, parts, out = trainer.cfg, trainer.parts, trainer.out
    transformer = trainer._unwrapped()
    info = lora_info(trainer)
    written = {}
    if cfg.train.mode == "full":
        info = {k: v for k, v in info.items() if k not in ("rank", "alpha", "target_modules")}
        info["mode"] = "full"
        written["transformer"] = str(export_full(trainer, out / "transformer", info))
    else:
        pipeline_class = getattr(diffusers, parts.adapter.pipeline_class_name)
        written["lora_diffusers"] = str(
            export_diffusers(transformer, pipeline_class, out / "lora", parts.lora_config, info)
        )
    if cfg.train.mode == "full":
        pass
    elif cfg.train.export_comfy and parts.adapter.comfy_rules():
        scale = cfg.lora.alpha / cfg.lora.rank
        sd = parts.adapter.comfy_lora_state_dict(lora_state_dict(transformer), transformer, scale)
        written["lora_comfy"] = str(export_comfy(sd, out / "lora" / "comfyui_lora.safetensors", info))
    elif cfg.train.export_comfy:
        print(f"no ComfyUI key mapping for {cfg.model.family}: only the diffusers-format LoRA was written")
    if cfg.logging.loss_curve and trainer.state.losses:
        written["loss_curve"] = str(save_loss_curve(trainer.state.losses, out / "loss_curve.png"))
    plan, grid = parts.handle.last_plan, parts.handle.last_grid
    if plan is not None and grid is not None:
        mask = plan.block_mask.cpu().numpy()
        title = f"{cfg.model.family}: {grid.frames} frames x {grid.tokens_per_frame} tokens, density {plan.stats.block_density:.3f}"
        edges = frame_block_edges(grid.frames, grid.tokens_per_frame, plan.block_size)
        written["mask"] = str(save_mask_png(mask, out / "mask.png", title=title, frame_edges=edges))
    if (out / "base_transformer").is_dir():
        written["base_transformer"] = str(out / "base_transformer")
    summary = {"info": info, "files": written, "losses": trainer.state.losses}
    (out / "run_summary.json").write_text(json.dumps(json_safe(summary), allow_nan=False))
    return written
