"""benchmarks/scaleout.py in its CPU smoke mode (tiny Wan, gloo): the launch, metrics and report code paths."""

import json

import pytest

from benchmarks import scaleout

pytestmark = pytest.mark.slow


def test_scaleout_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_SCALEOUT_DATA", str(tmp_path / "data"))
    scaleout.main(["--smoke", "--out", str(tmp_path / "out"), "--parts", "sp2", "equal"])
    rows = {r["run"]: r for r in json.loads((tmp_path / "out" / "scaleout.json").read_text())["rows"]}
    assert "error" not in rows["sp2"], rows["sp2"]
    assert rows["sp2"]["tokens"] == 9 * 4 * 4 and len(rows["sp2"]["losses"]) == 3 and rows["sp2"]["exported"]
    assert rows["equal"]["pass"] and rows["equal"]["grad_rel_l2"] < 1e-4, rows["equal"]
    md = (tmp_path / "out" / "scaleout.md").read_text()
    assert "| sp2 | multi_gpu.yaml | 2 | 2 |" in md and "sp=2 vs sp=1 on one batch" in md


def test_random_dataset_fits_the_full_size_wan(tmp_path):
    """The benchmark's random data passes the dataset's validation against the full Wan2.1-1.3B config."""
    from data import Expect, LatentDataset
    from radial.models import get_adapter

    config = get_adapter("wan").variants["t2v-1.3b"]
    full = {"in_channels": 16, "out_channels": 16, **config}
    root = scaleout.write_random_dataset(tmp_path / "ds", full, 17, 64, 64, items=2)
    ds = LatentDataset(root, model="wan", expect=Expect.from_transformer_config("wan", full), verify="full")
    item = ds[0]
    assert tuple(item["latents"].shape) == (16, 5, 8, 8) and item["prompt_embeds"].shape[-1] == 4096
