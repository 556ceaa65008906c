"""Ranks that stop with their launcher: when torchrun's agent (or `accelerate launch`) dies, each worker stops as on
SIGTERM (a checkpoint at the step all ranks agree on, then exit), and exits anyway after a bound.

torchrun starts every worker in its own session, so a launcher killed with SIGKILL (the OOM killer, a scheduler that
kills the launcher first) takes nothing with it: without this the workers go on training and rotating checkpoints in
output_dir as orphans, beside the next run. The death is noticed by radial.parent_death (a thread that polls the
parent pid once a second; why not prctl(PR_SET_PDEATHSIG) is said there).

What happens then: the thread calls the SIGTERM handler that the training loop installed (train.signals.StopFlag),
so the stop is the one SLURM preemption takes: all ranks stop after the same step (the flag is all-reduced) and save
a checkpoint. It calls the handler rather than sending SIGTERM: a signal that arrived after the loop had put the
default handler back (the ranks notice the death up to a second apart, and one may already be saving) would end the
process in the middle of its checkpoint. Before the loop has installed its handler (the model is being built) the
thread waits for it; after the loop (saving, exporting) the process ends by itself. Whatever does not end in time (a
collective waiting for a peer that is gone, a save that hangs) is cut off: the thread ends the process EXIT_AFTER_S
seconds after the launcher's death (RADIAL_ORPHAN_EXIT_S overrides it), with exit status 1.

Only processes started by a torch elastic agent (TORCHELASTIC_RUN_ID in the environment) are watched: a one-process
run under `nohup` outlives its shell on purpose.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from radial.parent_death import say, when_parent_dies

#: seconds from the launcher's death to the forced exit: one training step plus a checkpoint must fit
EXIT_AFTER_S = 120.0
EXIT_AFTER_VARIABLE = "RADIAL_ORPHAN_EXIT_S"
#: how often the stopping thread looks for the loop's handler
_LOOK_S = 0.25


def watch_launcher() -> threading.Thread | None:
    """Under a torch elastic launcher: start the thread that stops this process when the launcher dies (see the
    module docstring); returns it, or None when there is no launcher to watch."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    exit_after = float(os.environ.get(EXIT_AFTER_VARIABLE) or EXIT_AFTER_S)
    return when_parent_dies(lambda parent: _stop(parent, exit_after), name="launcher-watch")


def _stop(parent: int, exit_after: float) -> None:
    rank = os.environ.get("RANK", "0")
    say(
        f"rank {rank}: the launcher (pid {parent}) is gone: stopping as on SIGTERM (checkpoint, then exit; "
        f"at most {exit_after:g} s, {EXIT_AFTER_VARIABLE})"
    )
    deadline, asked = time.monotonic() + exit_after, False
    while time.monotonic() < deadline:
        handler = signal.getsignal(signal.SIGTERM)
        if not asked and callable(handler):
            asked = True
            with contextlib.suppress(Exception):  # the bound below must hold whatever the handler does
                handler(signal.SIGTERM, None)
        time.sleep(_LOOK_S)
    say(f"rank {rank}: did not stop within {exit_after:g} s of the launcher's death; exiting without it")
    os._exit(1)
