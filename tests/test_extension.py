"""The length-extension experiment: its pieces (window mask, data, scorer, base check, verdicts) and the --smoke run."""

import json
import math

import pytest
import torch

from benchmarks.extension_data import ClipGeometry, draw_truth, make_clip, object_token_mask, reflect
from benchmarks.extension_record import SCORES, compare, summarise, verdicts
from benchmarks.extension_score import base_check, score_clip, track_error
from radial.mask import MaskOptions
from radial.plan import make_plan

G = ClipGeometry(32, 32, 4, 8, sigma=2.0, occluder_width=8, period=(5, 7))


def test_window_mask_density_grows_with_the_window():
    """(The mask itself against a token-level brute force: tests/test_mask_window.py.)"""
    densities = [make_plan(16, 16, block_size=16, window_frames=w).stats.block_density for w in (1, 3, 6)]
    assert densities == sorted(densities) and densities[-1] < 1
    with pytest.raises(ValueError, match="window_frames"):
        MaskOptions.create(window_frames=-1)


def test_clips_hold_the_long_range_structure_they_promise():
    """Objects bounce, hide behind the wall and come back with their colour; flashes keep their period; the
    experiment's geometry puts hidden stretches and flash periods beyond the window arm's reach."""
    frames = 64
    clip, truth = make_clip(G, frames, torch.Generator().manual_seed(3))
    assert clip.shape == (16, frames, 32, 32) and torch.isfinite(clip).all()
    assert torch.equal(reflect(torch.tensor([-1.0, 16.0, 31.0]), 0.0, 15.0), torch.tensor([1.0, 14.0, 1.0]))
    assert len(set(truth["colours"])) == 2
    flashes = truth["flashes"]
    assert all(b - a == truth["period"] for a, b in zip(flashes, flashes[1:], strict=False))
    assert G.period[0] <= truth["period"] <= G.period[1]
    # The wall hides the objects: object channels are zero in its columns, its own channels are not.
    a, b = truth["occluder"]
    assert clip[8:, :, :, a:b].abs().max() == 0 and clip[:4, :, :, a:b].abs().min() > 0
    hidden = [sum(not v for v in vis) for vis in truth["visible"]]
    assert max(hidden) > 0
    # Identity is drawn per clip (not from a caption): different seeds give different colour pairs.
    pairs = {tuple(draw_truth(G, 8, torch.Generator().manual_seed(s))["colours"]) for s in range(20)}
    assert len(pairs) > 4
    mask = object_token_mask(truth, G, frames)
    assert mask.shape == (frames, 16, 16) and 0.05 < mask.float().mean() < 0.8
    assert mask[flashes].all() and not mask[[f for f in range(frames) if f not in flashes]].all()


def test_the_scorer_separates_data_from_noise_forgetting_and_loops():
    frames = 48
    clip, truth = make_clip(G, frames, torch.Generator().manual_seed(0))
    good = score_clip(clip, G)
    assert good["late_identity"] == 1.0 and good["track_rmse"] < 0.5 and good["flash_regularity"] == 1.0
    assert good["near_dup"] == 0.0 and good["frozen"] == 0.0
    assert track_error(clip, G, truth) < 0.5
    noise = score_clip(torch.randn(16, frames, 32, 32, generator=torch.Generator().manual_seed(1)), G)
    assert noise["track_rmse"] > 5 * good["track_rmse"] and noise["late_identity"] < 0.75
    # Forgotten identity: the last quarter's objects take the two other palette colours.
    swapped = dict(truth, colours=[c for c in range(4) if c not in truth["colours"]])
    from benchmarks.extension_data import render

    late = render(G, swapped, frames)
    forgot = clip.clone()
    forgot[:, -frames // 4 :] = late[:, -frames // 4 :]
    assert score_clip(forgot, G)["late_identity"] == 0.0
    # A clip that loops its first 12 frames: near duplicates and a periodic difference energy.
    loop = clip[:, :12].repeat(1, 4, 1, 1)
    looped = score_clip(loop, G)
    assert looped["near_dup"] == 1.0 and looped["diff_autocorr"] > good["diff_autocorr"]
    frozen = clip[:, :1].repeat(1, frames, 1, 1)
    assert score_clip(frozen, G)["frozen"] == 1.0


def test_base_check_uses_its_fixed_thresholds():
    data = {"objects_per_frame": 1.8, "flash_rate": 0.1}
    good = {"objects_per_frame": 1.7, "late_identity": 0.95, "track_rmse": 0.4, "flash_rate": 0.1}
    assert base_check(good, data, scorer_error=0.2)["pass"]
    for key, bad in (("objects_per_frame", 1.5), ("late_identity", 0.8), ("track_rmse", 0.6), ("flash_rate", 0.05)):
        r = base_check({**good, key: bad}, data, scorer_error=0.2)
        assert not r["pass"], key
    assert base_check({**good, "track_rmse": 0.7}, data, scorer_error=0.4)["pass"]  # 2x the scorer's error
    assert not base_check({**good, "track_rmse": math.nan}, data, scorer_error=0.2)["pass"]


def _arm(label, tuned, loss_long, identity, track, step=None):
    e = {
        "label": label,
        "attention": "dense",
        "tuned": tuned,
        "extras": [],
        "loss_base": [1.0, 1.0, 1.0],
        "loss_long": loss_long,
        "content_base": [1.0, 1.0, 1.0],
        "content_long": loss_long,
        "late_identity": identity,
        "objects_q4": [1.8, 1.8, 1.8],
        "track_rmse": track,
        "flash_regularity": [1.0, 1.0, 1.0],
    }
    if step:
        e.update(step_s=step, train_s=[s * 100 for s in step], peak_memory_gb=[1.0, 1.0, 1.0])
    return e


def _record(d_loss, d_identity):
    ref = {"late_identity": 1.0, "objects_q4": 1.8, "track_rmse": 0.2, "flash_regularity": 1.0}
    check = {"scores": {"late_identity": 0.98, "objects_q4": 1.8, "track_rmse": 0.3, "flash_regularity": 1.0}}
    return {
        "data_reference": {"base": ref, "long": ref},
        "geometry": {"radial_density": 0.3, "window_density": 0.3},
        "base": {"passed": True, "steps": 100, "checks": [check]},
        "arms": {
            "a": _arm("a", False, [1.5, 1.5, 1.5], [0.6, 0.62, 0.58], [3.0, 3.1, 2.9]),
            "c": _arm("c", True, [1.2, 1.21, 1.19], [0.9, 0.92, 0.91], [1.0, 1.1, 0.9], step=[0.2, 0.2, 0.2]),
            "d": _arm("d", True, d_loss, d_identity, [1.0, 1.05, 0.95], step=[0.1, 0.1, 0.1]),
        },
    }


def test_verdicts_follow_the_numbers():
    r = _record([1.22, 1.23, 1.21], [0.9, 0.91, 0.92])
    s = summarise(r)
    v = verdicts(r, s)
    assert v["i"]["answer"] and v["i"]["worse_at_4L"]["late_identity"]
    assert set(v["ii"]["recovering"]) == {"c", "d"}
    assert v["iii"]["answer"] and v["iii"]["scores"]["late_identity"] == "tie"
    assert v["v"]["step_speedup_here"] == pytest.approx(2.0)
    r = _record([1.6, 1.61, 1.59], [0.6, 0.61, 0.62])  # radial LoRA worse than untuned, forgets identities
    v = verdicts(r, summarise(r))
    assert not v["iii"]["answer"] and v["iii"]["scores"]["late_identity"] == "worse"
    assert "d" not in v["ii"]["recovering"]
    ref = r["data_reference"]["long"]
    assert compare(summarise(r), ref, "c", "d", "loss_long") == "better"


def test_verdicts_stand_on_the_probe_when_only_the_probe_passed():
    r = _record([1.22, 1.23, 1.21], [0.6, 0.61, 0.62])  # radial LoRA's samples forget identities ...
    for arm, identity in (("a", [0.6, 0.62, 0.58]), ("c", [0.9, 0.92, 0.91]), ("d", [0.95, 0.96, 0.97])):
        r["arms"][arm].update({f"dn_{k}": v for k, v in r["arms"][arm].items() if k in SCORES})
        r["arms"][arm]["dn_late_identity"] = identity  # ... its one-step predictions keep them
    check = r["base"]["checks"][0]
    check["probe"] = check["scores"]
    r["base"].update(passed=False, probe_passed=True, tier="probe")
    v = verdicts(r, summarise(r))
    assert v["tier"] == "probe" and "d" in v["ii"]["recovering"]
    assert v["ii"]["detail"]["d"]["against_a"]["dn_late_identity"] == "better"
    assert "late_identity" not in v["ii"]["detail"]["d"]["against_a"]  # samples measured, not used
    assert v["iii"]["scores"]["dn_late_identity"] == "better" and v["iii"]["answer"]
    assert v["i"]["answer"] and "probe check passed" in v["i"]["text"]
    r["base"].update(probe_passed=False, tier=None)  # neither check passed: no verdict holds
    assert not verdicts(r, summarise(r))["i"]["answer"]
    old = _record([1.22, 1.23, 1.21], [0.9, 0.91, 0.92])  # a record from before the probe: the sample tier
    assert verdicts(old, summarise(old))["tier"] == "samples"


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


def test_one_seed_drives_every_draw():
    from benchmarks.extension import derive

    assert derive(0, "data", "train_base") == derive(0, "data", "train_base")
    assert derive(0, "data", "train_base") != derive(1, "data", "train_base")
    assert derive(0, "data", "train_base") != derive(0, "data", "train_long")


def test_smoke_run_writes_the_record_with_every_arm(tmp_path):
    from benchmarks.extension import ARMS, main

    out = tmp_path / "out"
    record = main(["--smoke", "--arms-anyway", "--out", str(out), "--work", str(tmp_path / "work")])
    assert sorted(record["arms"]) == sorted(ARMS) and not record.get("failed")
    assert all(record["arms"][a]["seeds"] == [0, 1] for a in ARMS)
    assert record["arms_anyway"] and record["base"]["checks"]
    assert {"probe", "probe_check"} <= set(record["base"]["checks"][0]) and record["base"]["tier"] in (None, "probe")
    assert all(f"dn_{k}" in record["arms"][a] for a in ARMS for k in SCORES)
    assert all(set(x) == {"0.8"} for x in record["arms"]["d"]["probes_long"])  # the smoke preset's reported level
    assert sorted(p.name for p in out.iterdir()) == [
        "base",
        "extension.json",
        "extension.log",
        "extension.md",
        "extension_frames.png",
        "extension_loss.png",
        "extension_scores.png",
    ]
    saved = json.loads((out / "extension.json").read_text())
    assert set(saved["verdicts"]) >= {"i", "ii", "iii", "iv", "v"}
    md = (out / "extension.md").read_text()
    assert "| (d) radial LoRA |" in md and "no answer below is a valid verdict" in md
    assert "Denoising probe at 4L" in md and "| probe at L |" in md and "sigma 0.8: " in md
    assert (tmp_path / "work" / "runs" / "base" / "transformer" / "config.json").is_file()
    assert json.loads((tmp_path / "work" / "data" / "train_long" / "tracks.json").read_text())["items"]
    kept = json.loads((out / "base" / "base.json").read_text())
    assert kept["seed"] == 0 and [c["step"] for c in kept["base"]["checks"]] == [2, 4]

    # the kept base serves a later run of the same seed (checked again there); another seed's data is refused
    again = main(["--smoke", "--arms", "a", "--arms-anyway", "--base", str(out / "base"), "--out",
                  str(tmp_path / "out2"), "--work", str(tmp_path / "work2")])  # fmt: skip
    assert again["base"]["from"] == str(out / "base") and again["base"]["recheck"]["checks"]
    assert again["base"]["probe_recheck"]["probe_check"]["checks"]
    assert again["base"]["steps"] == record["base"]["steps"] and sorted(again["arms"]) == ["a"]
    # --continue-base: a further stage from the kept base, at another flow shift, kept again with both stages
    more = main(["--smoke", "--arms", "a", "--arms-anyway", "--base", str(out / "base"), "--continue-base",
                 "--set", "flow_shift=5.0", "--out", str(tmp_path / "out4"), "--work", str(tmp_path / "work4")])  # fmt: skip
    stages = json.loads((tmp_path / "out4" / "base" / "base.json").read_text())["base"]["stages"]
    assert [(x["steps"], x["flow_shift"]) for x in stages] == [(4, 3.0), (4, 5.0)] and more["base"]["steps"] == 8
    with pytest.raises(SystemExit, match="trained at flow_shift=5.0"):
        main(["--smoke", "--arms", "a", "--base", str(tmp_path / "out4" / "base"), "--out", str(tmp_path / "out5"),
              "--work", str(tmp_path / "work5")])  # fmt: skip
    with pytest.raises(SystemExit, match="kept by seed 0 on data"):
        main(["--smoke", "--seed", "1", "--arms", "a", "--base", str(out / "base"), "--out", str(tmp_path / "out3"),
              "--work", str(tmp_path / "work3")])  # fmt: skip


def test_diagnose_scores_predictions_and_partial_sampling(tmp_path):
    import yaml

    from benchmarks.extension_diagnose import PRESETS, main
    from radial.models import get_adapter

    preset = yaml.safe_load(PRESETS.read_text())["smoke"]
    get_adapter("wan").build_tiny(seed=3, **preset["model"]).save_pretrained(tmp_path / "base")
    report = main([str(tmp_path / "base"), "--smoke", "--out", str(tmp_path / "d"), "--sigmas", "0.5",
                   "--starts", "0.9", "1.0", "--seeds", "1", "--steps", "2", "--given", "0", "1",
                   "--probe-clips", "5", "6"])  # fmt: skip
    assert report["data"]["objects_per_frame"] > 0 and set(report["x0"]) == {"0.5"}
    assert [(r["start"], r["given"]) for r in report["sdedit"]] == [(0.9, 0), (0.9, 1), (1.0, 0), (1.0, 1)]
    assert (tmp_path / "d" / "x0_predictions.png").stat().st_size > 0
    probe = report["probe"]  # an untrained base's one-step predictions fail the check the data would pass
    assert probe["clips"] == [5, 6] and probe["data"]["objects_per_frame"] > 0 and not probe["check"]["pass"]
    assert probe["check"]["checks"]["objects"]["limit"] == pytest.approx(0.9 * probe["data"]["objects_per_frame"])
    assert json.loads((tmp_path / "d" / "diagnose.json").read_text())["device"] == "cpu"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "base"), "--smoke", "--out", str(tmp_path / "e"), "--starts", "1.5"])
