"""The recompute budget: train.checkpoint_blocks picks which blocks run under checkpointing, and they alone do."""

import pytest
import torch

from tests.trainer_helpers import compose_config
from train.components import build_model
from train.config import validate
from train.recompute import MARGIN, RecomputeBudget, blocks_to_checkpoint, parse_checkpoint_blocks


def test_blocks_to_checkpoint_keeps_activations_where_memory_allows():
    gb = 2**30
    usable = 100 * gb * (1 - MARGIN)
    assert blocks_to_checkpoint(30, 100 * gb, peak_all=usable - 10 * gb, per_block=2 * gb) == 25  # 5 fit
    assert blocks_to_checkpoint(30, 100 * gb, peak_all=usable + gb, per_block=2 * gb) == 30  # none fits
    assert blocks_to_checkpoint(30, 100 * gb, peak_all=10 * gb, per_block=gb) == 0  # all fit
    assert blocks_to_checkpoint(30, 100 * gb, peak_all=10 * gb, per_block=0.0) == 0


def test_parse_checkpoint_blocks():
    assert parse_checkpoint_blocks("auto", 4) == "auto" and parse_checkpoint_blocks("ALL", 4) == "all"
    assert parse_checkpoint_blocks(2, 4) == 2 and parse_checkpoint_blocks("0", 4) == 0
    for bad in ("5", "-1", "half"):
        with pytest.raises(ValueError, match=r"train.checkpoint_blocks=.*\[0, 4\]"):
            parse_checkpoint_blocks(bad, 4)


def test_auto_on_cpu_checkpoints_every_block_and_says_so():
    blocks = [torch.nn.Linear(2, 2) for _ in range(3)]
    budget = RecomputeBudget(blocks, "auto", torch.device("cpu"))
    assert budget.count == 3 and "all 3 blocks checkpointed" in budget.decided
    assert budget.after_step() is None


def _block_calls(*overrides: str) -> tuple[list[int], list[int]]:
    """Forward calls of each block of the tiny Wan (2 blocks) in one training step (2: checkpointed, then
    recomputed in backward), and the blocks marked checkpointed."""
    cfg = validate(compose_config([*overrides]))
    torch.manual_seed(0)
    parts = build_model(cfg, torch.device("cpu"))
    blocks = parts.adapter.blocks(parts.transformer)
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    latents = parts.adapter.make_dummy_latents(parts.transformer, 1, 2, 8, 8, seed=1)
    conds = parts.adapter.make_dummy_conditions(parts.transformer, 1, text_len=4, seed=2)
    parts.adapter.predict(parts.transformer, latents, torch.tensor([500.0]), conds).square().mean().backward()
    from radial.checkpointing import checkpointed_blocks

    return calls, checkpointed_blocks(blocks)


@pytest.mark.parametrize("setting, want", [("all", [2, 2]), ("1", [1, 2]), ("0", [1, 1])])
def test_checkpoint_blocks_is_respected(setting, want):
    calls, checkpointed = _block_calls(f"train.checkpoint_blocks={setting}")
    assert calls == want
    assert checkpointed == [i for i, c in enumerate(want) if c == 2]


def test_checkpoint_blocks_needs_checkpointing():
    with pytest.raises(ValueError, match="train.checkpoint_blocks=.1. needs train.gradient_checkpointing=true"):
        validate(compose_config(["train.gradient_checkpointing=false", "train.checkpoint_blocks=1"]))


def test_trainer_logs_the_budget_and_the_compilation(tmp_path, capsys):
    from tests.trainer_helpers import tiny_overrides
    from train.trainer import Trainer

    extra = ["train.checkpoint_blocks=auto", "train.compile=true", "train.compile_backend=eager"]
    cfg = validate(compose_config([*tiny_overrides(tmp_path / "run", tmp_path / "data", steps=2), *extra]))
    torch._dynamo.reset()
    assert Trainer(cfg).fit()["step"] == 2
    out = capsys.readouterr().out
    assert out.count("train.checkpoint_blocks=auto: all 2 blocks checkpointed") == 1
    assert out.count("compile: ") == 1 and "graphs compiled for layout 5x4x4" in out
    assert "(gradient checkpointing on, auto blocks); blocks compiled (eager)" in out  # the run summary


def test_auto_measures_three_steps_then_decides_once(monkeypatch):
    gb = 2**30
    peaks = iter([30 * gb, 20 * gb, 24 * gb])  # step 1 (compilation), all checkpointed, one block fewer
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: next(peaks))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * gb, 80 * gb))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 40 * gb)
    blocks = [torch.nn.Linear(2, 2) for _ in range(30)]
    budget = RecomputeBudget(blocks, "auto", torch.device("cuda"))
    from radial.checkpointing import checkpointed_blocks

    assert budget.after_step() is None and len(checkpointed_blocks(blocks)) == 30
    assert budget.after_step() is None and checkpointed_blocks(blocks) == list(range(1, 30))  # the probe
    line = budget.after_step()
    kept = int((100 * gb * (1 - MARGIN) - 20 * gb) // (4 * gb))  # usable 60 + 40 GB, 4 GB a block
    assert line.startswith(f"train.checkpoint_blocks=auto: {30 - kept} of 30 blocks checkpointed")
    assert checkpointed_blocks(blocks) == list(range(kept, 30)) and budget.count == 30 - kept
    assert budget.after_step() is None and budget.count == 30 - kept  # decided once
