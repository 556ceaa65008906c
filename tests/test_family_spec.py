"""Every registered model family is complete: every FamilySpec field set, an encoder class, an adapter, its configs
under configs/model, a tiny build of the adapter's transformer class; unknown names are one clear error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from data.encoders import FamilyEncoders, encoder_class
from radial.families import FAMILIES, FamilySpec, family_spec
from radial.models import available_adapters, get_adapter

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
#: fields whose None means "the family has none" (no I2V pipeline, no pooled text, no image encoder ...)
OPTIONAL = {"image_pipeline_class", "tiny_pooled_dim", "tiny_image_dim", "i2v_latents", "image_encoder"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_field_is_set(name):
    spec = family_spec(name)
    assert spec.name == name and spec.geometry.family == name
    for field in dataclasses.fields(FamilySpec):
        value = getattr(spec, field.name)
        if field.name not in OPTIONAL:
            assert value is not None and value != "", f"{name}: {field.name} is not set"
    assert spec.text_fields and spec.text_fields[0] == "prompt_embeds"
    # an image-to-video family has a pipeline for it and the latents it conditions on; a T2V-only one neither
    assert (spec.i2v_latents is None) == (spec.image_pipeline_class is None)
    assert spec.i2v_latents is not None or not (spec.i2v_fields or spec.image_encoder or spec.tiny_image_dim)
    assert (spec.image_encoder is None) == (spec.tiny_image_dim is None)
    assert (spec.tiny_pooled_dim is None) == ("pooled_prompt_embeds" not in spec.text_fields)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_has_an_encoder_an_adapter_and_configs(name):
    spec = family_spec(name)
    assert issubclass(encoder_class(name), FamilyEncoders)
    adapter = get_adapter(name)
    assert adapter.family == name and adapter.spec is spec and adapter.geometry is spec.geometry
    assert type(adapter).__module__ == f"radial.models.{spec.module}"
    assert encoder_class(name).__module__ == f"data.encoders.{spec.module}"
    families = {}
    for config in spec.configs:
        path = CONFIGS / f"{config}.yaml"
        assert path.is_file(), f"{name}: configs/model/{config}.yaml is missing"
        data = yaml.safe_load(path.read_text())
        families[config] = (data.get("model") or data)["family"]
    assert any(c.startswith("tiny_") for c in spec.configs), f"{name}: no tiny_ config"
    # a config that names another family trains this one with model.family=<name> (the same adapter file)
    assert all(family_spec(f).module == spec.module for f in families.values())


def test_registries_agree():
    assert sorted(available_adapters()) == sorted(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tiny_build(name):
    adapter = get_adapter(name)
    model = adapter.build_tiny(seed=0)
    assert type(model).__name__ == adapter.class_name
    assert adapter.latent_channels(model) == adapter.geometry.latent_channels
    for variant in adapter.tiny_variants:  # the tiny I2V models read the tiny image encoder's states
        config = adapter.tiny_config_of(variant)
        dim = config.get("image_dim") or config.get("image_embed_dim")
        assert dim is None or dim == family_spec(name).tiny_image_dim


def test_unknown_family_is_one_line_listing_the_known():
    with pytest.raises(
        ValueError, match=r"^unknown model family 'cogvideo'; known: \['h3', 'hunyuan'.*'wan22_ti2v'\]$"
    ):
        family_spec("cogvideo")
