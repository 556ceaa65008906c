"""SLURM-style preemption: SIGTERM to the whole process group (the trainer and its data-loader workers) saves a
checkpoint and exits 0, and the run resumes from it."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.trainer_helpers import tiny_overrides
from train.checkpoint import list_checkpoints, verify_checkpoint
from train.signals import ignore_stop_signals

ROOT = Path(__file__).resolve().parents[1]


def _steps_logged(metrics: Path) -> int:
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def _live_processes(group: int) -> int:
    """Processes of the group that are not zombies (the trainer and its loader workers)."""
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(group)], capture_output=True, text=True).stdout.split()
    return sum(not s.startswith("Z") for s in states)


def _start(out: Path, data: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train" / "lora.py"), *tiny_overrides(out, data, steps=1000), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # Its own session: the trainer and its loader workers form a process group that the test signals as SLURM does.
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_sigterm_to_the_process_group_with_loader_workers_saves_and_resumes(tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    proc = _start(out, data, "data.num_workers=2", "train.checkpoint_every=0")
    try:
        deadline = time.monotonic() + 400
        # A few steps done, and the loader's workers running (they are started again every epoch).
        while _steps_logged(out / "metrics.jsonl") < 3 or _live_processes(proc.pid) < 3:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the trainer did not log 3 steps with its 2 workers in time"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        sent = time.monotonic()
        log, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log[-3000:]
    assert took < 30 and "stopped by SIGTERM" in log and "Traceback" not in log
    (final,) = list_checkpoints(out / "checkpoints")
    step = json.loads((final / "checkpoint.json").read_text())["step"]
    assert step >= 3 and verify_checkpoint(final) is None and not (out / "lora").exists()
    # Resume from it (the same trainer, no workers) and finish.
    done = subprocess.run(
        [sys.executable, str(ROOT / "train" / "lora.py"), *tiny_overrides(out, data, steps=step + 1)]
        + ["train.resume=latest", "train.checkpoint_every=0"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"resumed from {final} at step {step}" in done.stdout
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()


def _worker() -> None:
    ignore_stop_signals()
    time.sleep(120)


def test_a_loader_worker_ignores_stop_signals_except_its_parents_sigterm():
    """SLURM's SIGTERM / SIGUSR1 (sent by another process) leave a worker running; the trainer can still stop it
    (multiprocessing terminates daemonic workers with SIGTERM at exit)."""
    worker = multiprocessing.get_context("fork").Process(target=_worker, daemon=True)
    worker.start()
    time.sleep(0.5)  # past its worker_init_fn
    for name in ("TERM", "USR1"):
        subprocess.run(["kill", f"-{name}", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert worker.is_alive()
    worker.terminate()
    worker.join(10)
    assert worker.exitcode == 0
