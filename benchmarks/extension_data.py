"""Synthetic latent clips with known physics for the length-extension experiment, written as trainer shards.

Why latent space: no pretrained VAE exists here, and a random-init VAE's latents of pixel videos carry no usable
structure; the transformer's length generalisation is a property of latent sequences, so the clips are made
directly as Wan-layout latents [16, F, H, W] (stored with an identity normalisation).

A clip: channels 0-7 hold a smooth periodic background panning at a constant velocity; channels 8-15 hold two
Gaussian blobs, each with a colour from a fixed palette (orthonormal 8-channel codes), moving at constant velocity
and bouncing off the walls (the centre reflects at 0 and size-1). The caption class names the blobs' two colours
("red and green", ...); its text states are fixed random tensors (one [text_len, text_dim] tensor per class,
seeded), standing in for a text encoder. Tracks (per-frame centres, velocities, colours) go to tracks.json beside
the shards, so generated clips can be scored against the physics.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from data.latents import make_latent_norm
from data.shards import ShardWriter, build_index
from radial.geometry import geometry

CHANNELS = 16
BG_CHANNELS = slice(0, 8)
BLOB_CHANNELS = slice(8, 16)
COLOURS = ("red", "green", "blue")
CLASSES = list(itertools.combinations(range(len(COLOURS)), 2))  # caption class -> its two palette colours


@dataclass(frozen=True)
class ClipGeometry:
    """Latent sizes: height x width latent pixels, frames per clip, text states."""

    height: int
    width: int
    text_len: int
    text_dim: int
    blob_sigma: float = 1.6
    blob_amplitude: float = 2.5
    speed: tuple[float, float] = (0.25, 0.7)  # latent pixels per frame, per axis
    pan_speed: tuple[float, float] = (0.05, 0.2)


def palette() -> torch.Tensor:
    """[3, 8] orthonormal colour codes of the blob channels (fixed)."""
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1234)))
    return q[: len(COLOURS)].contiguous()


def class_text_states(text_len: int, text_dim: int) -> torch.Tensor:
    """[classes, text_len, text_dim] fixed random text states, one per caption class."""
    return torch.randn(len(CLASSES), text_len, text_dim, generator=torch.Generator().manual_seed(4321))


def caption(cls: int) -> str:
    a, b = CLASSES[cls]
    return f"a {COLOURS[a]} blob and a {COLOURS[b]} blob bouncing over a panning background"


def reflect(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Positions of a point moving freely, folded into [lo, hi] by elastic bounces at the walls."""
    span = hi - lo
    u = torch.remainder(x - lo, 2 * span)
    return lo + torch.where(u <= span, u, 2 * span - u)


def make_clip(
    g: ClipGeometry, frames: int, gen: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, dict]:
    """One clip [16, frames, H, W] (float32, on the CPU) and its ground truth (class, colours, tracks, velocities).

    Random draws come from `gen` on the CPU (the same clips on any device); the arrays are computed on `device`."""
    h, w = g.height, g.width
    t = torch.arange(frames, dtype=torch.float32)
    cls = int(torch.randint(len(CLASSES), (1,), generator=gen))
    # Background: four plane waves per frame, mixed into 8 channels, panning at one velocity.
    pan = (torch.rand(2, generator=gen) * (g.pan_speed[1] - g.pan_speed[0]) + g.pan_speed[0]) * torch.sign(
        torch.rand(2, generator=gen) - 0.5
    )
    ky = torch.randint(-2, 3, (4,), generator=gen).float()
    kx = torch.randint(1, 3, (4,), generator=gen).float()
    phase = torch.rand(4, generator=gen) * 2 * torch.pi
    mix = torch.randn(8, 4, generator=gen) * 0.5
    yy = torch.arange(h, dtype=torch.float32, device=device)[None, :, None]
    xx = torch.arange(w, dtype=torch.float32, device=device)[None, None, :]
    td = t.to(device)[:, None, None]
    ys, xs = yy - float(pan[0]) * td, xx - float(pan[1]) * td
    waves = torch.stack(
        [torch.sin(2 * torch.pi * (ky[k] * ys / h + kx[k] * xs / w) + phase[k]) for k in range(4)]
    )  # [4, F, H, W]
    clip = torch.zeros(CHANNELS, frames, h, w, device=device)
    clip[BG_CHANNELS] = torch.einsum("ck,kfhw->cfhw", mix.to(device), waves)
    codes = palette().to(device)
    tracks, velocities = [], []
    for colour in CLASSES[cls]:
        start = torch.rand(2, generator=gen) * torch.tensor([h - 1.0, w - 1.0])
        speed = torch.rand(2, generator=gen) * (g.speed[1] - g.speed[0]) + g.speed[0]
        vel = speed * torch.sign(torch.rand(2, generator=gen) - 0.5)
        cy = reflect(start[0] + vel[0] * t, 0.0, h - 1.0)
        cx = reflect(start[1] + vel[1] * t, 0.0, w - 1.0)
        d2 = (yy - cy.to(device)[:, None, None]) ** 2 + (xx - cx.to(device)[:, None, None]) ** 2
        blob = g.blob_amplitude * torch.exp(-d2 / (2 * g.blob_sigma**2))  # [F, H, W]
        clip[BLOB_CHANNELS] += codes[colour][:, None, None, None] * blob[None]
        tracks.append(torch.stack([cy, cx], 1).tolist())
        velocities.append(vel.tolist())
    truth = {"class": cls, "colours": list(CLASSES[cls]), "tracks": tracks, "velocities": velocities}
    return clip.cpu(), truth


def write_split(
    root: Path, g: ClipGeometry, frames: int, count: int, seed: int, prefix: str, *, fps: int = 16, device="cpu"
) -> Path:
    """`count` clips of `frames` latent frames as a shard dataset under root (index.json) + root/tracks.json."""
    geo = geometry("wan")
    text = class_text_states(g.text_len, g.text_dim)
    header = {
        "model": "wan",
        "latent_channels": CHANNELS,
        "temporal_factor": geo.temporal_factor,
        "spatial_factor": geo.spatial_factor,
        "latent_dtype": "float32",
        "text_dtype": "float32",
        "latent_norm": make_latent_norm("identity", [0.0] * CHANNELS, [1.0] * CHANNELS),
        "text_fields": {
            "prompt_embeds": {
                "name": "prompt_embeds",
                "dim": g.text_dim,
                "max_len": g.text_len,
                "mask": "prompt_attention_mask",
            }
        },
        "encoders": {"family": "wan", "source": "synthetic-latent (benchmarks/extension_data.py)"},
        "latent_sample": "mode",
    }
    gen = torch.Generator().manual_seed(seed)
    writer = ShardWriter(root, header, items_per_shard=64, prefix=prefix)
    pixel_frames = (frames - 1) * geo.temporal_factor + 1
    truths = {}
    for i in range(count):
        clip, truth = make_clip(g, frames, gen, device)
        key = f"{prefix}-{i:05d}"
        record = {
            "key": key,
            "source": "synthetic-latent",
            "caption": caption(truth["class"]),
            "clip": i,
            "frames": pixel_frames,
            "fps": fps,
            "height": g.height * geo.spatial_factor,
            "width": g.width * geo.spatial_factor,
            "latent_shape": [CHANNELS, frames, g.height, g.width],
            "text_lens": {"prompt_embeds": g.text_len},
        }
        writer.add(record, {"latents": clip, "prompt_embeds": text[truth["class"]].clone()})
        truths[key] = truth
    writer.flush()
    build_index(root, checksum=False)
    (root / "tracks.json").write_text(json.dumps({"colours": COLOURS, "classes": CLASSES, "items": truths}))
    return root
