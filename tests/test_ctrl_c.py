"""Ctrl-C during training, as a terminal sends it (SIGINT to the whole foreground process group, data-loader
workers included): the run saves a checkpoint, exports the LoRA of the step reached, and exits with status 130
(128 + SIGINT, what a shell reports for Ctrl-C); a second Ctrl-C stops at once, still without a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radial.lora import read_metadata
from tests.trainer_helpers import compose_config, tiny_overrides
from train.checkpoint import list_checkpoints, verify_checkpoint
from train.config import validate
from train.signals import INTERRUPTED
from train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny synthetic data, prepared once (building a trainer prepares it)."""
    tmp = tmp_path_factory.mktemp("ctrl_c")
    Trainer(validate(compose_config(tiny_overrides(tmp / "prep", tmp / "data", steps=1))))
    return tmp / "data"


def _start(out: Path, data: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "train/lora.py", *tiny_overrides(out, data, steps=1000), "train.checkpoint_every=0"]
    cmd.append("data.num_workers=1")  # the worker gets the terminal's SIGINT too
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:  # its own session: the test signals its process group as a terminal does
        return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=f, stderr=subprocess.STDOUT)


def _wait_for(proc: subprocess.Popen, log: Path, done, what: str, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} did not happen in time:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def _steps_logged(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def _live(group: int) -> int:
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(group)], capture_output=True, text=True).stdout.split()
    return sum(not s.startswith("Z") for s in states)


def test_ctrl_c_saves_a_checkpoint_and_exports_the_lora(tmp_path, data):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    proc = _start(out, data, log)
    try:
        _wait_for(proc, log, lambda: _steps_logged(out) >= 3, "3 training steps")
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == INTERRUPTED == 130, text[-3000:]
    assert "Traceback" not in text and "stopped by Ctrl-C" in text and "train.resume=latest" in text
    (final,) = list_checkpoints(out / "checkpoints")
    step = json.loads((final / "checkpoint.json").read_text())["step"]
    assert step >= 3 and step == _steps_logged(out) and verify_checkpoint(final) is None
    lora = out / "lora" / "pytorch_lora_weights.safetensors"
    assert read_metadata(lora)["training"]["steps"] == step  # the LoRA of the step reached
    assert (out / "lora" / "comfyui_lora.safetensors").is_file()
    time.sleep(1)
    assert _live(proc.pid) == 0  # the loader worker ended with the trainer


def test_a_second_ctrl_c_stops_at_once(tmp_path, data):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    proc = _start(out, data, log)
    try:
        _wait_for(proc, log, lambda: _steps_logged(out) >= 2, "2 training steps")
        os.killpg(proc.pid, signal.SIGINT)
        _wait_for(proc, log, lambda: "Ctrl-C again stops at once" in log.read_text(), "the first Ctrl-C's note")
        with contextlib.suppress(ProcessLookupError):  # ended already (saved and exported)
            os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == INTERRUPTED, text[-3000:]
    assert took < 15 and "Traceback" not in text, text[-3000:]
    # Either it stopped at once, or the first Ctrl-C's save and export had already finished.
    assert "interrupted: stopped at once" in text or "stopped by Ctrl-C" in text, text[-3000:]
