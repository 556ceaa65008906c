"""Graceful stop on SIGTERM / SIGUSR1 (SLURM preemption): the loop saves a checkpoint and exits cleanly. Ctrl-C
(SIGINT) stops the same way and also exports the LoRA of the step reached (exit status INTERRUPTED); a second
Ctrl-C, until the process ends, stops it at once (os._exit: a KeyboardInterrupt could land in a destructor, which
Python reports with a traceback and then goes on).

SLURM (and `kill -TERM -<pgid>`) signals every process of the job step, data-loader workers included. If a worker
died, the loader would fail the run before the main process could save, so the workers leave the stop signals to
the main process: the loader's iterator is created (the workers forked) with the signals blocked
(`stop_signals_blocked`), so that none is lost or kills a worker before its worker_init_fn (`ignore_stop_signals`)
has decided. One SIGTERM still ends a worker: its parent's (as PyTorch's own worker handler does): multiprocessing
stops daemonic workers with SIGTERM when the trainer exits, and a worker deaf to that would keep it waiting forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
#: exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it)
INTERRUPTED = 130


def _stop_signals() -> set[signal.Signals]:
    return {getattr(signal, name) for name in SIGNALS if hasattr(signal, name)}


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM / SIGUSR1 in this thread for the block (processes forked inside start with them blocked); a
    signal that arrives meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signals())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """DataLoader worker_init_fn: this process ignores SIGUSR1 and SIGINT (a terminal's Ctrl-C reaches the whole
    process group), and SIGTERM unless its parent sent it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also discards one that is pending
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # also discards one that is pending
    if not hasattr(signal, "sigwaitinfo"):  # no sender pid to tell them apart (not Linux): ignore them all
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    # SIGTERM stays blocked (forked so by `stop_signals_blocked`; blocked again here for other callers) and pending
    # until a thread takes it and looks at who sent it. Threads started later in this worker inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    if hasattr(signal, "SIGUSR1"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    parent = os.getppid()
    threading.Thread(target=_exit_on_sigterm_from, args=(parent,), name="sigterm-from-parent", daemon=True).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)  # the trainer stops its workers


def _exit_at_once(signum: int, frame) -> None:
    os.write(2, b"\ninterrupted: stopped at once (second Ctrl-C); the last complete checkpoint, if any, is kept\n")
    os._exit(INTERRUPTED)


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
            # After a Ctrl-C the checkpoint and export follow the loop: another Ctrl-C still stops at once.
            interrupted = sig == signal.SIGINT and self.signal_name == "SIGINT"
            signal.signal(sig, _exit_at_once if interrupted else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT":
            if self.signal_name == "SIGINT":
                _exit_at_once(signum, frame)
            # os.write: print() is not safe inside a signal handler (the interrupted code may be printing)
            os.write(
                2, b"\nCtrl-C: stopping after this step (checkpoint and LoRA export); Ctrl-C again stops at once\n"
            )
        if self.signal_name is None or name == "SIGINT":
            self.signal_name = name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
