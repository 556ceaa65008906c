"""The README's data path, run exactly as written: activate the environment -> synthetic -> prepare --tiny -> shards
check -> train -> generate.

The commands are read from README.md (between the `readme-path` markers), so the README and the code cannot drift
apart. `python -m MODULE ...` runs in this process through the module's `main(argv)` (faster); the Hydra trainer
runs as a subprocess, as a user would start it. Everything runs in a temporary folder (the README's relative
`outputs/...` paths land there).
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- readme-path: begin -->", "<!-- readme-path: end -->"


def readme_commands(readme: Path = ROOT / "README.md") -> list[list[str]]:
    """The shell commands of the README's tested block, continuation lines joined, split as the shell would."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise AssertionError(f"{readme}: the {BEGIN} ... {END} block is missing")
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    body = re.search(r"```bash\n(.*?)```", block, re.S)
    assert body, "the readme-path block holds no ```bash code block"
    joined = body.group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


ACTIVATE = ["source", ".venv/bin/activate"]


def test_readme_block_is_the_data_path():
    activate, *commands = readme_commands()
    # It starts in the environment that `make` builds (the Makefile's VENV), where `python` has the packages.
    assert activate == ACTIVATE and "VENV ?= .venv\n" in (ROOT / "Makefile").read_text()
    names = [c[2] if c[1] == "-m" else c[1] for c in commands]
    assert names == ["data.synthetic", "data.prepare", "data.shards", "train/lora.py", "train.generate"] + [
        "train.export",
        "radial.lora",
    ]


def test_readme_path_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for argv in readme_commands():
            if argv == ACTIVATE:  # this test runs in that environment already: `python` is sys.executable
                continue
            assert argv[0] == "python", argv
            if argv[1] == "-m":
                importlib.import_module(argv[2]).main(argv[3:])
                continue
            env = {**os.environ, "OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"}
            proc = subprocess.run(
                [sys.executable, str(ROOT / argv[1]), *argv[2:]], env=env, capture_output=True, text=True
            )
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            # The run summary comes before the model is built (the tiny base is saved while building it).
            summary = proc.stdout[: proc.stdout.index("done: ")]
            for line in (
                "model:      wan WanTransformer3DModel",
                "data:       4 items in 1 bucket(s) (33f 64x64: 4)",
                "attention:  radial, backend reference",
                "output_dir: outputs/tiny_run",
                "memory:     ~",
            ):
                assert line in summary, proc.stdout[-3000:]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    prepared = tmp_path / "outputs/syn_latents"
    assert (prepared / "index.json").is_file()
    lora = load_file(str(tmp_path / "outputs/tiny_run/lora/pytorch_lora_weights.safetensors"))
    assert lora and any("lora_B" in k or "lora_up" in k for k in lora)
    videos = sorted((tmp_path / "outputs/tiny_gen").glob("*.mp4"))
    assert videos, "train.generate wrote no video"
    step3 = tmp_path / "outputs/tiny_run_step3"  # train.export: a checkpoint's LoRA in final form
    assert (step3 / "pytorch_lora_weights.safetensors").is_file() and (step3 / "comfyui_lora.safetensors").is_file()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_conditions_reach_an_fp32_model(dtype):
    """Prepared text states are stored in bf16 by default; the conditions follow the model's dtype on every path."""
    from train.step import conditions_of

    batch = {
        "latents": torch.zeros(1),
        "prompt_embeds": torch.ones(1, 4, 8, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16),
        "prompt_attention_mask": torch.ones(1, 4, dtype=torch.bool),
        "meta": [{}],
    }
    conds = conditions_of(batch, torch.device("cpu"), torch.float32)
    assert conds["prompt_embeds"].dtype == torch.float32
    assert conds["prompt_attention_mask"].dtype == torch.bool
    assert "latents" not in conds and "meta" not in conds
