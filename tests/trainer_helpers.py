"""Compose trainer configs the way `train/lora.py` does, for tests (tiny model, tiny synthetic data)."""

from __future__ import annotations

from pathlib import Path

from train.config import compose as compose_config

__all__ = ["compose_config", "tiny_overrides"]


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
