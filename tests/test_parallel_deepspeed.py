"""The trainer under DeepSpeed ZeRO-2 / ZeRO-3 on CPU: 2 processes (gloo), DeepSpeed's CPU accelerator.

Accelerate refuses DeepSpeed on the CPU (its CPU flag and DeepSpeed exclude each other), so the launched processes
let Accelerate pick gloo without that flag (a small patch of its backend choice, in the worker below); everything
else is the real path: the DeepSpeed config from launch/zero*.json filled by the trainer, the engine, ZeRO
partitioning, LoRA-only DeepSpeed checkpoints, gathering the ZeRO-3 LoRA for its file and the export.
The GPU runs of the same configs are in benchmarks/scaleout.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_parallel import ROOT
from tests.test_parallel_trainer import _overrides
from tests.trainer_helpers import compose_config
from train.checkpoint import LORA_FILE, list_checkpoints
from train.config import validate
from train.trainer import Trainer

pytestmark = pytest.mark.slow

WORKER = """
import runpy, sys
import accelerate.state as state
from accelerate.utils import DistributedType
choose = state.PartialState._prepare_backend
def gloo(self, cpu=False, sagemaker_dp=False, backend=None):
    chosen, kind = choose(self, cpu, sagemaker_dp, backend)
    return ("gloo", DistributedType.MULTI_CPU) if chosen is None else (chosen, kind)
state.PartialState._prepare_backend = gloo
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
BUILD_PROBLEMS = ("Error building extension", "c++: not found", "ninja: not found", "intel_extension_for_pytorch")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    Trainer(validate(compose_config(_overrides(tmp_path_factory.mktemp("prep"), root, steps=1))))
    return root


def deepspeed_run(
    tmp_path: Path, stage: int, out: Path, data_root: Path, *extra: str, timeout: int = 240
) -> list[float]:
    if not hasattr(__import__("accelerate.state").state.PartialState, "_prepare_backend"):
        pytest.skip("this Accelerate has no PartialState._prepare_backend to let DeepSpeed run on the CPU")
    # In a folder of its own: the worker's folder is first on the processes' sys.path, where a run directory such as
    # `z3` would shadow the `z3` solver that torch.compile's symbolic shapes import.
    worker = tmp_path / "worker" / "deepspeed_cpu.py"
    worker.parent.mkdir(exist_ok=True)
    worker.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", ACCELERATE_USE_DEEPSPEED="true", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               ACCELERATE_DEEPSPEED_CONFIG_FILE=f"launch/zero{stage}.json")  # fmt: skip
    env.pop("ACCELERATE_USE_CPU", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           "train/lora.py", *_overrides(out, data_root, *extra), "train.export_comfy=false"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(p in log for p in BUILD_PROBLEMS):
        pytest.skip("DeepSpeed's CPU accelerator could not build its ops here")
    assert proc.returncode == 0, log[-5000:]
    assert "DeepSpeed Model and Optimizer saved" in log  # the DeepSpeed engine ran, not plain DDP
    return [loss for _, loss in json.loads((out / "run_summary.json").read_text())["losses"]]


EVAL = ("eval=default", "eval.validation_every=2", "eval.hooks=[]", "eval.num_inference_steps=4")


def test_zero3_with_sequence_parallelism_matches_one_process(tmp_path, data_root):
    """ZeRO-3 shards the base and the LoRA; sp=2 splits each sample: the same trajectory, LoRA and validation (held-out
    loss and sample latents at step 2, every rank taking part in the sharded forwards) as one process."""
    got = deepspeed_run(tmp_path, 3, tmp_path / "z3", data_root, "parallel=sp2", *EVAL)
    trainer = Trainer(validate(compose_config(_overrides(tmp_path / "one", data_root, *EVAL))))
    trainer.fit()
    assert got == pytest.approx([loss for _, loss in trainer.state.losses], rel=1e-5, abs=1e-7)
    val = [json.loads((d / "validation" / "step-000002" / "metrics.json").read_text()) for d in (tmp_path / "z3",
           tmp_path / "one")]  # fmt: skip
    losses = [k for k in val[1] if k.startswith("val/loss")]
    assert len(losses) > 1 and val[0]["val/heldout_items"] == val[1]["val/heldout_items"]
    assert [val[0][k] for k in losses] == pytest.approx([val[1][k] for k in losses], rel=1e-5)
    assert "val/sample_failed" not in val[0]
    from safetensors.torch import load_file

    samples = [load_file(str(d / "validation" / "step-000002" / "sample_p0_s0.latents.safetensors"))
               for d in (tmp_path / "z3", tmp_path / "one")]  # fmt: skip
    for key in samples[1]:
        torch.testing.assert_close(samples[0][key], samples[1][key], rtol=1e-4, atol=1e-5)

    exported = load_file(str(tmp_path / "z3" / "lora" / "pytorch_lora_weights.safetensors"))
    reference = load_file(str(tmp_path / "one" / "lora" / "pytorch_lora_weights.safetensors"))
    assert exported.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(exported[key], reference[key], rtol=1e-4, atol=1e-6)
    checkpoint = list_checkpoints(tmp_path / "z3" / "checkpoints")[-1]
    lora = load_file(str(checkpoint / LORA_FILE))
    assert all(v.numel() > 0 for v in lora.values())  # gathered, not ZeRO-3's empty partitions
    assert sum(f.stat().st_size for f in (checkpoint / "pytorch_model").iterdir()) < 2**20  # no frozen weights


def test_zero2_resume_continues_the_same_trajectory(tmp_path, data_root):
    straight = deepspeed_run(
        tmp_path, 2, tmp_path / "a", data_root, "train.max_steps=4", "train.checkpoint_every=2", "train.keep_last=2"
    )
    first = list_checkpoints(tmp_path / "a" / "checkpoints")[0]
    assert first.name.endswith("00000002")
    resumed = deepspeed_run(tmp_path, 2, tmp_path / "b", data_root, "train.max_steps=4", f"train.resume={first}")
    assert resumed[-2:] == pytest.approx(straight[-2:], rel=1e-6)
