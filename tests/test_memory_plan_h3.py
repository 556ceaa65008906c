"""The memory planner on MiniMax-H3 against the 2026-12-08 H100 runs (benchmarks/results/memory_h100_2026-12-08/):
4 of its 50 blocks at 2x fit (dense-cudnn 37.5 GB, triton 44.1 GB), at 4x both ran out of memory. Its attention is
4/3 of its hidden width and its packed sequence carries audio and text rows beside the video tokens."""

import json
from pathlib import Path

import pytest

from benchmarks.train_step import CASES, _config
from radial.models import get_adapter
from train import memory_plan as mp

RUNS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "memory_h100_2026-12-08"
H100 = mp.Card(79.18, 128.0, "NVIDIA H100 80GB HBM3")  # total_memory of the runs' card, GiB; the lent host's memory


def _h3(blocks: int = 4) -> mp.ModelShape:
    built = get_adapter("h3").build_full(device="meta", num_layers=blocks)
    return mp.config_shape(_config("h3", "triton", 2, True), built)


def _rows(case: str) -> int:
    _, frames, h, w = CASES[case]
    return get_adapter("h3").sequence_rows(frames, frames * (h // 2) * (w // 2))


def test_h3_shape_and_rows():
    shape = _h3()
    assert (shape.hidden, shape.attention_width, shape.ffn, shape.blocks) == (5376, 7168, 14336, 4)
    assert mp.config_shape(_config("wan", "triton", 2, True)).attention_width == 1536  # as wide as its hidden states
    # 72 latent frames of 1,008 tokens, 2 x 405 audio latents, 128 text rows
    assert _rows("h3_2x") == 72 * 1008 + 810 + 128
    assert get_adapter("wan").sequence_rows(81, 126_360) == 126_360


def test_h3_at_2x_is_predicted_within_10_percent_of_both_measured_backends():
    data = json.loads((RUNS / "run5.train_step.json").read_text())["rows"]
    rows = {r["backend"]: r for r in data if r["case"] == "h3_2x"}
    cudnn, triton = rows["dense-cudnn"], rows["triton"]
    assert cudnn["case"] == triton["case"] == "h3_2x" and cudnn["layers"] == 4 and cudnn["save_attention"]
    predicted = mp.predict(_h3(), _rows("h3_2x"), mp.Plan(4, True, False, False), mp.fit()).peak_gb
    assert 0.9 * triton["peak_gb"] <= predicted <= 1.1 * cudnn["peak_gb"]


def test_h3_at_4x_recomputes_attention_on_an_h100():
    """With attention saved the model needs more than the card's usable share, as the runs showed (dense-cudnn:
    65.97 GiB allocated when it asked for 3.87 more); train.memory=auto recomputes attention instead."""
    shape, rows = _h3(), _rows("h3_4x")
    saved = mp.predict(shape, rows, mp.Plan(4, True, False, False), mp.fit())
    assert saved.peak_gb >= 65.97 + 3.87 and saved.peak_gb > H100.usable_gb
    plan = mp.choose(shape, rows, H100, "all")
    assert plan is not None and not plan.save_attention and not plan.offload_activations
    assert plan.peak_gb <= H100.usable_gb


@pytest.mark.parametrize("case", ["h3_2x", "h3_4x"])
def test_the_whole_h3_needs_every_saver_or_more_gpus(case):
    """All 50 blocks (66 GB of bf16 weights): at 2x activation offload and weight streaming fit, at 4x the pinned
    host copies exceed the host's share and the planner refuses, naming what would fit."""
    shape, rows = _h3(50), _rows(case)
    if case == "h3_2x":
        plan = mp.choose(shape, rows, H100, "all")
        assert plan.offload_activations and plan.stream_weights and not plan.save_attention
        return
    with pytest.raises(mp.ConfigError, match="does not fit .* parallel.sp_degree=2"):
        mp.plan_or_refuse(shape, rows, CASES[case][1], H100, "all", True, False, False, 2)


def test_checkpoint_blocks_auto_does_not_probe_where_no_block_can_keep_its_activations(monkeypatch):
    """train.checkpoint_blocks=auto keeps one block's activations in its third step to measure them: for 4 H3 blocks
    at 4x (2026-12-08: out of memory at 77.3 GiB) the plan checkpoints every block, so the run does not probe. Where
    the plan keeps blocks (Wan2.1-1.3B at 4x on an H200: 21 of 30 checkpointed, measured) the run still measures."""
    import torch

    from tests.test_memory_plan import WAN4X, _fake_card

    _fake_card(monkeypatch, H100.memory_gb)
    cfg = _config("h3", "triton", 2, True, ("train.checkpoint_blocks=auto",))
    built = get_adapter("h3").build_full(device="meta", num_layers=4)
    line = mp.plan_config(cfg, CASES["h3_4x"][1], _rows("h3_4x"), torch.device("cuda"), built)
    assert "4 of 4 blocks checkpointed" in line and cfg.train.checkpoint_blocks == "all"
    _fake_card(monkeypatch, 139.0)
    wan = _config("wan", "triton", 2, True, ("train.checkpoint_blocks=auto",))
    line = mp.plan_config(wan, 81, WAN4X, torch.device("cuda"))
    assert "30 of 30" not in line and wan.train.checkpoint_blocks == "auto"  # 22 of 30 planned
