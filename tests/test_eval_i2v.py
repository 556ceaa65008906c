"""Validation samples of image-to-video models: first frames from eval.images (one per prompt) or, for samples of
held-out items, the first frame of their stored image conditioning decoded by the VAE (Wan2.1 I2V, Wan2.2 TI2V-5B);
eval.images is checked against the prompts and the model before anything loads."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from data.synthetic import make_synthetic_videos
from radial.errors import ConfigError, MissingPathError
from tests.test_eval_validation import FAST, one_thread  # noqa: F401 (autouse: one torch thread)
from tests.test_i2v import prepare_tiny
from tests.trainer_helpers import compose_config, tiny_overrides
from train.config import validate
from train.eval.validation import Validator
from train.trainer import Trainer

SYNTHETIC_KEYS = ("data.num_videos", "data.frames", "data.height", "data.width")


@pytest.fixture(scope="module")
def i2v_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_i2v")
    make_synthetic_videos(root / "videos", num=2, frames=17, fps=16, sizes=((64, 64),), seed=0)
    return prepare_tiny(root / "videos", root / "i2v", True)


def _overrides(out: Path, data: Path, *extra: str) -> list[str]:
    base = [o for o in tiny_overrides(out, data, steps=2) if not o.startswith(SYNTHETIC_KEYS)]
    return ["data=latents", "eval=default", *base, "model.variant=i2v", "data.num_workers=0", *extra]


def _image(path: Path, seed: int) -> str:
    Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def _latents(record: dict) -> torch.Tensor:
    return load_file(record["files"]["latents"])["latents"]


def test_i2v_training_samples_from_heldout_first_frames_and_eval_images(i2v_data, tmp_path):
    from data.encoders import load_encoders
    from data.latents import denormalize_latents

    out = tmp_path / "run"
    evals = ("eval.validation_every=2", "eval.num_inference_steps=2", "eval.num_heldout=1", "eval.timesteps=[0.5]")
    trainer = Trainer(validate(compose_config(_overrides(out, i2v_data, *evals, "eval.hooks=[]"))))
    assert trainer.fit()["step"] == 2

    # (b) no eval.images: the held-out item's own first frame, decoded by the data's VAE, conditions the sample.
    folder = out / "validation" / "step-000002"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "val/sample_failed" not in metrics and metrics["val/sample_seconds"] > 0
    side = json.loads((folder / "sample_p0_s0.json").read_text())
    item = trainer.dataset[0]
    assert side["image_source"] == f"heldout:{item['meta']['key']}" and side["prompt"] == item["meta"]["caption"]
    assert side["finite"] and side["latent_shape"] == [1, 16, 5, 8, 8] and (folder / "sample_p0_s0.mp4").is_file()
    enc = load_encoders("wan", tiny=True)  # the VAE the data was prepared with; the latent after the 4 mask channels
    raw = denormalize_latents(item["image_latents"][None, 4:, :1], enc.latent_norm, channel_dim=1)
    with torch.no_grad():
        want = ((enc.vae.decode(raw).sample[0, :, 0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    got = np.asarray(Image.open(side["image"])).astype(np.float64)
    assert Path(side["image"]).parent == out / "validation" / "first_frames" and got.shape == (64, 64, 3)
    assert np.abs(got - want).max() <= 1

    # (a) eval.images, one per prompt: the same prompt and seed from two first frames gives two videos.
    images = [_image(tmp_path / "a.png", 1), _image(tmp_path / "b.png", 2)]
    trainer.cfg.eval = SimpleNamespace(**FAST, prompts=["a red ball", "a red ball"], images=images)
    records = Validator(trainer.view).sample(tmp_path / "samples", step=2)
    assert [(r["image"], r["image_source"]) for r in records] == [
        (images[0], "eval.images[0]"),
        (images[1], "eval.images[1]"),
    ]
    assert all(Path(r["files"]["video"]).is_file() for r in records)
    assert (_latents(records[0]) - _latents(records[1])).abs().max() > 1e-4, "the first frame must condition the video"
    sidecar = json.loads(Path(records[1]["files"]["sidecar"]).read_text())
    assert sidecar["image"] == images[1] and sidecar["image_source"] == "eval.images[1]"

    # A model.path with a scheduler: the I2V pipeline takes that scheduler and the CLIP image encoder.
    import diffusers

    diffusers.UniPCMultistepScheduler(flow_shift=3.0).save_pretrained(tmp_path / "pipe" / "scheduler")
    trainer.cfg.model.path = str(tmp_path / "pipe")
    pipe = Validator(trainer.view).pipeline()
    assert isinstance(pipe, diffusers.WanImageToVideoPipeline) and pipe.image_encoder is not None
    assert isinstance(pipe.scheduler, diffusers.UniPCMultistepScheduler) and pipe.text_encoder is None


def test_eval_images_are_checked_before_the_model_loads(i2v_data, tmp_path):
    good = _image(tmp_path / "a.png", 0)
    (tmp_path / "text.png").write_text("not an image")
    run = tmp_path / "run"
    cases = [
        ([f"eval.images=[{tmp_path / 'missing.png'}]", "eval.prompts=[x]"], MissingPathError, r"eval.images\[0\] .*no such file"),
        ([f"eval.images=[{tmp_path / 'text.png'}]", "eval.prompts=[x]"], ConfigError, r"eval.images\[0\] .*not a readable image"),
        ([f"eval.images=[{good}]", "eval.prompts=[x,y]"], ConfigError, r"eval.images has 1 image\(s\) for the 2 prompt\(s\) of eval.prompts"),
        ([f"eval.images=[{good}]"], ConfigError, r"eval.images=.*no prompts are given"),
        (["eval.prompts=[x]"], ConfigError, r"eval.prompts is set but eval.images is empty: the wan transformer is image-to-video"),
    ]  # fmt: skip
    for extra, error, match in cases:
        with pytest.raises(error, match=match):
            validate(compose_config(_overrides(run, i2v_data, *extra)))
    t2v = [
        o for o in _overrides(run, i2v_data, f"eval.images=[{good}]", "eval.prompts=[x]") if o != "model.variant=i2v"
    ]
    with pytest.raises(ConfigError, match=r"eval.images=\[.*a.png'\]: the wan transformer is text-to-video"):
        validate(compose_config(t2v))
    assert validate(compose_config(_overrides(run, i2v_data, f"eval.images=[{good}]", "eval.prompts=[x]"))).eval.images


@pytest.mark.parametrize(
    ("family", "extra", "shape"),
    [
        ("wan22_ti2v", [], [1, 48, 5, 4, 4]),
        ("wan22", ["model.variant=i2v", "+model.expert=transformer_2"], [1, 16, 5, 8, 8]),
    ],
)
def test_wan22_samples_from_the_heldout_first_frame(tmp_path, family, extra, shape):
    """Wan2.2: held-out items prepared with --i2v sample through the image-to-video pipeline from their first frame:
    TI2V-5B with expand_timesteps (the clean first latent frame, 48-channel VAE); an A14B I2V expert without CLIP."""
    make_synthetic_videos(tmp_path / "videos", num=1, frames=17, fps=16, sizes=((64, 64),), seed=0)
    prepare_tiny(tmp_path / "videos", tmp_path / "lat", True, family)
    base = [o for o in tiny_overrides(tmp_path / "run", tmp_path / "lat", steps=1) if not o.startswith(SYNTHETIC_KEYS)]
    overrides = ["data=latents", *base, f"model.family={family}", *extra, "data.num_workers=0"]
    trainer = Trainer(validate(compose_config(overrides)))
    trainer.cfg.eval = SimpleNamespace(**FAST, num_samples=1)
    v = Validator(trainer.view)
    (record,) = v.sample(tmp_path / "samples", step=0)
    pipe = v.pipeline()
    assert type(pipe).__name__ == "WanImageToVideoPipeline" and pipe.image_encoder is None
    assert pipe.config.expand_timesteps == (family == "wan22_ti2v")
    assert record["image_source"].startswith("heldout:") and Image.open(record["image"]).size == (64, 64)
    assert record["finite"] and record["latent_shape"] == shape
