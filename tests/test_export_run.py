"""train.export's end of a run, called directly on a tiny run's real parts (tests/export_helpers.py; seconds): the
files it writes and names, the header (lora_info), the run summary, the mask picture, train.mode=full's transformer
folder, and a family without a ComfyUI mapping."""

import json

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import radial
from radial.base_id import plain_config
from radial.lora import adapter_metadata, lora_state_dict, read_metadata
from radial.mask.plot import frame_block_edges
from radial.mask.stats import density_text
from radial.models.base import ModelAdapter
from tests.export_helpers import ALPHA, RANK, tiny_view
from tests.test_lora_alpha import updates
from tests.test_lora_comfy import comfy_parts
from train import export
from train.export import export_run, lora_info, write_lora_files


@pytest.fixture
def mask_calls(monkeypatch):
    """The arguments of every save_mask_png call of train.export (the real one still writes the picture)."""
    calls, real = [], export.save_mask_png
    monkeypatch.setattr(export, "save_mask_png", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    return calls


def expected_info(view, *, frames, grid) -> dict:
    """The header lora_info should write for this view: the run's config and what the run saw, field by field."""
    cfg, parts = view.cfg, view.parts
    return {
        "format": "radial-lora/1",
        "radial_lora_version": radial.__version__,
        "base_model": {
            "family": "wan",
            "source": "tiny",
            "path": None,
            "expert": None,
            **parts.base,
            "config": plain_config(view.unwrapped().config),
        },
        "rank": RANK,
        "alpha": ALPHA,
        "target_modules": parts.adapter.lora_target_modules(tuple(cfg.lora.projections), text=False),
        "attention": cfg.attention.settings().recorded("reference"),
        "training": {
            "steps": 3,
            "latent_frames": grid[0] if grid else None,
            "latent_height": grid[1] if grid else None,
            "latent_width": grid[2] if grid else None,
            "frames": frames,
            "timestep_range": None,
            "ema_decay": 0.0,
        },
    }


def test_lora_run_writes_its_files_summary_and_mask(tmp_path, mask_calls, capsys):
    """Guards export_run in LoRA mode: the files it returns (by name, at their paths), the diffusers file as diffusers
    reads it back (weights and adapter settings), the ComfyUI file's updates at scale alpha / rank, the header in both, run_summary.json (losses
    with the NaN as null), and the mask picture of the last forward's plan with its title and frame edges."""
    view = tiny_view(tmp_path, "logging.loss_curve=true", records=[{"frames": 17}])
    written = export_run(view)
    lora, model = tmp_path / "lora", view.unwrapped()
    assert written == {
        "lora_diffusers": str(lora / "pytorch_lora_weights.safetensors"),
        "lora_comfy": str(lora / "comfyui_lora.safetensors"),
        "loss_curve": str(tmp_path / "loss_curve.png"),
        "mask": str(tmp_path / "mask.png"),
        "base_transformer": str(tmp_path / "base_transformer"),
    }
    assert (tmp_path / "loss_curve.png").is_file() and (tmp_path / "mask.png").is_file()
    assert capsys.readouterr().out == ""  # wan has a ComfyUI mapping: no note
    info = expected_info(view, frames=17, grid=(5, 4, 4))
    assert read_metadata(written["lora_diffusers"]) == info == read_metadata(written["lora_comfy"])
    back, settings = diffusers.WanPipeline.lora_state_dict(str(lora), return_lora_metadata=True)
    assert settings == {f"transformer.{k}": v for k, v in adapter_metadata(view.parts.lora_config).items()}
    want = lora_state_dict(model)
    assert back.keys() == {f"transformer.{k}" for k in want}
    assert all(torch.equal(back[f"transformer.{k}"], v) for k, v in want.items())
    deltas = updates(model)
    for name, delta in comfy_parts(view.parts.adapter, model, load_file(written["lora_comfy"])):
        torch.testing.assert_close(delta, deltas[name], rtol=1e-5, atol=1e-6, msg=name)
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert summary == {"info": info, "files": written, "losses": [[1, 0.5], [2, None], [3, 0.25]]}
    ((args, kwargs),) = mask_calls
    plan = view.parts.handle.last_plan
    assert np.array_equal(args[0], plan.block_mask.cpu().numpy()) and args[1] == tmp_path / "mask.png"
    assert kwargs == {
        "title": f"wan: 5 frames x 16 tokens, {density_text(plan.stats.block_density)}",
        "frame_edges": frame_block_edges(5, 16, plan.block_size),
    }


def test_header_of_several_clip_lengths_one_or_none(tmp_path):
    """Guards lora_info's clip lengths and grid: the sorted distinct lengths with several buckets, the number with
    one, null for a dataset without item records; the latent grid null before any forward."""
    view = tiny_view(tmp_path, records=[{"frames": 33}, {"frames": 17}, {"frames": 33}], forward=False)
    assert lora_info(view) == expected_info(view, frames=[17, 33], grid=None)
    view.dataset.records = [{"frames": 21}]
    assert lora_info(view)["training"]["frames"] == 21
    del view.dataset.records
    assert lora_info(view)["training"]["frames"] is None


def test_lora_files_without_comfy_and_base_without_a_mapping(tmp_path, monkeypatch, capsys):
    """Guards write_lora_files' `comfy` switch, export_run's note for a family without a ComfyUI key mapping
    (ModelAdapter's default: none) and its silence where the file was not asked for; an all-dense run (no plan)
    draws no mask, and a run without losses no loss curve."""
    view = tiny_view(tmp_path, "attention.dense_layers=2", "logging.loss_curve=true", records=[], losses=())
    lora_meta = adapter_metadata(view.parts.lora_config)
    args = dict(adapter=view.parts.adapter, lora_meta=lora_meta, info={"x": 1}, transformer=view.unwrapped())
    sd = lora_state_dict(view.unwrapped())
    plain = write_lora_files(tmp_path / "plain", sd, comfy=False, **args)
    assert plain == {"lora_diffusers": str(tmp_path / "plain" / "pytorch_lora_weights.safetensors")}
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["pytorch_lora_weights.safetensors"]
    monkeypatch.setattr(type(view.parts.adapter), "comfy_rules", ModelAdapter.comfy_rules)
    written = export_run(view)
    assert view.parts.handle.last_grid is not None and view.parts.handle.last_plan is None
    assert written == {
        "lora_diffusers": str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"),
        "base_transformer": str(tmp_path / "base_transformer"),
    }
    assert not (tmp_path / "loss_curve.png").exists() and not (tmp_path / "mask.png").exists()
    assert capsys.readouterr().out == "no ComfyUI key mapping for wan: only the diffusers-format LoRA was written\n"
    view.cfg.train.export_comfy = False
    export_run(view)
    assert capsys.readouterr().out == ""


def test_full_mode_exports_the_transformer_folder(tmp_path, monkeypatch, capsys):
    """Guards export_run's train.mode=full branch: transformer/ loads with from_pretrained into the trained weights,
    radial_training.json (indented) is the header less the LoRA fields, with mode full; the weights as
    safetensors; no LoRA files and no ComfyUI note;
    logging.loss_curve=false draws no curve although there are losses."""
    view = tiny_view(tmp_path, "train.mode=full", records=[{"frames": 17}])
    monkeypatch.setattr(type(view.parts.adapter), "comfy_rules", ModelAdapter.comfy_rules)
    model = view.unwrapped()
    with torch.no_grad():
        model.blocks[0].attn1.to_q.weight.add_(1.0)  # "trained": not the saved base
    written = export_run(view)
    assert written == {
        "transformer": str(tmp_path / "transformer"),
        "mask": str(tmp_path / "mask.png"),
        "base_transformer": str(tmp_path / "base_transformer"),
    }
    assert not (tmp_path / "lora").exists() and not (tmp_path / "loss_curve.png").exists()
    assert capsys.readouterr().out == ""
    files = sorted(p.name for p in (tmp_path / "transformer").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors", "radial_training.json"]  # safetensors
    loaded = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "transformer")
    want = model.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k].to(v.dtype)) for k, v in loaded.state_dict().items())
    info = lora_info(view)
    record = {k: v for k, v in info.items() if k not in ("rank", "alpha", "target_modules")} | {"mode": "full"}
    text = (tmp_path / "transformer" / "radial_training.json").read_text()
    assert json.loads(text) == json.loads(json.dumps(record)) and text.count("\n") > 20  # indented, for reading
    assert json.loads((tmp_path / "run_summary.json").read_text())["info"] == json.loads(json.dumps(record))
