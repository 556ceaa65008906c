"""An exponential moving average of the trained weights (train.ema_decay > 0), diffusers' EMAModel underneath.

Why: small batches make single-step weights noisy, so samples swing from one checkpoint to the next; the average
is what diffusion trainers sample and export (diffusers' train_text_to_image --use_ema, SimpleTuner's EMA for LoRA).
The raw weights keep training and are what a checkpoint resumes; the average travels in the checkpoint beside them
(Accelerate's registered objects) and is swapped in for validation, the checkpoint's `lora/` and the final export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch


class WeightAverage:
    """The EMA of `params` (the trainable ones, in their training device and dtype) with diffusers' warm-up:
    decay min(`decay`, (1 + n) / (10 + n)) at update n, so early averages are not dominated by the initial weights."""

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float) -> None:
        from diffusers.training_utils import EMAModel

        self.params = list(params)
        self.ema = EMAModel(self.params, decay=decay, foreach=True)

    def update(self) -> None:
        """One average step after an optimizer step."""
        self.ema.step(self.params)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model for the block's duration; the training weights back afterwards."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    @property
    def updates(self) -> int:
        return self.ema.optimization_step

    # Accelerate's register_for_checkpointing saves and loads these.
    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)
        device = self.params[0].device if self.params else None
        self.ema.to(device=device)  # the pickle may come back on the CPU


# Accelerate numbers the registered objects' files in registration order: TrainState, the data cursor, the average.
_AVERAGE_FILE = "custom_checkpoint_2.pkl"


def has_weight_average(checkpoint: Path | str) -> bool:
    """Whether a checkpoint directory holds a moving average (written by a run with train.ema_decay > 0)."""
    return (Path(checkpoint) / _AVERAGE_FILE).is_file()
