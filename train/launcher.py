"""torchrun or `accelerate launch` for preemptible jobs: a stop signal that every rank answered with a saved
checkpoint ends the job with status 0, without a traceback.

    python -m train.launcher torchrun --nproc_per_node 8 train/lora.py ...          (launch/torchrun.sh)
    python -m train.launcher accelerate launch --config_file ... train/lora.py ...  (launch/slurm.sbatch)

torch elastic's agent turns SIGTERM (SLURM preemption or time limit, `scancel`, `kill -TERM -<pgid>`) into a
SignalException: it passes the signal on to its workers, waits for them (30 s, then SIGKILL) and re-raises, so a
job whose ranks all saved and exited 0 ends with status 1 and a traceback (`accelerate launch`: status 128 + the
signal), and a scheduler records it as failed. This wrapper runs the launcher's own entry point in this process,
gives the workers a folder (RADIAL_STOP_REPORTS) in which each rank reports the step it saved before stopping on a
signal (`report_stop`, called by the trainer), and when the launcher ends on a signal exits 0 if every rank of this
node (LOCAL_WORLD_SIZE) reported the same step, else 128 + the signal's number, as a shell reports a process that
the signal killed. Every node's wrapper judges its own ranks.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

REPORTS_VARIABLE = "RADIAL_STOP_REPORTS"
#: the launcher names this wrapper runs (console-script entry points)
LAUNCHERS = ("torchrun", "accelerate")


def report_stop(step: int, checkpoint: str | Path, stopped_by: str) -> None:
    """This rank saved `checkpoint` at `step` and stops on a signal: tell the launcher wrapper, if there is one."""
    folder = os.environ.get(REPORTS_VARIABLE)
    if not folder or not Path(folder).is_dir():
        return
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    record = {
        "local_rank": rank,
        "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        "step": step,
        "checkpoint": str(checkpoint),
        "stopped_by": stopped_by,
    }
    path = Path(folder) / f"rank-{rank:04d}.json"
    part = path.with_suffix(".part")
    part.write_text(json.dumps(record))
    os.replace(part, path)  # the wrapper never reads half a report


def all_saved(folder: str | Path) -> tuple[bool, str]:
    """Whether every local rank reported a checkpoint of the same step in `folder`, and a line that says so."""
    reports = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("rank-*.json"))]
    if not reports:
        return False, "no rank reported a saved checkpoint"
    expected = reports[0]["local_world_size"]
    steps = sorted({r["step"] for r in reports})
    if len(reports) < expected:
        return False, f"{len(reports)} of {expected} ranks reported a saved checkpoint"
    if len(steps) > 1:
        return False, f"the ranks saved different steps ({', '.join(map(str, steps))})"
    return True, f"every rank ({expected}) saved step {steps[0]} ({reports[0]['checkpoint']})"


def _stop_statuses() -> dict[int, str]:
    """`accelerate launch` exits 128 + the signal's number where torchrun raises SignalException."""
    return {128 + s: s.name for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the launcher named first in `argv` with the rest as its arguments; the job's exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in LAUNCHERS:
        print(f"usage: python -m train.launcher {{{','.join(LAUNCHERS)}}} ARGS...", file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    found = list(entry_points(group="console_scripts", name=name))
    if not found:
        print(f"error: {name} is not installed in {sys.executable}'s environment", file=sys.stderr)
        return 2
    from torch.distributed.elastic.multiprocessing.api import SignalException

    with tempfile.TemporaryDirectory(prefix="radial-stop-") as reports:
        os.environ[REPORTS_VARIABLE] = reports  # the workers inherit the launcher's environment
        sys.argv = [name, *rest]
        try:
            status = found[0].load()()
        except SignalException as e:
            signal_name = signal.Signals(e.sigval).name
            status = 128 + int(e.sigval)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            signal_name = _stop_statuses().get(status)
        else:
            return status if isinstance(status, int) else 0
        if signal_name is None:
            return status
        saved, line = all_saved(reports)
        print(f"{name} stopped by {signal_name}: {line}", file=sys.stderr)
        if saved:
            print("resume with train.resume=latest", file=sys.stderr)
            return 0
        return status


if __name__ == "__main__":
    sys.exit(main())
