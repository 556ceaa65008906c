"""The attention backends describe themselves (radial/kernels/registry.py): one list of names behind the config,
the CLI and the dispatch, and the run summary names the backend that will run, not the one asked for."""

from __future__ import annotations

import pytest
import torch

from radial.attention import resolve_backend
from radial.errors import ConfigError
from radial.kernels import fa4, registry
from train.config import compose, validate
from train.summary import run_summary


def test_every_kernel_module_registered_itself():
    assert set(registry.backend_names()) == {"fa4", "triton", "flex", "flashinfer", "reference", "dense"}
    for name in registry.backend_names():
        backend = registry.get(name)
        assert backend.name == name and callable(backend.function)
        assert backend.fallback is None or backend.fallback in registry.backend_names()
    assert [n for n in registry.backend_names() if registry.get(n).deterministic] == ["triton", "reference", "dense"]
    with pytest.raises(ValueError, match="backend must be one of"):
        registry.get("magic")


def test_config_and_cli_read_the_names_from_the_registry(monkeypatch):
    import train.generate

    action = next(a for a in train.generate.build_parser()._actions if a.dest == "backend")
    assert tuple(action.choices) == registry.backend_choices()
    with pytest.raises(ConfigError, match=r"attention.backend='magic': expected one of \['auto', 'fa4'"):
        validate(compose(["attention.backend=magic"]))
    with pytest.raises(ConfigError, match=r"deterministic backend \(triton, reference, dense\)"):
        validate(compose(["attention.backend=flex", "attention.deterministic=true"]))
    # a backend registered later is a valid choice at once (one list in the code base)
    monkeypatch.setitem(registry._REGISTRY, "extra", registry.Backend("extra", lambda *a: a[0], True, "a test"))
    assert validate(compose(["attention.backend=extra"])).attention.backend == "extra"


@pytest.fixture
def hopper_with_fa4(monkeypatch):
    """A compute capability 9.x CUDA device with flash-attn-4 importable, as tests/test_fa4_attention.py fakes it."""
    monkeypatch.setattr(fa4, "_capability_major", lambda device: 9 if torch.device(device).type == "cuda" else None)
    monkeypatch.setattr(fa4, "_import_error", [None])
    monkeypatch.setattr(registry, "_logged", set())


@pytest.mark.parametrize(
    "overrides,backend",
    [
        (["attention.block_size=128"], "fa4 (auto)"),
        (["attention.block_size=64"], "triton (auto)"),
        (["attention.block_size=128", "attention.deterministic=true"], "triton (auto)"),
        (["attention.backend=fa4", "attention.block_size=64"], "triton"),
        (["attention.backend=fa4", "attention.block_size=128"], "fa4"),
    ],
)
def test_run_summary_names_the_backend_that_runs(hopper_with_fa4, overrides, backend):
    cfg = validate(compose(["model=tiny_wan", *overrides]))
    assert not torch.are_deterministic_algorithms_enabled()  # the summary reads the config, not a global flag
    lines = run_summary(cfg, ([], []), torch.device("cuda", 0)).splitlines()
    (attention,) = [line for line in lines if line.startswith("attention:")]
    assert f"backend {backend};" in attention


def test_fallbacks_and_auto_follow_the_registry(hopper_with_fa4, caplog):
    cuda = torch.device("cuda", 0)
    assert resolve_backend("auto", cuda, 128, deterministic=False) == "fa4"
    assert resolve_backend("auto", cuda, 128, deterministic=True) == "triton"
    assert resolve_backend("fa4", cuda, 64, deterministic=False) == "triton"
    assert "attention backend fa4 -> triton: flash-attn-4 needs 128-token blocks" in caplog.text
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    assert resolve_backend("flex", cuda, 64, deterministic=True) == "flex"  # flex declares no limits of its own
    assert registry.with_score_bias("triton", cuda) == "flex"
    assert registry.with_score_bias("fa4", torch.device("cpu")) == "reference"
