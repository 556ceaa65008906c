"""train.compile (regional compilation, aot_eager on the CPU) under 2 processes (gloo): DDP, Ulysses sequence
parallelism (under DDP) and DeepSpeed ZeRO-2 / ZeRO-3 give the losses and LoRA of the same training without compilation.

The eager reference is the one-process run that tests/test_parallel_trainer.py and tests/test_parallel_deepspeed.py
show equal to sp=2 (under DDP, or under DeepSpeed). Gradient checkpointing (the tiny configs' default) wraps the compiled blocks in every run.
Slow (two processes compiling on the CPU): about 1-3 minutes a test on a loaded 2-core machine.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.test_parallel_deepspeed import deepspeed_run
from tests.test_parallel_trainer import _launch, _overrides
from tests.trainer_helpers import compose_config
from train.checkpoint import LORA_FILE, list_checkpoints
from train.config import validate
from train.trainer import Trainer

pytestmark = pytest.mark.slow

COMPILE = ("train.compile=true", "train.compile_backend=aot_eager")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Synthetic tiny-Wan latents, prepared once by a short one-process run."""
    root = tmp_path_factory.mktemp("data")
    Trainer(validate(compose_config(_overrides(tmp_path_factory.mktemp("prep"), root, steps=1))))
    return root


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_root):
    """The eager one-process run: its per-step losses and final LoRA."""
    trainer = Trainer(validate(compose_config(_overrides(tmp_path_factory.mktemp("one"), data_root))))
    trainer.fit()
    return [loss for _, loss in trainer.state.losses], trainer.lora_state_dict()


def assert_same_run(got: list[float], out, want: list[float], want_lora: dict) -> None:
    """The losses (tests/test_compile.py's loss tolerance) and the LoRA of the run's last checkpoint agree."""
    assert got == pytest.approx(want, rel=1e-3, abs=1e-4) and len(set(want)) == len(want) > 1
    lora = load_file(str(list_checkpoints(out / "checkpoints")[-1] / LORA_FILE))
    assert lora.keys() == want_lora.keys() and lora
    for key, value in want_lora.items():
        torch.testing.assert_close(lora[key], value, rtol=1e-3, atol=1e-5, msg=key)


def test_sequence_parallel_compiled_matches_one_process(tmp_path, data_root, one_process):
    """sp=2 under DDP (2 processes are wrapped in DDP, so dynamo's DDP optimizer is switched off here as for plain DDP:
    without that the first compiled step fails); the all-to-alls run in the eager attention call between the graphs."""
    got = _launch(tmp_path / "sp2", data_root, "parallel=sp2", *COMPILE)
    assert_same_run(got, tmp_path / "sp2", *one_process)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_compiled_matches_one_process(tmp_path, data_root, one_process, stage):
    """ZeRO-2 / ZeRO-3 with sp=2 and compiled blocks; under ZeRO-3 DeepSpeed's parameter-gathering hooks run between
    the pieces of the blocks' graphs."""
    out = tmp_path / f"zero{stage}"
    # ZeRO-3's hooks inside the blocks make ~5x more (smaller) graphs: more time to compile them
    got = deepspeed_run(tmp_path, stage, out, data_root, "parallel=sp2", *COMPILE, timeout=240 if stage == 2 else 480)
    assert_same_run(got, out, *one_process)
