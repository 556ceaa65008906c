"""attention.deterministic=true: the run trains under torch's deterministic algorithms, and two runs of the same
config give the same losses and LoRA bit for bit."""

import json

import pytest
import torch
from safetensors.torch import load_file

import train.trainer as trainer_mod
from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate
from train.trainer import Trainer


@pytest.fixture
def restore_determinism():
    """The setting is process-wide (the trainer sets it for its run): leave it as this test found it."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_runs_are_bitwise_equal_and_run_deterministic_algorithms(
    tmp_path, monkeypatch, restore_determinism
):
    """Guards that attention.deterministic=true turns torch's deterministic algorithms on before the model is built
    and trained (so `auto` picks a deterministic kernel: triton on CUDA, the reference on CPU), and that such a run
    repeats exactly: losses and every LoRA weight equal."""
    torch.use_deterministic_algorithms(False)
    seen = []
    real = trainer_mod.flow_matching_loss

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "flow_matching_loss", spy)
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        cfg = validate(
            compose_config([*tiny_overrides(out, tmp_path / "data", steps=3), "attention.deterministic=true"])
        )
        trainer = Trainer(cfg)
        trainer.fit()
        assert trainer.parts.backend == "reference"  # CPU; on CUDA `auto` resolves to triton in this mode
        runs.append(out)
    assert seen and all(seen), f"steps without deterministic algorithms: {seen}"
    losses = [json.loads((out / "run_summary.json").read_text())["losses"] for out in runs]
    assert losses[0] == losses[1]
    a, b = (load_file(str(out / "lora" / "pytorch_lora_weights.safetensors")) for out in runs)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
