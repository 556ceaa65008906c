"""The family specs changed no behaviour: the tables they replaced hold the same values, and tiny runs of the demo
and of every family give bitwise the same losses, LoRA tensors and generated latents as before the specs
(tests/data/family_*_before.json, written by tests/family_parity.py on the code before them, main e4643ce, from
the fixed videos in tests/data/family_parity_videos)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from data.encoders import IMAGE_FAMILIES
from radial.families import FAMILIES, pipeline_families
from tests.family_parity import fingerprints

DATA = Path(__file__).resolve().parent / "data"


def test_specs_hold_the_tables_they_replaced():
    """For the families the tables had (a family added since, MiniMax-H3, is not in them); the geometry fields added
    since (the chunked VAE frame rule) hold the causal k*t+1 rule for those families."""
    before = json.loads((DATA / "family_tables_before.json").read_text())
    old = set(before["geometry"])
    added = {"first_frames", "chunk_latents", "first_latents"}
    for n in old:
        assert {k: getattr(FAMILIES[n].geometry, k) for k in added} == dict.fromkeys(added, 1)
    now = {
        "geometry": {
            n: {k: v for k, v in dataclasses.asdict(s.geometry).items() if k not in added}
            for n, s in FAMILIES.items()
            if n in old
        },
        "sink": {n: s.sink for n, s in FAMILIES.items() if n in old},
        "hub_repo": {n: s.hub_repo for n, s in FAMILIES.items() if n in old},
        "guidance_scale": {n: s.guidance_scale for n, s in FAMILIES.items() if n in old},
        "pipeline_families": {c: f for c, f in pipeline_families().items() if f in old},
        "text_fields": {n: list(s.text_fields) for n, s in FAMILIES.items() if n in old},
        "image_families": list(IMAGE_FAMILIES),
        "image_encoder": {
            n: list(dataclasses.astuple(s.image_encoder)) for n, s in FAMILIES.items() if s.image_encoder is not None
        },
    }
    assert now == before


@pytest.mark.slow
def test_tiny_runs_are_bitwise_unchanged(tmp_path):
    before = json.loads((DATA / "family_parity_before.json").read_text())
    assert fingerprints(tmp_path) == before
