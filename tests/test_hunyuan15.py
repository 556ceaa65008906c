"""HunyuanVideo-1.5 text- and image-to-video end to end on tiny models: prepared text states and image conditioning
equal what HunyuanVideo15Pipeline / HunyuanVideo15ImageToVideoPipeline compute, predict feeds the stock transformer
as those pipelines do (dense parity, radial against the masked oracle), T2V / I2V datasets are refused by the other
kind of model, and tiny models train from prepared shards, export LoRAs that load into the pipelines and reproduce
the trained prediction, and generate (from an image for I2V)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import radial
from data import Expect, LatentDataset, collate
from data.encoders import load_encoders
from data.shards import ShardError
from data.synthetic import make_synthetic_videos
from radial.models import get_adapter
from tests.test_generate import one_thread  # noqa: F401 (autouse: one torch thread)
from tests.test_i2v import expect_kinds_refused, prepare_tiny
from tests.test_models_parity import BLOCK, _token_mask, oracle_sdpa
from tests.trainer_helpers import compose_config, prepared_overrides
from train.config import validate
from train.trainer import Trainer

MODEL = "hunyuan15"
CAPTIONS = ['a sign that says "open" by a red door', "a blue ball rolls"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Two synthetic videos (one caption with quoted glyph text) prepared for image- and for text-to-video."""
    root = tmp_path_factory.mktemp("hy15_data")
    make_synthetic_videos(root / "videos", num=2, frames=17, fps=16, sizes=((64, 64),), seed=0)
    manifest = root / "videos" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({**r, "caption": c}) + "\n" for r, c in zip(rows, CAPTIONS, strict=True)))
    videos = root / "videos"
    return prepare_tiny(videos, root / "i2v", True, MODEL), prepare_tiny(videos, root / "t2v", False, MODEL), root


def test_prepared_conditioning_equals_the_pipelines(datasets):
    """Qwen and ByT5 states (the glyph text of quoted words; none without quotes) and the first frame's latent,
    mask and SigLIP states are what the pipelines compute; the dataset header and items carry them."""
    import train.tiny_pipeline as tgen
    from data.video import to_pixels

    enc = load_encoders("hunyuan15", tiny=True, image=True)
    pipe = tgen.build_tiny_pipeline("hunyuan15", image=True)
    cpu = torch.device("cpu")
    ours = enc.encode_text(CAPTIONS)
    with torch.no_grad():
        e, m, e2, m2 = pipe.encode_prompt(CAPTIONS, cpu, torch.float32, batch_size=2)
    for i, item in enumerate(ours):
        n, n2 = int(m[i].sum()), int(m2[i].sum())
        torch.testing.assert_close(item["prompt_embeds"], e[i, :n])
        torch.testing.assert_close(item["prompt_embeds_2"], e2[i, :n2])
    assert ours[0]["prompt_embeds_2"].shape[0] > 0 and ours[1]["prompt_embeds_2"].shape[0] == 0

    clip = (np.random.default_rng(0).random((17, 64, 64, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(clip[0])
    cond = enc.encode_image_conditioning(to_pixels(clip), image)
    with torch.no_grad():
        latents = torch.zeros(1, 32, 5, 4, 4)
        want, mask = pipe.prepare_cond_latents_and_mask(latents, image, 1, 64, 64, torch.float32, cpu)
        embeds = pipe.encode_image(image, 1, cpu, torch.float32)
    torch.testing.assert_close(cond["image_latents"], torch.cat([want, mask], dim=1)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond["image_embeds"], embeds[0], atol=1e-5, rtol=1e-5)
    assert cond["image_latents"][32, 0].eq(1).all() and cond["image_latents"][:, 1:].eq(0).all()

    i2v, t2v, _ = datasets
    header = json.loads((i2v / "index.json").read_text())["header"]
    assert header["image_fields"] == {"image_latents": [33], "image_embeds": [16, 16]}
    assert sorted(header["text_fields"]) == ["prompt_embeds", "prompt_embeds_2"]
    batch = collate([LatentDataset(i2v, "hunyuan15")[i] for i in range(2)])
    assert batch["image_latents"].shape == (2, 33, 5, 4, 4) and batch["image_embeds"].shape == (2, 16, 16)
    assert batch["prompt_attention_mask_2"].shape == (2, 32) and batch["prompt_attention_mask_2"].sum(1).min() == 0
    assert "image_latents" not in LatentDataset(t2v, "hunyuan15")[0]


def _stock(model, latents, t, cond, image_latents, image_embeds):
    """The transformer call of the pipelines' denoising loop."""
    return model(
        hidden_states=torch.cat([latents, image_latents], dim=1),
        image_embeds=image_embeds,
        timestep=t,
        encoder_hidden_states=cond["prompt_embeds"],
        encoder_attention_mask=cond["prompt_attention_mask"].float(),
        encoder_hidden_states_2=cond["prompt_embeds_2"],
        encoder_attention_mask_2=cond["prompt_attention_mask_2"].float(),
        return_dict=False,
    )[0]


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_predict_feeds_the_transformer_as_the_pipeline_does(task):
    """Dense: the stock call (T2V: zero conditioning channels and 729 zero image tokens, as HunyuanVideo15Pipeline;
    I2V: first-frame latent + mask channels and SigLIP states). Radial: the masked oracle over [video, image, glyph,
    text] tokens."""
    adapter = get_adapter("hunyuan15")
    model = adapter.build_tiny(variant=task)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 32, 8, 8, 8, generator=gen)
    t = torch.tensor([700.0, 300.0])
    text = adapter.make_dummy_conditions(model, 2, 8, latent_shape=latents.shape, seed=1, valid_text=[5, 8])
    cond = {
        k: text[k] for k in ("prompt_embeds", "prompt_attention_mask", "prompt_embeds_2", "prompt_attention_mask_2")
    }
    if task == "i2v":
        cond["image_latents"] = torch.cat([torch.randn(2, 32, 8, 8, 8, generator=gen), torch.zeros(2, 1, 8, 8, 8)], 1)
        cond["image_latents"][:, 32, 0] = 1.0
        cond["image_embeds"] = torch.randn(2, 16, 16, generator=gen)
        image_latents, image_embeds = cond["image_latents"], cond["image_embeds"]
    else:
        image_latents, image_embeds = torch.zeros(2, 33, 8, 8, 8), torch.zeros(2, adapter.image_tokens, 16)
    with torch.no_grad():
        stock = _stock(model, latents, t, cond, image_latents, image_embeds)
        with radial.inject(model, backend="dense", block_size=BLOCK):
            dense = adapter.predict(model, latents, t, cond)
        with radial.inject(model, backend="reference", block_size=BLOCK) as handle:
            sparse = adapter.predict(model, latents, t, cond)
        text_tokens = handle.last_plan.text_tokens
        assert text_tokens == image_embeds.shape[1] + 4 + 8
        mask, video = _token_mask(adapter, model, (8, 8, 8), text_tokens)
        with oracle_sdpa(mask, video, text_tokens) as hits:
            expected = adapter.predict(model, latents, t, cond)
    assert (dense - stock).abs().max().item() < 1e-5
    assert hits and (sparse - expected).abs().max().item() < 1e-5
    assert (sparse - stock).abs().max().item() > 1e-3, "the radial mask must change the result"
    if task == "i2v":
        with torch.no_grad():
            without = adapter.predict(model, latents, t, {**cond, "image_embeds": torch.zeros_like(image_embeds)})
        assert (without - stock).abs().max().item() > 1e-3, "the image states must reach the model"
        distilled = adapter.build_tiny(variant=task, use_meanflow=True)
        with pytest.raises(ValueError, match="use_meanflow=true .*train the non-distilled checkpoint"):
            adapter.predict(distilled, latents, t, cond)


def test_text_and_image_datasets_are_refused_by_the_other_kind_of_model(datasets):
    """T2V and I2V models both have 65 input channels: their config's task_type tells the dataset check apart."""
    i2v, t2v, _ = datasets
    i2v_model, t2v_model = expect_kinds_refused(MODEL, i2v, t2v)
    assert (i2v_model.image_channels, i2v_model.image_dim, t2v_model.image_channels) == (33, 16, 0)
    assert len(LatentDataset(i2v, MODEL, expect=i2v_model)) == 2
    assert len(LatentDataset(t2v, MODEL, expect=t2v_model)) == 2
    other_glyph = Expect.from_transformer_config(MODEL, {**get_adapter(MODEL).tiny_config_of(), "text_embed_2_dim": 8})
    with pytest.raises(ShardError, match="prompt_embeds_2 have dim 16, the transformer expects 8"):
        LatentDataset(t2v, MODEL, expect=other_glyph)


def _run_overrides(datasets, task: str, out, *extra: str) -> list[str]:
    """A 2-step tiny run of `task` ("t2v" / "i2v") on the prepared data of `datasets`."""
    i2v, t2v, _ = datasets
    data = i2v if task == "i2v" else t2v
    variant = ["model.variant=i2v"] if task == "i2v" else []
    return [*prepared_overrides(out, data, model="tiny_hunyuan15", steps=2), *variant, *extra]


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_tiny_model_trains_exports_and_generates(datasets, tmp_path, task):
    """Two steps from prepared shards; the diffusers-format LoRA loads into the family pipeline (through its
    transformer's PEFT loader: diffusers 0.42 gives these pipelines no LoRA mixin) and gives the trained model's
    prediction; train.generate makes a video from it (from an image for I2V)."""
    import train.generate as rgen
    import train.tiny_pipeline as tgen
    from radial.generation.loras import load_loras
    from radial.generation.pipeline import apply_text_settings, load_pipeline, read_text_settings
    from radial.generation.settings import LoraSpec

    out = tmp_path / "run"
    trainer = Trainer(validate(compose_config(_run_overrides(datasets, task, out, "lora.text=true"))))
    assert trainer.fit()["step"] == 2
    summary = json.loads((out / "run_summary.json").read_text())
    assert np.isfinite(summary["losses"]).all()
    assert summary["files"]["lora_comfy"] == str(out / "lora" / "comfyui_lora.safetensors")  # ComfyUI's names

    batch = collate([trainer.dataset[0]])
    keys = ("prompt_embeds", "prompt_attention_mask", "prompt_embeds_2", "prompt_attention_mask_2")
    conds = {k: batch[k] for k in (*keys, "image_latents", "image_embeds") if k in batch}
    x = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(3))
    adapter = trainer.parts.adapter
    with torch.no_grad():
        want = adapter.predict(trainer.unwrapped().eval(), x, torch.tensor([500.0]), conds)
    pipe = tgen.build_tiny_pipeline("hunyuan15", transformer=out / "base_transformer", image=task == "i2v")
    expected = "HunyuanVideo15ImageToVideoPipeline" if task == "i2v" else "HunyuanVideo15Pipeline"
    assert type(pipe).__name__ == expected
    with torch.no_grad():
        base_pred = adapter.predict(pipe.transformer, x, torch.tensor([500.0]), conds)
    assert (base_pred - want).abs().max().item() > 1e-6, "the trained LoRA must change the prediction"
    load_loras(pipe, [LoraSpec(str(out / "lora"), 1.0)], family="hunyuan15")
    assert any("lora_A" in n for n, _ in pipe.transformer.named_parameters())
    a = trainer.cfg.attention
    injected = radial.inject_pipeline(pipe, backend="reference", dense_layers=a.dense_layers, block_size=a.block_size)
    with injected, torch.no_grad():
        got = adapter.predict(pipe.transformer, x, torch.tensor([500.0]), conds)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    argv = ["--tiny", "hunyuan15", "--transformer", str(out / "base_transformer"), "--lora", str(out / "lora"),
            "--prompt", 'a sign that says "open"', "--frames", "17", "--steps", "2", "--out", str(tmp_path / "gen")]  # fmt: skip
    if task == "i2v":
        image = tmp_path / "first.png"
        Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(image)
        argv += ["--image", str(image)]
    record = rgen.main(argv)["generated"][0]
    assert record["family"] == "hunyuan15" and record["finite"] and record["latent_shape"] == [1, 32, 5, 4, 4]
    assert record["attention"]["effective_density"] < 1.0 and record["files"]["video"].endswith(".mp4")
    assert record["image"] == (str(image) if task == "i2v" else None)
    if task == "t2v":
        return
    # A saved I2V pipeline folder (its tiny text settings beside it) generates from the image with the LoRA too.
    folder = tmp_path / "pipe"
    rgen.main([*argv[:4], "--image", str(image), "--save-tiny", str(folder)])
    assert json.loads((folder / "model_index.json").read_text())["image_encoder"][1] == "SiglipVisionModel"
    loaded = load_pipeline(folder, dtype=torch.float32, device="cpu")
    apply_text_settings(loaded, read_text_settings(folder))  # what train.generate does with a folder
    tiny_text = load_encoders(MODEL, tiny=True)
    assert (loaded.tokenizer_max_length, loaded.prompt_template_encode_start_idx) == (64, tiny_text.crop_start)
    argv = ["--model", str(folder), "--dtype", "fp32", "--device", "cpu", "--lora", str(out / "lora"), "--image",
            str(image), "--prompt", "a red ball", "--frames", "17", "--steps", "2", "--block-size", "16",
            "--guidance-scale", "1", "--no-decode", "--out", str(tmp_path / "gen2")]  # fmt: skip
    again = rgen.main(argv)["generated"][0]
    assert again["finite"] and again["latent_shape"] == [1, 32, 5, 4, 4] and again["loras"][0]["scale"] == 1.0


def test_local_folder_round_trip(tmp_path):
    """The tiny encoders saved as a diffusers folder (I2V layout, text settings beside) load back from it and give
    the same latents, text states and image conditioning; a folder without the SigLIP parts fails in one line."""
    from data.video import to_pixels

    enc = load_encoders(MODEL, tiny=True, image=True)
    enc.save_pretrained(tmp_path / "model")
    loaded = load_encoders(MODEL, tmp_path / "model", image=True)
    assert loaded.text_fields == enc.text_fields and loaded.text_settings() == enc.text_settings()
    for name, t in enc.encode_text(CAPTIONS[:1])[0].items():
        torch.testing.assert_close(loaded.encode_text(CAPTIONS[:1])[0][name], t)
    clip = (np.random.default_rng(0).random((5, 32, 32, 3)) * 255).astype(np.uint8)
    want = enc.encode_image_conditioning(to_pixels(clip), Image.fromarray(clip[0]))
    got = loaded.encode_image_conditioning(to_pixels(clip), Image.fromarray(clip[0]))
    for name, t in want.items():
        torch.testing.assert_close(got[name], t)
    import shutil

    shutil.rmtree(tmp_path / "model" / "feature_extractor")
    with pytest.raises(FileNotFoundError, match="missing feature_extractor/; image conditioning of model hunyuan15"):
        load_encoders(MODEL, tmp_path / "model", image=True)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_training_writes_validation_samples(datasets, tmp_path, task):
    """Validation at step 2 samples the held-out item from its stored Qwen and ByT5 states through the family's
    pipeline: T2V with classifier-free guidance against the empty prompt's states that prepare stored (no text
    encoder loads), I2V from the item's first frame decoded by the VAE; an mp4 and its sidecar each."""
    from train.eval.validation import Validator

    out = tmp_path / "run"
    cfg = "2.0" if task == "t2v" else "1.0"
    evals = ("eval=default", "eval.validation_every=2", "eval.num_inference_steps=2", "eval.num_heldout=1",
             "eval.timesteps=[0.5]", "eval.hooks=[]", f"eval.guidance_scale={cfg}")  # fmt: skip
    trainer = Trainer(validate(compose_config(_run_overrides(datasets, task, out, *evals))))
    assert trainer.fit()["step"] == 2
    folder = out / "validation" / "step-000002"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "val/sample_failed" not in metrics and metrics["val/sample_seconds"] > 0 and "val/loss" in metrics
    side = json.loads((folder / "sample_p0_s0.json").read_text())
    item = trainer.dataset[0]
    assert side["prompt"] == item["meta"]["caption"] and side["prompt_embeds"] == f"heldout:{item['meta']['key']}"
    assert side["finite"] and side["latent_shape"] == [1, 32, 5, 4, 4] and (folder / "sample_p0_s0.mp4").is_file()
    if task == "i2v":
        assert side["image_source"] == f"heldout:{item['meta']['key']}" and Image.open(side["image"]).size == (64, 64)
        return
    assert side["image_source"] is None and side["negative_prompt"] == ""
    validator = Validator(trainer.view)
    (embeds,) = validator.prompt_embeds()
    assert validator._enc is None, "the negative states are the stored empty prompt's: no text encoder loads"
    empty = trainer.dataset.padded_text(trainer.dataset.stored_empty_prompt())
    for key in ("prompt_embeds", "prompt_attention_mask", "prompt_embeds_2", "prompt_attention_mask_2"):
        torch.testing.assert_close(embeds.tensors[f"negative_{key}"][0], empty[key].to(embeds.tensors[key].dtype))

    # eval.prompts (glyph text quoted) with another negative prompt: both encoded by the tiny encoders of the data.
    trainer.cfg.eval = SimpleNamespace(
        num_inference_steps=2, guidance_scale=2.0, prompts=['a sign that says "stop"'], negative_prompt="blurry"
    )
    validator = Validator(trainer.view)
    (record,) = validator.sample(tmp_path / "prompts", step=2)
    (embeds,) = validator.prompt_embeds()
    assert embeds.tensors["prompt_attention_mask_2"].sum() > 0 and embeds.tensors["negative_prompt_embeds_2"].shape[1]
    assert record["finite"] and record["negative_prompt"] == "blurry" and record["prompt"] == 'a sign that says "stop"'
    # Embeddings without the ByT5 states (an embeddings file's) are refused in one line.
    from radial.generation import ClipSpec, PromptEmbeds
    from radial.generation.run import call_kwargs

    qwen = PromptEmbeds({k: embeds.tensors[k] for k in ("prompt_embeds", "prompt_attention_mask")}, source="f.pt")
    clip = ClipSpec(frames=17, height=64, width=64, num_inference_steps=2, guidance_scale=1.0, seed=0)
    with pytest.raises(ValueError, match="f.pt: HunyuanVideo-1.5 prompt embeddings lack prompt_embeds_2, prompt_att"):
        call_kwargs(validator.pipeline(), clip, qwen, MODEL)
