"""RIFLEx (`attention.rope_extension=riflex`): the intrinsic temporal frequency, the rewritten rotary tables of Wan
and HunyuanVideo, the untouched short forwards and buffers, one training step and the generator flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import radial
import radial.rope_extension as rope_ext
import train.generate as rgen
from radial.errors import ConfigError
from radial.lora import read_metadata
from radial.models import get_adapter
from radial.rope_extension import intrinsic_index, temporal_frequencies
from tests.test_generate import SMALL, _embeds_file, one_thread  # noqa: F401  (one_thread: an autouse fixture)
from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate
from train.trainer import Trainer


def test_intrinsic_index_follows_the_official_examples():
    """The official README's calls (1-based k): HunyuanVideo `--b 256 --d 16 --len 66` -> k=4, CogVideoX
    `--b 10000 --d 16 --len 26` -> k=2; and the rule by hand for HunyuanVideo's 33 training frames."""
    assert intrinsic_index(256.0, 16, 66) == 3
    assert intrinsic_index(10000.0, 16, 26) == 1
    periods = [round(2 * math.pi / float(f)) for f in temporal_frequencies(256.0, 16)]
    k = intrinsic_index(256.0, 16, 33)
    assert all(abs(periods[k] - 33) <= abs(p - 33) for p in periods) and periods[k] == 25


def _scratch_temporal(base, dim, frames, k, dtype):
    """A from-scratch temporal cos / sin table [frames, dim] with frequency k = 0.9 * 2 pi / frames."""
    freqs = temporal_frequencies(base, dim, dtype)
    freqs[k] = 0.9 * 2 * math.pi / frames
    angles = torch.outer(torch.arange(frames, dtype=dtype), freqs)
    return angles.cos().repeat_interleave(2, 1).float(), angles.sin().repeat_interleave(2, 1).float()


# (family, train_frames chosen so that k is not the first frequency, spatial size, latent channels)
CASES = [("wan", 40, 8), ("hunyuan", 60, 8)]


@pytest.mark.parametrize(("family", "train", "size"), CASES)
def test_riflex_rewrites_exactly_the_intrinsic_frequency(family, train, size):
    adapter = get_adapter(family)
    model = adapter.build_tiny()
    spec = adapter.rotary_spec(model)
    k = intrinsic_index(spec.base, spec.temporal_dim, train)
    assert k > 0
    frames = train + 3
    latents = torch.zeros(1, 16, frames, size, size)
    stock = [t.clone() for t in model.rope(latents)]
    short = [t.clone() for t in model.rope(latents[:, :, :train])]
    buffers = {n: b.clone() for n, b in model.rope.named_buffers()}

    handle = radial.inject(model, block_size=16, train_frames=train, rope_extension="riflex")
    hooked = model.rope(latents)
    tokens = frames * (size // 2) ** 2
    for new, old, scratch in zip(
        hooked, stock, _scratch_temporal(spec.base, spec.temporal_dim, frames, k, spec.dtype), strict=True
    ):
        new2d, old2d = new.reshape(tokens, -1), old.reshape(tokens, -1)
        changed = (new2d != old2d).any(0).nonzero().flatten().tolist()
        assert changed == [2 * k, 2 * k + 1]  # the two interleaved columns of frequency k, nothing else
        expected = old2d.clone()
        expected[:, : spec.temporal_dim] = scratch.repeat_interleave(tokens // frames, 0)
        torch.testing.assert_close(new2d, expected, rtol=0, atol=1e-7)
    # A forward of at most train_frames frames, after the long one, is the stock one; buffers were never written.
    for new, old in zip(model.rope(latents[:, :, :train]), short, strict=True):
        assert torch.equal(new, old)
    assert all(torch.equal(b, buffers[n]) for n, b in model.rope.named_buffers())
    handle.remove()
    assert all(torch.equal(a, b) for a, b in zip(model.rope(latents), stock, strict=True))


def test_riflex_changes_the_model_output_only_past_train_frames():
    wan = get_adapter("wan")
    model = wan.build_tiny()

    def predict(frames):
        latents = wan.make_dummy_latents(model, 1, frames, 8, 8)
        cond = wan.make_dummy_conditions(model, 1, 8, latent_shape=latents.shape)
        return wan.predict(model, latents, torch.tensor([500.0]), cond)

    with torch.no_grad():
        stock_long, stock_short = predict(6), predict(3)
        with radial.inject(model, backend="dense", block_size=16, train_frames=3, rope_extension="riflex"):
            long, short = predict(6), predict(3)
    assert torch.equal(short, stock_short) and not torch.allclose(long, stock_long, atol=1e-4)


def test_riflex_errors():
    wan = get_adapter("wan")
    with pytest.raises(ConfigError, match=r"^attention.rope_extension needs attention.train_frames"):
        radial.inject(wan.build_tiny(), rope_extension="riflex")
    with pytest.raises(ConfigError, match=r"^attention.rope_extension='ntk': expected one of"):
        radial.inject(wan.build_tiny(), rope_extension="ntk", train_frames=4)
    with pytest.raises(ConfigError, match=r"^attention.train_frames=-1"):
        radial.inject(wan.build_tiny(), train_frames=-1)
    mochi = get_adapter("mochi")
    with pytest.raises(ConfigError, match=r"^attention.rope_extension=riflex is not supported for family 'mochi'"):
        radial.inject(mochi.build_tiny(), rope_extension="riflex", train_frames=2)


def test_one_lora_step_with_riflex_and_decay(tmp_path, monkeypatch):
    """The trainer config keys reach the injection (the rotary tables are rewritten: 5 latent frames > 2) and the
    LoRA header records them."""
    calls = []
    real = rope_ext.RiflexHook._rewrite
    monkeypatch.setattr(rope_ext.RiflexHook, "_rewrite", lambda self, *a: calls.append(1) or real(self, *a))
    extra = ["attention.train_frames=2", "attention.rope_extension=riflex", "attention.extrapolation_decay=0.5"]
    cfg = validate(compose_config([*tiny_overrides(tmp_path, tmp_path / "data", steps=1), *extra]))
    summary = Trainer(cfg).fit()
    assert summary["step"] == 1 and calls
    loss = json.loads((tmp_path / "run_summary.json").read_text())["losses"][0]
    assert math.isfinite(loss[1] if isinstance(loss, list) else loss["loss"])
    info = read_metadata(tmp_path / "lora" / "pytorch_lora_weights.safetensors")["attention"]
    assert (info["train_frames"], info["rope_extension"], info["extrapolation_decay"]) == (2, "riflex", 0.5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("attention.rope_extension=riflex", "attention.rope_extension needs attention.train_frames"),
        ("attention.extrapolation_decay=0", "attention.extrapolation_decay=0.0: expected 0 < lambda <= 1"),
        ("attention.extrapolation_decay=1.5", "attention.extrapolation_decay=1.5: expected 0 < lambda <= 1"),
        ("attention.rope_extension=yarn", "attention.rope_extension='yarn': expected one of"),
        (
            "attention.rope_extension=riflex attention.train_frames=2 parallel.sp_degree=2",
            "not supported under sequence parallelism",
        ),
    ],
)
def test_trainer_config_errors_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config([*tiny_overrides(tmp_path, tmp_path / "data", steps=1), *override.split()]))


def test_generate_with_riflex_and_dense_decay(tmp_path):
    embeds = _embeds_file(tmp_path / "p.safetensors")
    base = ["--tiny", "wan", "--prompt-embeds", str(embeds), "--seed", "1", *SMALL]

    def latents(*args, out):
        (record,) = rgen.main([*base, *args, "--out", str(tmp_path / out), "--no-decode"])["generated"]
        return record, load_file(record["files"]["latents"])["latents"]

    _, plain = latents(out="plain")
    record, riflex = latents("--rope-extension", "riflex", "--train-frames", "2", out="riflex")
    assert record["radial"]["rope_extension"] == "riflex" and record["radial"]["train_frames"] == 2
    assert not torch.allclose(plain, riflex, atol=1e-5)
    # 5 latent frames, trained on 5: nothing changes.
    _, same = latents("--rope-extension", "riflex", "--train-frames", "5", out="same")
    assert torch.equal(plain, same)
    # Dense attention with decay goes through the injector (backend dense -> reference with a full mask).
    _, dense = latents("--attention", "dense", out="dense")
    record, decayed = latents("--attention", "dense", "--extrapolation-decay", "0.5", "--train-frames", "2", out="dd")
    assert record["radial"]["enabled"] is False and record["radial"]["extrapolation_decay"] == 0.5
    assert not torch.allclose(dense, decayed, atol=1e-5)


def test_generate_flag_errors_are_one_line(tmp_path, capsys):
    embeds = _embeds_file(tmp_path / "p.safetensors")
    for args, message in [
        (["--rope-extension", "riflex"], "error: attention.rope_extension needs attention.train_frames"),
        (["--extrapolation-decay", "0", "--train-frames", "2"], "error: attention.extrapolation_decay=0.0"),
    ]:
        with pytest.raises(SystemExit) as e:
            rgen.main(["--tiny", "wan", "--prompt-embeds", str(embeds), *SMALL, *args, "--out", str(tmp_path)])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err, err
    assert not Path(tmp_path / "generate_summary.json").exists()
