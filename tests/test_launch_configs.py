"""launch/: the accelerate configs parse as Accelerate reads them, the DeepSpeed JSONs fit what the trainer fills in,
the SLURM script hands each node its machine rank and the main address, and the shell scripts are valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
EXPECTED = {
    "single_gpu.yaml": "NO",
    "multi_gpu.yaml": "MULTI_GPU",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
    "fsdp2.yaml": "FSDP",
}
TRAINER_FILLED = (
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "train_batch_size",
    "gradient_clipping",
)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(LAUNCH / name))
    assert cfg.distributed_type.value == EXPECTED[name]
    assert cfg.compute_environment.value == "LOCAL_MACHINE"
    if cfg.distributed_type.value == "DEEPSPEED":
        ds = cfg.deepspeed_config
        assert (ROOT / ds["deepspeed_config_file"]).is_file()  # relative to the repository root, where we launch
        assert ds["zero3_init_flag"] is False
        # With a DeepSpeed JSON, Accelerate refuses mixed_precision in the YAML (bf16 is in the JSON, "auto").
        assert "mixed_precision" not in {k for k in vars(cfg) if getattr(cfg, k) is not None} - {"mixed_precision"}
        assert not any(line.startswith("mixed_precision") for line in (LAUNCH / name).read_text().splitlines())
    if name == "fsdp2.yaml":
        assert cfg.fsdp_config["fsdp_version"] == 2
        assert cfg.fsdp_config["fsdp_activation_checkpointing"] is False  # the trainer checkpoints blocks itself


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_json_and_what_the_trainer_fills(stage):
    from accelerate.utils import DeepSpeedPlugin

    from train.setup import configure_deepspeed

    path = LAUNCH / f"zero{stage}.json"
    raw = json.loads(path.read_text())
    assert raw["zero_optimization"]["stage"] == stage
    assert all(raw[k] == "auto" for k in TRAINER_FILLED)
    # Accelerate can only fill hidden-size keys from `model.config.hidden_size`, which diffusers models lack.
    assert all(v != "auto" for v in raw["zero_optimization"].values())
    plugin = DeepSpeedPlugin(hf_ds_config=str(path))
    assert plugin.zero_stage == stage
    stub = SimpleNamespace(
        cfg=SimpleNamespace(
            data=SimpleNamespace(batch_size=2),
            train=SimpleNamespace(gradient_accumulation_steps=3),
            optim=SimpleNamespace(max_grad_norm=0.5),
        ),
        accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=4),
    )
    configure_deepspeed(stub.cfg, stub.accelerator)
    ds = plugin.deepspeed_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (2, 3)
    assert ds["train_batch_size"] == 2 * 3 * 4 and ds["gradient_clipping"] == 0.5


def test_parallel_configs_compose():
    from tests.trainer_helpers import compose_config
    from train.config import validate

    for name, degree in (("none", 1), ("sp2", 2), ("sp4", 4), ("sp8", 8)):
        assert validate(compose_config([f"parallel={name}"])).parallel.sp_degree == degree
    with pytest.raises(ValueError, match="parallel.sp_degree"):
        validate(compose_config(["parallel.sp_degree=0"]))


@pytest.mark.parametrize("script", ["slurm.sbatch", "torchrun.sh", "wheelhouse.sh"])
def test_shell_scripts_are_valid_bash(script):
    path = LAUNCH / script
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True)


def _fake_bin(tmp_path: Path, scripts: dict[str, str]) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize("config", ["launch/multi_gpu.yaml", "launch/deepspeed_zero3.yaml"])
def test_slurm_script_gives_each_node_its_rank_and_the_main_address(tmp_path, config):
    """Fake srun (runs its command once per node with SLURM_NODEID), scontrol and accelerate (print their args)."""
    env = _fake_bin(
        tmp_path,
        {
            "scontrol": 'printf "gpu-a17\\ngpu-b03\\n"\n',
            "srun": 'for node in 0 1; do SLURM_NODEID=$node "${@:3}"; done\n',  # drop --kill-on-bad-exit, --ntasks..
            "python": 'echo "node=$SLURM_NODEID $*"\n',  # runs `-m train.launcher accelerate launch ...`
        },
    )
    env.pop("PYTHON", None)
    env.update(SLURM_JOB_NODELIST="gpu-[a17,b03]", SLURM_NNODES="2", SLURM_JOB_ID="4242", SLURM_GPUS_ON_NODE="8",
               SLURM_SUBMIT_DIR=str(ROOT), ACCELERATE_CONFIG=config)  # fmt: skip
    out = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "model=wan", "data.root=/data"],
        env=env, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL, timeout=30,
    ).stdout  # fmt: skip
    lines = [x for x in out.splitlines() if x.startswith("node=")]
    assert len(lines) == 2
    for node, line in enumerate(lines):
        assert line.startswith(f"node={node} -m train.launcher accelerate launch --config_file ")
        assert f"--machine_rank {node} " in line and "--num_machines 2 " in line and "--num_processes 16 " in line
        assert "--main_process_ip gpu-a17 " in line and "--main_process_port 24242 " in line
        assert f"--config_file {config} " in line
        assert line.endswith("train/lora.py train.resume=latest model=wan data.root=/data")
        assert ("--deepspeed_multinode_launcher standard" in line) == ("deepspeed" in config)


def test_torchrun_script_sets_up_deepspeed_through_the_environment(tmp_path):
    env = _fake_bin(  # the script runs `python -m train.launcher torchrun ...`
        tmp_path, {"python": 'echo "DS=$ACCELERATE_USE_DEEPSPEED:$ACCELERATE_DEEPSPEED_CONFIG_FILE $*"\n'}
    )
    env.pop("PYTHON", None)
    env.update(NPROC="2", DEEPSPEED_CONFIG="launch/zero2.json")
    out = subprocess.run(
        ["bash", str(LAUNCH / "torchrun.sh"), "parallel=sp2"],
        env=env, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL, timeout=30,
    ).stdout  # fmt: skip
    assert out.startswith("DS=true:launch/zero2.json -m train.launcher torchrun --nnodes 1 ")
    assert "--nproc_per_node 2 " in out and out.strip().endswith("train/lora.py parallel=sp2")


def test_wheelhouse_dry_run_builds_deepspeed_and_resolves_for_the_target(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "PYTHON_VERSION": "3.12",
           "PLATFORM": "manylinux_2_28_x86_64 manylinux2014_x86_64", "DEEPSPEED_SPEC": "deepspeed==0.19.8"}  # fmt: skip
    out = subprocess.run(
        ["bash", str(LAUNCH / "wheelhouse.sh"), str(tmp_path / "wh")],
        env=env, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL, timeout=30,
    ).stdout  # fmt: skip
    commands = [x for x in out.splitlines() if x.startswith("+ ")]
    assert "pip wheel --no-deps" in commands[0] and commands[0].endswith(str(ROOT))
    assert commands[1].endswith("deepspeed==0.19.8")
    resolve = commands[-1]
    assert "--dry-run" in resolve and "--only-binary=:all:" in resolve and "--python-version 3.12" in resolve
    assert "--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64" in resolve
    assert "radial-lora==0.1.0" in resolve


def test_readme_documents_every_config():
    text = (LAUNCH / "README.md").read_text()
    for name in [*EXPECTED, "zero2.json", "zero3.json", "slurm.sbatch", "torchrun.sh", "wheelhouse.sh"]:
        assert name in text, name
    assert "parallel.sp_degree" in text
