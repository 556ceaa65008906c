"""Config validation: every bad value fails before anything heavy, naming its key."""

import json

import pytest
from omegaconf.errors import MissingMandatoryValue

from radial.errors import ConfigError
from tests.trainer_helpers import compose_config
from train.config import validate
from train.run_dir import check_output_dir


def test_default_config_is_valid():
    cfg = validate(compose_config([]))
    assert cfg.model.family == "wan" and cfg.model.source == "tiny" and cfg.attention.block_size == 16
    assert cfg.data.root == "outputs/run/data"


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("attention.block_size=100", ValueError, "attention.block_size"),
        ("attention.backend=magic", ValueError, "attention.backend"),
        ("lora.rank=0", ValueError, "lora.rank"),
        ("lora.projections=[q,x]", ValueError, "lora.projections"),
        ("optim.lr=-1", ValueError, "optim.lr"),
        ("train.max_steps=0", ValueError, "train.max_steps"),
        ("train.on_nan=ignore", ValueError, "train.on_nan"),
        ("train.mixed_precision=fp8", ValueError, "train.mixed_precision"),
        ("model.family=sora", ValueError, "model.family"),
        ("model.source=pretrained", ValueError, "model.path"),
        ("model.dtype=int8", ValueError, "model.dtype"),
        ("logging.trackers=[mlflow]", ValueError, "logging.trackers"),
        ("parallel.sp_degree=0", ValueError, "parallel.sp_degree"),
        ("eval.hooks=[nosuchhook]", ValueError, "eval.hooks"),
        ("+eval.timesteps=[0.5,1.5]", ValueError, "eval.timesteps"),
        ("+train.typo_key=1", ConfigError, "typo_key"),
        ("attention.decay_factor=nan", ConfigError, r"attention.decay_factor=nan: expected a finite number"),
        ("optim.lr=inf", ConfigError, r"optim.lr=inf"),
        ("attention.dense_layers=99", ConfigError, r"attention.dense_layers=99: .* has 2 attention layers"),
        ("optim.scheduler=bogus", ConfigError, r"optim.scheduler=.bogus.: expected one of"),
        ("train.max_steps=many", ConfigError, "train.max_steps"),
        ("train.checkpoint_blocks=3", ConfigError, r"train.checkpoint_blocks=.3.: expected auto, all or .* \[0, 2\]"),
        ("train.checkpoint_blocks=some", ConfigError, r"train.checkpoint_blocks=.some."),
        ("train.compile_backend=tvm", ConfigError, "train.compile_backend"),
        ("train.compile_mode=reduce-overhead", ConfigError, "train.compile_mode"),
    ],
)
def test_bad_values_name_their_key(override, error, match):
    with pytest.raises(error, match=match):
        validate(compose_config([override]))


def test_eval_default_group_is_valid():
    cfg = validate(compose_config(["eval=default"]))
    assert cfg.eval.validation_every == 250 and cfg.eval.hooks == ["flicker"]


def test_pretrained_model_needs_an_existing_path(tmp_path):
    with pytest.raises(MissingMandatoryValue, match="model.path"):
        validate(compose_config(["model=wan"]))
    with pytest.raises(FileNotFoundError, match="model.path"):
        validate(compose_config(["model=hunyuan", f"model.path={tmp_path / 'nope'}"]))
    with pytest.raises(MissingMandatoryValue, match="data.root"):
        validate(compose_config(["data=latents"]))


def _wan22_folder(tmp_path, boundary):
    folder = tmp_path / "Wan2.2-T2V-A14B-Diffusers"
    folder.mkdir()
    index = {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]}
    if boundary is not None:
        index["boundary_ratio"] = boundary
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("expert, want", [("transformer", [0.875, 1.0]), ("transformer_2", [0.0, 0.875])])
def test_wan22_expert_trains_its_share_of_the_noise_levels(tmp_path, expert, want):
    """The pipeline's boundary_ratio (model_index.json) splits the schedule between the experts."""
    folder = _wan22_folder(tmp_path, 0.875)
    cfg = validate(compose_config(["model=wan22", f"model.path={folder}", f"model.expert={expert}"]))
    assert cfg.train.timestep_range == want
    # An explicit range wins; the tiny / full-size architectures use the variant's ratio.
    explicit = ["model=wan22", f"model.path={folder}", f"model.expert={expert}", "train.timestep_range=[0.5,0.9]"]
    assert validate(compose_config(explicit)).train.timestep_range == [0.5, 0.9]
    tiny = validate(compose_config(["model.family=wan22", f"+model.expert={expert}", "model.variant=i2v-a14b"]))
    assert tiny.train.timestep_range == ([0.9, 1.0] if expert == "transformer" else [0.0, 0.9])


def test_bad_expert_settings_name_their_key(tmp_path):
    folder = _wan22_folder(tmp_path, None)
    with pytest.raises(ValueError, match="model.expert"):
        validate(compose_config(["model=wan22", f"model.path={folder}", "model.expert=transformer_3"]))
    with pytest.raises(ValueError, match=r"model.expert='transformer'.*family 'wan' has no experts"):
        validate(compose_config(["+model.expert=transformer"]))
    with pytest.raises(ValueError, match=r"no boundary_ratio.*train.timestep_range"):
        validate(compose_config(["model=wan22", f"model.path={folder}", "model.expert=transformer"]))
    with pytest.raises(ValueError, match="train.timestep_range"):
        validate(compose_config(["train.timestep_range=[0.9,0.1]"]))
    with pytest.raises(ValueError, match="model.variant='nope'.*train.timestep_range"):
        validate(compose_config(["model.family=wan22", "+model.expert=transformer", "model.variant=nope"]))
    for expert in ("transformer", "transformer_2"):  # a pipeline folder with both experts: which one to train?
        (folder / expert).mkdir()
    with pytest.raises(ValueError, match=r"model.expert is not set.*model.expert=transformer"):
        validate(compose_config(["model=wan22", f"model.path={folder}"]))


def test_output_dir_holding_another_run_is_refused(tmp_path):
    from train.run_dir import clear_previous_run
    from train.trainer import Trainer

    out = tmp_path / "run"
    (out / ".hydra").mkdir(parents=True)  # Hydra's own folder and an empty checkpoints/ are not a run
    (out / "checkpoints").mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "checkpoints" / "checkpoint-00000002").mkdir()
    (out / "data").mkdir()
    with pytest.raises(FileExistsError) as e:
        Trainer(validate(compose_config([f"output_dir={out}"])))  # refused before anything is built
    message = str(e.value)
    assert f"output_dir={str(out)!r}" in message and "train.resume=latest" in message
    assert "train.overwrite=true" in message and "checkpoints, metrics.jsonl" in message
    assert clear_previous_run(out) == ["checkpoints", "metrics.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == [".hydra", ".run.lock", "data"]  # the data cache is kept
    (out / "checkpoints").mkdir()
    check_output_dir(out, None, False)  # an empty checkpoints/ folder is no run
    (out / "lora").mkdir()
    (out / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    check_output_dir(out, "latest", False)
    check_output_dir(out, None, True)
    with pytest.raises(FileExistsError, match="lora"):
        check_output_dir(out, None, False)


def test_missing_model_path_says_what_to_download():
    with pytest.raises(MissingMandatoryValue) as e:
        validate(compose_config(["model=hunyuan"]))
    message = str(e.value).splitlines()[0]
    assert "model.path is not set" in message and "hunyuanvideo-community/HunyuanVideo" in message
    assert "transformer/" in message and "model_index.json" in message


def test_model_path_hub_id_resolves_from_the_cache(tmp_path, monkeypatch):
    from radial.models import get_adapter

    snapshot = tmp_path / "models--org--tiny-wan" / "snapshots" / ("a" * 40)
    get_adapter("wan").build_tiny(seed=0).save_pretrained(snapshot / "transformer")
    (tmp_path / "models--org--tiny-wan" / "refs").mkdir()
    (tmp_path / "models--org--tiny-wan" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = validate(compose_config(["model=wan", "model.path=org/tiny-wan", f"output_dir={tmp_path / 'o'}"]))
    assert cfg.model.path == str(snapshot)
    with pytest.raises(FileNotFoundError, match="model.path=org/other: .*not in the Hugging Face cache"):
        validate(compose_config(["model=wan", "model.path=org/other"]))


def test_readme_sampling_example_is_valid():
    """The README's `eval=default eval.prompts=[...]` example composes and validates."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "eval=default" in ln and "train/lora.py" in ln)
    overrides = [a for a in shlex.split(line.rstrip("\\")) if "=" in a and not re.match(r"^--", a)]
    cfg = validate(compose_config(overrides))
    assert cfg.eval.prompts and cfg.eval.validation_every > 0


def test_hydra_help_has_a_description_and_examples():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "train" / "lora.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Radial LoRA: fine-tune a video diffusion transformer")
    assert "Examples:" in proc.stdout and "train.resume=latest" in proc.stdout
    groups = [line.split(": ", 1)[1].split(", ") for line in proc.stdout.splitlines() if line.startswith("model: ")]
    assert groups and "hunyuan" in groups[0] and "tiny_wan" in groups[0]  # the config groups are listed
