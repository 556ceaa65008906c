"""The GPU benchmark scripts run end to end in their CPU smoke mode (tiny models), so they don't rot."""

import json

from benchmarks import train_step


def test_train_step_smoke(tmp_path):
    train_step.main(["--smoke", "--device", "cpu", "--cases", "wan1x", "--steps", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"dense", "reference"}
    assert all(r["step_s"] > 0 and r["loss"] == r["loss"] for r in rows)
    assert "| wan1x |" in (tmp_path / "train_step.md").read_text()
