"""Wan2.1 image-to-video: prepared image conditioning equals WanImageToVideoPipeline's, the transformer is fed as the
pipeline feeds it (dense parity with stock diffusers, radial against the masked oracle), T2V / I2V datasets are
refused by the other kind of model, and a tiny I2V model trains from prepared shards, exports LoRAs that load in
the I2V pipeline (diffusers and ComfyUI keys, image projections included) and generates from an image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import radial
from data import Expect, LatentDataset, collate
from data.encoders import load_encoders
from data.prepare import PrepareConfig, prepare
from data.shards import ShardError
from data.synthetic import make_synthetic_videos
from radial.models import get_adapter
from radial.models.wan import pad_text_for_image
from tests.test_generate import one_thread  # noqa: F401 (autouse: one torch thread)
from tests.test_models_parity import BLOCK, _token_mask, oracle_sdpa
from tests.trainer_helpers import compose_config, prepared_overrides
from train.config import validate
from train.trainer import Trainer


def prepare_tiny(videos, out, image: bool, model: str = "wan"):
    """Prepare the synthetic videos at 17 frames, 64x64 with the family's tiny encoders (fp32)."""
    cfg = PrepareConfig(
        model=model, input=str(videos / "manifest.jsonl"), out=str(out), tiny=True, image=image, lengths=(17,),
        fps=16, buckets=("64x64",), progress=False, latent_dtype="fp32", text_dtype="fp32",
    )  # fmt: skip
    prepare(cfg)
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same two synthetic videos prepared for image-to-video and for text-to-video."""
    root = tmp_path_factory.mktemp("i2v_data")
    make_synthetic_videos(root / "videos", num=2, frames=17, fps=16, sizes=((64, 64),), seed=0)
    videos = root / "videos"
    return prepare_tiny(videos, root / "i2v", True), prepare_tiny(videos, root / "t2v", False), root


def test_image_conditioning_equals_the_pipelines(datasets):
    """The stored image_latents / image_embeds are what WanImageToVideoPipeline computes from that first frame."""
    import train.tiny_pipeline as tgen
    from data.video import to_pixels

    enc = load_encoders("wan", tiny=True, image=True)
    pipe = tgen.build_tiny_pipeline("wan", image=True)
    clip = (np.random.default_rng(0).random((17, 64, 64, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(clip[0])
    ours = enc.encode_image_conditioning(to_pixels(clip), image)
    with torch.no_grad():
        pixels = pipe.video_processor.preprocess(image, height=64, width=64).float()
        _, condition = pipe.prepare_latents(pixels, 1, 16, 64, 64, 17, torch.float32, torch.device("cpu"))
        embeds = pipe.encode_image(image, torch.device("cpu"))
    assert ours["image_latents"].shape == (20, 5, 8, 8)
    torch.testing.assert_close(ours["image_latents"], condition[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["image_embeds"], embeds[0], atol=1e-5, rtol=1e-5)
    assert ours["image_latents"][:4, 0].eq(1).all() and ours["image_latents"][:4, 1:].eq(0).all()

    i2v, _, _ = datasets
    item = LatentDataset(i2v, "wan")[0]
    assert item["image_latents"].shape == (20, 5, 8, 8) and item["image_embeds"].shape == (17, 24)
    assert json.loads((i2v / "index.json").read_text())["header"]["image_fields"] == {
        "image_latents": [20],
        "image_embeds": [17, 24],
    }


def _i2v_inputs(adapter, model, seed=0):
    latents = adapter.make_dummy_latents(model, 2, 8, 8, 8, seed=seed)
    cond = adapter.make_dummy_conditions(model, 2, 8, latent_shape=latents.shape, seed=seed + 1)
    return latents, torch.tensor([700.0, 300.0]), cond


def test_predict_feeds_the_transformer_as_the_pipeline_does():
    """Dense: equal to the stock transformer called as WanImageToVideoPipeline calls it (noisy latents, then mask
    and first-frame latent channels; text zero-padded to 512 after the image states). Radial: the masked oracle."""
    adapter = get_adapter("wan")
    model = adapter.build_tiny(variant="i2v")
    latents, t, cond = _i2v_inputs(adapter, model)
    assert cond["image_latents"].shape[1] == 20 and cond["image_embeds"].shape[-1] == 24
    with torch.no_grad():
        stock = model(
            hidden_states=torch.cat([latents, cond["image_latents"]], dim=1),
            timestep=t,
            encoder_hidden_states=pad_text_for_image(cond["prompt_embeds"]),
            encoder_hidden_states_image=cond["image_embeds"],
            return_dict=False,
        )[0]
        with radial.inject(model, backend="dense", block_size=BLOCK):
            dense = adapter.predict(model, latents, t, cond)
        with radial.inject(model, backend="reference", block_size=BLOCK):
            sparse = adapter.predict(model, latents, t, cond)
        mask, video = _token_mask(adapter, model, (8, 8, 8), 0)
        with oracle_sdpa(mask, video, 0) as hits:
            expected = adapter.predict(model, latents, t, cond)
        without_image = adapter.predict(
            model, latents, t, {**cond, "image_embeds": torch.zeros_like(cond["image_embeds"])}
        )
    assert (dense - stock).abs().max().item() < 1e-5
    assert hits and (sparse - expected).abs().max().item() < 1e-5
    assert (sparse - stock).abs().max().item() > 1e-3, "the radial mask must change the result"
    assert (without_image - stock).abs().max().item() > 1e-3, "the image states must reach the model"


def expect_kinds_refused(family: str, i2v, t2v) -> tuple[Expect, Expect]:
    """The tiny I2V and T2V models' expectations; each refuses the other kind's dataset with a one-line error."""
    adapter = get_adapter(family)
    i2v_model = Expect.from_transformer_config(family, adapter.tiny_config_of("i2v"))
    t2v_model = Expect.from_transformer_config(family, adapter.tiny_config_of())
    with pytest.raises(ShardError, match=r"prepared for text-to-video .*the transformer is image-to-video.*--i2v"):
        LatentDataset(t2v, family, expect=i2v_model)
    with pytest.raises(ShardError, match=r"prepared for image-to-video \(--i2v\), the transformer is text-to-video"):
        LatentDataset(i2v, family, expect=t2v_model)
    return i2v_model, t2v_model


def test_text_and_image_datasets_are_refused_by_the_other_kind_of_model(datasets):
    i2v, t2v, _ = datasets
    adapter = get_adapter("wan")
    i2v_model, t2v_model = expect_kinds_refused("wan", i2v, t2v)
    wan22_i2v = Expect.from_transformer_config("wan", {**adapter.tiny_config_of("i2v"), "image_dim": None})
    with pytest.raises(ShardError, match="image_embeds have dim 24, the transformer expects none"):
        LatentDataset(i2v, "wan", expect=wan22_i2v)
    assert len(LatentDataset(i2v, "wan", expect=i2v_model)) == 2 and len(LatentDataset(t2v, "wan", expect=t2v_model))
    assert "image_latents" not in LatentDataset(t2v, "wan")[0]


def test_prepare_refuses_image_conditioning_for_other_families(tmp_path):
    with pytest.raises(ValueError, match="supported for models wan, wan22, wan22_ti2v, hunyuan15, not 'mochi'"):
        prepare(PrepareConfig(model="mochi", input=str(tmp_path), out=str(tmp_path / "o"), tiny=True, image=True))


def test_tiny_i2v_trains_exports_and_generates_from_an_image(datasets, tmp_path):
    import diffusers

    import train.generate as rgen
    import train.tiny_pipeline as tgen

    i2v, _, root = datasets
    out = tmp_path / "run"
    overrides = [*prepared_overrides(out, i2v, steps=2), "model.variant=i2v"]
    cfg = validate(compose_config([*overrides, "lora.text=true"]))
    trainer = Trainer(cfg)
    summary = trainer.fit()
    assert summary["step"] == 2 and np.isfinite(json.loads((out / "run_summary.json").read_text())["losses"]).all()

    # The LoRA covers the image key / value projections, in both files; both load into WanImageToVideoPipeline
    # and give the trained model's prediction.
    from safetensors import safe_open

    with safe_open(str(out / "lora" / "comfyui_lora.safetensors"), "pt") as f:
        comfy_keys = list(f.keys())
    assert any("cross_attn.k_img" in k for k in comfy_keys) and any("cross_attn.v_img" in k for k in comfy_keys)
    batch = collate([trainer.dataset[0]])
    conds = {k: batch[k] for k in ("prompt_embeds", "image_latents", "image_embeds")}
    x = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(3))
    adapter = trainer.parts.adapter
    with torch.no_grad():
        want = adapter.predict(trainer.unwrapped().eval(), x, torch.tensor([500.0]), conds)
    for weight_name in ("pytorch_lora_weights.safetensors", "comfyui_lora.safetensors"):
        pipe = tgen.build_tiny_pipeline("wan", transformer=out / "base_transformer", image=True)
        assert isinstance(pipe, diffusers.WanImageToVideoPipeline)
        pipe.load_lora_weights(out / "lora", weight_name=weight_name)
        assert any("add_k_proj.lora" in n for n, _ in pipe.transformer.named_parameters())
        a = cfg.attention
        injected = radial.inject_pipeline(
            pipe, backend="reference", dense_layers=a.dense_layers, block_size=a.block_size
        )
        with injected, torch.no_grad():
            got = adapter.predict(pipe.transformer, x, torch.tensor([500.0]), conds)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    image = tmp_path / "first.png"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(image)
    gen = tmp_path / "gen"
    argv = ["--tiny", "wan", "--transformer", str(out / "base_transformer"), "--lora", str(out / "lora"),
            "--image", str(image), "--prompt", "a red ball", "--frames", "17", "--steps", "2", "--no-decode",
            "--out", str(gen)]  # fmt: skip
    record = rgen.main(argv)["generated"][0]
    assert record["image"] == str(image) and record["finite"] and record["latent_shape"] == [1, 16, 5, 8, 8]
    assert record["attention"]["effective_density"] < 1.0 and record["loras"][0]["scale"] == 1.0

    from radial.generation import ClipSpec
    from radial.generation.run import call_kwargs

    with pytest.raises(SystemExit):  # a missing image fails before anything loads
        rgen.main(["--tiny", "wan", "--image", str(tmp_path / "missing.png"), "--prompt", "x", "--out", str(gen)])
    clip = ClipSpec(frames=17, height=64, width=64, prompt="x")
    with pytest.raises(ValueError, match="WanImageToVideoPipeline generates from a first frame: give --image"):
        call_kwargs(pipe, clip, None, "wan")
    with pytest.raises(ValueError, match="WanPipeline is text-to-video"):
        call_kwargs(tgen.build_tiny_pipeline("wan"), ClipSpec(**{**clip.__dict__, "image": str(image)}), None, "wan")


def test_ti2v_first_frame_conditioning_trains_and_generates(tmp_path):
    """Wan2.2 TI2V-5B: prepared image_latents / first_frame_mask equal the expand_timesteps pipeline's; predict feeds
    the transformer as that pipeline does (clean first frame, per-token timesteps 0 there); the loss leaves the clean
    frame out; a tiny model trains from the shards and generates from an image through a saved WanPipeline folder."""
    import train.generate as rgen
    import train.tiny_pipeline as tgen
    from data.video import to_pixels
    from train.flow import flow_loss

    enc = load_encoders("wan22_ti2v", tiny=True, image=True)
    pipe = tgen.build_tiny_pipeline("wan22_ti2v", image=True)
    assert pipe.config.expand_timesteps and pipe.image_encoder is None
    clip = (np.random.default_rng(0).random((17, 64, 64, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(clip[0])
    ours = enc.encode_image_conditioning(to_pixels(clip), image)
    with torch.no_grad():
        pixels = pipe.video_processor.preprocess(image, height=64, width=64).float()
        _, condition, mask = pipe.prepare_latents(pixels, 1, 48, 64, 64, 17, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(ours["image_latents"], condition[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["first_frame_mask"], mask[0])

    adapter = get_adapter("wan22_ti2v")
    model = pipe.transformer
    latents = torch.randn(1, 48, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    conds = {
        "prompt_embeds": torch.randn(1, 8, 32),
        "image_latents": ours["image_latents"][None],
        "first_frame_mask": ours["first_frame_mask"][None],
    }
    t = torch.tensor([600.0])
    with torch.no_grad():
        m = conds["first_frame_mask"]
        stock = model(
            hidden_states=(1 - m) * conds["image_latents"] + m * latents,
            timestep=(m[0][0][:, ::2, ::2] * t).flatten()[None],
            encoder_hidden_states=conds["prompt_embeds"],
            return_dict=False,
        )[0]
        with radial.inject(model, backend="dense", block_size=BLOCK):
            ours_pred = adapter.predict(model, latents, t, conds)
    assert (ours_pred - stock).abs().max().item() < 1e-5
    pred, target = torch.zeros_like(latents), torch.zeros_like(latents)
    pred[:, :, 0] = 5.0  # an error on the clean frame only: not part of the loss
    assert flow_loss(pred, target, torch.ones(1), conds["first_frame_mask"]).item() == 0.0
    assert flow_loss(pred, target, torch.ones(1)).item() > 0.0

    make_synthetic_videos(tmp_path / "videos", num=2, frames=17, fps=16, sizes=((64, 64),), seed=0)
    prepare_tiny(tmp_path / "videos", tmp_path / "lat", True, "wan22_ti2v")
    item = LatentDataset(tmp_path / "lat", "wan22_ti2v")[0]
    assert item["image_latents"].shape == (48, 1, 4, 4) and item["first_frame_mask"].shape == (1, 5, 4, 4)
    out = tmp_path / "run"
    trainer = Trainer(
        validate(compose_config([*prepared_overrides(out, tmp_path / "lat", steps=2), "model.family=wan22_ti2v"]))
    )
    assert trainer.fit()["step"] == 2

    folder = tmp_path / "pipe"
    rgen.main(["--tiny", "wan22_ti2v", "--transformer", str(out / "base_transformer"), "--save-tiny", str(folder)])
    first = tmp_path / "first.png"
    image.save(first)
    argv = ["--model", str(folder), "--dtype", "fp32", "--device", "cpu", "--lora", str(out / "lora"), "--image",
            str(first), "--prompt", "a red ball", "--frames", "17", "--height", "64", "--width", "64", "--steps", "2",
            "--block-size", "16", "--guidance-scale", "1", "--no-decode", "--out", str(tmp_path / "gen")]  # fmt: skip
    record = rgen.main(argv)["generated"][0]
    assert record["family"] == "wan22_ti2v" and record["image"] == str(first) and record["finite"]
    assert record["latent_shape"] == [1, 48, 5, 4, 4]


def test_wan22_a14b_i2v_conditions_on_latents_only(tmp_path):
    """Wan2.2 A14B I2V: prepare writes the mask + first-frame latent without CLIP states; the dataset fits the tiny
    I2V expert (in_channels 36, no image_dim) and its prediction equals the stock call of the I2V pipeline."""
    make_synthetic_videos(tmp_path / "videos", num=1, frames=17, fps=16, sizes=((64, 64),), seed=0)
    prepare_tiny(tmp_path / "videos", tmp_path / "lat", True, "wan22")
    adapter = get_adapter("wan22")
    model = adapter.build_tiny(variant="i2v")
    assert model.config.image_dim is None and model.config.in_channels == 36
    ds = LatentDataset(tmp_path / "lat", "wan22", expect=Expect.from_transformer_config("wan22", model.config))
    batch = collate([ds[0]])
    assert "image_embeds" not in batch and batch["image_latents"].shape == (1, 20, 5, 8, 8)
    conds = {k: batch[k] for k in ("prompt_embeds", "image_latents")}
    x, t = torch.randn(batch["latents"].shape), torch.tensor([400.0])
    with torch.no_grad():
        stock = model(
            hidden_states=torch.cat([x, conds["image_latents"]], dim=1),
            timestep=t,
            encoder_hidden_states=conds["prompt_embeds"],
            return_dict=False,
        )[0]
        with radial.inject(model, backend="dense", block_size=BLOCK):
            ours = adapter.predict(model, x, t, conds)
    assert (ours - stock).abs().max().item() < 1e-5
