"""Exact resume under a learning-rate schedule that changes every step (warmup, then cosine), stopped by either
preemption signal: the final LoRA equals the uninterrupted run's bit for bit."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate
from train.trainer import Trainer

SCHEDULE = ["optim.scheduler=cosine", "optim.warmup_steps=2"]
STEPS, STOP_AT = 6, 3  # stopped during the cosine part, after the warmup


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def run(out, data_root, *extra):
    cfg = validate(compose_config([*tiny_overrides(out, data_root, steps=STEPS), *SCHEDULE, *extra]))
    return Trainer(cfg).fit()


def lora(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))


def logged_lrs(out) -> list[float]:
    return [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("straight")
    run(out, data_root)
    return out


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_stop_signal_then_resume_gives_the_uninterrupted_lora(straight, tmp_path, data_root, monkeypatch, name):
    """Guards the scheduler's (and optimizer's, RNG's, data position's) save and restore: a resume that restarted
    the warmup or the cosine, or lost any other state, ends on another LoRA. Also guards SIGUSR1 as a stop signal
    (SLURM's --signal=USR1@...): it saves a checkpoint at the step and exits as SIGTERM does."""
    lrs = logged_lrs(straight)
    assert lrs[0] < lrs[1] > lrs[2] > lrs[STOP_AT] > lrs[STEPS - 2], f"not a warmup + cosine schedule: {lrs}"
    original = Trainer.log_step
    # An unhandled SIGUSR1 would end this process; recorded instead, so that a trainer deaf to it fails the test.
    previous = signal.signal(getattr(signal, name), lambda *_: None)

    def log_then_signal(self, step, *args):
        original(self, step, *args)
        if step == STOP_AT:
            signal.raise_signal(getattr(signal, name))

    try:
        monkeypatch.setattr(Trainer, "log_step", log_then_signal)
        summary = run(tmp_path, data_root, "train.checkpoint_every=0")
    finally:
        signal.signal(getattr(signal, name), previous)
    assert summary["stopped_by"] == name and summary["step"] == STOP_AT
    assert (tmp_path / "checkpoints" / f"checkpoint-{STOP_AT:08d}").is_dir() and not (tmp_path / "lora").exists()
    monkeypatch.setattr(Trainer, "log_step", original)
    summary = run(tmp_path, data_root, "train.resume=latest")
    assert summary["step"] == STEPS and summary["stopped_by"] is None
    assert logged_lrs(tmp_path) == lrs  # the schedule continued where it stopped (floats compared exactly)
    expected, got = lora(straight), lora(tmp_path)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key} differs after resume"
