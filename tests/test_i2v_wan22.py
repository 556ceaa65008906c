"""Wan2.2 A14B image-to-video: a tiny low-noise expert trains from `prepare --model wan22 --i2v` shards on its share
of the noise levels, exports LoRAs (diffusers and ComfyUI keys) that load into that expert of a two-expert
WanImageToVideoPipeline and reproduce its prediction, and generates from an image with radial attention in both
experts, each denoising its side of the boundary."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

import radial
from data import collate
from data.prepare import PrepareConfig, prepare
from data.synthetic import make_synthetic_videos
from tests.test_generate import one_thread  # noqa: F401 (autouse: one torch thread)
from tests.trainer_helpers import compose_config, prepared_overrides
from train.config import validate
from train.flow import FlowMatching
from train.trainer import Trainer

BOUNDARY = 0.9  # Wan2.2 I2V-A14B's boundary_ratio: transformer (high noise) at t >= 900, transformer_2 below


def _train_low_noise_expert(tmp_path, monkeypatch) -> tuple[Trainer, list[torch.Tensor]]:
    make_synthetic_videos(tmp_path / "videos", num=1, frames=17, fps=16, sizes=((64, 64),), seed=0)
    prepare(
        PrepareConfig(
            model="wan22", input=str(tmp_path / "videos" / "manifest.jsonl"), out=str(tmp_path / "lat"), tiny=True,
            image=True, lengths=(17,), fps=16, buckets=("64x64",), progress=False, latent_dtype="fp32",
            text_dtype="fp32",
        )
    )  # fmt: skip
    drawn: list[torch.Tensor] = []
    original = FlowMatching.sample_sigmas

    def spy(self, *args, **kwargs):
        drawn.append(original(self, *args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(FlowMatching, "sample_sigmas", spy)
    base = prepared_overrides(tmp_path / "run", tmp_path / "lat", steps=2)
    overrides = [*base, "model.family=wan22", "model.variant=i2v", "+model.expert=transformer_2"]
    trainer = Trainer(validate(compose_config([*overrides, "lora.text=true", "optim.lr=1e-2"])))
    assert trainer.fit()["step"] == 2
    return trainer, drawn


def test_wan22_a14b_i2v_expert_trains_exports_and_generates(tmp_path, monkeypatch):
    import diffusers

    import train.generate as rgen
    import train.tiny_pipeline as tgen

    trainer, drawn = _train_low_noise_expert(tmp_path, monkeypatch)
    out = tmp_path / "run"
    assert trainer.flow.sigma_range == (0.0, BOUNDARY) and len(drawn) == 2
    assert all((s < BOUNDARY).all() for s in drawn), "the low-noise expert trains below the boundary only"
    with safe_open(str(out / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["radial_lora"])
    assert info["base_model"]["expert"] == "transformer_2" and info["training"]["timestep_range"] == [0.0, BOUNDARY]

    # ComfyUI keys: self- and cross-attention (lora.text) of every block, no image projections (A14B has no CLIP).
    with safe_open(str(out / "lora" / "comfyui_lora.safetensors"), "pt") as f:
        comfy = set(f.keys())
    want_keys = {
        f"diffusion_model.blocks.{i}.{attn}.{p}.lora_{ab}.weight"
        for i in range(2) for attn in ("self_attn", "cross_attn") for p in "qkvo" for ab in "AB"
    }  # fmt: skip
    assert comfy == want_keys

    # Both files load into transformer_2 of a two-expert WanImageToVideoPipeline (diffusers' load_into_transformer_2)
    # and give the trained expert's prediction with radial attention; the high-noise expert is left alone.
    batch = collate([trainer.dataset[0]])
    assert "image_embeds" not in batch
    conds = {k: batch[k] for k in ("prompt_embeds", "image_latents")}
    x = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([400.0])
    adapter = trainer.parts.adapter
    with torch.no_grad():
        want = adapter.predict(trainer.unwrapped().eval(), x, t, conds)
    a = trainer.cfg.attention
    for weight_name in ("pytorch_lora_weights.safetensors", "comfyui_lora.safetensors"):
        pipe = tgen.build_tiny_pipeline("wan22", transformer=out / "base_transformer", image=True, text_encoder=False)
        assert isinstance(pipe, diffusers.WanImageToVideoPipeline) and pipe.image_encoder is None
        assert pipe.config.boundary_ratio == BOUNDARY
        pipe.load_lora_weights(out / "lora", weight_name=weight_name, load_into_transformer_2=True)
        assert getattr(pipe.transformer_2, "peft_config", None) and not getattr(pipe.transformer, "peft_config", None)
        injected = radial.inject_pipeline(
            pipe, backend="reference", dense_layers=a.dense_layers, block_size=a.block_size
        )
        with injected, torch.no_grad():
            got = adapter.predict(pipe.transformer_2, x, t, conds)
            untouched = adapter.predict(pipe.transformer, x, t, conds)
        lora_effect = (untouched - want).abs().max().item()
        assert lora_effect > 1e-2, "the trained LoRA must change the prediction (else the check below is empty)"
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    # train.generate --tiny wan22 --image: both experts run with radial attention, each on its side of the boundary.
    calls = {"transformer": [], "transformer_2": []}
    build = tgen.build_tiny_pipeline

    def spied(*args, **kwargs):
        pipe = build(*args, **kwargs)
        for name in calls:
            expert = getattr(pipe, name)

            def hook(module, args, kwargs, name=name):
                radial_attn = type(module.blocks[-1].attn1.processor).__name__ == "WanRadialProcessor"
                calls[name].append((float(kwargs["timestep"][0]), radial_attn))

            expert.register_forward_pre_hook(hook, with_kwargs=True)
        return pipe

    monkeypatch.setattr(tgen, "build_tiny_pipeline", spied)
    image = tmp_path / "first.png"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(image)
    argv = ["--tiny", "wan22", "--transformer", str(out / "base_transformer"), "--lora", str(out / "lora"),
            "--image", str(image), "--prompt", "a red ball", "--frames", "17", "--steps", "4", "--no-decode",
            "--out", str(tmp_path / "gen")]  # fmt: skip
    record = rgen.main(argv)["generated"][0]
    assert record["family"] == "wan22" and record["image"] == str(image) and record["finite"]
    assert record["latent_shape"] == [1, 16, 5, 8, 8] and record["attention"]["effective_density"] < 1.0
    assert record["loras"][0]["radial_lora"]["base_model"]["expert"] == "transformer_2"
    high, low = calls["transformer"], calls["transformer_2"]
    assert high and low and len(high) + len(low) == 4
    assert all(ts >= BOUNDARY * 1000 and r for ts, r in high) and all(ts < BOUNDARY * 1000 and r for ts, r in low)

    # The same from a saved two-expert WanImageToVideoPipeline folder (the layout of Wan2.2-I2V-A14B-Diffusers):
    # its family is told from model_index.json, and the LoRA goes into transformer_2 by its header.
    folder = tmp_path / "pipe"
    rgen.main(["--tiny", "wan22", "--transformer", str(out / "base_transformer"), "--image", str(image),
               "--save-tiny", str(folder)])  # fmt: skip
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline" and index["boundary_ratio"] == BOUNDARY
    assert index["transformer_2"][1] == "WanTransformer3DModel" and index["image_encoder"] == [None, None]
    argv = ["--model", str(folder), "--dtype", "fp32", "--device", "cpu", "--lora", str(out / "lora"), "--image",
            str(image), "--prompt", "a red ball", "--frames", "17", "--height", "64", "--width", "64", "--steps", "2",
            "--block-size", "16", "--guidance-scale", "1", "--no-decode", "--out", str(tmp_path / "gen_folder")]  # fmt: skip
    record = rgen.main(argv)["generated"][0]
    assert record["family"] == "wan22" and record["finite"] and record["latent_shape"] == [1, 16, 5, 8, 8]
    assert record["loras"][0]["radial_lora"]["base_model"]["expert"] == "transformer_2"
