"""Validation during training: held-out loss at fixed noise levels, sample videos, trackers, end-of-training hooks."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from radial.generation import save_prompt_embeds
from tests.test_eval_hooks import ExplodingHook
from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import EvalConfig, validate
from train.eval.hooks import register_hook
from train.eval.validation import Validator
from train.trainer import Trainer

FAST = {"num_heldout": 2, "timesteps": [0.25, 0.75], "num_inference_steps": 2, "seeds": [0]}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("val_data")


@pytest.fixture
def trainer(tmp_path, data_root):
    """A fresh tiny trainer per test (conftest resets Accelerate's process state after each test); shared data."""
    overrides = [*tiny_overrides(tmp_path / "run", data_root, steps=2), "logging.trackers=[tensorboard]"]
    t = Trainer(validate(compose_config(overrides)))
    t.accelerator.init_trackers("validation-test")
    return t


def make_validator(trainer, **settings):
    trainer.cfg.eval = SimpleNamespace(**{**FAST, **settings})
    return Validator(trainer.view)


def test_schedule_files_and_determinism(trainer):
    v = make_validator(trainer, validation_every=2)
    assert v.maybe_run(1) is None and v.maybe_run(0) is None
    m = v.maybe_run(2)
    assert set(m) >= {"val/loss", "val/loss_t0.25", "val/loss_t0.75", "val/sample_seconds", "val/seconds"}
    assert m["val/heldout_items"] == 2 and 0.1 < m["val/loss"] < 10
    assert m["val/loss"] == pytest.approx((m["val/loss_t0.25"] + m["val/loss_t0.75"]) / 2)
    folder = trainer.out / "validation" / "step-000002"
    assert json.loads((folder / "metrics.json").read_text())["val/loss"] == m["val/loss"]
    side = json.loads((folder / "sample_p0_s0.json").read_text())
    first = trainer.dataset[0]["meta"]
    assert side["prompt"] == first["caption"] and side["step"] == 2 and side["frames"] == first["frames"]
    assert side["num_inference_steps"] == 2 and side["radial"]["block_size"] == 16 and side["finite"]
    assert (folder / "sample_p0_s0.mp4").stat().st_size > 0
    again = v.run(3, samples=False)
    assert {k: again[k] for k in ("val/loss_t0.25", "val/loss_t0.75")} == {
        k: m[k] for k in ("val/loss_t0.25", "val/loss_t0.75")
    }  # the same items and noise: the loss moves only with the model
    assert trainer.model.training  # back in training mode


def test_heldout_loss_follows_the_model_and_the_data_root(trainer):
    v = make_validator(trainer)
    before = v.heldout_loss()
    lora = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    saved = [p.detach().clone() for p in lora]
    with torch.no_grad():
        for p in lora:
            p.add_(0.05)
    changed = v.heldout_loss()
    with torch.no_grad():
        for p, s in zip(lora, saved, strict=True):
            p.copy_(s)
    assert changed["val/loss"] != before["val/loss"]
    root = trainer.cfg.data.root + "/latents"
    same = make_validator(trainer, heldout_root=root).heldout_loss()
    assert same == before


def test_heldout_levels_stay_inside_the_trained_range(trainer):
    """A run trained on part of the schedule (a Wan2.2 expert) is measured at the levels inside that part only."""
    import dataclasses

    full = make_validator(trainer).heldout_loss()
    part = Validator(dataclasses.replace(trainer.view, sigma_range=(0.5, 1.0))).heldout_loss()  # explicit inputs
    assert "val/loss_t0.25" in full and "val/loss_t0.25" not in part
    assert part["val/loss"] == part["val/loss_t0.75"] == full["val/loss_t0.75"]


def test_tensorboard_gets_scalars_and_frames(trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    v = make_validator(trainer, validation_every=5)
    v.maybe_run(5)
    for tracker in trainer.accelerator.trackers:
        tracker.tracker.flush()
    paths = list((trainer.out / "logs").rglob("events.*"))
    events = EventAccumulator(str(paths[0].parent)).Reload()
    assert "val/loss" in events.Tags()["scalars"] and "val/sample_p0_s0" in events.Tags()["images"]
    assert events.Scalars("val/loss")[-1].step == 5


def test_prompt_sources(trainer, tmp_path):
    v = make_validator(trainer, prompts=["a red ball moves left", "a blue square"], guidance_scale=2.0)
    embeds = v.prompt_embeds()
    assert [e.prompt for e in embeds] == ["a red ball moves left", "a blue square"]
    assert embeds[0].has_negative and embeds[0].tensors["prompt_embeds"].shape == (1, 128, 32)
    records = v.sample(tmp_path / "a", step=1)
    assert [r["name"] for r in records] == ["sample_p0_s0", "sample_p1_s0"] and records[1]["guidance_scale"] == 2.0
    path = save_prompt_embeds(tmp_path / "p.safetensors", {"prompt_embeds": torch.randn(7, 32)}, prompts=["file"])
    v = make_validator(trainer, prompt_embeds=[str(path)], seeds=[3, 4])
    records = v.sample(tmp_path / "b", step=1)
    assert [(r["prompt"], r["seed"]) for r in records] == [("file", 3), ("file", 4)]
    with pytest.raises(FileNotFoundError, match="eval.prompt_embeds"):
        make_validator(trainer, prompt_embeds=[str(tmp_path / "missing.safetensors")])
    with pytest.raises(FileNotFoundError, match="eval.heldout_root"):
        make_validator(trainer, heldout_root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="eval.timesteps"):
        make_validator(trainer, timesteps=[0.0, 0.5])


def test_end_hooks_never_raise(trainer):
    register_hook(ExplodingHook)
    v = make_validator(trainer, hooks=["flicker", "vbench", "exploding"], hook_settings={"vbench": {"timeout_s": 5}})
    results = v.run_end_hooks()
    assert [results[k]["status"] for k in ("flicker", "vbench", "exploding")] == ["ok", "skipped", "failed"]
    assert (trainer.out / "validation" / "final" / "sample_p0_s0.mp4").is_file()
    assert json.loads((trainer.out / "eval" / "hooks.json").read_text())["flicker"]["status"] == "ok"
    assert make_validator(trainer).run_end_hooks() == {}


def test_the_current_schema_still_works(trainer):
    trainer.cfg.eval = EvalConfig(validation_every=0, hooks=[])
    v = Validator(trainer.view)
    assert v.settings == EvalConfig(validation_every=0, hooks=[]) and v.maybe_run(10) is None


def test_default_eval_config_fits_the_settings(trainer):
    """configs/eval/default.yaml merges over the settings schema (the EvalConfig fields to add to train/config.py)."""
    from omegaconf import OmegaConf

    default = Path(__file__).resolve().parents[1] / "configs" / "eval" / "default.yaml"
    merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(default))
    trainer.cfg.eval = merged
    v = Validator(trainer.view)
    assert v.settings.validation_every == 250 and v.settings.hooks == ["flicker"]
    assert v.settings.hook_settings["vbench"]["dimensions"][-1] == "temporal_flickering"


def test_a_sampling_failure_is_reported_not_raised(trainer, monkeypatch):
    import radial.generation

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(radial.generation, "generate", broken)
    m = make_validator(trainer, validation_every=1).maybe_run(1)
    assert m["val/sample_failed"] == 1.0 and "val/loss" in m
