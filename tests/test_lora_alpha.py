"""A LoRA trained with lora.alpha != lora.rank, exported by the trainer, loads back with the same update: into each
family's diffusers pipeline (`load_lora_weights` of the exported folder) and from the ComfyUI file.

With alpha == rank the scale alpha / rank is 1, so an export that wrote the wrong alpha (or folded the wrong scale
into the ComfyUI file) would still round-trip; here the scale is 3.
"""

import pytest
import torch
from safetensors.torch import load_file

from radial.lora import read_metadata
from tests.test_lora_comfy import comfy_parts
from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate
from train.tiny_pipeline import build_tiny_pipeline
from train.trainer import Trainer

RANK, ALPHA = 4, 12


@pytest.fixture(scope="module", params=["wan", "hunyuan", "mochi"])
def trained(request, tmp_path_factory):
    """A 2-step run of the family's tiny model with alpha != rank: (family, trainer, output_dir)."""
    out = tmp_path_factory.mktemp(request.param)
    overrides = tiny_overrides(out, tmp_path_factory.mktemp("data"), model=f"tiny_{request.param}", steps=2)
    if request.param == "mochi":  # Mochi's VAE takes 6k+1 frames
        overrides.append("data.frames=19")
    cfg = validate(compose_config([*overrides, f"lora.rank={RANK}", f"lora.alpha={ALPHA}", "train.checkpoint_every=0"]))
    trainer = Trainer(cfg)
    trainer.fit()
    return request.param, trainer, out


def updates(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every LoRA layer's weight update as PEFT computes it (scale alpha / rank included), by module name."""
    return {
        name: module.get_delta_weight(module.active_adapters[0]).detach()
        for name, module in model.named_modules()
        if hasattr(module, "get_delta_weight") and module.active_adapters
    }


def test_pipeline_load_lora_weights_gives_the_trained_update(trained):
    """Guards the alpha written into the diffusers file's adapter metadata (and the pipeline savers of HunyuanVideo
    and Mochi): `Pipeline.load_lora_weights(out/lora)` on the run's base transformer gives every layer the update it
    had in training."""
    family, trainer, out = trained
    assert read_metadata(out / "lora" / "pytorch_lora_weights.safetensors")["alpha"] == ALPHA
    want = updates(trainer.unwrapped())
    pipe = build_tiny_pipeline(family, transformer=out / "base_transformer", text_encoder=False)
    pipe.load_lora_weights(out / "lora")
    got = updates(pipe.transformer)
    assert sorted(got) == sorted(want) and want
    for name, delta in want.items():
        assert delta.abs().max() > 0, f"{name}: untrained LoRA (B = 0), the comparison would mean nothing"
        torch.testing.assert_close(got[name], delta, rtol=1e-5, atol=1e-6, msg=f"{name}")


def test_comfy_file_carries_the_trained_update(trained):
    """Guards the scale alpha / rank folded into the ComfyUI file's up matrices: each original module's rows of
    up @ down equal the trained layer's update. Wan's file also reads back through diffusers' original-format
    converter (WanPipeline.lora_state_dict; diffusers 0.42 has none for our HunyuanVideo and Mochi files) with the
    same updates at scale 1 (no alpha in the file)."""
    family, trainer, out = trained
    model = trainer.unwrapped()
    comfy = load_file(str(out / "lora" / "comfyui_lora.safetensors"))
    want = updates(model)
    parts = dict(comfy_parts(trainer.parts.adapter, model, comfy))
    assert sorted(parts) == sorted(want)
    for name, delta in want.items():
        torch.testing.assert_close(parts[name], delta, rtol=1e-5, atol=1e-6, msg=f"{name}")
    if family == "wan":
        import diffusers

        back = diffusers.WanPipeline.lora_state_dict(str(out / "lora" / "comfyui_lora.safetensors"))
        back = {k.removeprefix("transformer."): v for k, v in back.items()}
        assert not any("alpha" in k for k in back)
        for name, delta in want.items():
            got = back[f"{name}.lora_B.weight"] @ back[f"{name}.lora_A.weight"]
            torch.testing.assert_close(got, delta, rtol=1e-5, atol=1e-6, msg=f"{name}")


def test_header_records_how_the_lora_was_made(trained):
    """Guards lora_info: every field of the header both exported files carry (radial.lora.read_metadata), each one
    against the run's config and what the run saw (the trained steps, the latent grid of its data)."""
    import radial
    from radial.base_id import plain_config

    family, trainer, out = trained
    cfg, a = trainer.cfg, trainer.cfg.attention
    info = read_metadata(out / "lora" / "pytorch_lora_weights.safetensors")
    frames = 19 if family == "mochi" else 17
    assert info == {
        "format": "radial-lora/1",
        "radial_lora_version": radial.__version__,
        "base_model": {
            "family": family,
            "source": "tiny",
            "path": None,
            "expert": None,
            **trainer.parts.base,  # variant, config hash, weight fingerprint (radial.base_id)
            "config": plain_config(trainer.unwrapped().config),
        },
        "rank": RANK,
        "alpha": ALPHA,
        "target_modules": trainer.parts.adapter.lora_target_modules(tuple(cfg.lora.projections), text=False),
        "attention": a.settings().recorded("reference"),  # every setting whole, `auto` resolved
        "training": {
            "steps": 2,
            "latent_frames": trainer.parts.adapter.geometry.latent_frames(frames),
            "latent_height": 4,  # 64 px / 8 (VAE) / 2 (patch)
            "latent_width": 4,
            "frames": frames,  # the pixel frames of the clips trained on (the dataset's records)
            "timestep_range": None,
            "ema_decay": 0.0,
        },
    }
    assert info["base_model"]["variant"] == "T2V" and len(info["base_model"]["config_hash"]) == 16
    assert read_metadata(out / "lora" / "comfyui_lora.safetensors") == info
