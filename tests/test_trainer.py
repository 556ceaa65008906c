"""The trainer end to end on CPU: loss falls, exact resume, graceful stop, NaN policy, LoRA export that loads."""

import json
import signal

import pytest
import torch

import train.step as step_mod
from radial.errors import TrainingError
from radial.lora import read_metadata
from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate
from train.trainer import NonFiniteLoss, Trainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def run(out, data_root, *extra, steps=6, model="tiny_wan"):
    cfg = validate(compose_config([*tiny_overrides(out, data_root, model=model, steps=steps), *extra]))
    t = Trainer(cfg)
    return t, t.fit()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("straight")
    trainer, summary = run(out, data_root)
    return out, trainer, summary


def losses(out):
    return json.loads((out / "run_summary.json").read_text())["losses"]


def test_run_writes_checkpoints_and_lora(straight):
    out, trainer, summary = straight
    assert summary["step"] == 6 and summary["stopped_by"] is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-00000004", "checkpoint-00000006"]
    info = read_metadata(out / "lora" / "pytorch_lora_weights.safetensors")
    assert info["rank"] == 8 and info["base_model"]["family"] == "wan" and info["training"]["latent_frames"] == 5
    assert info["attention"]["backend"] == "reference"  # `auto` resolved before it is written (CPU: reference)
    assert (out / "mask.png").is_file() and (out / "base_transformer" / "config.json").is_file()
    comfy = read_metadata(out / "lora" / "comfyui_lora.safetensors")
    assert comfy == info


def test_resume_continues_the_same_trajectory(straight, tmp_path, data_root):
    out_a, trainer_a, _ = straight
    run(tmp_path, data_root, steps=3)
    _, summary = run(tmp_path, data_root, "train.resume=latest", steps=6)
    assert summary["step"] == 6
    assert losses(tmp_path) == losses(out_a)  # bitwise: floats compared exactly
    a = torch.load(out_a / "checkpoints" / "checkpoint-00000006" / "optimizer.bin", weights_only=False)
    b = torch.load(tmp_path / "checkpoints" / "checkpoint-00000006" / "optimizer.bin", weights_only=False)
    for sa, sb in zip(a["state"].values(), b["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


def test_sigterm_saves_a_checkpoint_and_stops(straight, tmp_path, data_root, monkeypatch):
    original = Trainer.log_step

    def log_then_signal(self, step, *args):
        original(self, step, *args)
        if step == 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Trainer, "log_step", log_then_signal)
    _, summary = run(tmp_path, data_root, "train.checkpoint_every=0")
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] == 2
    assert (tmp_path / "checkpoints" / "checkpoint-00000002").is_dir()
    assert not (tmp_path / "lora").exists()
    monkeypatch.setattr(Trainer, "log_step", original)
    _, summary = run(tmp_path, data_root, "train.resume=latest")
    assert summary["step"] == 6 and losses(tmp_path) == losses(straight[0])


def test_non_finite_loss_is_skipped_or_stops(tmp_path, data_root, monkeypatch):
    real = step_mod.flow_loss
    calls = {"n": 0}

    def sometimes_nan(pred, target, weights, mask=None):
        calls["n"] += 1
        loss = real(pred, target, weights, mask)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(step_mod, "flow_loss", sometimes_nan)
    _, summary = run(tmp_path / "skip", data_root, steps=3)
    values = [v for _, v in losses(tmp_path / "skip")]
    assert summary["step"] == 3 and values[1] is None and all(v is not None for v in (values[0], values[2]))
    calls["n"] = 0
    with pytest.raises(NonFiniteLoss, match="train.on_nan=stop"):
        run(tmp_path / "stop", data_root, "train.on_nan=stop", steps=3)


def test_bad_resume_path_names_the_key(tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="train.resume"):
        run(tmp_path, data_root, f"train.resume={tmp_path / 'missing'}", steps=1)


def test_exported_lora_loads_into_a_diffusers_pipeline(straight):
    """Load the diffusers-format LoRA into a WanPipeline built from the same tiny components: same outputs."""
    import diffusers

    import radial
    from data.encoders import load_encoders

    out, trainer, _ = straight
    enc = load_encoders("wan", tiny=True)
    base = diffusers.WanTransformer3DModel.from_pretrained(out / "base_transformer")
    pipe = diffusers.WanPipeline(
        tokenizer=enc.tokenizer,
        text_encoder=enc.text_encoder,
        vae=enc.vae,
        transformer=base,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.load_lora_weights(out / "lora")
    cfg = trainer.cfg.attention
    handles = radial.inject_pipeline(
        pipe, backend="reference", dense_layers=cfg.dense_layers, block_size=cfg.block_size
    )
    trained = trainer.unwrapped().eval()
    from data import collate

    batch = collate([trainer.dataset[0]])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch["latents"].shape, generator=g)
    conds = {k: batch[k] for k in ("prompt_embeds", "prompt_attention_mask")}
    with torch.no_grad():
        want = trainer.parts.adapter.predict(trained, x, torch.tensor([500.0]), conds)
        got = trainer.parts.adapter.predict(pipe.transformer, x, torch.tensor([500.0]), conds)
        pipe.transformer.disable_lora()
        base_out = trainer.parts.adapter.predict(pipe.transformer, x, torch.tensor([500.0]), conds)
    handles.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (base_out - want).abs().max() > 1e-4  # the LoRA changed the model, so the comparison means something


def test_loss_falls(tmp_path, data_root):
    """The demo's promise: a few dozen steps on the tiny model lower the flow-matching loss clearly."""
    run(tmp_path, data_root, "train.checkpoint_every=0", "optim.lr=3e-3", steps=40)
    values = [v for _, v in losses(tmp_path)]
    first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
    assert last < 0.9 * first, (first, last)


def test_fp8_base_weights_train(tmp_path, data_root):
    """model.storage_dtype keeps frozen base weights in fp8 (diffusers layerwise casting); LoRA stays fp32."""
    trainer, summary = run(tmp_path, data_root, "model.storage_dtype=float8_e4m3fn", steps=2)
    model = trainer.unwrapped()
    weights = dict(model.named_parameters())
    assert weights["blocks.0.ffn.net.2.weight"].dtype == torch.float8_e4m3fn
    assert all(p.dtype == torch.float32 for n, p in weights.items() if "lora_" in n)
    assert summary["step"] == 2 and all(v == v for _, v in losses(tmp_path))


def test_wan22_expert_trains_only_its_noise_levels(tmp_path, monkeypatch):
    """A Wan2.2 A14B low-noise expert: every drawn noise level below the boundary, recorded in the LoRA's header."""
    from train.flow import FlowMatching

    drawn = []
    original = FlowMatching.sample_sigmas

    def spy(self, *args, **kwargs):
        drawn.append(original(self, *args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(FlowMatching, "sample_sigmas", spy)
    out = tmp_path / "out"  # its own data: prepared latents record the family they were made for
    trainer, summary = run(out, tmp_path / "data", "model.family=wan22", "+model.expert=transformer_2", steps=3)
    assert trainer.flow.sigma_range == (0.0, 0.875)
    assert len(drawn) == 3 and all((s < 0.875).all() for s in drawn)
    info = read_metadata(out / "lora" / "pytorch_lora_weights.safetensors")
    assert info["base_model"]["expert"] == "transformer_2" and info["training"]["timestep_range"] == [0.0, 0.875]


def test_a_run_of_skipped_steps_fails_instead_of_exporting(tmp_path, data_root, monkeypatch):
    """Every loss NaN: no LoRA claiming 3 trained steps; the logs stay strict JSON (null for the unknown loss)."""
    real = step_mod.flow_loss
    monkeypatch.setattr(step_mod, "flow_loss", lambda *args: real(*args) * float("nan"))
    with pytest.raises(TrainingError, match=r"all of 3 steps were skipped .*more than 50%.*nothing was exported"):
        run(tmp_path, data_root, "train.max_nan_skips=10", steps=3)
    assert not (tmp_path / "lora").exists() and (tmp_path / "checkpoints" / "checkpoint-00000003").is_dir()

    def not_json(constant):
        raise AssertionError(f"metrics.jsonl holds {constant}, which is not JSON")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line, parse_constant=not_json)["loss"] for line in lines] == [None, None, None]


def test_dataset_mixture_with_caption_dropout_trains_and_resumes(straight, tmp_path, data_root):
    """data.datasets with repeats and data.caption_dropout: the prepared empty-prompt states are used, and a resumed
    run follows the uninterrupted one exactly."""
    latents = data_root / "latents"
    assert (latents / "empty_prompt.safetensors").is_file()
    mix = ["data=latents", "data.num_workers=0", f"data.datasets=[{{root:{latents},repeats:2}}]"]
    mix += ["data.caption_dropout=0.5"]

    def run_mix(out, *extra, steps):
        base = [o for o in tiny_overrides(out, data_root, steps=steps) if not o.startswith("data.")]
        t = Trainer(validate(compose_config([*base, *mix, *extra])))
        return t, t.fit()

    trainer, summary = run_mix(tmp_path / "a", steps=4)
    assert summary["step"] == 4 and len(trainer.sampler) == 2 * len(trainer.dataset)
    run_mix(tmp_path / "b", steps=2)
    run_mix(tmp_path / "b", "train.resume=latest", steps=4)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
