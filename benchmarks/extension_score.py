"""Ground-truth scores of a latent clip from the extension experiment: blob tracks against bounce physics,
colour identity over the clip, temporal flicker (see benchmarks/extension_data.py for what the clips hold).

- tracks: each caption colour's blob is found per frame as the peak of the latent projected on the colour's code
  (refined by a local centroid); the track is fitted by the best constant-velocity-with-bounces path (a grid search
  over start and velocity per axis); `track_rmse` is the fit's RMS residual in latent pixels (0 = perfect physics).
- identity: cosine between the blob's 8-channel colour vector averaged over the first and the last quarter of the
  clip (1 = the same colour), and `strength_ratio`: the blob's peak response in the last quarter over the first
  (1 = it neither fades nor grows); `purity_q4`: in the last quarter, the caption colours' peak response over itself
  plus the peak response of the palette colour the caption does not name (1 = only the right blobs; noise ~0.5).
- flicker: mean absolute frame-to-frame change of the background channels (the data's own value is the reference:
  a smoothly panning background changes a little every frame).
"""

from __future__ import annotations

import math

import torch

from benchmarks.extension_data import BG_CHANNELS, BLOB_CHANNELS, COLOURS, palette, reflect


def blob_track(latents: torch.Tensor, colour: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame (y, x) centre [F, 2], peak response [F] and colour vector [F, 8] of one palette colour's blob."""
    blob = latents[BLOB_CHANNELS].float()  # [8, F, H, W]
    response = torch.einsum("k,kfhw->fhw", palette()[colour], blob)
    f, h, w = response.shape
    peak, flat = response.flatten(1).max(1)
    py, px = flat // w, flat % w
    # Centroid of the positive response in the 5x5 window around each frame's peak (clamped at the borders).
    off = torch.arange(-2, 3)
    ys = (py[:, None] + off).clamp(0, h - 1)  # [F, 5]
    xs = (px[:, None] + off).clamp(0, w - 1)
    frame = torch.arange(f)[:, None, None]
    wgt = response[frame, ys[:, :, None], xs[:, None, :]].clamp(min=0)  # [F, 5, 5]
    total = wgt.sum((1, 2)).clamp(min=1e-8)
    cy = (wgt * ys[:, :, None].float()).sum((1, 2)) / total
    cx = (wgt * xs[:, None, :].float()).sum((1, 2)) / total
    vectors = blob[:, torch.arange(f), py, px].t()  # [F, 8]
    return torch.stack([cy, cx], 1), peak, vectors


def _fit(track: torch.Tensor, starts: torch.Tensor, velocities: torch.Tensor, size: int) -> tuple[float, int, int]:
    t = torch.arange(track.shape[0], dtype=torch.float32)
    path = reflect(starts[:, None, None] + velocities[None, :, None] * t, 0.0, size - 1.0)  # [S, V, F]
    err = ((path - track) ** 2).mean(-1)
    i = int(err.argmin())
    return float(err.flatten()[i]), i // err.shape[1], i % err.shape[1]


def bounce_fit_rmse(track: torch.Tensor, size: int, vmax: float = 1.5) -> float:
    """RMS residual of the best constant-velocity path with elastic bounces in [0, size-1] to a 1-D track [F]:
    a coarse grid over start and velocity, then a fine grid around its best cell."""
    starts = torch.linspace(0, size - 1, 2 * size)
    velocities = torch.linspace(-vmax, vmax, 121)
    _, i, j = _fit(track, starts, velocities, size)
    ds, dv = float(starts[1] - starts[0]), float(velocities[1] - velocities[0])
    fine_s = float(starts[i]) + torch.linspace(-ds, ds, 41)
    fine_v = float(velocities[j]) + torch.linspace(-dv, dv, 41)
    err, _, _ = _fit(track, fine_s, fine_v, size)
    return math.sqrt(err)


def score_clip(latents: torch.Tensor, colours: list[int]) -> dict[str, float]:
    """Scores of one clip [16, F, H, W] whose caption names `colours` (means over its blobs)."""
    _, f, h, w = latents.shape
    q = max(1, f // 4)
    rmse, cos, ratio = [], [], []
    for colour in colours:
        centres, peak, vectors = blob_track(latents, colour)
        rmse.append(0.5 * (bounce_fit_rmse(centres[:, 0], h) + bounce_fit_rmse(centres[:, 1], w)))
        first, last = vectors[:q].mean(0), vectors[-q:].mean(0)
        cos.append(float(torch.nn.functional.cosine_similarity(first, last, dim=0)))
        ratio.append(float(peak[-q:].mean() / peak[:q].mean().clamp(min=1e-6)))
    bg = latents[BG_CHANNELS].float()
    flicker = float((bg[:, 1:] - bg[:, :-1]).abs().mean())
    named = sum(float(blob_track(latents, c)[1][-q:].clamp(min=0).mean()) for c in colours) / len(colours)
    absent = [c for c in range(len(COLOURS)) if c not in colours]
    other = max((float(blob_track(latents, c)[1][-q:].clamp(min=0).mean()) for c in absent), default=0.0)
    return {
        "track_rmse": sum(rmse) / len(rmse),
        "identity_cos": sum(cos) / len(cos),
        "strength_ratio": sum(ratio) / len(ratio),
        "purity_q4": named / max(named + other, 1e-8),
        "flicker": flicker,
    }


def track_error(latents: torch.Tensor, colours: list[int], tracks: list) -> float:
    """Mean distance (latent pixels) between recovered and true centres: a check of the scorer on real clips."""
    errs = []
    for colour, truth in zip(colours, tracks, strict=True):
        centres, _, _ = blob_track(latents, colour)
        errs.append(float((centres - torch.tensor(truth)).norm(dim=1).mean()))
    return sum(errs) / len(errs)


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of several clips' scores."""
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]} if scores else {}
