"""benchmarks/generate.py runs end to end in its CPU smoke mode (tiny models), so the GPU script doesn't rot; the
HunyuanVideo whole-model figure is fitted from per-block times (or measured) as benchmarks/block_times.py says."""

import json

import pytest
import torch

from benchmarks import block_times
from benchmarks import generate as bench


def _smoke(tmp_path, *extra):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench.main(["--smoke", "--device", "cpu", "--steps", "3", "--out", str(tmp_path), *extra])
    finally:
        torch.set_num_threads(n)
    return json.loads((tmp_path / "generate.json").read_text()), (tmp_path / "generate.md").read_text()


def test_generate_benchmark_smoke(tmp_path):
    report, md = _smoke(tmp_path)
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == {"dense", "radial", "radial-dense"} and all(r["finite"] for r in rows.values())
    assert rows["dense"]["effective_density"] == 1.0 and rows["radial"]["mask_density"] < 0.5
    assert rows["radial-dense"]["dense_timesteps"] == 1 and rows["radial-dense"]["dense_layers"] == 1
    for mode in ("radial", "radial-dense"):
        r = rows[mode]
        assert 0 < r["latent_rel_error"] < 0.5 and 0 < r["ssim_mean"] < 1 and len(r["per_frame"]["psnr"]) == 17
        assert r["speedup_steady"] > 0 and len(r["step_s"]) == 3
    assert "| radial | reference | 0 / 0 |" in md
    assert "whole_model" not in report and "step_blocks_s" not in rows["dense"] and "Whole model" not in md


def test_hunyuan_smoke_fits_the_whole_model_from_block_times(tmp_path):
    report, md = _smoke(tmp_path, "--family", "hunyuan")
    assert report["model"] == "tiny hunyuan (smoke)" and report["decode"] == "none" and report["guidance"] == 6.0
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == {"dense", "radial", "radial-dense"} and all(r["finite"] for r in rows.values())
    assert (rows["radial-dense"]["dense_layers"], rows["radial-dense"]["dense_timesteps"]) == (2, 2)
    assert rows["radial"]["mask_density"] < 0.5 and 0 < rows["radial"]["latent_rel_error"] < 0.5
    for r in rows.values():  # the tiny model: 1 double + 1 single block, each timed in each of the 3 steps
        assert len(r["step_blocks_s"]) == 3 and all(len(s) == 2 and min(s) > 0 for s in r["step_blocks_s"])
        assert all(sum(blocks) < step for blocks, step in zip(r["step_blocks_s"], r["step_s"], strict=True))
    whole = report["whole_model"]
    double, single = "HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock"
    assert whole["blocks"] == f"20 {double} + 40 {single}" and whole["built"] == f"1 {double} + 1 {single}"
    assert whole["source"] == "fitted" and whole["steps"] == 50
    d, r, rd = (whole["rows"][m] for m in ("dense", "radial", "radial-dense"))
    b = d["block_s"]
    assert d["dense_step_s"] == pytest.approx(d["overhead_s"] + 20 * b[f"{double} dense"] + 40 * b[f"{single} dense"])
    assert d["denoise_s"] == pytest.approx(50 * d["dense_step_s"]) and d["dense_steps"] == 50
    b = r["block_s"]
    assert r["radial_step_s"] == pytest.approx(
        r["overhead_s"] + 20 * b[f"{double} sparse"] + 40 * b[f"{single} sparse"]
    )
    assert r["speedup"] == pytest.approx(d["denoise_s"] / r["denoise_s"]) and "dense_step_s" not in r
    # radial-dense on 1 + 1 blocks never runs a block sparse: its sparse blocks are the radial row's
    assert rd["borrowed"] == sorted([f"{double} sparse", f"{single} sparse"]) and rd["dense_steps"] == 2
    b = rd["block_s"]
    assert rd["radial_step_s"] == pytest.approx(
        rd["overhead_s"] + 2 * b[f"{double} dense"] + 18 * b[f"{double} sparse"] + 40 * b[f"{single} sparse"]
    )
    assert rd["denoise_s"] == pytest.approx(2 * rd["dense_step_s"] + 48 * rd["radial_step_s"])
    assert rows["radial"]["whole_model"] == r and "**fitted** from the measured per-block times" in md
    assert "| radial-dense | fitted |" in md


def test_whole_model_is_measured_when_every_block_was_built():
    classes = ["D", "S", "S"]
    row = {  # 3 steps; steps 0 (compiling) and 1 dense, step 2 radial with 1 dense layer
        "mode": "radial-dense",
        "backend": "fa4",
        "dense_layers": 1,
        "dense_timesteps": 2,
        "step_s": [9.0, 7.0, 4.0],
        "step_blocks_s": [[3.0, 2.0, 2.0], [2.0, 2.0, 2.0], [2.0, 0.5, 0.5]],
    }
    whole = block_times.whole_model([row], classes, classes, 4, ("dense",))
    e = whole["rows"]["radial-dense"]
    assert whole["source"] == "measured" and e["source"] == "measured" and e["dense_steps"] == 2
    assert (e["dense_step_s"], e["radial_step_s"], e["denoise_s"]) == (7.0, 4.0, 2 * 7.0 + 2 * 4.0)
    assert e["block_s"] == {"D dense": 2.0, "S dense": 2.0, "S sparse": 0.5} and e["overhead_s"] == 1.0
    # with fewer blocks built the same row is fitted: overhead 1 + D dense 2 + 2 x S (dense 2 / sparse 0.5)
    row = {**row, "step_s": [7.0, 5.0, 3.5], "step_blocks_s": [[3.0, 2.0], [2.0, 2.0], [2.0, 0.5]]}
    e = block_times.whole_model([row], ["D", "S"], classes, 4, ("dense",))["rows"]["radial-dense"]
    assert e["source"] == "fitted" and (e["dense_step_s"], e["radial_step_s"]) == (7.0, 4.0)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--hun-double", "2"], "error: --hun-double 2: only with --family hunyuan"),
        (["--family", "hunyuan", "--hun-single", "41"], "error: --hun-single 41: expected 1 to 40"),
        (["--family", "hunyuan", "--frames", "512"], "error: --frames 512: hunyuan: frames must be k*4+1"),
        (["--family", "hunyuan", "--steps", "0"], "error: --steps 0: expected an integer >= 1"),
    ],
)
def test_bad_options_end_in_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "generate.json").exists()
