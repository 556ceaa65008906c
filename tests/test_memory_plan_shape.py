"""The memory planner plans the model that trains: the shape comes from the transformer the trainer builds (or the
one a benchmark built and passes), the variant resolved, and the plan line names the model and its size.

2026-12-08 on an H100 the benchmark's wan14b4x case (Wan2.1 T2V-14B) was planned as the family default 1.3B
(30 blocks, 49.7 GB expected) and ran out of memory."""

import pytest
import torch

from benchmarks.train_step import CASES, VARIANTS, _config
from radial.models import get_adapter
from tests.test_memory_plan import WAN4X, _fake_card
from tests.trainer_helpers import compose_config
from train import memory_plan as mp
from train.components import build_transformer
from train.config import validate

H100_GB = 79.2  # torch.cuda.get_device_properties(0).total_memory of the run's "NVIDIA H100 80GB HBM3", GiB


def _line(monkeypatch, cfg, transformer=None) -> str:
    _fake_card(monkeypatch, H100_GB)
    return mp.plan_config(cfg, 81, WAN4X, torch.device("cuda"), transformer)


def test_the_14b_built_by_a_benchmark_gets_the_14b_plan(monkeypatch):
    """The benchmark's path: the trainer's config of the case and the transformer it built (meta device, no weights).
    The plan is memory.md's for Wan2.1 T2V-14B at 4x on an H100, not the 1.3B's."""
    variant = VARIANTS["wan14b4x"][0]
    built = get_adapter("wan").build_full(variant, device="meta")
    cfg = _config("wan", "triton", 2, True, ("lora.alpha=128",), variant)
    line = _line(monkeypatch, cfg, built)
    assert "for wan t2v-14b (14.3B parameters, 40 blocks of width 5120) at 126,360 tokens on 79 GB" in line
    assert "activation offload + weight streaming, 40 of 40 blocks checkpointed, attention recomputed" in line
    assert "expected peak 46.5 GB of 67.3 usable" in line and "74.4 GB pinned on the host" in line
    assert cfg.train.offload_activations and cfg.train.offload_blocks and not cfg.train.save_attention
    small = _line(monkeypatch, _config("wan", "triton", 2, True), get_adapter("wan").build_full(device="meta"))
    assert "for wan t2v-1.3b (1.4B parameters, 30 blocks of width 1536)" in small
    assert "everything on the device, 30 of 30 blocks checkpointed, attention saved; expected peak 49.7" in small


def test_a_reduced_model_is_planned_with_the_blocks_built(monkeypatch):
    """--h3-layers 4 builds 4 of H3's 50 blocks: the plan counts those 4."""
    built = get_adapter("h3").build_full(device="meta", num_layers=4)
    line = _line(monkeypatch, _config("h3", "triton", 2, True), built)
    assert "for h3 t2va (" in line and " 4 blocks of width 5376)" in line and " of 4 blocks checkpointed" in line


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_every_case_config_names_the_variant_it_builds(case):
    """A case's trainer config describes the model the case builds, so the run summary and the LoRA header say it
    too: planned from the config alone, the shape is that of the built transformer."""
    family = CASES[case][0]
    variant = VARIANTS[case][0]
    cfg = _config(family, "triton", 2, True, (), variant)
    built = get_adapter(family).build_full(variant, device="meta")
    assert mp.config_shape(cfg) == mp.config_shape(cfg, built)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=tiny_wan"],
        ["model=tiny_wan", "model.variant=i2v"],
        ["model=wan_full", "model.variant=t2v-14b"],
        ["model=wan_full", "model.variant=i2v-14b"],
        ["model=wan_full"],
        ["model=h3_full"],
        ["model=tiny_h3"],
    ],
    ids=lambda o: " ".join(o),
)
def test_the_trainer_plans_the_module_it_trains(overrides):
    """One code path: the trainer's plan (config_shape of the config) has the shape of the transformer that
    build_transformer makes from the same config (on the meta device here: no weights)."""
    cfg = validate(compose_config([*overrides, "lora.rank=128"]))
    adapter = get_adapter(cfg.model.family)
    trained = build_transformer(cfg, adapter, torch.device("meta"))
    assert mp.config_shape(cfg) == mp.config_shape(cfg, trained)


def test_a_local_14b_folder_gets_the_14b_plan(tmp_path, monkeypatch):
    """model.path with a Wan2.1 T2V-14B transformer config (no weights needed to plan): the 14B's plan, named by the
    folder; and the trained module from a local folder has the planned shape (tiny weights saved there)."""
    adapter = get_adapter("wan")
    folder = tmp_path / "Wan2.1-T2V-14B-Diffusers"
    adapter.build_full("t2v-14b", device="meta").save_config(folder / "transformer")
    cfg = validate(compose_config(["model=wan", f"model.path={folder}", "lora.rank=128"]))
    shape = mp.config_shape(cfg)
    assert (shape.blocks, shape.hidden, shape.ffn) == (40, 5120, 13824)
    assert shape == mp.ModelShape(**{**mp.WAN_T2V_14B.__dict__, "name": "wan Wan2.1-T2V-14B-Diffusers"})
    assert "40 of 40 blocks checkpointed, attention recomputed; expected peak 46.5 GB" in _line(monkeypatch, cfg)
    tiny = tmp_path / "tiny"
    adapter.build_tiny().save_pretrained(tiny / "transformer")
    cfg = validate(compose_config(["model=wan", f"model.path={tiny}", "lora.rank=8"]))
    assert mp.config_shape(cfg) == mp.config_shape(cfg, build_transformer(cfg, adapter, torch.device("cpu")))


def test_the_plan_names_a_cached_hub_model_by_its_id():
    from types import SimpleNamespace

    hub = "/cache/hub/models--Wan-AI--Wan2.1-T2V-14B-Diffusers/snapshots/0123abc"
    m = SimpleNamespace(family="wan", source="pretrained", path=hub, expert=None, variant=None)
    assert mp.model_name(m) == "wan Wan-AI/Wan2.1-T2V-14B-Diffusers"
    assert mp.model_name(SimpleNamespace(**{**m.__dict__, "path": "/m/wan22", "expert": "transformer_2"})) == (
        "wan wan22/transformer_2"
    )
