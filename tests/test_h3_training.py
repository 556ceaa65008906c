"""MiniMax-H3 end to end on the CPU: prepare (audio latents of the sound track, silence without one), a 3-step LoRA
run that the modular pipeline's LoRA loader loads, and the guidance-augmented target for its distilled base."""

import json
import shutil

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import radial
from radial.lora import attach_lora
from radial.models import get_adapter
from train.flow import FlowMatching, noisy_latents
from train.step import adapters_off, flow_matching_loss

ADAPTER = get_adapter("h3")


def _video_with_sound(path, frames=30, fps=24, rate=32000):
    """A 64x64 clip with a stereo sine sound track (440 Hz left, 220 Hz right)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "stereo"
        for i in range(frames):
            image = np.full((64, 64, 3), (i * 8) % 255, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        t = np.arange(int(rate * frames / fps) + rate // 4) / rate
        wave = (0.5 * np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 220 * t)])).astype(np.float32)
        for s in range(0, wave.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, s : s + 1024]), "fltp", "stereo")
            frame.sample_rate = rate
            out.mux(audio.encode(frame))
        out.mux(video.encode())
        out.mux(audio.encode())


def test_prepare_writes_the_sound_track_or_silence(tmp_path):
    from data.dataset import Expect, LatentDataset
    from data.prepare import PrepareConfig, prepare
    from data.synthetic import make_synthetic_videos

    videos = tmp_path / "videos"
    make_synthetic_videos(videos, num=1, frames=30, fps=24, sizes=((64, 64),), seed=0)  # no audio stream
    _video_with_sound(videos / "sound.mp4")
    manifest = videos / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + json.dumps({"path": "sound.mp4", "caption": "a tone"}) + "\n")
    out = tmp_path / "prepared"
    prepare(PrepareConfig(model="h3", input=str(manifest), out=str(out), tiny=True, lengths=(22,), fps=24,
                          buckets=("64x64",), progress=False, latent_dtype="fp32", text_dtype="fp32"))  # fmt: skip
    model = ADAPTER.build_tiny()
    ds = LatentDataset(out, model="h3", expect=Expect.from_transformer_config("h3", model.config))
    items = {ds[i]["meta"]["source"]: (ds.records[i], ds[i]) for i in range(len(ds))}
    assert {r["audio"] for r, _ in items.values()} == {"silence", "track"}
    shapes = {tuple(item["audio_latents"].shape) for _, item in items.values()}
    assert shapes == {(2, model.config.audio_in_channels, 37)}  # 22 frames at 24 fps = 36.7 -> 37 latents
    sound = next(item for r, item in items.values() if r["audio"] == "track")["audio_latents"]
    silence = next(item for r, item in items.values() if r["audio"] == "silence")["audio_latents"]
    assert (sound - silence).abs().mean() > 1e-3
    assert not torch.allclose(sound[0], sound[1])  # the two channels carry different tones
    # a dataset without the sound track is refused at open, naming the field
    index = json.loads((out / "index.json").read_text())
    index["header"].pop("joint_fields")
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(Exception, match="joint_fields"):
        LatentDataset(out, model="h3")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step tiny H3 LoRA run on synthetic clips (silence), with the guided target and validation samples."""
    from train.config import compose, validate
    from train.trainer import Trainer

    out = tmp_path_factory.mktemp("h3") / "run"
    overrides = ["model=tiny_h3", f"output_dir={out}", "train.max_steps=3", "data.num_videos=2",
                 "logging.trackers=[]", "logging.loss_curve=false", "train.distill_guidance=2.0", "eval=default",
                 "eval.validation_every=3", "eval.num_inference_steps=3", "eval.sample_frames=124"]  # fmt: skip
    Trainer(validate(compose(overrides))).fit()
    return out


def test_train_exports_a_lora_the_modular_pipeline_loads(run):
    from diffusers import MiniMaxH3Transformer3DModel
    from diffusers.modular_pipelines.minimax_h3 import MiniMaxH3Blocks

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    lora_file = run / "lora" / "pytorch_lora_weights.safetensors"
    assert radial.lora.read_metadata(lora_file)["base_model"]["family"] == "h3"

    pipe = MiniMaxH3Blocks().init_pipeline()
    pipe.update_components(transformer=MiniMaxH3Transformer3DModel.from_pretrained(run / "base_transformer"))
    latents = ADAPTER.make_dummy_latents(pipe.transformer, 1, 7, 4, 4)
    cond = ADAPTER.make_dummy_conditions(pipe.transformer, 1, 5, latent_shape=latents.shape)
    with torch.no_grad():
        base = ADAPTER.predict(pipe.transformer, latents, 500.0, cond)
    pipe.load_lora_weights(str(run / "lora"))
    saved = load_file(lora_file)
    loaded = dict(pipe.transformer.named_parameters())
    for key, value in saved.items():  # every exported tensor landed in the pipeline's transformer, unchanged
        name = key.removeprefix("transformer.").replace(".weight", ".default_0.weight")
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    with torch.no_grad():
        tuned = ADAPTER.predict(pipe.transformer, latents, 500.0, cond)
    assert (tuned - base).abs().max() > 1e-6


def _wav(path):
    import wave

    with wave.open(str(path)) as f:
        return f.getnchannels(), f.getframerate(), f.getnframes()


def test_validation_samples_write_video_and_sound(run):
    """Validation samples go through train.generate's path (stored text states into the pipeline's blocks after
    its text encoder): a 124-frame mp4 and its stereo 32 kHz wav."""
    folder = run / "validation" / "step-000003"
    sidecar = json.loads((folder / "sample_p0_s0.json").read_text())
    assert sidecar["frames"] == 124 and sidecar["latent_shape"] == [1, 24, 37, 4, 4] and sidecar["finite"]
    channels, rate, samples = _wav(folder / "sample_p0_s0.wav")
    assert (channels, rate) == (2, 32000) and samples == 207 * 800  # 124 frames at 24 fps = 207 audio latents
    assert sidecar["attention"]["radial"] and sidecar["attention"]["latent_grid"] == [37, 2, 2]


def test_radial_generate_t2va_with_the_lora(run, tmp_path):
    import train.generate as rgen

    args = ["--tiny", "h3", "--prompt", "a red ball", "--steps", "3", "--out", str(tmp_path), "--lora", str(run / "lora"),
            "--transformer", str(run / "base_transformer"), "--no-progress"]  # fmt: skip
    (record,) = rgen.main(args)["generated"]
    assert record["family"] == "h3" and record["frames"] == 124 and record["loras"][0]["scale"] == 1.0
    assert set(record["files"]) >= {"video", "audio", "latents"}
    with av.open(record["files"]["video"]) as video:
        assert video.streams.video[0].frames == 124
    assert _wav(record["files"]["audio"])[:2] == (2, 32000)


def _guided_tuning(w: float, steps: int = 15):
    """A tiny H3 with radial attention and a LoRA, tuned `steps` Adam steps on one clip at one noise level with
    distill_guidance `w`; returns (base, tuned) one-forward predictions and the guided target u + w_ref (y - u)."""
    model = ADAPTER.build_tiny(seed=3)
    radial.inject(model, family="h3", backend="reference", block_size=16)
    torch.manual_seed(0)  # the LoRA's initial A matrices
    attach_lora(model, rank=4, alpha=4, target_modules=ADAPTER.lora_target_modules())
    x0 = ADAPTER.make_dummy_latents(model, 1, 7, 4, 4, seed=1)
    cond = ADAPTER.make_dummy_conditions(model, 1, 6, latent_shape=x0.shape, seed=2)
    uncond = {"prompt_embeds": torch.zeros_like(cond["prompt_embeds"]),
              "prompt_attention_mask": torch.zeros_like(cond["prompt_attention_mask"])}  # fmt: skip
    flow = FlowMatching(sampling="uniform", sigma_range=(0.4, 0.6), distill_guidance=w)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def predict_and_targets():
        gen = torch.Generator().manual_seed(0)  # the draws of flow_matching_loss: sigma, video noise, audio noise
        sigma = flow.sample_sigmas(1, gen)
        x_t, y = noisy_latents(x0, torch.randn(x0.shape, generator=gen), sigma)
        a_t, _ = noisy_latents(cond["audio_latents"], torch.randn(cond["audio_latents"].shape, generator=gen), sigma)
        noisy = {**cond, "audio_latents": a_t}
        with torch.no_grad():
            with adapters_off(model):
                u = ADAPTER.predict(model, x_t, sigma * 1000, {**noisy, **uncond})
            return ADAPTER.predict(model, x_t, sigma * 1000, noisy), u, y

    before, u, y = predict_and_targets()
    for _ in range(steps):
        optimizer.zero_grad()
        flow_matching_loss(
            ADAPTER, model, flow, x0, cond, torch.Generator().manual_seed(0), x0.dtype, uncond
        ).backward()
        optimizer.step()
    after, _, _ = predict_and_targets()
    return before, after, u, y


def test_distill_guidance_keeps_one_forward_guided():
    """What it checks: tuned with train.distill_guidance=w, the model's single guider-free forward (no unconditional
    pass at sampling, as the distilled base runs) carries more of the guidance direction y - u than a LoRA tuned with
    the plain target: its coefficient along y - u (0 for u, the base's prediction without the prompt and LoRA; 1 for
    the data's velocity y; w for the guided target u + w (y - u)) grows past the plain run's. Same clip, noise level,
    noise and steps for both runs."""
    w = 3.0
    before, guided, u, y = _guided_tuning(w)
    _, plain, _, _ = _guided_tuning(1.0)
    d = (y - u).flatten()
    along = lambda p: float((p - u).flatten() @ d / (d @ d))  # noqa: E731
    assert abs(along(before)) < 0.01  # the tiny base barely reads the prompt: both runs start at u
    assert along(plain) > 0.02  # the plain run learns towards y ...
    assert along(guided) > 1.5 * along(plain)  # ... the guided one further, towards w (y - u)


def test_distill_guidance_refused_where_it_cannot_apply():
    from radial.errors import ConfigError
    from train.config import compose, validate

    with pytest.raises(ConfigError, match=r"train.distill_guidance=0.5: expected >= 1"):
        validate(compose(["model=tiny_h3", "train.distill_guidance=0.5"]))
    with pytest.raises(ConfigError, match="needs train.mode=lora"):
        validate(compose(["model=tiny_h3", "train.distill_guidance=2", "train.mode=full"]))


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path):
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
