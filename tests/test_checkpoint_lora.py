"""Every checkpoint holds a LoRA that train.generate and diffusers load; `python -m train.export` writes the final
files from any checkpoint; the header's base identity refuses another task variant and warns about another base."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from radial.lora import add_metadata, read_metadata
from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate
from train.trainer import Trainer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    data = tmp_path_factory.mktemp("data")
    Trainer(validate(compose_config(tiny_overrides(out, data, steps=4)))).fit()
    return out


def generate(tmp_path, lora, *extra):
    from train.generate import main

    out = tmp_path / "gen"
    main(["--tiny", "wan", "--lora", str(lora), "--prompt", "a red ball", "--steps", "1", "--no-decode"]
         + ["--out", str(out), *extra])  # fmt: skip
    return json.loads((out / "generate_summary.json").read_text())["generated"][0]


def test_checkpoint_lora_has_diffusers_keys_and_the_header(run_dir):
    ckpt = run_dir / "checkpoints" / "checkpoint-00000002"
    file = ckpt / "lora" / "pytorch_lora_weights.safetensors"
    keys = list(load_file(str(file)))
    assert keys and all(k.startswith("transformer.") for k in keys)
    info = read_metadata(file)
    assert info["training"]["steps"] == 2 and info["base_model"]["variant"] == "T2V"
    assert len(info["base_model"]["config_hash"]) == 16 and len(info["base_model"]["weights"]) == 16
    assert (ckpt / "lora" / "comfyui_lora.safetensors").is_file()


def test_checkpoint_lora_loads_in_diffusers_and_radial_generate(run_dir, tmp_path, capsys):
    from train.tiny_pipeline import build_tiny_pipeline

    lora = run_dir / "checkpoints" / "checkpoint-00000002" / "lora"
    pipe = build_tiny_pipeline("wan", transformer=run_dir / "base_transformer")
    pipe.load_lora_weights(str(lora), adapter_name="ckpt")
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="ckpt")
    saved = load_file(str(lora.parent / "lora_adapter.safetensors"))  # what resume loads (PEFT keys)
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # trained: not the zero init
    record = generate(tmp_path, lora, "--transformer", str(run_dir / "base_transformer"))
    assert record["finite"] and record["loras"][0]["radial_lora"]["training"]["steps"] == 2
    assert "warning" not in capsys.readouterr().err  # the right base: no warning


def test_export_command_writes_the_final_files(run_dir, tmp_path, capsys):
    from train.export import main

    written = main([str(run_dir / "checkpoints" / "checkpoint-00000004"), "--out", str(tmp_path / "x")])
    assert set(written) == {"lora_diffusers", "lora_comfy"}
    for name in ("pytorch_lora_weights.safetensors", "comfyui_lora.safetensors"):
        final, exported = run_dir / "lora" / name, tmp_path / "x" / name
        a, b = load_file(str(final)), load_file(str(exported))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert read_metadata(exported) == read_metadata(final)
    default = main([str(run_dir / "checkpoints" / "checkpoint-00000002"), "--no-comfy"])
    assert default == {
        "lora_diffusers": str(run_dir / "exports" / "checkpoint-00000002" / "pytorch_lora_weights.safetensors")
    }


def test_export_command_refuses_a_folder_that_is_no_checkpoint(tmp_path, capsys):
    from train.export import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err and str(tmp_path) in err


def test_lora_of_another_variant_is_refused(run_dir, tmp_path, capsys):
    file = tmp_path / "i2v.safetensors"
    file.write_bytes((run_dir / "lora" / "pytorch_lora_weights.safetensors").read_bytes())
    info = read_metadata(file)
    info["base_model"]["variant"] = "I2V"
    add_metadata(file, info)
    with pytest.raises(SystemExit) as e:
        generate(tmp_path, file, "--transformer", str(run_dir / "base_transformer"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "I2V" in err and "T2V" in err


def test_lora_on_another_base_warns_in_one_line(run_dir, tmp_path, capsys):
    record = generate(tmp_path, run_dir / "lora", "--tiny-seed", "1")  # --transformer forgotten: another random base
    assert record["finite"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "differs" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "weights" in warnings[0]


def test_lora_info_prints_base_settings_and_comfy_inputs(run_dir, capsys):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "radial.lora", "info", str(run_dir / "lora")], capture_output=True, text=True, check=True
    )
    out = proc.stdout
    info = read_metadata(run_dir / "lora" / "pytorch_lora_weights.safetensors")
    assert "base:       wan T2V, tiny" in out and info["base_model"]["config_hash"] in out
    assert "rank:       8 (alpha 8" in out and "to_out" in out
    assert "decay_factor 1.0, dense_layers 1, block_size 16" in out
    assert "PatchRadialAttn: decay_factor=1.0, dense_block=1, dense_timestep=0, last_dense_timestep=0" in out
    assert "WanVideoSetRadialAttention: decay_factor=1.0, dense_blocks=1, dense_timesteps=0, block_size=128" in out
    assert "trained with 16-token blocks; the nodes offer 64 or 128" in out


def test_lora_info_of_a_missing_or_foreign_file(tmp_path, capsys):
    from safetensors.torch import save_file

    from radial.lora_info import main

    with pytest.raises(SystemExit) as e:
        main(["info", str(tmp_path / "none.safetensors")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err
    save_file({"a.lora_A.weight": torch.zeros(4, 8)}, str(tmp_path / "other.safetensors"))
    main(["info", str(tmp_path / "other.safetensors")])
    assert "no radial_lora header" in capsys.readouterr().out


def test_export_of_an_older_checkpoint_takes_the_runs_settings(run_dir, tmp_path, capsys):
    import shutil

    from train.export import main

    old = tmp_path / "run" / "checkpoints" / "checkpoint-00000002"
    shutil.copytree(run_dir / "checkpoints" / "checkpoint-00000002", old)
    shutil.rmtree(old / "lora")  # as checkpoints were written before they held their LoRA
    with pytest.raises(SystemExit) as e:
        main([str(old)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "lora/pytorch_lora_weights.safetensors" in err
    shutil.copytree(run_dir / "lora", tmp_path / "run" / "lora")  # the run's final LoRA gives the settings
    written = main([str(old), "--no-comfy"])
    exported = load_file(written["lora_diffusers"])
    own = load_file(str(run_dir / "checkpoints" / "checkpoint-00000002" / "lora" / "pytorch_lora_weights.safetensors"))
    assert exported.keys() == own.keys() and all(torch.equal(exported[k], own[k]) for k in own)
    assert read_metadata(written["lora_diffusers"])["training"]["steps"] == 2


def test_fused_comfy_export_from_the_recorded_config_alone():
    """Fused original modules (HunyuanVideo's qkv) take their row layout from a meta-device model of the recorded
    config: the same file as from the real model."""
    from radial.base_id import plain_config
    from radial.lora import attach_lora, lora_state_dict
    from radial.models import get_adapter
    from train.config import empty_transformer

    adapter = get_adapter("hunyuan")
    model = adapter.build_tiny(seed=0)
    attach_lora(model, rank=4, alpha=8, target_modules=adapter.lora_target_modules(("q", "k", "v", "o")), init=False)
    sd = lora_state_dict(model)
    meta = empty_transformer(adapter, json.loads(json.dumps(plain_config(model.config))))
    assert next(meta.parameters()).device.type == "meta"
    a, b = adapter.comfy_lora_state_dict(sd, model, 2.0), adapter.comfy_lora_state_dict(sd, meta, 2.0)
    assert any(k.endswith("img_attn_qkv.lora_B.weight") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_variant_is_refused_before_a_pipeline_folder_loads(run_dir, tmp_path, capsys, monkeypatch):
    import train.generate as gen
    from train.generate import main

    folder = tmp_path / "pipe"
    main(["--tiny", "wan", "--save-tiny", str(folder)])
    file = tmp_path / "i2v.safetensors"
    file.write_bytes((run_dir / "lora" / "pytorch_lora_weights.safetensors").read_bytes())
    info = read_metadata(file)
    info["base_model"]["variant"] = "I2V"
    add_metadata(file, info)
    monkeypatch.setattr(gen, "load_pipeline", lambda *a, **k: pytest.fail("loaded the pipeline before refusing"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--model", str(folder), "--lora", str(file), "--prompt", "a", "--out", str(tmp_path / "gen")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "I2V base" in err and "image-to-video model" in err


def test_window_lora_records_its_window_and_generates_with_it(tmp_path):
    """Guards the window baseline end to end: a LoRA trained with `attention.window_frames` stores the window in its
    header, and `train.generate` restores it (the same mask density as a window plan), instead of sampling a window
    LoRA with the radial mask."""
    from radial.plan import make_plan

    out = tmp_path / "run"
    overrides = tiny_overrides(out, tmp_path / "data", steps=1)
    overrides += ["attention.window_frames=1", "attention.backend=reference", "attention.block_size=16"]
    Trainer(validate(compose_config(overrides))).fit()
    info = read_metadata(out / "lora" / "pytorch_lora_weights.safetensors")
    assert info["attention"]["window_frames"] == 1
    record = generate(tmp_path, out / "lora", "--transformer", str(out / "base_transformer"), "--frames", "17",
                      "--height", "64", "--width", "64", "--backend", "reference")  # fmt: skip
    assert record["radial"]["window_frames"] == 1
    frames, tokens = 5, 16  # 17 frames at 64x64: 5 latent frames of 4x4 tokens
    window = make_plan(frames, tokens, block_size=16, model="wan", window_frames=1).stats.block_density
    radial = make_plan(frames, tokens, block_size=16, model="wan").stats.block_density
    assert window != radial and record["attention"]["mask_block_density"] == pytest.approx(window)
