"""`python -m train.export CHECKPOINT` on checkpoints written the way the trainer writes their LoRA (lora_adapter.
safetensors with PEFT keys, lora/ by write_lora_files) from a tiny run's real parts, without training (seconds;
tests/test_checkpoint_lora.py runs the whole path on a trained run): the files and what it prints, the defaults,
the fused ComfyUI modules from the recorded config, older checkpoints, and every refusal as one whole line."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from radial.lora import DIFFUSERS_WEIGHT_NAME, adapter_metadata, add_metadata, lora_state_dict, read_metadata
from tests.export_helpers import tiny_view
from train.checkpoint import DONE, FULL_FILE, LORA_FILE
from train.export import COMFY_NAME, export_checkpoint, lora_info, main, write_lora_files

CKPT = "checkpoint-00000003"


def write_checkpoint(view, folder, step: int) -> None:
    """A checkpoint's LoRA files as Trainer._save_lora writes them, and its completion marker."""
    folder.mkdir(parents=True)
    sd = lora_state_dict(view.unwrapped())
    save_file(sd, str(folder / LORA_FILE))
    view.state.step = step
    write_lora_files(folder / "lora", sd, adapter=view.parts.adapter, lora_meta=adapter_metadata(view.parts.lora_config),
                     info=lora_info(view), comfy=True, transformer=view.unwrapped())  # fmt: skip
    (folder / DONE).write_text(json.dumps({"step": step}))


@pytest.fixture(scope="module", params=["tiny_wan", "tiny_hunyuan"])
def run(request, tmp_path_factory):
    """A run folder with checkpoint-3 and the final LoRA (written at step 5) in run/lora; HunyuanVideo's ComfyUI
    file has fused modules (img_attn_qkv), whose layout comes from the recorded config."""
    out = tmp_path_factory.mktemp(request.param)
    view = tiny_view(out, model=request.param, records=[{"frames": 17}])
    write_checkpoint(view, out / "checkpoints" / CKPT, 3)
    view.state.step = 5
    write_lora_files(out / "lora", lora_state_dict(view.unwrapped()), adapter=view.parts.adapter,
                     lora_meta=adapter_metadata(view.parts.lora_config), info=lora_info(view), comfy=True,
                     transformer=view.unwrapped())  # fmt: skip
    return out


def same_file(a, b) -> bool:
    """The same tensors (names, values, dtypes) and the same header."""
    ta, tb = load_file(str(a)), load_file(str(b))
    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        headers = fa.metadata() == fb.metadata()
    return (
        headers and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) and ta[k].dtype == tb[k].dtype for k in ta)
    )


def refusal(capsys, *argv) -> str:
    """The one line `main(argv)` ends with on stderr (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err.rstrip("\n")


def test_export_writes_the_checkpoints_files_and_prints_them(run, tmp_path, capsys):
    """Guards export_checkpoint and main: both final-form files, equal to those the trainer wrote into the
    checkpoint (for HunyuanVideo the fused ComfyUI modules rebuilt on the meta device from the header's config), the
    printed paths; the default folder run/exports/checkpoint-N; --no-comfy; both files by default when called from
    Python."""
    ckpt = run / "checkpoints" / CKPT
    capsys.readouterr()
    written = main([str(ckpt), "--out", str(tmp_path / "x")])
    assert written == {"lora_diffusers": str(tmp_path / "x" / DIFFUSERS_WEIGHT_NAME),
                       "lora_comfy": str(tmp_path / "x" / COMFY_NAME)}  # fmt: skip
    assert capsys.readouterr().out == "".join(f"{k}: {v}\n" for k, v in written.items())
    for name in (DIFFUSERS_WEIGHT_NAME, COMFY_NAME):
        assert same_file(ckpt / "lora" / name, tmp_path / "x" / name), name
    assert read_metadata(tmp_path / "x" / DIFFUSERS_WEIGHT_NAME)["training"]["steps"] == 3
    default = main([str(ckpt)])
    assert default == {"lora_diffusers": str(run / "exports" / CKPT / DIFFUSERS_WEIGHT_NAME),
                       "lora_comfy": str(run / "exports" / CKPT / COMFY_NAME)}  # fmt: skip
    assert main([str(ckpt), "--no-comfy", "--out", str(tmp_path / "y")]) == {
        "lora_diffusers": str(tmp_path / "y" / DIFFUSERS_WEIGHT_NAME)
    }
    assert sorted(p.name for p in (tmp_path / "y").iterdir()) == [DIFFUSERS_WEIGHT_NAME]
    assert set(export_checkpoint(ckpt, tmp_path / "z")) == {"lora_diffusers", "lora_comfy"}  # the library's default


def test_an_older_checkpoint_takes_the_runs_settings_at_its_own_step(run, tmp_path, capsys):
    """Guards _checkpoint_lora's fallback: a checkpoint without lora/ (written before checkpoints held their LoRA)
    takes the adapter settings and record from the run's final LoRA, with the checkpoint's step; a final record
    without a training part gets one holding the step. Without the final LoRA it is one error naming both."""
    old = tmp_path / "run" / "checkpoints" / CKPT
    shutil.copytree(run / "checkpoints" / CKPT, old)
    shutil.rmtree(old / "lora")
    final = tmp_path / "run" / "lora" / DIFFUSERS_WEIGHT_NAME
    assert refusal(capsys, old) == (
        f"error: {old}: neither lora/{DIFFUSERS_WEIGHT_NAME} in it (checkpoints written by an older version lack it) "
        f"nor the run's final {final} to take the LoRA settings from; resume the run with train.resume to write a "
        "checkpoint that has it"
    )
    shutil.copytree(run / "lora", tmp_path / "run" / "lora")
    written = main([str(old), "--out", str(tmp_path / "x")])
    own = run / "checkpoints" / CKPT / "lora"
    assert same_file(own / DIFFUSERS_WEIGHT_NAME, written["lora_diffusers"])
    assert same_file(own / COMFY_NAME, written["lora_comfy"])
    info = read_metadata(final)
    assert info["training"]["steps"] == 5
    del info["training"]
    add_metadata(final, info)
    written = main([str(old), "--no-comfy", "--out", str(tmp_path / "z")])
    assert read_metadata(written["lora_diffusers"]) == {**info, "training": {"steps": 3}}


def test_export_refuses_what_is_no_lora_checkpoint(run, tmp_path, capsys):
    """Guards every refusal of _checkpoint_lora and export_checkpoint, each one whole line naming the folder or
    file: no completion marker, a train.mode=full checkpoint, no LoRA weights, a header without the adapter settings
    or without our record, and (fused ComfyUI modules only) a header without the base config."""
    ckpt = tmp_path / "run" / "checkpoints" / CKPT
    shutil.copytree(run / "checkpoints" / CKPT, ckpt)
    assert refusal(capsys, tmp_path) == (
        f"error: {tmp_path}: not a complete checkpoint (no {DONE}); give a checkpoints/checkpoint-N"
    )
    (ckpt / FULL_FILE).write_bytes(b"")
    assert refusal(capsys, ckpt) == (f"error: {ckpt}: a train.mode=full checkpoint (the whole transformer), not a LoRA")
    (ckpt / FULL_FILE).unlink()
    (ckpt / LORA_FILE).rename(tmp_path / LORA_FILE)
    assert refusal(capsys, ckpt) == (f"error: {ckpt}: no {LORA_FILE} (its LoRA weights); the checkpoint is incomplete")
    (tmp_path / LORA_FILE).rename(ckpt / LORA_FILE)
    header = ckpt / "lora" / DIFFUSERS_WEIGHT_NAME
    tensors = load_file(str(header))
    with safe_open(str(header), framework="pt") as f:
        meta = f.metadata()
    for dropped in ("lora_adapter_metadata", "radial_lora"):
        save_file(tensors, str(header), metadata={k: v for k, v in meta.items() if k != dropped})
        assert refusal(capsys, ckpt) == (
            f"error: {header}: its header lacks the adapter settings or the radial_lora record"
        ), dropped
    info = json.loads(meta["radial_lora"])
    del info["base_model"]["config"]
    save_file(tensors, str(header), metadata={**meta, "radial_lora": json.dumps(info)})
    if "hunyuan" in run.name:  # fused modules: their rows come from the base's config
        assert refusal(capsys, ckpt) == (
            f"error: {ckpt}: its LoRA header records no base config, which the ComfyUI file's fused modules need; "
            "give --no-comfy"
        )
    else:  # Wan's modules map one to one: no config needed
        assert set(main([str(ckpt), "--out", str(tmp_path / "w")])) == {"lora_diffusers", "lora_comfy"}
    assert set(main([str(ckpt), "--no-comfy", "--out", str(tmp_path / "x")])) == {"lora_diffusers"}


def test_help_names_the_arguments_and_defaults(capsys, monkeypatch):
    """Guards the command's help: its usage line, description, each argument's help with its default."""
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert text.startswith("usage: python -m train.export [-h] [--out OUT] [--comfy | --no-comfy] checkpoint ")
    for part in (
        "Write a checkpoint's LoRA in final form: pytorch_lora_weights.safetensors (diffusers keys; train.generate "
        "--lora, load_lora_weights) and comfyui_lora.safetensors (ComfyUI / original keys).",
        "checkpoint a checkpoint folder: OUTPUT_DIR/checkpoints/checkpoint-N",
        "--out OUT output folder (default: OUTPUT_DIR/exports/checkpoint-N) (default: None)",
        "--comfy, --no-comfy also the ComfyUI file (default: True)",
    ):
        assert part in text, part
