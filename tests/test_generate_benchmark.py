"""benchmarks/generate.py runs end to end in its CPU smoke mode (tiny models), so the GPU script doesn't rot."""

import json

import torch

from benchmarks import generate as bench


def test_generate_benchmark_smoke(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench.main(["--smoke", "--device", "cpu", "--steps", "3", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    report = json.loads((tmp_path / "generate.json").read_text())
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == {"dense", "radial", "radial-dense"} and all(r["finite"] for r in rows.values())
    assert rows["dense"]["effective_density"] == 1.0 and rows["radial"]["mask_density"] < 0.5
    assert rows["radial-dense"]["dense_timesteps"] == 1 and rows["radial-dense"]["dense_layers"] == 1
    for mode in ("radial", "radial-dense"):
        r = rows[mode]
        assert 0 < r["latent_rel_error"] < 0.5 and 0 < r["ssim_mean"] < 1 and len(r["per_frame"]["psnr"]) == 17
        assert r["speedup_steady"] > 0 and len(r["step_s"]) == 3
    assert "| radial | reference | 0 / 0 |" in (tmp_path / "generate.md").read_text()
