"""Procedural videos of any length, written as real video files with captions (tests, the CPU demo, smoke runs).

Each video: a textured background seen through a panning camera, and 1-3 coloured shapes that move (bouncing off
the frame edges) and rotate. The caption says what happens. Everything follows from (seed, index): the same call
writes the same pixels.

    python -m data.synthetic --out outputs/synthetic --num 8 --frames 33 --fps 16 --size 64x64
    -> outputs/synthetic/videos/synthetic_0000.mp4 (+ .txt caption), manifest.jsonl, manifest.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "white": (245, 245, 245),
    "orange": (240, 130, 30),
    "purple": (140, 60, 190),
    "cyan": (40, 200, 210),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
TEXTURES = ("checkerboard", "stripes", "gradient", "dots", "noise")
PANS = ("left", "right", "up", "down", None)
CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}


@dataclass
class Shape:
    kind: str
    color: str
    radius: float
    pos: tuple[float, float]  # (x, y) at frame 0, pixels
    vel: tuple[float, float]  # pixels per frame
    angle: float  # radians at frame 0
    spin: float  # radians per frame, > 0 counterclockwise on screen


@dataclass
class Scene:
    texture: str
    colors: tuple[str, str]
    cell: int
    pan: str | None
    pan_speed: float  # pixels per frame
    shapes: list[Shape] = field(default_factory=list)


def make_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    names = list(COLORS)
    c1, c2 = rng.choice(len(names), size=2, replace=False)
    scene = Scene(
        texture=str(rng.choice(TEXTURES)),
        colors=(names[c1], names[c2]),
        cell=int(rng.integers(4, 12)) * max(1, min(height, width) // 64),
        pan=PANS[int(rng.integers(len(PANS)))],
        pan_speed=float(rng.uniform(0.3, 1.2)) * max(1.0, min(height, width) / 64),
    )
    size = min(height, width)
    others = [n for n in names if n not in scene.colors]  # shapes stand out from the background
    for _ in range(int(rng.integers(1, 4))):
        radius = float(rng.uniform(0.08, 0.18)) * size
        speed = float(rng.uniform(0.4, 1.5)) * size / 64
        heading = float(rng.uniform(0, 2 * math.pi))
        kind = str(rng.choice(SHAPES))
        scene.shapes.append(
            Shape(
                kind=kind,
                color=others[int(rng.integers(len(others)))],
                radius=radius,
                pos=(float(rng.uniform(radius, width - radius)), float(rng.uniform(radius, height - radius))),
                vel=(speed * math.cos(heading), speed * math.sin(heading)),
                angle=float(rng.uniform(0, 2 * math.pi)),
                spin=0.0 if kind == "circle" else float(rng.choice([-1, 1]) * rng.uniform(0.03, 0.15)),
            )
        )
    return scene


def _direction(dx: float, dy: float) -> str:
    if abs(dx) >= abs(dy):
        return "to the right" if dx > 0 else "to the left"
    return "down" if dy > 0 else "up"


def caption(scene: Scene) -> str:
    parts = []
    for i, s in enumerate(scene.shapes):
        article = "A" if i == 0 else "a"
        spin = ""
        if s.spin:
            spin = f", rotating {'counterclockwise' if s.spin > 0 else 'clockwise'},"
        parts.append(f"{article} {s.color} {s.kind}{spin} moves {_direction(*s.vel)}")
    text = ", and ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + ", and " + parts[-1]
    text += f", over a {scene.colors[0]} and {scene.colors[1]} {scene.texture} background"
    text += f"; the camera pans {scene.pan}." if scene.pan else "; the camera is still."
    return text


def _texture(scene: Scene, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    a = np.array(COLORS[scene.colors[0]], np.float32)
    b = np.array(COLORS[scene.colors[1]], np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c = scene.cell
    if scene.texture == "checkerboard":
        t = ((xx // c + yy // c) % 2).astype(np.float32)
    elif scene.texture == "stripes":
        t = (((xx + yy) // c) % 2).astype(np.float32)
    elif scene.texture == "gradient":
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx / (4 * c * 4)) + 2 * math.pi * yy / (6 * c * 4))
    elif scene.texture == "dots":
        t = (((xx % c) - c / 2) ** 2 + ((yy % c) - c / 2) ** 2 < (c / 3) ** 2).astype(np.float32)
    else:  # smooth noise: a coarse random grid, upsampled
        coarse = rng.random((height // c + 2, width // c + 2)).astype(np.float32)
        t = np.kron(coarse, np.ones((c, c), np.float32))[:height, :width]
    return a * (1 - t[..., None]) + b * t[..., None]


def _reflect(x: float, lo: float, hi: float) -> float:
    """Position bouncing between lo and hi."""
    if hi <= lo:
        return lo
    span = hi - lo
    x = (x - lo) % (2 * span)
    return lo + (x if x <= span else 2 * span - x)


def _shape_mask(s: Shape, t: int, xx: np.ndarray, yy: np.ndarray, height: int, width: int) -> np.ndarray:
    cx = _reflect(s.pos[0] + s.vel[0] * t, s.radius, width - s.radius)
    cy = _reflect(s.pos[1] + s.vel[1] * t, s.radius, height - s.radius)
    dx, dy = xx - cx, yy - cy
    r = np.hypot(dx, dy)
    if s.kind == "circle":
        return r <= s.radius
    # Screen y points down, so a counterclockwise angle on screen is -atan2(dy, dx).
    theta = np.arctan2(-dy, dx) - (s.angle + s.spin * t)
    if s.kind == "star":
        return r <= s.radius * (0.6 + 0.4 * np.cos(5 * theta))
    sides = {"square": 4, "triangle": 3, "hexagon": 6}[s.kind]
    sector = 2 * math.pi / sides
    phi = np.mod(theta, sector) - sector / 2
    return r * np.cos(phi) <= s.radius * math.cos(math.pi / sides)


def render(scene: Scene, frames: int, height: int, width: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Frames uint8 [H, W, 3], one at a time (memory stays at one canvas, whatever the length)."""
    rng = np.random.default_rng(seed)
    travel = int(math.ceil(scene.pan_speed * max(frames - 1, 0))) + 1 if scene.pan else 0
    horizontal = scene.pan in ("left", "right")
    canvas = _texture(scene, height + (0 if horizontal else travel), width + (travel if horizontal else 0), rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for t in range(frames):
        shift = int(round(scene.pan_speed * t)) if scene.pan else 0
        # Camera pans right -> the world slides left in the view.
        off = {"right": shift, "left": travel - 1 - shift, "down": shift, "up": travel - 1 - shift}.get(scene.pan, 0)
        y0, x0 = (0, off) if horizontal else (off, 0)
        img = canvas[y0 : y0 + height, x0 : x0 + width].copy()
        for s in scene.shapes:
            img[_shape_mask(s, t, xx, yy, height, width)] = COLORS[s.color]
        yield np.clip(img, 0, 255).astype(np.uint8)


def write_video(path: str | Path, frames: Iterator[np.ndarray], fps: float, height: int, width: int) -> Path:
    """Encode uint8 RGB frames to a real video file; the codec follows the extension (mp4/mov/mkv: H.264,
    webm: VP9)."""
    import av

    from radial.generation.video import mux_frames

    path = Path(path)
    codec = CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: unsupported extension; use one of {sorted(CODECS)}")
    if height % 2 or width % 2:
        raise ValueError(f"{path}: height and width must be even for yuv420p, got {height}x{width}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part" + path.suffix)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.options = {"crf": "32", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
        mux_frames(container, stream, frames)
    tmp.replace(path)
    return path


def make_synthetic_videos(
    out: str | Path,
    num: int = 8,
    frames: int | Sequence[int] = 33,
    fps: float = 16,
    sizes: Sequence[tuple[int, int]] = ((64, 64),),
    seed: int = 0,
    formats: Sequence[str] = ("mp4",),
) -> list[dict]:
    """Write `num` videos under out/videos with .txt captions, plus out/manifest.jsonl and out/manifest.csv.

    `frames`, `sizes` (height, width) and `formats` ("mp4", "webm", "mov", "mkv") are cycled over the videos, so
    one call can give several lengths, aspect ratios and containers. Returns the manifest rows.
    """
    out = Path(out)
    frame_list = [frames] if isinstance(frames, int) else list(frames)
    rows = []
    for i in range(num):
        n = int(frame_list[i % len(frame_list)])
        height, width = sizes[i % len(sizes)]
        ext = formats[i % len(formats)].lstrip(".")
        rng = np.random.default_rng([seed, i])
        scene = make_scene(rng, height, width)
        text = caption(scene)
        rel = f"videos/synthetic_{i:04d}.{ext}"
        write_video(out / rel, render(scene, n, height, width, seed=seed * 100003 + i), fps, height, width)
        (out / rel).with_suffix(".txt").write_text(text + "\n")
        rows.append({"path": rel, "caption": text, "frames": n, "fps": fps, "height": height, "width": width})
    with open(out / "manifest.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps({"path": row["path"], "caption": row["caption"]}) + "\n")
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption"])
        for row in rows:
            writer.writerow([row["path"], row["caption"]])
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (videos/, manifest.jsonl, manifest.csv)")
    p.add_argument("--num", type=int, default=8, help="number of videos")
    p.add_argument("--frames", default="33", help="frames per video; a comma list is cycled (e.g. 17,33,65)")
    p.add_argument("--fps", type=float, default=16)
    p.add_argument("--size", default="64x64", help="HEIGHTxWIDTH; a comma list is cycled (e.g. 64x64,64x112)")
    p.add_argument("--format", default="mp4", help="mp4, webm, mov or mkv; a comma list is cycled")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from data.video import parse_bucket

    rows = make_synthetic_videos(
        args.out,
        num=args.num,
        frames=[int(v) for v in args.frames.split(",")],
        fps=args.fps,
        sizes=[parse_bucket(s) for s in args.size.split(",")],
        seed=args.seed,
        formats=args.format.split(","),
    )
    print(f"wrote {len(rows)} videos to {Path(args.out) / 'videos'} and {Path(args.out) / 'manifest.jsonl'}")


if __name__ == "__main__":
    main()
