"""Weight-free video metrics: PSNR and SSIM per frame, latent relative error, temporal flicker; report + plot.

All frame metrics take uint8 (or 0-255 float) RGB frames [F, H, W, 3]:
- PSNR in dB with peak 255, per frame; identical frames are reported as PSNR_CAP (100 dB) to keep JSON finite.
- SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, computed per RGB channel over the
  valid region (no padding) and averaged over channels (what scikit-image gives with gaussian_weights=True,
  use_sample_covariance=False, channel_axis=-1).
- latent relative error ||a - b|| / ||b|| (b the reference, e.g. the dense generation), overall and per latent frame.
- temporal flicker as VBench's temporal_flickering dimension computes it: mean absolute difference of consecutive
  frames (0-255), score = (255 - MAE) / 255 (1 = no change between frames).

    python -m train.eval compare radial.mp4 dense.mp4 --latents radial.latents.safetensors dense.latents.safetensors
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP = 100.0


def _frames(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _chunks(a, b, chunk: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Frame chunks of two videos as float64 tensors on `device` (long, large videos don't fit at once)."""
    if len(a) != len(b) or tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if len(a.shape) != 4 or a.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got shape {tuple(a.shape)}")
    out = []
    for i in range(0, len(a), chunk):
        out.append((_frames(a[i : i + chunk]).to(device), _frames(b[i : i + chunk]).to(device)))
    return out


def psnr_per_frame(a, b, data_range: float = 255.0, *, chunk: int = 16, device=None) -> torch.Tensor:
    """PSNR (dB) of each frame pair, capped at PSNR_CAP for identical frames; float64 [F] on the CPU."""
    values = []
    for x, y in _chunks(a, b, chunk, device):
        mse = (x - y).pow(2).flatten(1).mean(1)
        values.append((10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-300))).clamp(max=PSNR_CAP).cpu())
    return torch.cat(values)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_per_frame(
    a,
    b,
    data_range: float = 255.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    *,
    chunk: int = 16,
    device=None,
) -> torch.Tensor:
    """Mean SSIM of each frame pair (Gaussian window, valid region, RGB channels averaged); float64 [F] on the CPU.

    Frames are processed `chunk` at a time on `device` (e.g. "cuda" for 321 frames at 480x832).
    """
    values = []
    for x, y in _chunks(a, b, chunk, device):
        values.append(_ssim(x, y, data_range, win_size, sigma, k1, k2).cpu())
    return torch.cat(values)


def _ssim(a, b, data_range, win_size, sigma, k1, k2) -> torch.Tensor:
    f, h, w, c = a.shape
    win = min(win_size, h, w)
    win -= (win + 1) % 2  # odd
    g = _gaussian_window(win, sigma * win / win_size).to(a.device)
    kernel_h = g.view(1, 1, win, 1).repeat(c, 1, 1, 1)
    kernel_w = g.view(1, 1, 1, win).repeat(c, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kernel_h, groups=c), kernel_w, groups=c)

    x = a.permute(0, 3, 1, 2)
    y = b.permute(0, 3, 1, 2)
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def latent_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over the whole latent tensor (b is the reference)."""
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        raise ValueError(f"latents differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def latent_rel_error_per_frame(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Relative error of each latent frame of [B, C, F, H, W] latents."""
    a, b = a.double(), b.double()
    if a.shape != b.shape or a.dim() != 5:
        raise ValueError(f"latents must be two equal [B, C, F, H, W] tensors, got {tuple(a.shape)}, {tuple(b.shape)}")
    diff = (a - b).transpose(0, 2).flatten(1).norm(dim=1)
    ref = b.transpose(0, 2).flatten(1).norm(dim=1).clamp_min(1e-30)
    return (diff / ref).tolist()


def temporal_flicker(frames, *, chunk: int = 16, device=None) -> dict:
    """VBench temporal_flickering: per-pair MAE of consecutive frames (0-255) and score (255 - mean MAE) / 255."""
    if len(frames) < 2:
        return {"score": 1.0, "mae_per_pair": []}
    maes = []
    for i in range(0, len(frames) - 1, chunk):
        x = _frames(frames[i : i + chunk + 1]).to(device)
        maes.append((x[1:] - x[:-1]).abs().flatten(1).mean(1).cpu())
    mae = torch.cat(maes)
    return {"score": float((255.0 - mae.mean()) / 255.0), "mae_per_pair": mae.tolist()}


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def compare_videos(
    frames_a=None, frames_b=None, latents_a=None, latents_b=None, *, names=("a", "b"), device=None
) -> dict:
    """A report comparing video a (e.g. radial) with its reference b (e.g. dense, same seed)."""
    report: dict = {"a": names[0], "b": names[1], "per_frame": {}, "summary": {}}
    s = report["summary"]
    if frames_a is not None and frames_b is not None:
        psnr = psnr_per_frame(frames_a, frames_b, device=device)
        ssim = ssim_per_frame(frames_a, frames_b, device=device)
        report["per_frame"].update(psnr=psnr.tolist(), ssim=ssim.tolist())
        fa, fb = temporal_flicker(frames_a, device=device), temporal_flicker(frames_b, device=device)
        s.update(
            frames=int(psnr.numel()),
            psnr_mean=float(psnr.mean()),
            psnr_min=float(psnr.min()),
            ssim_mean=float(ssim.mean()),
            ssim_min=float(ssim.min()),
            flicker_a=fa["score"],
            flicker_b=fb["score"],
        )
    if latents_a is not None and latents_b is not None:
        s["latent_rel_error"] = latent_rel_error(latents_a, latents_b)
        if latents_a.dim() == 5:
            report["per_frame"]["latent_rel_error"] = latent_rel_error_per_frame(latents_a, latents_b)
    if not s:
        raise ValueError("nothing to compare: give two videos and/or two latent tensors")
    s = {k: (_finite(v) if isinstance(v, float) else v) for k, v in s.items()}
    report["summary"] = s
    return report


def plot_report(report: dict, path: str | Path) -> Path:
    """PSNR and SSIM per frame, latent relative error per latent frame (whichever the report has), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    per = report["per_frame"]
    panels = [
        (k, label)
        for k, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("latent_rel_error", "latent rel. error"))
        if k in per
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.3 * len(panels)), dpi=110, squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels, strict=True):
        ax.plot(per[key], marker="." if len(per[key]) < 60 else None, lw=1.2)
        ax.set_ylabel(label)
        ax.set_xlabel("latent frame" if key == "latent_rel_error" else "frame")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(f"{report['a']} vs {report['b']}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_report(report: dict, json_path: str | Path, png_path: str | Path | None = None) -> dict:
    """Write the report as JSON (and the plot); returns the paths."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1))
    out = {"json": str(json_path)}
    if png_path is not None:
        out["png"] = str(plot_report(report, png_path))
    return out


def load_frames(path: str | Path) -> np.ndarray:
    """uint8 RGB frames [F, H, W, 3] from a video file (PyAV), a .npy array or a .safetensors with `frames`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))["frames"].numpy()
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames)


def load_latents(path: str | Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["latents"]
