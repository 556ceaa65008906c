"""What a run and a generation say while they work: per-step progress, validation lines, the held-out loss in
metrics.jsonl, the final summary, and densities under one name each."""

from __future__ import annotations

import json
import math

import pytest

import radial
from radial.mask.stats import mask_stats, model_density
from tests.trainer_helpers import compose_config, tiny_overrides
from train.lora import run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def overrides(out, data_root, *extra):
    return [*tiny_overrides(out, data_root, steps=4), "eval=default", "eval.validation_every=2", "eval.num_samples=0"]\
        + ["eval.hooks=[]", "eval.num_heldout=2", *extra]  # fmt: skip


def test_run_reports_validation_heldout_loss_summary_and_densities(tmp_path, data_root, capsys):
    run(compose_config(overrides(tmp_path, data_root)))
    out = capsys.readouterr().out
    lines = out.splitlines()
    notes = [line for line in lines if line.startswith("note: the held-out loss is measured on the first 2 training")]
    assert len(notes) == 1  # said once, at the first validation
    assert sum("validating (2 held-out items)" in line for line in lines) == 2
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if "val/loss" in m]
    assert [m["step"] for m in val] == [2, 4] and all(math.isfinite(m["val/loss"]) for m in val)
    assert f"step 4: held-out loss {val[-1]['val/loss']:.4f} (2 items" in out
    steps = [m for m in metrics if "loss" in m]
    done = next(line for line in lines if line.startswith("done: "))
    assert done.startswith("done: 4 steps in ") and "final loss " in done and "(mean of the last 4 steps)" in done
    final = sum(m["loss"] for m in steps) / 4
    assert f"final loss {final:.4f}" in done
    # densities: the summary, metrics.jsonl and the mask picture's title name the same two quantities
    stats = mask_stats(radial.radial_block_mask(5, 16, block_size=16, model="wan"), 80, 16)
    whole = model_density(stats.block_density, 2, 1)
    attention = next(line for line in lines if line.startswith("attention:"))
    assert f"block density {stats.block_density:.3f} (sparse layers), {whole:.3f} whole model" in attention
    assert steps[-1]["block_density"] == pytest.approx(stats.block_density)
    assert steps[-1]["model_block_density"] == pytest.approx(whole)
    assert "attention_density" not in steps[-1]


def test_no_note_with_a_heldout_root(tmp_path, data_root, capsys):
    run(compose_config(overrides(tmp_path, data_root, "train.max_steps=2", f"eval.heldout_root={data_root}/latents")))
    out = capsys.readouterr().out
    assert "validating (2 held-out items)" in out and "note: the held-out loss" not in out


def test_generate_shows_its_steps_and_named_densities(tmp_path, capsys):
    from train.generate import main

    main(["--tiny", "wan", "--prompt", "a red ball", "--steps", "3", "--no-decode", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert "denoising:" in captured.err and "/3 [" in captured.err  # the pipeline's bar over the 3 steps
    sidecar = json.loads(next(tmp_path.glob("wan_17f_s0_radial.json")).read_text())["attention"]
    line = next(x for x in captured.out.splitlines() if x.startswith("wan_17f_s0_radial:"))
    assert f"block density {sidecar['mask_block_density']:.3f} (sparse layers)" in line
    assert f"{sidecar['model_block_density']:.3f} whole model (dense layers, steps counted)" in line
    main(["--tiny", "wan", "--prompt", "a", "--steps", "2", "--no-decode", "--no-progress", "--out", str(tmp_path)])
    assert "denoising" not in capsys.readouterr().err


def test_mask_cli_names_block_and_token_density(tmp_path, capsys):
    from radial.mask.__main__ import main

    main(["--model", "wan", "--latent-frames", "5", "--tokens-per-frame", "16", "--block-size", "16", "--no-png"]
         + ["--out", str(tmp_path / "m")])  # fmt: skip
    out = capsys.readouterr().out
    stats = mask_stats(radial.radial_block_mask(5, 16, block_size=16, model="wan"), 80, 16)
    assert f"block density    {stats.block_density:.4f} (kept blocks" in out
    assert f"token density    {stats.token_density:.4f} (kept token pairs" in out
