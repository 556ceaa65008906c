"""A new user's mistakes, each run as a command the way a user types it: every one ends in exactly one line
`error: ...` on stderr (naming the key, file or value, and what is expected) with exit status 2, before any
expensive work. One table; the commands run a few at a time (each is a fresh Python process)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate
from train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable  # the README's `python`: the environment's (make sets it up in .venv)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """One finished tiny run (data, a rank-8 LoRA checkpoint), a tiny image-to-video transformer, a plain file."""
    from radial.models import get_adapter

    tmp = tmp_path_factory.mktemp("mistakes")
    run, data = tmp / "run", tmp / "data"
    Trainer(validate(compose_config(tiny_overrides(run, data, steps=2)))).fit()
    i2v = tmp / "i2v_transformer"
    get_adapter("wan").build_tiny(seed=0, variant="i2v").save_pretrained(i2v)
    file = tmp / "a_file"
    file.write_text("not a folder")
    return {"tmp": tmp, "run": run, "data": data, "i2v": i2v, "file": file}


def _train(m: dict, *extra: str, out: str = "fresh") -> list[str]:
    return [PYTHON, "train/lora.py", *tiny_overrides(m["tmp"] / out, m["data"]), *extra]


#: (what the user did, the command, what the one line must say)
CASES = [
    ("the same training command twice", lambda m: _train(m, out="run"), "holds another run"),
    (
        "resume with another lora.rank",
        lambda m: _train(m, "train.resume=latest", "lora.rank=4", out="run"),
        "checkpoint rank 8, this run 4 (lora.rank)",
    ),
    (
        "resume with other LoRA projections",
        lambda m: _train(m, "train.resume=latest", "lora.projections=[q,k]", out="run"),
        "checkpoint 8 modules, this run 4",
    ),
    (
        "an image-to-video transformer without --image",
        lambda m: [
            PYTHON,
            "-m",
            "train.generate",
            "--tiny",
            "wan",
            "--transformer",
            str(m["i2v"]),
            "--prompt",
            "a",
            "--out",
            str(m["tmp"] / "gen"),
        ],  # fmt: skip
        "give one with --image FILE",
    ),
    ("a typo'd key", lambda m: _train(m, "train.max_stepz=3"), "did you mean train.max_steps=3?"),
    ("a typo'd config group option", lambda m: _train(m, "model=tiny_wn"), "did you mean model=tiny_wan?"),
    (
        "parallel.sp_degree that does not divide the processes",
        lambda m: _train(m, "parallel.sp_degree=2"),
        "parallel.sp_degree=2 must divide the number of processes (1)",
    ),
    (
        "a reversed train.timestep_range",
        lambda m: _train(m, "train.timestep_range=[0.9,0.1]"),
        "train.timestep_range=[0.9, 0.1]: expected [lo, hi]",
    ),
    (
        "lora targets that match no module",
        lambda m: _train(m, "lora.target_modules=[to_nothing]"),
        "lora.target_modules=['to_nothing'] matches no linear layer",
    ),
    (
        "an output_dir that cannot be written",
        lambda m: _train(m, f"output_dir={m['file']}/run"),
        "cannot create this folder (Not a directory)",
    ),
    (
        "data.caption_dropout out of range",
        lambda m: _train(m, "data.caption_dropout=1.5"),
        "data.caption_dropout=1.5: expected a probability in [0, 1)",
    ),
    (
        "data.datasets without data=latents",
        lambda m: _train(m, "data.datasets=[{root:/somewhere}]"),
        "data.datasets needs data=latents",
    ),
    (
        "a dataset of data.datasets without its root",
        lambda m: [
            PYTHON,
            "train/lora.py",
            "model=tiny_wan",
            "data=latents",
            "data.datasets=[{repeats:2}]",
            f"output_dir={m['tmp'] / 'fresh'}",
        ],  # fmt: skip
        "data.datasets[0].root is not set",
    ),
    (
        "early stopping without validations",
        lambda m: _train(m, "train.early_stop_patience=2"),
        "train.early_stop_patience=2 needs validations",
    ),
    (
        "fp8 storage of frozen weights in full training",
        lambda m: _train(m, "train.mode=full", "model.storage_dtype=float8_e4m3fn"),
        "train.mode=full has none",
    ),
]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RADIAL_DEBUG", "HYDRA_FULL_ERROR")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_each_mistake_ends_in_one_line_and_exit_status_2(made):
    with ThreadPoolExecutor(max_workers=max(1, min(4, (os.cpu_count() or 2) // 2))) as pool:
        done = list(pool.map(_run, [command(made) for _, command, _ in CASES]))
    wrong = []
    for (what, _, says), proc in zip(CASES, done, strict=True):
        lines = proc.stderr.splitlines()
        if proc.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or says not in lines[0]:
            wrong.append(f"{what}: exit {proc.returncode}, stderr:\n{proc.stderr[-1500:]}")
    assert not wrong, "\n\n".join(wrong)


def _keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def test_help_says_which_defaults_are_the_tiny_demos():
    """`train/lora.py --help` shows the composed config, which without model=... is the demo's: its text names every
    key the default model group (tiny_wan) sets outside `model`."""
    import yaml

    help_text = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())["hydra"]["help"]["template"]
    assert "- model: tiny_wan" in (ROOT / "configs" / "config.yaml").read_text()
    demo = yaml.safe_load((ROOT / "configs" / "model" / "tiny_wan.yaml").read_text())
    keys = [k for k in _keys(demo) if not k.startswith("model.")]
    assert keys and all(k in " ".join(help_text.split()) for k in keys), keys


@pytest.mark.parametrize("module", ["data.prepare", "train.generate"])
def test_help_shows_defaults_only_where_they_tell_something(module):
    import importlib
    import re

    text = " ".join(importlib.import_module(module).build_parser().format_help().split())
    for meaningless in ("(default: True)", "(default: False)", "(default: None)", "(default: [])"):
        assert meaningless not in text
    assert not re.search(r"default[^()]*\) \(default:", text)  # a second default after the one the help names
    assert "(default: 32)" in text if module == "data.prepare" else "(default: 50)" in text  # values still shown


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("+train.max_stepz=3", "train.max_stepz: no such config key; did you mean train.max_steps=...?"),
        ("+foo=1", "foo: no such config key; the top-level keys: model, attention"),
    ],
)
def test_an_appended_unknown_key_names_the_closest_one(override, says):
    """`+key=value` passes Hydra (it appends); the schema refuses the key, naming the closest valid one."""
    from radial.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        validate(compose_config([override]))
    assert str(e.value).startswith(says)
