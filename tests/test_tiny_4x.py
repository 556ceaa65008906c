"""Tiny models cover 4x of their family's clip: `train.generate --tiny FAMILY --length 4x` runs on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from radial.generation.settings import frames_for_length
from radial.geometry import geometry
from radial.models import available_adapters, get_adapter


@pytest.mark.parametrize("family", available_adapters())
@pytest.mark.parametrize("variant", [None, "i2v"])
def test_tiny_transformer_runs_at_4x_latent_frames(family, variant):
    adapter = get_adapter(family)
    if variant is not None and variant not in adapter.tiny_variants:
        pytest.skip(f"{family} has no tiny {variant}")
    g = geometry(family)
    frames = g.latent_frames(frames_for_length(g, "4x"))
    model = adapter.build_tiny(seed=0, variant=variant).eval()
    side = g.patch_hw  # one token per latent frame: the positions along time are what 4x stretches
    x = adapter.make_dummy_latents(model, 1, frames, side, side)
    cond = adapter.make_dummy_conditions(model, 1, latent_shape=x.shape)
    with torch.no_grad():
        out = adapter.predict(model, x, torch.tensor([500.0]), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_generate_tiny_wan_at_4x(tmp_path):
    from train.generate import main

    main(["--tiny", "wan", "--prompt", "a red ball", "--length", "4x", "--steps", "1", "--no-decode"]
         + ["--out", str(tmp_path)])  # fmt: skip
    (sidecar,) = [json.loads(p.read_text()) for p in tmp_path.glob("wan_321f_*.json")]
    assert sidecar["latent_shape"][2] == 81 and sidecar["finite"]
