"""train.mode=full on the CPU: every weight trains, resume is exact, the export loads and serves as a LoRA run's base."""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file

from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate
from train.trainer import Trainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def run(out, data_root, *extra, steps=4):
    cfg = validate(compose_config([*tiny_overrides(out, data_root, steps=steps), "train.mode=full", *extra]))
    t = Trainer(cfg)
    return t, t.fit()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("full")
    trainer, summary = run(out, data_root)
    return out, trainer, summary


def test_full_mode_trains_every_weight_and_exports_diffusers(straight):
    out, trainer, summary = straight
    assert summary["step"] == 4 and not (out / "lora").exists()
    model = trainer.unwrapped()
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert trainer.num_trainable == sum(p.numel() for p in model.parameters())
    initial = WanTransformer3DModel.from_pretrained(out / "base_transformer")
    exported = WanTransformer3DModel.from_pretrained(out / "transformer")
    changed = [
        name
        for (name, a), (_, b) in zip(initial.named_parameters(), exported.named_parameters(), strict=True)
        if not torch.equal(a, b)
    ]
    assert len(changed) > len(list(initial.parameters())) // 2  # not only an adapter moved
    for name, p in model.state_dict().items():
        assert torch.equal(exported.state_dict()[name], p), name
    assert json.loads((out / "transformer" / "radial_training.json").read_text())["mode"] == "full"
    ckpt = load_file(out / "checkpoints" / "checkpoint-00000004" / "transformer.safetensors")
    assert set(ckpt) == set(model.state_dict())


def test_full_mode_resume_is_exact(straight, tmp_path, data_root):
    out_a, _, _ = straight
    run(tmp_path, data_root, steps=2)
    trainer, summary = run(tmp_path, data_root, "train.resume=latest")
    assert summary["step"] == 4
    losses = [json.loads((d / "run_summary.json").read_text())["losses"] for d in (out_a, tmp_path)]
    assert losses[0] == losses[1]
    a = load_file(out_a / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_exported_transformer_is_the_base_of_a_lora_run(straight, tmp_path, data_root):
    out, _, _ = straight
    extra = ["model.source=pretrained", f"model.path={out / 'transformer'}"]
    cfg = validate(compose_config([*tiny_overrides(tmp_path, data_root, steps=2), *extra]))
    trainer = Trainer(cfg)
    base = WanTransformer3DModel.from_pretrained(out / "transformer")
    tuned = trainer.unwrapped()
    # LoRA attached on top of exactly the exported weights (PEFT wraps the projections as base_layer).
    for name, p in base.state_dict().items():
        peft_name = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        got = tuned.state_dict().get(name, tuned.state_dict().get(peft_name))
        assert got is not None and torch.equal(got, p), name
    summary = trainer.fit()
    assert summary["step"] == 2 and (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_full_mode_config_errors(tmp_path, data_root):
    with pytest.raises(ValueError, match="train.mode"):
        validate(compose_config([*tiny_overrides(tmp_path, data_root), "train.mode=partial"]))
    with pytest.raises(ValueError, match="eval.validation_every"):
        validate(compose_config([*tiny_overrides(tmp_path, data_root), "train.early_stop_patience=2"]))


@pytest.mark.parametrize(
    ("extra", "reason", "steps"),
    [
        (["train.early_stop_patience=1", "train.early_stop_min_delta=0.99"], "plateau", 2),
        (["train.time_limit_s=1e-6"], "time_limit_s", 1),
    ],
)
def test_a_run_ends_early_on_a_plateau_or_time_limit_and_exports(tmp_path, data_root, extra, reason, steps):
    evals = ["eval=default", "eval.hooks=[]", "eval.validation_every=1", "eval.num_samples=0", "eval.num_heldout=1"]
    _, summary = run(tmp_path, data_root, *evals, *extra, steps=6)
    assert summary["step"] == steps and reason in summary["ended_early"] and summary["stopped_by"] is None
    assert (tmp_path / "transformer" / "config.json").is_file()
