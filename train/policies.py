"""The loop's three decisions, each a small object that `Trainer.fit` consults once a step: what a non-finite loss
does, whether the run ends early (plateau, time limit), and whether a stop signal ends it. Each decides alike on
every rank through `agree` (a callable: True when the flag is set on any rank; `bool` on one process)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from radial.errors import TrainingError

Agree = Callable[[bool], bool]


class NonFiniteLoss(TrainingError):
    """Raised when losses stay NaN / inf (train.on_nan=stop, or more than train.max_nan_skips in a row)."""


@dataclass
class NanPolicy:
    """train.on_nan: `skip` drops a step with a non-finite loss (at most `max_skips` in a row), `stop` ends the run."""

    on_nan: str = "skip"
    max_skips: int = 3
    streak: int = 0

    def after_step(self, step: int, bad: bool) -> str | None:
        """Record one step; returns the line to print for a skipped step, raises NonFiniteLoss to stop."""
        if not bad:
            self.streak = 0
            return None
        self.streak += 1
        msg = f"step {step}: non-finite loss"
        if self.on_nan == "stop" or self.streak > self.max_skips:
            raise NonFiniteLoss(f"{msg}; stopping (train.on_nan={self.on_nan}, {self.streak} in a row)")
        return f"{msg}; step skipped ({self.streak} in a row, train.max_nan_skips={self.max_skips})"


@dataclass
class EarlyStop:
    """Ends the run before train.max_steps when the held-out loss has not improved by `min_delta` (a share) for
    `patience` validations, or once `time_limit_s` seconds have passed (0 turns either off)."""

    patience: int = 0
    min_delta: float = 0.0
    time_limit_s: float = 0.0
    best: float = math.inf
    stale: int = 0

    def check(self, metrics: dict | None, elapsed_s: float, agree: Agree = bool) -> str | None:
        """Why the run ends now (decided alike on every rank through `agree`), or None to go on."""
        if not (self.patience or self.time_limit_s):
            return None
        reason = None
        if metrics and self.patience and "val/loss" in metrics:
            loss = metrics["val/loss"]
            if loss < self.best * (1 - self.min_delta):
                self.best, self.stale = loss, 0
            else:
                self.best, self.stale = min(self.best, loss), self.stale + 1
            if self.stale >= self.patience:
                reason = (
                    f"held-out loss plateaued ({self.stale} validations without a "
                    f"{self.min_delta:.1%} gain on {self.best:.4f})"
                )
        if reason is None and self.time_limit_s and elapsed_s >= self.time_limit_s:
            reason = f"train.time_limit_s={self.time_limit_s:g} reached"
        if not agree(reason is not None):
            return None
        return reason or "another rank ended the run early"


@dataclass
class StopSignal:
    """A stop signal (SIGTERM, SIGUSR1, Ctrl-C ...) on any rank ends the loop after the step; Ctrl-C (SIGINT on
    every rank) also exports, the others only checkpoint so that the job resumes."""

    flag: object  # train.signals.StopFlag (or anything with `requested` and `signal_name`)
    stopped_by: str | None = None
    interrupted: bool = False

    def check(self, agree: Agree = bool) -> bool:
        """Whether the loop stops now; sets `stopped_by` and `interrupted` when it does."""
        if not agree(bool(self.flag.requested)):
            return False
        self.stopped_by = self.flag.signal_name or "a signal on another rank"
        self.interrupted = agree(self.flag.signal_name == "SIGINT")
        return True
