"""Resumable checkpoints through Accelerate's save_state, written atomically, the last K kept.

Accelerate saves optimizer, scheduler, RNG states of every process and our registered objects (train state,
sampler position); a save hook replaces the transformer's full weights by its LoRA weights, so a checkpoint of a
14B model stays the size of its adapter.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

PREFIX = "checkpoint-"
DONE = "checkpoint.json"
LORA_FILE = "lora_adapter.safetensors"
FULL_FILE = "transformer.safetensors"  # train.mode=full: every weight


class TrainState:
    """The step counter and loss history, checkpointed with the rest (Accelerate's register_for_checkpointing)."""

    def __init__(self) -> None:
        self.step = 0
        self.losses: list[tuple[int, float]] = []

    def state_dict(self) -> dict:
        return {"step": self.step, "losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.losses = [tuple(x) for x in state["losses"]]


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root (those with their marker file), oldest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / DONE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """`train.resume`: empty -> None; `latest` -> newest complete checkpoint (None if there is none); else a path."""
    if resume in (None, "", "none", "null"):
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / DONE).is_file():
        raise FileNotFoundError(
            f"train.resume={resume!r}: not a complete checkpoint directory (expected {path / DONE}); "
            f"complete ones under {root}: {[p.name for p in list_checkpoints(root)]}"
        )
    return path


class CheckpointManager:
    """Save and load training state under `root` with an accelerator; the model weights are the trainable ones
    (`weights_file`: the LoRA, or the whole transformer in train.mode=full), written by `save_lora`."""

    def __init__(
        self,
        accelerator,
        root: str | Path,
        keep_last: int,
        save_lora: Callable[[Path], None],
        load_lora: Callable[[Path], None],
        save_kwargs: dict | None = None,
        load_kwargs: dict | None = None,
        weights_file: str = LORA_FILE,
    ) -> None:
        """`save_kwargs` / `load_kwargs` go to Accelerate's save_state / load_state (DeepSpeed's save_checkpoint /
        load_checkpoint: exclude_frozen_parameters, load_module_strict)."""
        if keep_last < 1:
            raise ValueError(f"train.keep_last must be >= 1, got {keep_last}")
        self.accelerator = accelerator
        self.root = Path(root)
        self.keep_last = keep_last
        self._save_lora, self._load_lora = save_lora, load_lora
        self.weights_file = weights_file
        self._save_kwargs, self._load_kwargs = dict(save_kwargs or {}), dict(load_kwargs or {})
        accelerator.register_save_state_pre_hook(self._on_save)
        accelerator.register_load_state_pre_hook(self._on_load)

    def _on_save(self, models: list, weights: list, output_dir: str) -> None:
        # Replace full model weights by the adapter: Accelerate saves whatever remains in `weights`.
        if self.accelerator.is_main_process:
            self._save_lora(Path(output_dir) / self.weights_file)
        while weights:
            weights.pop()

    def _on_load(self, models: list, input_dir: str) -> None:
        self._load_lora(Path(input_dir) / self.weights_file)
        while models:
            models.pop()

    def save(self, step: int) -> Path:
        """Write checkpoint-<step> atomically (temporary directory, then rename) and prune old ones."""
        acc = self.accelerator
        final = self.root / f"{PREFIX}{step:08d}"
        tmp = self.root / f".tmp-{PREFIX}{step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), **self._save_kwargs)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / DONE).write_text(json.dumps({"step": step, "time": time.time(), "torch": torch.__version__}))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in list_checkpoints(self.root)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load(self, path: Path) -> int:
        """Restore everything saved by `save`; returns the checkpoint's step."""
        self.accelerator.load_state(str(path), **self._load_kwargs)
        return int(json.loads((path / DONE).read_text())["step"])
