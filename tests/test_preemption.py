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

import pytest

from tests.trainer_helpers import compose_config, tiny_overrides
from train.checkpoint import list_checkpoints, verify_checkpoint
from train.config import validate
from train.signals import ignore_stop_signals
from train.trainer import Trainer

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


@pytest.mark.slow
def test_ddp_ranks_stop_together_when_one_rank_is_signalled(tmp_path):
    """SIGTERM to rank 1 alone (2 processes, gloo on CPU): the stop flag is all-reduced every step, so both ranks
    stop after the same step, save one checkpoint together and exit 0."""
    out, data = tmp_path / "run", tmp_path / "data"
    Trainer(validate(compose_config(tiny_overrides(tmp_path / "prep", data, steps=1))))  # prepare the data once
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train/lora.py"]
    cmd += [*tiny_overrides(out, data, steps=1000), "train.checkpoint_every=0"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 400
        while _steps_logged(out / "metrics.jsonl") < 2:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the ranks did not log 2 steps in time"
            time.sleep(0.2)
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        rank1 = next(
            p
            for p in ranks
            if "LOCAL_RANK=1" in Path(f"/proc/{p}/environ").read_bytes().decode(errors="replace").replace("\0", " ")
        )
        os.kill(int(rank1), signal.SIGTERM)
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log[-3000:]
    assert "stopped by a signal on another rank" in log or "stopped by SIGTERM" in log
    (final,) = list_checkpoints(out / "checkpoints")
    step = json.loads((final / "checkpoint.json").read_text())["step"]
    assert step == _steps_logged(out / "metrics.jsonl") and verify_checkpoint(final) is None
    assert not (out / "lora").exists()
