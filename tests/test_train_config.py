"""Config validation: every bad value fails before anything heavy, naming its key."""

import pytest
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from tests.trainer_helpers import compose_config
from train.config import validate


def test_default_config_is_valid():
    cfg = validate(compose_config([]))
    assert cfg.model.family == "wan" and cfg.model.source == "tiny" and cfg.attention.block_size == 16
    assert cfg.data.root == "outputs/demo/data"


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("attention.block_size=100", ValueError, "attention.block_size"),
        ("attention.backend=magic", ValueError, "attention.backend"),
        ("lora.rank=0", ValueError, "lora.rank"),
        ("lora.projections=[q,x]", ValueError, "lora.projections"),
        ("optim.lr=-1", ValueError, "optim.lr"),
        ("train.max_steps=0", ValueError, "train.max_steps"),
        ("train.on_nan=ignore", ValueError, "train.on_nan"),
        ("train.mixed_precision=fp8", ValueError, "train.mixed_precision"),
        ("model.family=sora", ValueError, "model.family"),
        ("model.source=pretrained", ValueError, "model.path"),
        ("model.dtype=int8", ValueError, "model.dtype"),
        ("logging.trackers=[mlflow]", ValueError, "logging.trackers"),
        ("parallel.sp_degree=0", ValueError, "parallel.sp_degree"),
        ("eval.hooks=[nosuchhook]", ValueError, "eval.hooks"),
        ("+eval.timesteps=[0.5,1.5]", ValueError, "eval.timesteps"),
        ("+train.typo_key=1", ConfigKeyError, "typo_key"),
        ("train.max_steps=many", ValidationError, "train.max_steps"),
    ],
)
def test_bad_values_name_their_key(override, error, match):
    with pytest.raises(error, match=match):
        validate(compose_config([override]))


def test_eval_default_group_is_valid():
    cfg = validate(compose_config(["eval=default"]))
    assert cfg.eval.validation_every == 250 and cfg.eval.hooks == ["flicker"]


def test_pretrained_model_needs_an_existing_path(tmp_path):
    with pytest.raises(MissingMandatoryValue, match="model.path"):
        validate(compose_config(["model=wan"]))
    with pytest.raises(FileNotFoundError, match="model.path"):
        validate(compose_config(["model=hunyuan", f"model.path={tmp_path / 'nope'}"]))
    with pytest.raises(MissingMandatoryValue, match="data.root"):
        validate(compose_config(["data=latents"]))
