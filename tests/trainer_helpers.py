"""Compose trainer configs the way `train/lora.py` does, for tests (tiny model, tiny synthetic data)."""

from __future__ import annotations

from pathlib import Path

from train.config import compose as compose_config

__all__ = ["compose_config", "prepared_overrides", "tiny_overrides"]


def tiny_overrides(out: Path, data_root: Path, model: str = "tiny_wan", steps: int = 4) -> list[str]:
    """A run small enough for CPU tests: 17 frames at 64x64 (5 latent frames of 16 tokens), a few steps."""
    return [
        f"model={model}",
        f"output_dir={out}",
        f"data.root={data_root}",
        "data.num_videos=3",
        "data.frames=17",
        "data.height=64",
        "data.width=64",
        f"train.max_steps={steps}",
        "train.checkpoint_every=2",
        "train.keep_last=2",
        "logging.trackers=[]",
        "logging.loss_curve=false",
        "optim.lr=1e-3",
    ]


#: tiny_overrides' keys of the synthetic data source, which a prepared-latents dataset (data=latents) does not have
SYNTHETIC_KEYS = ("data.num_videos", "data.frames", "data.height", "data.width")


def prepared_overrides(out: Path, data_root: Path, model: str = "tiny_wan", steps: int = 4) -> list[str]:
    """`tiny_overrides` for shards that data.prepare wrote under `data_root` (data=latents, loading in-process)."""
    base = [o for o in tiny_overrides(out, data_root, model=model, steps=steps) if not o.startswith(SYNTHETIC_KEYS)]
    return ["data=latents", *base, "data.num_workers=0"]
