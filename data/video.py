"""Video input: probe, plan clips, decode once with PyAV, sample frames at a target fps, resize + center-crop.

All failures a user's file can cause are `VideoError`s whose message says what is wrong with which file; prepare
skips the item and reports the message.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from radial.families import LatentGeometry

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".m4v", ".avi")
CLIP_MODES = ("uniform", "start")


class VideoError(Exception):
    """A video that cannot give the requested clip (unreadable, truncated, too short ...)."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # as displayed (after the container's rotation)
    height: int
    fps: float  # average source frame rate
    duration: float  # seconds covered by the frames (last frame end)
    rotation: int  # degrees counterclockwise to display the decoded frames upright (0, 90, 180, 270)
    codec: str


# ----- lengths and buckets -----


def clip_frames(geom: LatentGeometry, length: str | int) -> int:
    """Pixel frames of a clip: "1x"/"2x"/"4x" (any "<m>x") of the base model's clip, or an explicit frame count.

    m x base scales the latent frames after the first (`LatentGeometry.scaled_frames`: Wan 81 -> 161 -> 321), which
    keeps the VAE's frame rule.
    """
    text = str(length).strip().lower()
    if text.endswith("x"):
        try:
            mult = int(text[:-1])
        except ValueError:
            raise ValueError(f"length {length!r}: expected '<m>x' (1x, 2x, 4x) or a frame count") from None
        if mult < 1:
            raise ValueError(f"length {length!r}: the multiple must be >= 1")
        frames = geom.scaled_frames(mult)
    else:
        try:
            frames = int(text)
        except ValueError:
            raise ValueError(f"length {length!r}: expected '<m>x' (1x, 2x, 4x) or a frame count") from None
    geom.latent_frames(frames)  # raises with the nearest valid counts
    return frames


def parse_bucket(spec: str | Sequence[int]) -> tuple[int, int]:
    """ "480x832" (height x width) or (480, 832) -> (480, 832)."""
    if isinstance(spec, str):
        parts = spec.lower().replace("*", "x").split("x")
        if len(parts) != 2:
            raise ValueError(f"bucket {spec!r}: expected HEIGHTxWIDTH, e.g. 480x832")
        try:
            return int(parts[0]), int(parts[1])
        except ValueError:
            raise ValueError(f"bucket {spec!r}: expected HEIGHTxWIDTH, e.g. 480x832") from None
    h, w = spec
    return int(h), int(w)


def check_buckets(geom: LatentGeometry, buckets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    if not buckets:
        raise ValueError("no resolution buckets given")
    out = []
    for h, w in buckets:
        geom.tokens_per_frame(h, w)  # multiples of VAE x patch, with a clear error
        out.append((int(h), int(w)))
    return sorted(set(out))


def default_buckets(geom: LatentGeometry, scale: float = 1.0) -> list[tuple[int, int]]:
    """The base resolution (times `scale`), its portrait twin, and a square of about the same area."""
    step = geom.spatial_factor * geom.patch_hw

    def snap(v: float) -> int:
        return max(step, int(round(v / step)) * step)

    h, w = snap(geom.base_height * scale), snap(geom.base_width * scale)
    side = snap(math.sqrt(h * w))
    return sorted({(h, w), (w, h), (side, side)})


def choose_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log space) to the video's; ties go to the larger bucket."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda hw: (abs(math.log(hw[1] / hw[0]) - aspect), -hw[0] * hw[1]))


def cover_size(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """(width, height) after scaling to cover the bucket while keeping the aspect ratio (then center-crop)."""
    bh, bw = bucket
    scale = max(bh / height, bw / width)
    return max(bw, math.ceil(width * scale - 1e-6)), max(bh, math.ceil(height * scale - 1e-6))


# ----- probing and planning -----


def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    try:
        container = av.open(str(path))
    except Exception as e:  # av raises many error types for bad input
        raise VideoError(f"{path}: unreadable video ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container


@contextmanager
def decoding(container, path: str | Path, what: str) -> Iterator:
    """Closes `container` on leaving; an error other than a VideoError becomes one: `{path}: {what} (the error)`."""
    try:
        yield container
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(f"{path}: {what} ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def _first_frame_rotation(container, stream) -> int:
    """Decode the first frame: proves the stream decodes, and gives the display rotation (side data)."""
    for frame in container.decode(stream):
        return int(round((frame.rotation or 0) / 90.0)) * 90 % 360
    raise VideoError(f"{container.name}: no decodable video frame")


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, duration and rotation of a video, from its headers (or a demux pass when they lack it)."""
    container = _open(path)
    with decoding(container, path, "unreadable video"):
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise VideoError(f"{path}: video stream has no frame size")
        duration = None
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        codec = stream.codec_context.name
        rotation = _first_frame_rotation(container, stream)
    if not duration or duration <= 0 or fps <= 0:
        duration, fps = _demux_duration(path, fps)
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(str(path), int(width), int(height), fps, float(duration), rotation, codec)


def _demux_duration(path: str | Path, fps: float) -> tuple[float, float]:
    """Duration (and rate) from packet timestamps, for files whose headers don't say."""
    container = _open(path)
    times = []
    with decoding(container, path, "unreadable video"):
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is not None and packet.time_base:
                times.append(float(packet.pts * packet.time_base))
    if not times:
        raise VideoError(f"{path}: no video packets")
    times.sort()
    if fps <= 0:
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 1.0
    return times[-1] - times[0] + 1.0 / fps, fps


def longest_clip(info: VideoInfo, fps: float, geom: LatentGeometry) -> int:
    """The most pixel frames (the VAE's rule, e.g. k * temporal_factor + 1) of one clip at `fps` that fit in the
    video (0: none)."""
    slack = 0.5 / info.fps
    last = info.duration - 1.0 / info.fps
    frames = int(math.floor((last + slack) * fps + 1e-6)) + 1
    return geom.longest_frames(frames)


def plan_clips(info: VideoInfo, frames: int, fps: float, num_clips: int = 1, mode: str = "uniform") -> list[float]:
    """Start times (s) of up to `num_clips` non-overlapping clips of `frames` frames at `fps`.

    uniform: spread evenly over the video (one clip: centered); start: back to back from the beginning.
    Raises VideoError when not even one clip fits.
    """
    if mode not in CLIP_MODES:
        raise ValueError(f"clip mode {mode!r}: expected one of {CLIP_MODES}")
    span = (frames - 1) / fps  # first to last sampled frame
    last = info.duration - 1.0 / info.fps  # time of the last source frame
    slack = 0.5 / info.fps
    if last + slack < span:
        have = int(round(info.duration * info.fps))
        raise VideoError(
            f"{info.path}: too few frames: {have} frames at {info.fps:.3g} fps ({info.duration:.2f} s); "
            f"a {frames}-frame clip at {fps:.3g} fps needs {span + 1 / fps:.2f} s"
        )
    step = frames / fps  # a clip's extent, so that clips don't share frames
    fit = 1 + int(max(0.0, last + slack - span) // step)
    n = max(1, min(num_clips, fit))
    free = max(0.0, last - span)
    if mode == "start":
        starts = [i * step for i in range(n)]
    elif n == 1:
        starts = [free / 2]
    else:
        gap = (free - (n - 1) * step) / (n + 1) if free >= (n - 1) * step else 0.0
        starts = [min(free, gap * (i + 1) + i * step) for i in range(n)]
    # Start on a source frame, so that equal rates sample whole frames, never a tie between two.
    return [math.floor(s * info.fps + 1e-6) / info.fps for s in starts]


# ----- decoding -----


def _to_rgb(frame, size: tuple[int, int], rotation: int, bucket: tuple[int, int]) -> np.ndarray:
    """A decoded frame -> uint8 [H, W, 3] of the bucket: rotate upright, scale to cover, center-crop."""
    w, h = size  # cover size, as displayed
    if rotation in (90, 270):
        w, h = h, w
    img = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    if rotation:
        img = np.rot90(img, k=rotation // 90)
    bh, bw = bucket
    top, left = (img.shape[0] - bh) // 2, (img.shape[1] - bw) // 2
    return np.ascontiguousarray(img[top : top + bh, left : left + bw])


def read_clips(
    info: VideoInfo, starts: Sequence[float], frames: int, fps: float, bucket: tuple[int, int]
) -> list[np.ndarray]:
    """Decode the video once and return, per start time, uint8 [frames, H, W, 3] at the bucket's size.

    Frame k of a clip is the source frame nearest to start + k / fps (frames repeat when fps exceeds the source
    rate, and are skipped when it is lower). Raises VideoError on decode errors and when the stream ends before
    the last needed timestamp (a truncated file or one shorter than its header says).
    """
    targets = sorted((s + k / fps, c, k) for c, s in enumerate(starts) for k in range(frames))
    out = [np.empty((frames, bucket[0], bucket[1], 3), np.uint8) for _ in starts]
    size = cover_size(info.width, info.height, bucket)
    tolerance = 0.5 / info.fps + 1e-6
    pos = 0
    prev = None  # (time, frame, rgb cache)
    container = _open(info.path)
    t0 = None
    decoded = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else decoded / info.fps
            t0 = t if t0 is None else t0
            t -= t0
            decoded += 1
            cur = [t, frame, None]
            while pos < len(targets) and targets[pos][0] <= t + tolerance:
                when, c, k = targets[pos]
                pick = prev if prev is not None and abs(when - prev[0]) < abs(t - when) else cur
                if pick[2] is None:
                    pick[2] = _to_rgb(pick[1], size, info.rotation, bucket)
                out[c][k] = pick[2]
                pos += 1
            if pos == len(targets):
                break
            prev = cur
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(
            f"{info.path}: decoding failed after {decoded} frames ({type(e).__name__}: {e}); the file is corrupt "
            "or truncated"
        ) from None
    finally:
        container.close()
    if pos < len(targets):
        # The last source frame still counts for a target within one source frame after it.
        last_t = prev[0] if prev is not None else -1.0
        while pos < len(targets) and prev is not None and targets[pos][0] <= last_t + 1.0 / info.fps + 1e-6:
            _, c, k = targets[pos]
            if prev[2] is None:
                prev[2] = _to_rgb(prev[1], size, info.rotation, bucket)
            out[c][k] = prev[2]
            pos += 1
    if pos < len(targets):
        when = targets[-1][0]
        raise VideoError(
            f"{info.path}: truncated or shorter than its header says: decoded {decoded} frames up to "
            f"{max(last_t, 0):.2f} s, header says {info.duration:.2f} s, the clip needs frames up to {when:.2f} s"
        )
    return out


def to_pixels(clip: np.ndarray):
    """uint8 [F, H, W, 3] -> float32 torch [3, F, H, W] in [-1, 1] (the VAEs' input range)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def as_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)
