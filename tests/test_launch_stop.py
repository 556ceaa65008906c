"""Two processes (gloo on CPU) as a cluster user runs them: a second run on a live run's output_dir is refused, the
workers of a launcher killed with SIGKILL stop by themselves with a usable checkpoint, and SIGTERM to the process
group of `launch/torchrun.sh` ends the job with status 0 once every rank saved. Also the parts alone: the bound on
an orphan's stop, and how the launcher wrapper judges the ranks' reports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer_helpers import tiny_overrides
from train.checkpoint import list_checkpoints, verify_checkpoint
from train.launcher import all_saved

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _steps_logged(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def _wait_for_steps(proc: subprocess.Popen, out: Path, log: Path, steps: int = 2) -> None:
    deadline = time.monotonic() + 300
    while _steps_logged(out) < steps:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the ranks did not log their first steps in time"
        time.sleep(0.2)


def alive(pid: int) -> bool:
    """Whether `pid` runs (an exited orphan may linger as a zombie until init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _ranks(agent: int) -> dict[int, int]:
    """RANK -> pid of the agent's worker processes."""
    pids = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True).stdout.split()
    ranks = {}
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(v for v in environ if v.startswith(b"RANK="))
        ranks[int(rank[5:])] = int(pid)
    return ranks


def _saved_step(out: Path) -> int:
    (final,) = list_checkpoints(out / "checkpoints")
    assert verify_checkpoint(final) is None
    return json.loads((final / "checkpoint.json").read_text())["step"]


@pytest.mark.slow
def test_live_run_refuses_a_second_and_its_workers_stop_when_the_launcher_is_killed(tmp_path):
    out, data, log = tmp_path / "run", tmp_path / "data", tmp_path / "log"
    overrides = [*tiny_overrides(out, data, steps=100_000), "train.checkpoint_every=0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train/lora.py"]
    with open(log, "w") as sink:  # a file: the orphans keep writing to it after the launcher is gone
        proc = subprocess.Popen([*cmd, *overrides], cwd=ROOT, env=_env(RADIAL_ORPHAN_EXIT_S="60"), stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    ranks = {}
    try:
        _wait_for_steps(proc, out, log)
        ranks = _ranks(proc.pid)
        assert sorted(ranks) == [0, 1]
        # A second run on the same output_dir (resuming, as a requeued job would) is refused while the first lives.
        second = subprocess.run(
            [sys.executable, "train/lora.py", *overrides, "train.resume=latest"],
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.startswith(f"error: output_dir {out} is in use by a live run (host {socket.gethostname()}")
        assert f", pid {ranks[0]}, since " in second.stderr and second.stderr.count("\n") == 1
        assert "train.resume=latest" not in (out / ".hydra" / "overrides.yaml").read_text()  # the live run's record
        # The launcher killed outright: both workers notice, save one checkpoint together and exit.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while any(alive(pid) for pid in ranks.values()):
            assert time.monotonic() - killed < 60, "the workers outlived their launcher past the bound"
            time.sleep(0.2)
    finally:
        for pid in ranks.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert f"the launcher (pid {proc.pid}) is gone" in text
    assert "stopped by SIGTERM" in text or "stopped by a signal on another rank" in text  # whichever noticed first
    assert "did not stop within" not in text and "Traceback" not in text
    assert _saved_step(out) == _steps_logged(out)


@pytest.mark.slow
def test_sigterm_to_the_torchrun_script_group_ends_the_job_with_status_0(tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [*tiny_overrides(out, data, steps=100_000), "train.checkpoint_every=0"]
    env = _env(NPROC="2", PYTHON=sys.executable, MASTER_PORT=str(_free_port()))
    log = tmp_path / "log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(["bash", "launch/torchrun.sh", *overrides], cwd=ROOT, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_for_steps(proc, out, log)
        os.killpg(proc.pid, signal.SIGTERM)  # as SLURM or `kill -TERM -<pgid>`: the launcher gets it too
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    step = _saved_step(out)
    assert f"torchrun stopped by SIGTERM: every rank (2) saved step {step} " in text
    assert "Traceback" not in text and "SignalException" not in text


_ORPHAN = """
import os, signal, subprocess, sys, time
if sys.argv[1] == "launcher":
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "RADIAL_ORPHAN_EXIT_S": "1"}
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "worker"], env=env, start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(60)
else:
    from train.parent_watch import watch_launcher
    signal.signal(signal.SIGTERM, lambda *a: print("asked to stop", file=sys.stderr, flush=True))  # a stop that never finishes
    watch_launcher()
    print("watching", file=sys.stderr, flush=True)
    time.sleep(60)
"""


def test_an_orphan_whose_stop_hangs_exits_after_the_bound(tmp_path):
    log = tmp_path / "log"
    with open(log, "w") as sink:
        launcher = subprocess.Popen([sys.executable, "-c", _ORPHAN, "launcher", _ORPHAN], cwd=ROOT, env=_env(),
                                    stdout=subprocess.PIPE, stderr=sink, text=True)  # fmt: skip
    worker = int(launcher.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while "watching" not in log.read_text():
            assert time.monotonic() < deadline and alive(worker), log.read_text()
            time.sleep(0.05)
        launcher.kill()
        launcher.wait()
        killed = time.monotonic()
        while alive(worker):
            assert time.monotonic() - killed < 10, "the orphan outlived its bound"
            time.sleep(0.05)
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
    text = log.read_text()
    assert "asked to stop" in text and "did not stop within 1 s of the launcher's death" in text


def test_the_launcher_wrapper_needs_every_local_rank_at_one_step(tmp_path):
    def report(rank: int, step: int) -> None:
        record = {"local_rank": rank, "local_world_size": 2, "step": step, "checkpoint": f"ckpt-{step}"}
        (tmp_path / f"rank-{rank:04d}.json").write_text(json.dumps(record))

    assert all_saved(tmp_path) == (False, "no rank reported a saved checkpoint")
    report(0, 7)
    assert all_saved(tmp_path) == (False, "1 of 2 ranks reported a saved checkpoint")
    report(1, 8)
    assert all_saved(tmp_path) == (False, "the ranks saved different steps (7, 8)")
    report(1, 7)
    assert all_saved(tmp_path) == (True, "every rank (2) saved step 7 (ckpt-7)")


@pytest.mark.parametrize("ending", ["SignalException", "SystemExit"])
def test_the_launcher_wrapper_exits_0_only_when_every_rank_saved(monkeypatch, capsys, ending):
    """torchrun raises SignalException on SIGTERM; `accelerate launch` exits 128 + the signal (143) instead."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    import train.launcher as launcher

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() sets the launcher's argv and environment: restored after
    monkeypatch.setenv(launcher.REPORTS_VARIABLE, "")

    def fake_launcher(ranks_saving: int):
        def run():
            from os import environ

            for rank in range(ranks_saving):
                monkeypatch.setenv("LOCAL_RANK", str(rank))
                monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
                launcher.report_stop(5, "ckpt-5", "SIGTERM")
            assert environ[launcher.REPORTS_VARIABLE]
            if ending == "SignalException":
                raise SignalException("got signal", sigval=signal.SIGTERM)
            raise SystemExit(143)

        return [type("Entry", (), {"load": staticmethod(lambda: run)})()]

    monkeypatch.setattr(launcher, "entry_points", lambda **kw: fake_launcher(2))
    assert launcher.main(["torchrun", "train/lora.py"]) == 0
    assert "stopped by SIGTERM: every rank (2) saved step 5 (ckpt-5)" in capsys.readouterr().err
    monkeypatch.setattr(launcher, "entry_points", lambda **kw: fake_launcher(1))
    assert launcher.main(["accelerate", "launch", "train/lora.py"]) == 143
    assert "1 of 2 ranks reported a saved checkpoint" in capsys.readouterr().err
