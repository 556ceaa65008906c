"""The LoRA in diffusers and ComfyUI formats with metadata (at the end of training, in every checkpoint, and from any
checkpoint on demand), the loss curve, the mask picture.

    python -m train.export outputs/run/checkpoints/checkpoint-00000060 [--out DIR] [--no-comfy]

writes the final-form files (`pytorch_lora_weights.safetensors`, `comfyui_lora.safetensors`) of a checkpoint into
DIR (default: the run's `exports/checkpoint-N`; every checkpoint also holds them in its own `lora/`): one writer,
`write_lora_files`, serves the final export, the checkpoints and this command.
"""

from __future__ import annotations

import json
from pathlib import Path

import radial
from radial.base_id import plain_config
from radial.errors import CheckpointError, MissingPathError
from radial.lora import DIFFUSERS_WEIGHT_NAME, adapter_metadata, export_comfy, lora_state_dict, write_diffusers_lora
from radial.mask.plot import frame_block_edges, save_mask_png
from radial.mask.stats import density_text
from train.checkpoint import DONE, FULL_FILE, LORA_FILE
from train.config import empty_transformer
from train.records import json_safe
from train.run_parts import RunView

COMFY_NAME = "comfyui_lora.safetensors"


def lora_info(run: RunView) -> dict:
    """What a LoRA file should tell about how it was made (stored in the safetensors header)."""
    cfg, parts = run.cfg, run.parts
    grid = parts.handle.last_grid
    # the clip lengths (pixel frames) of the data trained on: one number, or the sorted list with several buckets
    lengths = sorted({r["frames"] for r in getattr(run.dataset, "records", [])})
    return {
        "format": "radial-lora/1",
        "radial_lora_version": radial.__version__,
        "base_model": {
            "family": cfg.model.family,
            "source": cfg.model.source,
            "path": cfg.model.path,
            "expert": cfg.model.expert,  # Wan2.2 A14B: the expert this LoRA belongs to
            **(parts.base or {}),  # variant (T2V / I2V / TI2V), config_hash, weights (radial.base_id)
            "config": plain_config(run.unwrapped().config),  # to rebuild its shape (the export command)
        },
        "rank": cfg.lora.rank,
        "alpha": cfg.lora.alpha,
        "target_modules": parts.target_modules,
        # every attention setting, whole (radial.attention_settings), `auto` resolved: the kernel it trained with
        "attention": cfg.attention.settings().recorded(parts.backend),
        "training": {
            "steps": run.state.step,
            "latent_frames": grid.frames if grid else None,
            "latent_height": grid.height if grid else None,
            "latent_width": grid.width if grid else None,
            "frames": (lengths[0] if len(lengths) == 1 else lengths) or None,
            "timestep_range": cfg.train.timestep_range,  # the noise levels trained (null: all)
            "ema_decay": cfg.train.ema_decay,  # > 0: the weights are this moving average of the trained ones
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


def export_full(run: RunView, folder: Path, info: dict) -> Path:
    """train.mode=full: the whole transformer in diffusers format (`save_pretrained`: config.json + safetensors,
    loadable by its class's `from_pretrained`, so usable as `model.path` of a later run), with how it was trained
    beside it in radial_training.json."""
    transformer = run.unwrapped()
    transformer.save_pretrained(folder, safe_serialization=True)
    (folder / "radial_training.json").write_text(json.dumps(info, indent=1))
    return folder


def write_lora_files(
    folder: Path, lora_sd: dict, *, adapter, lora_meta: dict, info: dict, comfy: bool, transformer
) -> dict[str, str]:
    """The LoRA's final-form files in `folder`: diffusers keys (`transformer.*`; train.generate --lora and
    `load_lora_weights` load it) and, with `comfy` where the family has a key mapping, ComfyUI / original keys.
    `transformer` gives the shapes of fused original modules (a meta-device model will do)."""
    import diffusers

    pipeline_class = getattr(diffusers, adapter.pipeline_class_name)
    written = {"lora_diffusers": str(write_diffusers_lora(lora_sd, pipeline_class, folder, lora_meta, info))}
    if comfy and adapter.comfy_rules():
        scale = lora_meta["lora_alpha"] / lora_meta["r"]
        sd = adapter.comfy_lora_state_dict(lora_sd, transformer, scale)
        written["lora_comfy"] = str(export_comfy(sd, folder / COMFY_NAME, info))
    return written


def export_run(run: RunView) -> dict:
    """Write lora/ (diffusers), the ComfyUI file, loss_curve.png and mask.png under the run; returns their paths.

    train.mode=full writes transformer/ (the whole model, diffusers format) instead of the LoRA files."""
    cfg, parts, out = run.cfg, run.parts, run.out
    transformer = run.unwrapped()
    info = lora_info(run)
    written = {}
    if cfg.train.mode == "full":
        info = {k: v for k, v in info.items() if k not in ("rank", "alpha", "target_modules")}
        info["mode"] = "full"
        written["transformer"] = str(export_full(run, out / "transformer", info))
    else:
        written.update(
            write_lora_files(
                out / "lora",
                lora_state_dict(transformer),
                adapter=parts.adapter,
                lora_meta=adapter_metadata(parts.lora_config),
                info=info,
                comfy=cfg.train.export_comfy,
                transformer=transformer,
            )
        )
    if cfg.train.mode != "full" and cfg.train.export_comfy and not parts.adapter.comfy_rules():
        print(f"no ComfyUI key mapping for {cfg.model.family}: only the diffusers-format LoRA was written")
    if cfg.logging.loss_curve and run.state.losses:
        written["loss_curve"] = str(save_loss_curve(run.state.losses, out / "loss_curve.png"))
    plan, grid = parts.handle.last_plan, parts.handle.last_grid
    if plan is not None and grid is not None:
        mask = plan.block_mask.cpu().numpy()
        title = f"{cfg.model.family}: {grid.frames} frames x {grid.tokens_per_frame} tokens, {density_text(plan.stats.block_density)}"
        edges = frame_block_edges(grid.frames, grid.tokens_per_frame, plan.block_size)
        written["mask"] = str(save_mask_png(mask, out / "mask.png", title=title, frame_edges=edges))
    if (out / "base_transformer").is_dir():
        written["base_transformer"] = str(out / "base_transformer")
    summary = {"info": info, "files": written, "losses": run.state.losses}
    (out / "run_summary.json").write_text(json.dumps(json_safe(summary), allow_nan=False))
    return written


def _checkpoint_lora(checkpoint: Path) -> tuple[dict, dict, dict]:
    """A checkpoint's LoRA weights (PEFT keys), the adapter settings and our header info, from the files it holds."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not (checkpoint / DONE).is_file():
        raise MissingPathError(f"{checkpoint}: not a complete checkpoint (no {DONE}); give a checkpoints/checkpoint-N")
    if (checkpoint / FULL_FILE).is_file():
        raise CheckpointError(f"{checkpoint}: a train.mode=full checkpoint (the whole transformer), not a LoRA")
    if not (checkpoint / LORA_FILE).is_file():
        raise CheckpointError(f"{checkpoint}: no {LORA_FILE} (its LoRA weights); the checkpoint is incomplete")
    # The settings: from the checkpoint's own LoRA header; a checkpoint written before checkpoints held their LoRA
    # takes them from the run's final LoRA (a run's settings do not change between its checkpoints).
    own, final = checkpoint / "lora" / DIFFUSERS_WEIGHT_NAME, checkpoint.parent.parent / "lora" / DIFFUSERS_WEIGHT_NAME
    header = own if own.is_file() else final
    if not header.is_file():
        raise CheckpointError(
            f"{checkpoint}: neither lora/{DIFFUSERS_WEIGHT_NAME} in it (checkpoints written by an older version lack "
            f"it) nor the run's final {final} to take the LoRA settings from; resume the run with train.resume to "
            "write a checkpoint that has it"
        )
    with safe_open(str(header), framework="pt") as f:
        meta = f.metadata() or {}
    packed = json.loads(meta.get("lora_adapter_metadata", "{}"))
    lora_meta = {k.removeprefix("transformer."): v for k, v in packed.items()}
    info = json.loads(meta.get("radial_lora", "{}"))
    if not lora_meta or not info:
        raise CheckpointError(f"{header}: its header lacks the adapter settings or the radial_lora record")
    if header == final:  # the run's record, at this checkpoint's step
        info.setdefault("training", {})["steps"] = int(json.loads((checkpoint / DONE).read_text())["step"])
    return load_file(str(checkpoint / LORA_FILE)), lora_meta, info


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, comfy: bool = True) -> dict[str, str]:
    """Write the final-form LoRA files of a checkpoint into `out` (default: the run's exports/checkpoint-N)."""
    from radial.models import get_adapter

    checkpoint = Path(checkpoint)
    lora_sd, lora_meta, info = _checkpoint_lora(checkpoint)
    base = info.get("base_model") or {}
    adapter = get_adapter(base.get("family"))
    folder = Path(out) if out is not None else checkpoint.parent.parent / "exports" / checkpoint.name
    fused = comfy and any(rule.slot is not None for rule in adapter.comfy_rules())
    # the fused original modules' row layout comes from the base's shapes: its recorded config on the meta device
    transformer = empty_transformer(adapter, base["config"]) if fused and base.get("config") else None
    if fused and transformer is None:
        raise CheckpointError(
            f"{checkpoint}: its LoRA header records no base config, which the ComfyUI file's fused modules need; "
            "give --no-comfy"
        )
    return write_lora_files(
        folder, lora_sd, adapter=adapter, lora_meta=lora_meta, info=info, comfy=comfy, transformer=transformer
    )


def main(argv: list[str] | None = None) -> dict[str, str]:
    """`python -m train.export CHECKPOINT [--out DIR] [--no-comfy]`."""
    import argparse

    from radial.errors import cli_errors

    p = argparse.ArgumentParser(
        prog="python -m train.export",
        description="Write a checkpoint's LoRA in final form: pytorch_lora_weights.safetensors (diffusers keys; "
        "train.generate --lora, load_lora_weights) and comfyui_lora.safetensors (ComfyUI / original keys).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint folder: OUTPUT_DIR/checkpoints/checkpoint-N")
    p.add_argument("--out", default=None, help="output folder (default: OUTPUT_DIR/exports/checkpoint-N)")
    p.add_argument("--comfy", action=argparse.BooleanOptionalAction, default=True, help="also the ComfyUI file")
    args = p.parse_args(argv)
    with cli_errors():
        written = export_checkpoint(args.checkpoint, args.out, comfy=args.comfy)
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
