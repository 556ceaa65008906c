"""Graceful stop on SIGTERM / SIGUSR1 (SLURM preemption): the loop saves a checkpoint and exits cleanly.

SLURM (and `kill -TERM -<pgid>`) signals every process of the job step, data-loader workers included. The workers
ignore the stop signals (`ignore_stop_signals`, their worker_init_fn): if one died, the loader would fail the run
before the main process could save. The main process owns the shutdown and stops the workers itself.
"""

from __future__ import annotations

import signal

SIGNALS = ("SIGTERM", "SIGUSR1")


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """DataLoader worker_init_fn: this process ignores SIGTERM / SIGUSR1 (the main process decides when to stop)."""
    for name in SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


class StopFlag:
    """Installs handlers that only record the signal; the training loop polls `requested` between steps."""

    SIGNALS = SIGNALS

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
