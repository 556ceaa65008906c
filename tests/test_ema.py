"""The weights' moving average (train.ema_decay) and a schedule longer than the run (optim.schedule_steps): the
export holds the average, a resumed run continues it bit for bit, staged runs keep one schedule."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from radial.errors import ConfigError
from tests.trainer_helpers import compose_config, tiny_overrides
from train.checkpoint import LORA_FILE
from train.config import validate
from train.ema import WeightAverage, has_weight_average
from train.trainer import Trainer

STEPS = 4
EMA = ["train.ema_decay=0.5"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def run(out, data_root, *extra, steps=STEPS):
    return Trainer(validate(compose_config([*tiny_overrides(out, data_root, steps=steps), *extra]))).fit()


def lora(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "pytorch_lora_weights.safetensors"))


def test_average_follows_diffusers_warmup_and_swaps_back():
    p = torch.nn.Parameter(torch.zeros(3))
    avg = WeightAverage([p], decay=0.5)
    expected = torch.zeros(3)
    for n, value in enumerate((1.0, 2.0, 4.0), start=1):
        p.data.fill_(value)
        avg.update()
        # diffusers' warm-up: decay min(0.5, (1 + k) / (10 + k)) with k = n - 1; 0 at the first update
        k = n - 1
        d = 0.0 if k <= 0 else min(0.5, (1 + k) / (10 + k))
        expected = d * expected + (1 - d) * value
    assert avg.updates == 3
    with avg.swapped_in():
        assert torch.allclose(p.data, expected)
    assert torch.equal(p.data, torch.full((3,), 4.0))  # the training weights are back


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("ema_straight")
    run(out, data_root, *EMA)
    return out


def test_export_holds_the_average_not_the_last_weights(straight):
    final = straight / "checkpoints" / f"checkpoint-{STEPS:08d}"
    assert has_weight_average(final)
    raw = load_file(str(final / LORA_FILE))  # what resume loads: the training weights
    exported = lora(straight / "lora")
    assert lora(final / "lora").keys() == exported.keys()
    for key, value in exported.items():
        assert torch.equal(lora(final / "lora")[key], value)  # the checkpoint's lora/ is the final export
    peft_b = [k for k in raw if ".lora_B." in k]
    assert peft_b and any(not torch.equal(raw[k].float(), _export_value(exported, k)) for k in peft_b)
    # LoRA B starts at zero: an average that was never updated would export zeros
    assert all(_export_value(exported, k).abs().sum() > 0 for k in peft_b)
    with safe_open(str(straight / "lora" / "pytorch_lora_weights.safetensors"), framework="pt") as f:
        info = json.loads(f.metadata()["radial_lora"])
    assert info["training"]["ema_decay"] == 0.5


def _export_value(exported: dict, peft_key: str) -> torch.Tensor:
    """The exported tensor of a PEFT key (the export renames keys to diffusers' `transformer.` prefix)."""
    name = peft_key.split("base_model.model.")[-1].replace(".default", "")
    matches = [v for k, v in exported.items() if k.endswith(name)]
    assert len(matches) == 1, (peft_key, name)
    return matches[0].float()


def test_resume_continues_the_average(straight, tmp_path, data_root):
    run(tmp_path, data_root, *EMA, steps=2)
    run(tmp_path, data_root, *EMA, "train.resume=latest")
    expected, got = lora(straight / "lora"), lora(tmp_path / "lora")
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key}: the resumed average differs"


def test_resume_without_average_starts_it_from_the_resumed_weights(tmp_path, data_root, capsys):
    run(tmp_path, data_root, steps=2)
    summary = run(tmp_path, data_root, *EMA, "train.resume=latest")
    assert summary["step"] == STEPS
    assert "holds no average; it starts from these weights" in capsys.readouterr().out
    assert has_weight_average(tmp_path / "checkpoints" / f"checkpoint-{STEPS:08d}")


def test_schedule_steps_keeps_one_schedule_over_stages(tmp_path, data_root):
    schedule = ["optim.scheduler=linear", "optim.schedule_steps=8"]
    run(tmp_path, data_root, *schedule, steps=2)
    run(tmp_path, data_root, *schedule, "train.resume=latest", steps=4)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "lr" in line]
    # linear decay from 1e-3 over 8 steps, logged after the step: 1e-3 * (8 - n) / 8 at step n, whatever the stage
    assert lrs == pytest.approx([1e-3 * (8 - n) / 8 for n in range(1, 5)])


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.ema_decay=1.0", "train.ema_decay=1.0: expected in [0, 1)"),
        ("optim.schedule_steps=2", "optim.schedule_steps=2: expected >= train.max_steps=4"),
    ],
)
def test_bad_values_name_the_key(tmp_path, data_root, override, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace(")", r"\)")):
        validate(compose_config([*tiny_overrides(tmp_path, data_root), override]))
