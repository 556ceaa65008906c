"""A clip's sound track: decoded with PyAV, resampled to stereo at the audio VAE's rate, cut to the clip's span."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.video import VideoError, decoding


def read_audio(path: str | Path, start: float, samples: int, rate: int) -> torch.Tensor | None:
    """Stereo float32 [2, samples] of the sound from `start` seconds at `rate` Hz (mono is repeated on both channels,
    zeros pad a track that ends early); None when the file has no audio stream."""
    import av

    try:
        container = av.open(str(path))
    except Exception as e:
        raise VideoError(f"{path}: cannot open ({type(e).__name__}: {e})") from None
    with decoding(container, path, "audio decoding failed"):
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        skip = int(round(start * rate))  # samples before the clip, counted from the stream's first sample
        chunks, have = [], 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
                have += chunks[-1].shape[1]
            if have >= skip + samples:
                break
        else:
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray())
    wave = np.concatenate(chunks, axis=1)[:, skip : skip + samples] if chunks else np.zeros((2, 0), np.float32)
    out = torch.zeros(2, samples)
    out[:, : wave.shape[1]] = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return out
