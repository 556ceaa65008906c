"""Encoders per family: tiny random-init of the real classes, a local diffusers folder round trip, errors."""

import shutil

import pytest
import torch

from data.encoders import TINY_POOLED_DIM, TINY_TEXT_DIM, check_pretrained, load_encoders
from data.latents import denormalize_latents, make_latent_norm, normalize_latents
from data.shards import TEXT_FIELDS
from radial.geometry import geometry

FAMILIES = ["wan", "wan22", "wan22_ti2v", "hunyuan", "mochi"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are per-op overhead: one thread is fastest, and spinning threads hurt on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tiny():
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_encoders(family, tiny=True)
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_encoders_follow_the_geometry(tiny, family):
    enc = tiny(family)
    g = geometry(family)
    frames = 2 * g.temporal_factor + 1
    step = g.spatial_factor * 4
    video = torch.rand(1, 3, frames, step, 2 * step) * 2 - 1
    latents = enc.encode_video(video)
    assert latents.shape == (1, g.latent_channels, 3, 4, 8) == (1, *enc.latent_shape(frames, step, 2 * step))
    # Stored latents are the VAE's posterior mode, normalized by the family's convention.
    raw = enc.vae.encode(video).latent_dist.mode()
    assert torch.allclose(denormalize_latents(latents, enc.latent_norm, channel_dim=1), raw, atol=1e-4)
    assert sorted(enc.text_fields) == sorted(TEXT_FIELDS[family])
    out = enc.encode_text(["A red circle moves to the left.", ""])
    seq = enc.text_fields["prompt_embeds"]
    assert seq.dim == TINY_TEXT_DIM and seq.mask == "prompt_attention_mask"
    assert out[0]["prompt_embeds"].shape == (len("A red circle moves to the left.") + 1, TINY_TEXT_DIM)
    assert 1 <= out[1]["prompt_embeds"].shape[0] <= 2  # an empty caption keeps its special tokens
    if family == "hunyuan":
        assert out[0]["pooled_prompt_embeds"].shape == (TINY_POOLED_DIM,)
        assert enc.text_fields["pooled_prompt_embeds"].pooled


def test_latent_conventions():
    wan, hy, mochi = (load_encoders(f, tiny=True).latent_norm for f in ("wan", "hunyuan", "mochi"))
    assert wan["convention"] == "wan" and wan["shift"][0] == pytest.approx(-0.7571)
    assert wan["scale"][0] == pytest.approx(1 / 2.8184)
    assert hy["convention"] == "hunyuan" and set(hy["shift"]) == {0.0} and hy["scale"][0] == pytest.approx(0.476986)
    assert mochi["convention"] == "mochi" and mochi["scale"][0] == pytest.approx(1.0 / 0.9263795028493863)
    norm = make_latent_norm("x", [1.0, -2.0], [0.5, 4.0])
    z = torch.randn(2, 2, 3, 4, 4)
    assert torch.allclose(denormalize_latents(normalize_latents(z, norm, 1), norm, 1), z, atol=1e-6)
    with pytest.raises(ValueError, match="2 channels, latents have 3"):
        normalize_latents(torch.zeros(1, 3, 1, 1, 1), norm, 1)


def test_tiny_is_deterministic_per_seed(tiny):
    a, b = tiny("wan").identity(), load_encoders("wan", tiny=True).identity()
    assert a == b
    c = load_encoders("wan", tiny=True, seed=1).identity()
    assert c["vae"]["weights"] != a["vae"]["weights"]


@pytest.mark.parametrize("family", ["wan", "hunyuan", "mochi"])
def test_local_folder_round_trip(tiny, family, tmp_path):
    enc = tiny(family)
    enc.save_pretrained(tmp_path / "model")
    assert check_pretrained(family, tmp_path / "model") == tmp_path / "model"
    loaded = load_encoders(family, tmp_path / "model")
    assert loaded.text_fields == enc.text_fields
    assert loaded.latent_norm == enc.latent_norm
    video = torch.rand(1, 3, 5 if family != "mochi" else 7, 32, 32) * 2 - 1
    assert torch.equal(loaded.encode_video(video), enc.encode_video(video))
    caption = ["a blue star rotates clockwise"]
    for name, t in enc.encode_text(caption)[0].items():
        assert torch.allclose(loaded.encode_text(caption)[0][name], t, atol=1e-6)


def test_missing_or_wrong_folders_fail_early(tiny, tmp_path):
    with pytest.raises(ValueError, match="pretrained_path is not set: model wan needs"):
        load_encoders("wan")
    with pytest.raises(FileNotFoundError, match="pretrained_path=.*nowhere: no such folder"):
        load_encoders("wan", tmp_path / "nowhere")
    tiny("hunyuan").save_pretrained(tmp_path / "hy")
    shutil.rmtree(tmp_path / "hy" / "text_encoder_2")
    with pytest.raises(FileNotFoundError, match="missing subfolder\\(s\\) text_encoder_2/"):
        load_encoders("hunyuan", tmp_path / "hy")
    with pytest.raises(ValueError, match="unknown model family 'cogvideo'"):
        load_encoders("cogvideo", tiny=True)
    # The 48-channel Wan2.2 TI2V VAE is not the wan family's.
    tiny("wan22_ti2v").save_pretrained(tmp_path / "ti2v")
    with pytest.raises(ValueError, match="vae/ has 48 latent channels.*model wan expects 16.*wan22_ti2v"):
        load_encoders("wan", tmp_path / "ti2v")
