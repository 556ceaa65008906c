"""The run lock (radial/run_lock.py): a folder held by a live process is refused in one line naming its host and
pid, by the trainer and by data.prepare; the kernel releases it when the holder dies, whatever killed it."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radial.run_lock import LOCK_FILE, FolderInUseError, lock_folder
from tests.test_launch_stop import alive
from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from radial.run_lock import lock_folder; l = lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(120)"


def _hold(out: Path):
    """Another process holding `out` (yields it and the process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield out, proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def holder(tmp_path):
    yield from _hold(tmp_path / "out")


@pytest.fixture(scope="module")
def shared_holder(tmp_path_factory):
    """One holder for the tests that only read the refusal (each holder is a Python start)."""
    yield from _hold(tmp_path_factory.mktemp("held") / "out")


def test_a_held_folder_is_refused_naming_the_holder_and_freed_when_it_dies(holder):
    out, proc = holder
    with pytest.raises(FolderInUseError) as e:
        lock_folder(out)
    message = str(e.value)
    assert message.startswith(f"output_dir {out} is in use by a live run (host {socket.gethostname()}, ")
    assert f"pid {proc.pid}, since 20" in message and message.endswith(" UTC)")
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel drops the lock with the open file
    proc.wait()
    with lock_folder(out):
        assert (out / LOCK_FILE).is_file()


def _free(folder: Path) -> bool:
    """Whether another open file could lock `folder` now (flock conflicts between open files, even of one process)."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_one_process_may_take_its_own_folder_again_and_releases_it_at_the_last_release(tmp_path):
    out = tmp_path / "out"
    first = lock_folder(out)
    second = lock_folder(out)
    first.release()
    assert not _free(out)
    second.release()
    second.release()  # a second release does nothing
    assert _free(out)


def test_the_trainer_refuses_a_live_runs_output_dir_before_the_previous_run_check(shared_holder, tmp_path):
    out, proc = shared_holder
    (out / "metrics.jsonl").write_text("{}\n")  # also "holds another run": the live run is the more precise message
    cfg = validate(compose_config(tiny_overrides(out, tmp_path / "data")))
    from train.trainer import Trainer

    with pytest.raises(FolderInUseError, match=rf"output_dir {out} is in use by a live run \(.*pid {proc.pid},"):
        Trainer(cfg)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "metrics.jsonl"]  # nothing written


def test_data_prepare_refuses_a_live_output_folder_in_one_line(shared_holder, tmp_path):
    out, proc = shared_holder
    (tmp_path / "videos").mkdir()
    args = ["--model", "wan", "--tiny", "--input", str(tmp_path / "videos"), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "data.prepare", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --out {out} is in use by a live run (host ") and done.stderr.count("\n") == 1
    assert f"pid {proc.pid}," in done.stderr


@pytest.mark.slow
def test_a_killed_prepare_takes_its_workers_with_it(tmp_path):
    """`--workers 2` spawns processes that a SIGKILL of the prepare does not reach: they notice and exit, so none
    writes on beside the next prepare (which removes unfinished shard files when it starts)."""
    from data.synthetic import make_synthetic_videos

    # enough units that both workers are still busy when the prepare dies (a worker that finished its share before
    # its one-second parent poll exits normally, without the line this test reads: seen on a loaded machine)
    make_synthetic_videos(tmp_path / "videos", num=16, frames=[17], fps=16, sizes=[(64, 64)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data.prepare", "--model", "wan", "--tiny", "--input", str(tmp_path / "videos"),
           "--out", str(out), "--length", "17", "--fps", "16", "--buckets", "64x64", "--items-per-shard", "1",
           "--workers", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not list((out / "shards").glob("*.safetensors")):  # the workers are past their start
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.1)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        workers = [p for p in children if b"--multiprocessing-fork" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while any(alive(int(p)) for p in workers):
            assert time.monotonic() - killed < 15, "prepare's workers outlived it"
            time.sleep(0.1)
    finally:
        for p in workers:
            if alive(int(p)):
                os.kill(int(p), signal.SIGKILL)
    assert "the parent process" in proc.stderr.read()
    with lock_folder(out, "--out"):  # free again
        pass
