"""The GPU benchmark scripts run end to end in their CPU smoke mode (tiny models), so they don't rot."""

import json

from benchmarks import train_step


def test_train_step_smoke(tmp_path):
    train_step.main(["--smoke", "--device", "cpu", "--cases", "wan1x", "--steps", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"dense", "reference"}
    assert all(r["step_s"] > 0 and r["loss"] == r["loss"] for r in rows)
    assert "| wan1x |" in (tmp_path / "train_step.md").read_text()


def test_train_step_sequence_parallel_smoke(tmp_path):
    """--sp 2 under torchrun (gloo): two processes train one sample together; same loss as one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = ["--smoke", "--device", "cpu", "--cases", "hun4x", "--steps", "1"]
    train_step.main([*args, "--out", str(tmp_path / "sp1")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(root / "benchmarks" / "train_step.py"), *args, "--sp", "2", "--out", str(tmp_path / "sp2")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, env=env, cwd=root, check=True, timeout=240, stdin=subprocess.DEVNULL, capture_output=True)
    one = json.loads((tmp_path / "sp1" / "train_step.json").read_text())["rows"]
    two = json.loads((tmp_path / "sp2" / "train_step.json").read_text())["rows"]
    assert [r["sp"] for r in two] == [2, 2] and all(r["gpus"] == 2 for r in two)
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"])
