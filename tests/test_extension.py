"""The length-extension experiment: its pieces (window mask, data, scorer, verdicts) and the whole --smoke run."""

import json

import pytest
import torch

from benchmarks.extension_data import ClipGeometry, make_clip, reflect
from benchmarks.extension_record import summarise, verdicts
from benchmarks.extension_score import score_clip, track_error
from radial.mask import MaskOptions
from radial.plan import make_plan


def test_window_mask_density_grows_with_the_window():
    """(The mask itself against a token-level brute force: tests/test_mask_window.py.)"""
    densities = [make_plan(16, 16, block_size=16, window_frames=w).stats.block_density for w in (1, 3, 6)]
    assert densities == sorted(densities) and densities[-1] < 1
    with pytest.raises(ValueError, match="window_frames"):
        MaskOptions.create(window_frames=-1)


def test_clips_follow_the_bounce_physics_and_the_scorer_sees_it():
    g = ClipGeometry(16, 16, 4, 8)
    clip, truth = make_clip(g, 40, torch.Generator().manual_seed(0))
    assert clip.shape == (16, 40, 16, 16) and torch.isfinite(clip).all()
    track = torch.tensor(truth["tracks"][0])
    assert track.min() >= 0 and track.max() <= 15
    assert torch.equal(reflect(torch.tensor([-1.0, 16.0, 31.0]), 0.0, 15.0), torch.tensor([1.0, 14.0, 1.0]))
    good = score_clip(clip, truth["colours"])
    assert good["track_rmse"] < 0.5 and good["identity_cos"] > 0.99 and good["purity_q4"] > 0.95
    assert track_error(clip, truth["colours"], truth["tracks"]) < 0.5
    noise = score_clip(torch.randn(16, 40, 16, 16, generator=torch.Generator().manual_seed(1)), truth["colours"])
    assert noise["track_rmse"] > 5 * good["track_rmse"] and noise["flicker"] > 10 * good["flicker"]
    assert noise["purity_q4"] < 0.75


def _record(loss_d, track_d):
    def arm(label, tuned, loss_base, loss_long, track, step=None):
        e = {
            "label": label,
            "attention": "x",
            "tuned": tuned,
            "loss_base": loss_base,
            "loss_long": loss_long,
            "track_rmse": track,
            "identity_cos": [1, 1],
            "strength_ratio": [1, 1],
            "flicker": [0.1, 0.1],
        }
        if step:
            e.update(step_s=step, train_s=[s * 100 for s in step], peak_memory_gb=[1.0, 1.0])
        return e

    return {
        "data_reference": {"track_rmse": 0.1},
        "geometry": {"radial_density": 0.25, "window_density": 0.25},
        "arms": {
            "a": arm("a", False, [1.0, 1.0], [1.5, 1.5], [4.0, 5.0]),
            "b": arm("b", False, [1.0, 1.0], [1.6, 1.6], [5.0, 6.0]),
            "c": arm("c", True, [1.0, 1.0], [1.2, 1.2], [1.0, 1.2], step=[0.2, 0.2]),
            "d": arm("d", True, [1.0, 1.0], loss_d, track_d, step=[0.1, 0.1]),
        },
    }


def test_verdicts_follow_the_numbers():
    r = _record([1.22, 1.24], [1.1, 1.3])
    v = verdicts(r, summarise(r))
    assert v["i"]["answer"] and v["ii"]["answer"] and v["iii"]["answer"]
    assert v["iv"]["step_speedup"] == pytest.approx(2.0)
    r = _record([1.4, 1.4], [3.0, 3.2])  # radial LoRA 17% worse, tracks outside the spread
    v = verdicts(r, summarise(r))
    assert v["ii"]["answer"] and not v["iii"]["answer"]
    r = _record([1.7, 1.7], [7.0, 7.0])  # radial LoRA no better than untuned
    assert not verdicts(r, summarise(r))["ii"]["answer"]


def test_preset_overrides_name_unknown_keys():
    from benchmarks.extension import set_value

    preset = {"arms": {"rank": 64}, "dense_layers": 1}
    set_value(preset, "arms.rank=128")
    set_value(preset, "dense_layers=2")
    assert preset == {"arms": {"rank": 128}, "dense_layers": 2}
    with pytest.raises(ValueError, match="arms.rnak"):
        set_value(preset, "arms.rnak=3")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        set_value(preset, "arms.rank")


def test_smoke_run_writes_the_record_with_every_arm(tmp_path):
    from benchmarks.extension import main

    out = tmp_path / "out"
    record = main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work")])
    assert sorted(record["arms"]) == ["a", "b", "c", "d", "e"]
    assert all(record["arms"][a]["seeds"] == [0, 1] for a in "abcde") and not record.get("failed")
    assert sorted(p.name for p in out.iterdir()) == [
        "extension.json",
        "extension.log",
        "extension.md",
        "extension_frames.png",
        "extension_loss.png",
    ]
    saved = json.loads((out / "extension.json").read_text())
    assert set(saved["verdicts"]) >= {"i", "ii", "iii", "iv"}
    md = (out / "extension.md").read_text()
    assert "| (d) radial LoRA |" in md and "(iii)" in md
    assert (tmp_path / "work" / "runs" / "base" / "transformer" / "config.json").is_file()
    assert json.loads((tmp_path / "work" / "data" / "train_long" / "tracks.json").read_text())["items"]
