"""Synthetic latent clips with long-range structure for the length-extension experiment, written as trainer shards.

Why latent space: no pretrained VAE exists here, and a random-init VAE's latents of pixel videos carry no usable
structure; the transformer's length generalisation is a property of latent sequences, so the clips are made
directly as Wan-layout latents [16, F, H, W] (stored with an identity normalisation).

A clip (every draw from one seeded generator):
- two objects (Gaussian blobs, channels 8-15), each with a colour drawn per clip from a palette of four orthonormal
  codes (the identity: random, never named by the caption), moving at constant velocity and bouncing off the walls;
- a static occluder: a vertical band (its code in channels 0-3) in front of the objects; an object crossing it is
  hidden for longer than a temporal window of the experiment's density can see, and comes back with its colour;
- a periodic flash (channels 4-7, the whole frame, one frame long) every `period` frames, the period drawn per clip
  longer than that window, so keeping the rhythm needs attention beyond it.
The background is otherwise zero, so the loss is about the content that length extension must keep (objects,
occluder, flashes), not a texture. The caption is the same for every clip (one fixed random text state), so identity
and rhythm come from the clip itself. Ground truth (tracks, visibility, colours, occluder, flash frames) goes to
tracks.json beside the shards.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from data.latents import make_latent_norm
from data.shards import ShardWriter, build_index
from radial.families import geometry

CHANNELS = 16
OCCLUDER_CHANNELS = slice(0, 4)
FLASH_CHANNELS = slice(4, 8)
OBJECT_CHANNELS = slice(8, 16)
COLOURS = ("red", "green", "blue", "yellow")
CAPTION = "two coloured balls bounce behind a wall while the light flashes"


@dataclass(frozen=True)
class ClipGeometry:
    """Latent sizes and the physics of the clips (latent pixels and latent frames)."""

    height: int
    width: int
    text_len: int
    text_dim: int
    objects: int = 2
    sigma: float = 3.0  # blob radius (std)
    amplitude: float = 2.5
    speed_x: tuple[float, float] = (0.5, 1.2)  # |vx|: crossing the occluder takes its width / |vx| frames
    speed_y: tuple[float, float] = (0.1, 0.5)
    occluder_width: int = 16
    occluder_amplitude: float = 1.5
    period: tuple[int, int] = (9, 14)  # flash period, inclusive range
    flash_amplitude: float = 2.0

    def __post_init__(self) -> None:
        if self.occluder_width >= self.width // 2:
            raise ValueError(f"occluder_width={self.occluder_width} must be under half the width {self.width}")
        if not 2 <= self.period[0] <= self.period[1]:
            raise ValueError(f"period={self.period}: expected 2 <= lo <= hi")
        if self.objects > len(COLOURS):
            raise ValueError(f"objects={self.objects}: at most {len(COLOURS)} (one colour each)")


def derive(seed: int, *parts) -> int:
    """A 31-bit seed from the experiment seed and a name: every random choice of a run comes from `--seed`."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def palette() -> torch.Tensor:
    """[4, 8] orthonormal colour codes of the object channels (fixed)."""
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1234)))
    return q[: len(COLOURS)].contiguous()


def scene_codes() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit codes of the occluder (4 channels) and the flash (4 channels), fixed."""
    g = torch.Generator().manual_seed(77)
    occ, flash = torch.randn(4, generator=g), torch.randn(4, generator=g)
    return occ / occ.norm(), flash / flash.norm()


def text_states(text_len: int, text_dim: int) -> torch.Tensor:
    """[text_len, text_dim] fixed random text states of the one caption (standing in for a text encoder)."""
    return torch.randn(text_len, text_dim, generator=torch.Generator().manual_seed(4321))


def reflect(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Positions of a point moving freely, folded into [lo, hi] by elastic bounces at the walls."""
    span = hi - lo
    u = torch.remainder(x - lo, 2 * span)
    return lo + torch.where(u <= span, u, 2 * span - u)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _sign(gen: torch.Generator) -> float:
    return 1.0 if float(torch.rand((), generator=gen)) < 0.5 else -1.0


def draw_truth(g: ClipGeometry, frames: int, gen: torch.Generator) -> dict:
    """The ground truth of one clip: colours, tracks, visibility, occluder columns, flash period / phase / frames."""
    h, w = g.height, g.width
    t = torch.arange(frames, dtype=torch.float32)
    x0 = int(torch.randint(w // 4, 3 * w // 4 - g.occluder_width + 1, (), generator=gen))
    occluder = [x0, x0 + g.occluder_width]
    colours = torch.randperm(len(COLOURS), generator=gen)[: g.objects].tolist()
    tracks, velocities, visible = [], [], []
    margin = g.sigma
    for _ in colours:
        start = [_uniform(gen, margin, h - 1 - margin), _uniform(gen, margin, w - 1 - margin)]
        vel = [_sign(gen) * _uniform(gen, *g.speed_y), _sign(gen) * _uniform(gen, *g.speed_x)]
        cy = reflect(start[0] + vel[0] * t, 0.0, h - 1.0)
        cx = reflect(start[1] + vel[1] * t, 0.0, w - 1.0)
        # Visible = the centre is clear of the band by one radius (what the scorer can detect); else hidden.
        vis = (cx < occluder[0] - g.sigma) | (cx > occluder[1] - 1 + g.sigma)
        tracks.append(torch.stack([cy, cx], 1).tolist())
        velocities.append(vel)
        visible.append(vis.tolist())
    period = int(torch.randint(g.period[0], g.period[1] + 1, (), generator=gen))
    phase = int(torch.randint(period, (), generator=gen))
    flashes = [f for f in range(frames) if f % period == phase]
    return {
        "colours": colours,
        "tracks": tracks,
        "velocities": velocities,
        "visible": visible,
        "occluder": occluder,
        "period": period,
        "phase": phase,
        "flashes": flashes,
    }


def render(g: ClipGeometry, truth: dict, frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The latent clip [16, frames, H, W] (float32, on the CPU) of a ground truth."""
    h, w = g.height, g.width
    yy = torch.arange(h, dtype=torch.float32, device=device)[None, :, None]
    xx = torch.arange(w, dtype=torch.float32, device=device)[None, None, :]
    clip = torch.zeros(CHANNELS, frames, h, w, device=device)
    codes = palette().to(device)
    for colour, track in zip(truth["colours"], truth["tracks"], strict=True):
        c = torch.tensor(track, device=device)
        d2 = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2
        blob = g.amplitude * torch.exp(-d2 / (2 * g.sigma**2))  # [F, H, W]
        clip[OBJECT_CHANNELS] += codes[colour][:, None, None, None] * blob[None]
    occ_code, flash_code = (c.to(device) for c in scene_codes())
    a, b = truth["occluder"]
    clip[OBJECT_CHANNELS, :, :, a:b] = 0.0  # the wall is in front of the objects
    clip[OCCLUDER_CHANNELS, :, :, a:b] = g.occluder_amplitude * occ_code[:, None, None, None]
    for f in truth["flashes"]:
        clip[FLASH_CHANNELS, f] = g.flash_amplitude * flash_code[:, None, None]
    return clip.cpu()


def make_clip(
    g: ClipGeometry, frames: int, gen: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, dict]:
    """One clip [16, frames, H, W] and its ground truth; random draws from `gen` (the same clips on any device)."""
    truth = draw_truth(g, frames, gen)
    return render(g, truth, frames, device), truth


def object_token_mask(truth: dict, g: ClipGeometry, frames: int, patch: int = 2) -> torch.Tensor:
    """[frames, H/patch, W/patch] bool: the tokens an object, the occluder or a flash covers (the content tokens).

    An object's tokens are those within two radii of its centre in every frame (hidden frames too: what the model
    must keep behind the wall is where it predicts nothing visible, and that is scored as well); flash frames are
    content everywhere."""
    h, w = g.height // patch, g.width // patch
    yy = (torch.arange(h, dtype=torch.float32) * patch + (patch - 1) / 2)[None, :, None]
    xx = (torch.arange(w, dtype=torch.float32) * patch + (patch - 1) / 2)[None, None, :]
    mask = torch.zeros(frames, h, w, dtype=torch.bool)
    for track in truth["tracks"]:
        c = torch.tensor(track)
        d2 = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2
        mask |= d2 <= (2 * g.sigma + patch) ** 2
    a, b = truth["occluder"]
    mask[:, :, a // patch : (b + patch - 1) // patch] = True
    mask[truth["flashes"]] = True
    return mask


def write_split(
    root: Path, g: ClipGeometry, frames: int, count: int, seed: int, prefix: str, *, fps: int = 16, device="cpu"
) -> Path:
    """`count` clips of `frames` latent frames as a shard dataset under root (index.json) + root/tracks.json."""
    geo = geometry("wan")
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
    text = text_states(g.text_len, g.text_dim)
    gen = torch.Generator().manual_seed(seed)
    writer = ShardWriter(root, header, items_per_shard=32, prefix=prefix)
    pixel_frames = (frames - 1) * geo.temporal_factor + 1
    truths = {}
    for i in range(count):
        clip, truth = make_clip(g, frames, gen, device)
        key = f"{prefix}-{i:05d}"
        record = {
            "key": key,
            "source": "synthetic-latent",
            "caption": CAPTION,
            "clip": i,
            "frames": pixel_frames,
            "fps": fps,
            "height": g.height * geo.spatial_factor,
            "width": g.width * geo.spatial_factor,
            "latent_shape": [CHANNELS, frames, g.height, g.width],
            "text_lens": {"prompt_embeds": g.text_len},
        }
        writer.add(record, {"latents": clip, "prompt_embeds": text.clone()})
        truths[key] = truth
    writer.flush()
    build_index(root, checksum=False)
    (root / "tracks.json").write_text(json.dumps({"colours": COLOURS, "geometry": asdict(g), "items": truths}))
    return root
