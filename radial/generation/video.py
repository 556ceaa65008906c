"""Frames out: pipeline output -> uint8 [F, H, W, 3], an H.264 mp4 (PyAV), a strip of frames for logging."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch


def to_uint8_frames(video) -> np.ndarray:
    """One video of a diffusers pipeline output (np [F, H, W, 3] in [0, 1], a torch tensor, or PIL frames)."""
    if isinstance(video, torch.Tensor):
        video = video.detach().float().cpu().numpy()
    if isinstance(video, list):  # PIL images
        video = np.stack([np.asarray(img.convert("RGB")) for img in video])
        return np.ascontiguousarray(video.astype(np.uint8))
    arr = np.asarray(video)
    if arr.ndim == 5:
        if arr.shape[0] != 1:
            raise ValueError(f"expected one video, got a batch of {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray((np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, *, crf: int = 18) -> Path:
    """uint8 RGB frames [F, H, W, 3] -> H.264 yuv420p mp4 (odd sizes are padded by one pixel), written atomically."""
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = frames.shape[1:3]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        mux_frames(container, stream, frames)
    tmp.replace(path)
    return path


def mux_frames(container, stream, frames) -> None:
    """Encode uint8 RGB frames [H, W, 3] into the PyAV `stream` and flush it, muxing every packet into `container`."""
    import av

    for img in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def frame_strip(frames: np.ndarray, count: int = 4) -> np.ndarray:
    """`count` evenly spaced frames side by side, uint8 [H, count * W, 3] (for TensorBoard and previews)."""
    frames = np.asarray(frames)
    idx = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    return np.concatenate([frames[i] for i in idx], axis=1)


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> Path:
    """16-bit PCM WAV of float audio [channels, samples] in [-1, 1] (a joint model's sound track)."""
    import wave

    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767).round().astype("<i2")
    path = Path(path)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(pcm.shape[0])
        f.setsampwidth(2)
        f.setframerate(int(rate))
        f.writeframes(np.ascontiguousarray(pcm.T).tobytes())
    return path
