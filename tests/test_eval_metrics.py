"""Weight-free metrics: PSNR, SSIM (checked against scikit-image's numbers), latent error, flicker, reports, CLI."""

import json
import math

import numpy as np
import pytest
import torch

from radial.generation import write_mp4
from train.eval.__main__ import main as eval_main
from train.eval.metrics import (
    PSNR_CAP,
    compare_videos,
    latent_rel_error,
    latent_rel_error_per_frame,
    load_frames,
    psnr_per_frame,
    save_report,
    ssim_per_frame,
    temporal_flicker,
)


def _pair():
    """The inputs scikit-image 0.26 was run on (numbers below): a textured gradient and a noisy copy."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 48, 40, 3)).astype(np.uint8)
    a = np.clip(a.astype(float) * 0.3 + np.linspace(0, 170, 40)[None, None, :, None], 0, 255).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_ssim_and_psnr_match_scikit_image():
    # skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    # data_range=255, channel_axis=-1) and peak_signal_noise_ratio(data_range=255) on _pair(), per frame.
    a, b = _pair()
    ssim_ref = [0.8885522704569243, 0.8888422468138094, 0.8893195214952887]
    psnr_ref = [26.673273245423008, 26.718222558811917, 26.740276173891438]
    np.testing.assert_allclose(ssim_per_frame(a, b).numpy(), ssim_ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(psnr_per_frame(a, b).numpy(), psnr_ref, rtol=0, atol=1e-9)


def test_frame_metrics_properties():
    a, b = _pair()
    assert torch.equal(ssim_per_frame(a, a), torch.ones(3, dtype=torch.float64))
    assert torch.equal(psnr_per_frame(a, a), torch.full((3,), PSNR_CAP, dtype=torch.float64))
    torch.testing.assert_close(ssim_per_frame(a, b), ssim_per_frame(b, a))
    off = np.clip(a.astype(int) + 1, 0, 255).astype(np.uint8)
    off[a == 255] = 254  # every pixel differs by exactly 1: PSNR = 20 log10(255)
    assert psnr_per_frame(a, off)[0].item() == pytest.approx(20 * math.log10(255), abs=1e-9)
    noisier = np.clip(a.astype(int) + np.random.default_rng(1).integers(-60, 61, a.shape), 0, 255).astype(np.uint8)
    assert (ssim_per_frame(a, noisier) < ssim_per_frame(a, b)).all()
    torch.testing.assert_close(ssim_per_frame(a, b, chunk=1), ssim_per_frame(a, b))  # chunked = whole
    torch.testing.assert_close(psnr_per_frame(a, b, chunk=2), psnr_per_frame(a, b))
    assert temporal_flicker(b, chunk=1)["score"] == pytest.approx(temporal_flicker(b)["score"], abs=1e-12)
    small = a[:, :6, :5]  # smaller than the 11x11 window: the window shrinks
    assert ssim_per_frame(small, small).tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_per_frame(a, b[:2])
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        ssim_per_frame(a[0], b[0])


def test_latent_errors_and_flicker():
    ref = torch.randn(1, 4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert latent_rel_error(ref, ref) == 0.0
    assert latent_rel_error(ref * 1.1, ref) == pytest.approx(0.1)
    other = ref.clone()
    other[:, :, 1] *= 1.5
    per = latent_rel_error_per_frame(other, ref)
    assert per[0] == 0 and per[1] == pytest.approx(0.5) and per[2] == 0
    still = np.full((5, 8, 8, 3), 77, np.uint8)
    assert temporal_flicker(still)["score"] == 1.0
    blink = still.copy()
    blink[1::2] += 10
    f = temporal_flicker(blink)
    assert f["mae_per_pair"] == [10.0] * 4 and f["score"] == pytest.approx(245 / 255)


def test_compare_report_json_and_png(tmp_path):
    a, b = _pair()
    la = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = compare_videos(a, b, la * 1.01, la, names=("radial", "dense"))
    s = report["summary"]
    assert s["frames"] == 3 and s["ssim_mean"] == pytest.approx(0.88891, abs=1e-4)
    assert s["latent_rel_error"] == pytest.approx(0.01) and len(report["per_frame"]["latent_rel_error"]) == 2
    paths = save_report(report, tmp_path / "m.json", tmp_path / "m.png")
    assert json.loads((tmp_path / "m.json").read_text())["summary"] == s
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG" and paths["png"].endswith("m.png")
    only_latents = compare_videos(latents_a=la, latents_b=la)
    assert only_latents["summary"] == {"latent_rel_error": 0.0}
    with pytest.raises(ValueError, match="nothing to compare"):
        compare_videos()


def test_mp4_round_trip_and_compare_cli(tmp_path):
    a, b = _pair()
    a, b = a[:, :48, :40], b[:, :48, :40]
    write_mp4(tmp_path / "a.mp4", a, fps=8)
    write_mp4(tmp_path / "b.mp4", b, fps=8)
    back = load_frames(tmp_path / "a.mp4")
    assert back.shape == a.shape and back.dtype == np.uint8
    yy, xx = np.mgrid[0:48, 0:40]
    smooth = np.stack([np.stack([xx * 5 + t, yy * 4, xx + yy + 3 * t], -1) for t in range(4)]).astype(np.uint8)
    write_mp4(tmp_path / "s.mp4", smooth, fps=8)
    assert psnr_per_frame(load_frames(tmp_path / "s.mp4"), smooth).min() > 35  # H.264 crf 18: lossy, but close
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(load_frames(tmp_path / "a.npy"), a)
    report = eval_main(["compare", str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"), "--out", str(tmp_path / "cmp")])
    assert report["summary"]["frames"] == 3 and (tmp_path / "cmp" / "a_metrics.png").is_file()
    odd = np.zeros((2, 33, 31, 3), np.uint8)  # odd sizes are padded for yuv420p
    assert load_frames(write_mp4(tmp_path / "odd.mp4", odd, fps=8)).shape == (2, 34, 32, 3)
