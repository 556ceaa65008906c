"""The project's own errors print as one line `error: ...` with exit status 2 from every CLI, the Hydra trainer
included; RADIAL_DEBUG=1 brings the traceback back; anything else keeps its traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.shards import ShardError
from radial.errors import (
    CheckpointError,
    ConfigError,
    MissingPathError,
    RadialError,
    cli_errors,
    one_line,
)
from radial.models import ModelPathError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_debug(monkeypatch):
    for name in ("RADIAL_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)


def test_ours_are_one_line_others_keep_their_traceback(no_debug, capsys, monkeypatch):
    for error in (ConfigError("train.max_steps=0: expected >= 1"), PermissionError(13, "Permission denied", "/x")):
        with pytest.raises(SystemExit) as exit_, cli_errors():
            raise error
        assert exit_.value.code == 2 and capsys.readouterr().err == f"error: {error}\n"
    with pytest.raises(KeyError), cli_errors():  # a bug, not a user's mistake
        raise KeyError("bug")
    with pytest.raises(ConfigError), cli_errors(debug=True):
        raise ConfigError("x")
    monkeypatch.setenv("RADIAL_DEBUG", "1")
    with pytest.raises(CheckpointError), cli_errors():
        raise CheckpointError("x")


def test_error_types_keep_the_builtin_bases_callers_catch():
    assert issubclass(ShardError, RadialError) and issubclass(ShardError, ValueError)
    assert issubclass(ModelPathError, ConfigError) and issubclass(MissingPathError, FileNotFoundError)


def test_a_worker_wrapped_message_becomes_its_last_line():
    wrapped = ShardError(
        "Caught ShardError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        "  File \"x.py\", line 1, in f\ndata.shards.ShardError: shard a.safetensors: item 'k': latents contain NaN"
    )
    assert one_line(wrapped) == "shard a.safetensors: item 'k': latents contain NaN"


def _train(tmp_path, *overrides, debug=False):
    env = {k: v for k, v in os.environ.items() if k not in ("RADIAL_DEBUG", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(ROOT)
    if debug:
        env["RADIAL_DEBUG"] = "1"
    cmd = [sys.executable, str(ROOT / "train" / "lora.py"), f"output_dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_the_hydra_trainer_prints_one_line(tmp_path):
    done = _train(tmp_path, "attention.decay_factor=nan")
    assert done.returncode == 2 and done.stderr == "error: attention.decay_factor=nan: expected a finite number\n"
    done = _train(tmp_path, "data=latents", f"data.root={tmp_path / 'nowhere'}", "logging.trackers=[]")
    assert done.returncode == 2 and done.stderr.endswith(f"error: dataset {tmp_path / 'nowhere'}: no such folder\n")
    assert "Error executing job" not in done.stderr and "Traceback" not in done.stderr
    done = _train(tmp_path, "attention.decay_factor=nan", debug=True)
    assert done.returncode == 1 and "Traceback" in done.stderr and "ConfigError" in done.stderr
