"""The trainer under 2 processes (torchrun, gloo on CPU), through `train/lora.py` as users launch it.

- DDP (parallel.sp_degree=1): the run completes, and its per-step losses equal a one-process emulation of data
  parallelism (each rank's batch and noise, gradients averaged) step after step.
- Ulysses (parallel.sp_degree=2): both ranks train one sample together; the loss trajectory equals the
  one-process run of the same config (tiny Wan, and tiny HunyuanVideo and Mochi with their replicated text streams).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch

from tests.test_parallel import ROOT, torchrun
from tests.trainer_helpers import compose_config, tiny_overrides
from train.checkpoint import LORA_FILE, list_checkpoints
from train.components import build_data
from train.config import validate
from train.trainer import DataCursor, Trainer

STEPS = 3
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Synthetic tiny-Wan latents, prepared once by a short one-process run."""
    root = tmp_path_factory.mktemp("data")
    out = tmp_path_factory.mktemp("prep")
    Trainer(validate(compose_config(_overrides(out, root, steps=1))))
    return root


@pytest.fixture(scope="module")
def family_data_root(tmp_path_factory):
    """Synthetic latents of another tiny model (its own VAE channels and text embeddings), prepared once per model
    by a short one-process run."""
    roots: dict[str, object] = {}

    def get(model: str):
        if model not in roots:
            roots[model] = tmp_path_factory.mktemp(f"data_{model}")
            out = tmp_path_factory.mktemp(f"prep_{model}")
            Trainer(validate(compose_config(_overrides(out, roots[model], steps=1, model=model))))
        return roots[model]

    return get


def _overrides(out, data_root, *extra, steps=STEPS, model="tiny_wan") -> list[str]:
    base = tiny_overrides(out, data_root, model=model, steps=steps)
    if model == "tiny_mochi":  # Mochi's VAE takes 6k+1 frames: 19 -> 4 latent frames of 16 tokens
        base = [a if a != "data.frames=17" else "data.frames=19" for a in base]
    return [*base, "train.checkpoint_every=0", "train.keep_last=1", *extra]


def _launch(out, data_root, *extra, model="tiny_wan") -> list[float]:
    return launch_run(out, _overrides(out, data_root, *extra, model=model))


def launch_run(out, overrides: list[str]) -> list[float]:
    """`train/lora.py` with these overrides (output_dir=out) on 2 processes; the per-step losses of its summary."""
    torchrun(["train/lora.py", *overrides], timeout=180)
    return [loss for _, loss in json.loads((out / "run_summary.json").read_text())["losses"]]


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ddp_two_processes_match_one_process_emulation(tmp_path, data_root):
    got = _launch(tmp_path / "ddp", data_root)
    assert len(got) == STEPS and all(math.isfinite(v) for v in got)
    assert list_checkpoints(tmp_path / "ddp" / "checkpoints") and (tmp_path / "ddp" / "lora").is_dir()
    assert _metrics(tmp_path / "ddp")[0]["step"] == 1

    want, _ = ddp_emulation(tmp_path / "emul", data_root)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert len(set(want)) == STEPS  # the steps differ: the comparison follows a real trajectory


def ddp_emulation(out, data_root) -> tuple[list[float], Trainer]:
    """One process doing what 2-rank DDP does: rank r's batch (its sampler shard) and noise (data-parallel rank r),
    gradients averaged over the two, then one optimizer step; the per-step losses and the trainer."""
    cfg = validate(compose_config(_overrides(out, data_root)))
    trainer = Trainer(cfg)
    cursors = []
    for r in (0, 1):
        _, sampler, loader = build_data(cfg, trainer.parts, r, 2, data_root / "latents")
        cursors.append(DataCursor(loader, sampler))
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    want = []
    for step in range(STEPS):
        values = []
        for r, cursor in enumerate(cursors):
            trainer.dp_rank = r
            loss, _ = trainer.micro_step(cursor.next(), step, 0)
            (loss / 2).backward()
            values.append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        want.append(sum(values) / 2)
    return want, trainer


@pytest.mark.parametrize("model", ["tiny_wan", "tiny_hunyuan", "tiny_mochi"])
def test_sp2_two_processes_match_one_process_run(tmp_path, request, model):
    data_root = (
        request.getfixturevalue("data_root")
        if model == "tiny_wan"
        else request.getfixturevalue("family_data_root")(model)
    )
    check_sp2_matches_one_process(tmp_path, lambda out, *extra: _overrides(out, data_root, *extra, model=model))


def check_sp2_matches_one_process(tmp_path, overrides: Callable[..., list[str]]) -> None:
    """`parallel=sp2` on 2 processes gives the per-step losses and the final LoRA of the one-process run of the same
    config; `overrides(out, *extra)` builds the run's overrides (output_dir=out, `extra` appended)."""
    got = launch_run(tmp_path / "sp2", overrides(tmp_path / "sp2", "parallel=sp2"))
    trainer = Trainer(validate(compose_config(overrides(tmp_path / "one"))))
    trainer.fit()
    want = [loss for _, loss in trainer.state.losses]
    assert len(want) == trainer.cfg.train.max_steps and got == pytest.approx(want, rel=1e-5, abs=1e-7)
    # The same LoRA at the end: the group's gradients summed to the full-sample gradient at every step.
    from safetensors.torch import load_file

    a = load_file(str(list_checkpoints(tmp_path / "sp2" / "checkpoints")[-1] / LORA_FILE))
    b = load_file(str(list_checkpoints(tmp_path / "one" / "checkpoints")[-1] / LORA_FILE))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    m = _metrics(tmp_path / "sp2")[-1]
    assert m["tokens_per_s"] > 0


def test_validation_under_sequence_parallelism_matches_one_process(tmp_path, data_root):
    """Held-out loss and samples every 2 steps under sp=2 (both ranks of the group run the same item, counted once):
    the one-process run's numbers and sample latents (sp=2 trains the same model, so they must agree)."""
    from safetensors.torch import load_file

    extra = ["eval=default", "eval.validation_every=2", "eval.hooks=[]", "eval.num_inference_steps=4"]
    _launch(tmp_path / "two", data_root, "parallel=sp2", *extra)
    trainer = Trainer(validate(compose_config(_overrides(tmp_path / "one", data_root, *extra))))
    trainer.fit()
    for step in ("step-000002",):
        got = json.loads((tmp_path / "two" / "validation" / step / "metrics.json").read_text())
        want = json.loads((tmp_path / "one" / "validation" / step / "metrics.json").read_text())
        losses = [k for k in want if k.startswith("val/loss")]
        assert len(losses) > 1 and got["val/heldout_items"] == want["val/heldout_items"] == 3
        assert [got[k] for k in losses] == pytest.approx([want[k] for k in losses], rel=1e-5)
        name = "sample_p0_s0.latents.safetensors"
        a = load_file(str(tmp_path / "two" / "validation" / step / name))
        b = load_file(str(tmp_path / "one" / "validation" / step / name))
        for key in b:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_sp_degree_that_does_not_divide_the_processes_is_named(tmp_path, data_root):
    """sp_degree=2 on one process: a clear error naming the key (no distributed setup needed to see it)."""
    cfg = validate(compose_config([*_overrides(tmp_path, data_root), "parallel=sp2"]))
    with pytest.raises(ValueError, match="parallel.sp_degree"):
        Trainer(cfg)


def test_repository_root_is_the_launch_directory():
    assert (ROOT / "train" / "lora.py").is_file()
