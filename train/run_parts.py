"""What validation and export read of a run, as explicit inputs (torchtitan's validator and checkpointer take
explicit parts, not the trainer): built once by the trainer, read by train.eval.validation and train.export."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class RunView:
    """The parts of a run that validation and export read; the trainer owns them, this view only points at them.

    `cfg`, `parts`, `dataset` and `state` are the trainer's live objects (the step and the losses move as it
    trains); the model is read through getters because wrappers (Accelerate's `prepare`) hold it."""

    cfg: Any  # train.config.Config (or a DictConfig of its keys)
    accelerator: Any  # accelerate.Accelerator
    out: Path  # output_dir
    parts: Any  # train.components.ModelParts
    dataset: Any  # the training LatentDataset
    state: Any  # train.checkpoint.TrainState: step, losses
    sigma_range: tuple[float, float]  # the noise levels trained (train.timestep_range)
    dp_rank: int  # data-parallel rank and world: the ranks of one sequence-parallel group share a sample
    dp_world: int
    sp: Any  # radial.parallel's sequence-parallel state (None without sequence parallelism)
    model: Callable[[], torch.nn.Module]  # the wrapped (prepared) model: what runs forwards
    unwrapped: Callable[[], torch.nn.Module]  # the transformer itself (configs, state dicts, pipelines)
    averaged_weights: Callable[[], AbstractContextManager]  # the weights' moving average swapped in (train.ema_decay)
