"""One attention-settings object (radial/attention_settings.py) from the config to the kernel and into the LoRA
header, whole: a LoRA trained with any non-default option is sampled with it by train.generate (CLI on top), and
LoRAs written before the object (per-key `radial` header) still restore."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import train.generate as rgen
from radial.attention_settings import AttentionSettings
from radial.errors import ConfigError
from radial.generation.settings import LoraSpec, RadialSettings
from radial.lora import export_comfy, read_metadata
from tests.trainer_helpers import tiny_overrides
from train.config import AttentionConfig, compose, validate

#: a value other than the default for every option a LoRA's header restores (a new option must be added here)
NON_DEFAULT = {
    "decay_factor": 0.5,
    "dense_layers": 1,
    "dense_timesteps": 1,
    "block_size": 16,
    "sink": False,
    "decay_adjacent": True,
    "window_frames": 1,
    "train_frames": 2,
    "rope_extension": "riflex",
    "extrapolation_decay": 0.5,
}


def _restored(lora, *cli: str) -> RadialSettings:
    args = rgen.build_parser().parse_args(["--tiny", "wan", "--lora", str(lora), *cli])
    settings, origin = rgen.resolve_radial(args, [LoraSpec.parse(s) for s in args.lora])
    assert origin == f"LoRA {lora}"
    return settings


def test_every_option_is_covered_and_non_default():
    restored = set(AttentionSettings.names()) - set(AttentionSettings.RUN_LOCAL)
    assert set(NON_DEFAULT) == restored, "a new attention option needs a non-default value here"
    defaults = AttentionSettings()
    assert all(getattr(defaults, k) != v for k, v in NON_DEFAULT.items())


def test_the_config_section_is_the_settings_object():
    assert tuple(f.name for f in dataclasses.fields(AttentionConfig)) == AttentionSettings.names()
    cfg = validate(compose([f"attention.{k}={str(v).lower()}" for k, v in NON_DEFAULT.items()]))
    assert cfg.attention.settings() == AttentionSettings(**NON_DEFAULT)
    with pytest.raises(ConfigError, match=r"attention.window_frames=-1: expected an integer >= 0"):
        validate(compose(["attention.window_frames=-1"]))


@pytest.mark.parametrize("option", sorted(NON_DEFAULT))
def test_a_header_with_each_option_restores_it(tmp_path, option):
    trained = AttentionSettings(**{option: NON_DEFAULT[option]}, **({"train_frames": 2} if "ext" in option else {}))
    lora = export_comfy({"w": torch.zeros(1)}, tmp_path / "lora.safetensors", {"attention": trained.recorded("fa4")})
    settings = _restored(lora)
    assert getattr(settings, option) == NON_DEFAULT[option]
    assert settings.attention() == dataclasses.replace(trained, backend="auto")  # the backend is this machine's


def test_a_trained_lora_restores_its_settings_whole_with_the_cli_on_top(tmp_path):
    """Every option a training run takes (dense_timesteps is an inference option), through the trainer's export."""
    from train.trainer import Trainer

    options = {k: v for k, v in NON_DEFAULT.items() if k != "dense_timesteps"}
    overrides = tiny_overrides(tmp_path, tmp_path / "data", steps=1) + ["attention.deterministic=true"]
    overrides += [f"attention.{k}={str(v).lower()}" for k, v in options.items()]
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        Trainer(validate(compose(overrides))).fit()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    lora = tmp_path / "lora"
    header = read_metadata(lora / "pytorch_lora_weights.safetensors")["attention"]
    assert header == {**dataclasses.asdict(AttentionSettings(**options)), "backend": "reference", "deterministic": True}
    settings = _restored(lora)
    assert settings.attention() == AttentionSettings(**options)  # backend auto and deterministic off: not restored
    settings = _restored(lora, "--dense-layers", "0", "--sink", "--no-decay-adjacent", "--backend", "reference")
    assert (settings.dense_layers, settings.sink, settings.decay_adjacent, settings.backend) == (
        0,
        True,
        False,
        "reference",
    )
    assert (settings.window_frames, settings.rope_extension, settings.decay_factor) == (1, "riflex", 0.5)


def test_loras_written_before_the_object_restore_their_per_key_fields(tmp_path):
    legacy = {"backend": "fa4", "decay_factor": 0.5, "dense_layers": 2, "block_size": 64, "sink": False,
              "decay_adjacent": True, "window_frames": 2}  # fmt: skip
    lora = export_comfy({"w": torch.zeros(1)}, tmp_path / "old.safetensors", {"radial": legacy})
    settings = _restored(lora)
    assert settings.attention() == AttentionSettings(**{**legacy, "backend": "auto"})
