"""The GPU benchmark scripts run end to end in their CPU smoke mode (tiny models), so they don't rot."""

import json

import pytest

from benchmarks import train_step


def test_train_step_smoke(tmp_path):
    train_step.main(["--smoke", "--device", "cpu", "--cases", "wan1x", "--steps", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"dense", "reference"}
    assert all(r["step_s"] > 0 and r["loss"] == r["loss"] for r in rows)
    assert "| wan1x |" in (tmp_path / "train_step.md").read_text()


def test_train_step_settings_apply_to_both_arms(tmp_path):
    args = ["--smoke", "--device", "cpu", "--cases", "wan1x", "--steps", "1", "--out", str(tmp_path)]
    train_step.main([*args, "--compile", "--compile-backend", "eager", "--checkpoint-blocks", "1", "--fuse-qkv"])
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"dense", "reference"}
    assert all(r["compile"] and r["checkpointed_blocks"] == 1 and r["blocks"] == 2 for r in rows)
    assert all(r["fuse_qkv"] for r in rows)
    assert "1/2 blocks, compiled, fused qkv" in (tmp_path / "train_step.md").read_text()


def test_train_step_memory_savers(tmp_path):
    """--offload-activations / --offload-blocks reach the trainer's step and its row; the loss is unchanged."""
    args = ["--smoke", "--device", "cpu", "--cases", "wan1x", "--steps", "1", "--backends", "reference"]
    train_step.main([*args, "--out", str(tmp_path / "a"), "--no-profile"])
    train_step.main([*args, "--out", str(tmp_path / "b"), "--no-profile", "--offload-activations", "--offload-blocks"])
    (plain,) = json.loads((tmp_path / "a" / "train_step.json").read_text())["rows"]
    (saved,) = json.loads((tmp_path / "b" / "train_step.json").read_text())["rows"]
    assert not plain["offload_activations"] and saved["offload_activations"] and saved["offload_blocks"]
    assert saved["loss"] == plain["loss"] and saved["peak_host_gb"] > 0 and saved["memory_plan"] is None
    # the allocator's side of the GPU peak (nothing on the CPU): reserved memory and out-of-memory recoveries
    assert saved["alloc_retries"] == 0 and saved["peak_reserved_gb"] != saved["peak_reserved_gb"]


@pytest.mark.parametrize("case,tokens", [("wan_i2v4x", 3 * 16), ("hy15_i2v2x", 3 * 64)])
def test_train_step_i2v_smoke(tmp_path, case, tokens):
    """The I2V cases (Wan2.1 I2V, HunyuanVideo-1.5 I2V): the I2V architecture with its image conditioning through
    the trainer's step."""
    args = ["--smoke", "--device", "cpu", "--cases", case, "--steps", "1", "--warmup", "0"]
    train_step.main([*args, "--backends", "reference", "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert row["step_s"] > 0 and row["loss"] == row["loss"] and row["tokens"] == tokens


def test_train_step_h3_smoke(tmp_path):
    """The MiniMax-H3 cases: the packed [text | audio | video] sequence and the joint audio loss through the
    trainer's step (tiny model, 3 latent frames of 4x4 tokens)."""
    args = ["--smoke", "--device", "cpu", "--cases", "h3_4x", "--steps", "1", "--warmup", "0"]
    train_step.main([*args, "--backends", "reference", "dense", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"reference", "dense"} and all(r["tokens"] == 3 * 16 for r in rows)
    assert all(r["step_s"] > 0 and r["loss"] == r["loss"] for r in rows)


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


def _step_file(path, dense_layers, rows):
    path.write_text(json.dumps({"meta": {"args": {"dense_layers": str(dense_layers)}}, "rows": rows}))
    return path


def test_train_step_scale_recovers_per_block_costs(tmp_path):
    """Rows made from known overhead / dense-block / radial-block times give those times back and the whole model."""
    from benchmarks import train_step_scale

    c, d, r = 0.5, 9.0, 2.0
    one = _step_file(
        tmp_path / "a.json",
        0,
        [
            {"case": "x", "backend": "dense", "layers": 2, "step_s": c + 2 * d},
            {"case": "x", "backend": "triton", "layers": 2, "step_s": c + 2 * r},
            {"case": "y", "backend": "dense", "layers": 2, "step_s": 4.0},
            {"case": "y", "backend": "triton", "layers": 2, "step_s": 1.0},
            {"case": "z", "backend": "triton", "error": "out of memory"},
        ],
    )
    two = _step_file(
        tmp_path / "b.json",
        2,
        [
            {"case": "x", "backend": "dense", "layers": 4, "step_s": c + 4 * d},
            {"case": "x", "backend": "triton", "layers": 4, "step_s": c + 2 * d + 2 * r},
        ],
    )
    rows = train_step_scale.load_rows([one, two])
    assert {row["case"] for row in rows} == {"x", "y"}
    fit = train_step_scale.fit_case([row for row in rows if row["case"] == "x"])
    assert fit["fitted_overhead"] and abs(fit["overhead_s"] - c) < 1e-9
    assert abs(fit["dense_block_s"] - d) < 1e-9 and abs(fit["radial_block_s"] - r) < 1e-9
    whole = train_step_scale.predict(fit, 60, 2)
    assert abs(whole["speedup"] - (c + 60 * d) / (c + 2 * d + 58 * r)) < 1e-9
    # Two rows cannot separate the overhead: it is set to zero, not guessed.
    fit_y = train_step_scale.fit_case([row for row in rows if row["case"] == "y"])
    assert not fit_y["fitted_overhead"] and fit_y["overhead_s"] == 0.0
    assert abs(fit_y["dense_block_s"] - 2.0) < 1e-9 and abs(fit_y["radial_block_s"] - 0.5) < 1e-9


def test_attention_speedups_against_cudnn_and_the_fastest_dense():
    """benchmarks/attention.py: % of ideal against cuDNN and against the fastest dense kernel (made-up times)."""
    from benchmarks import attention as bench

    row = {
        "case": "x", "seq_len": 1000, "heads": 2, "token_density": 0.25, "ideal_speedup": 4.0,
        "dense-cudnn": {"fwd_ms": 10.0, "fwdbwd_ms": 40.0},
        "fa4-dense": {"fwd_ms": 8.0, "fwdbwd_ms": 44.0},
        "fa4": {"fwd_ms": 2.5, "fwdbwd_ms": 10.0},
        "flex": {"error": "ImportError: x"},
    }  # fmt: skip
    names = ["dense-cudnn", "fa4-dense", "fa4", "flex"]
    bench.add_speedups(row, names, 4.0)
    assert row["fastest_dense"] == {"fwd": "fa4-dense", "fwdbwd": "dense-cudnn"}
    fa4 = row["fa4"]
    assert fa4["fwd_speedup"] == 4.0 and fa4["fwd_pct_ideal"] == 100.0
    assert fa4["fwd_speedup_best"] == 3.2 and fa4["fwd_pct_ideal_best"] == 80.0
    assert fa4["fwdbwd_speedup_best"] == 4.0 and "fwd_speedup" not in row["flex"]
    md = bench.markdown([row], {"device": "d", "torch": "t", "triton": "t", "flashinfer": "-", "date": "today"})
    assert "| 2.5 (4.00x, 100%; 3.20x, 80%) |" in md and "x fa4-dense / dense-cudnn" in md
