"""What a generation is asked to do: radial options, LoRAs with scales, the clip (length, size, steps, guidance).

Plain dataclasses with validation; `as_dict()` is what the JSON sidecar records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from radial.attention_settings import AttentionSettings
from radial.families import LatentGeometry


@dataclass(frozen=True)
class RadialSettings(AttentionSettings):
    """The attention settings of a generation; `enabled=False` keeps the pipeline's stock attention (the dense
    baseline)."""

    enabled: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to load: a diffusers-format folder (pytorch_lora_weights.safetensors) or a .safetensors file."""

    path: str
    scale: float = 1.0
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """`PATH`, `PATH:SCALE` or `PATH:SCALE:NAME` (a trailing `:x` that is not a number belongs to the path)."""
        parts = text.rsplit(":", 2)
        for n_extra in (2, 1):
            if len(parts) > n_extra:
                head, tail = ":".join(parts[: len(parts) - n_extra]), parts[len(parts) - n_extra :]
                try:
                    scale = float(tail[0])
                except ValueError:
                    continue
                if not head:
                    break
                return cls(head, scale, tail[1] if n_extra == 2 else None)
        return cls(text)

    def adapter_name(self, index: int) -> str:
        if self.name:
            return self.name
        stem = Path(self.path).stem if Path(self.path).suffix else Path(self.path).name
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem) or "lora"
        return f"{safe}_{index}"


@dataclass
class ClipSpec:
    """The video to make: size, length, sampling; `prompt` (text) or precomputed embeddings (see embeds.py)."""

    frames: int
    height: int
    width: int
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    seed: int = 0
    fps: int = 16
    prompt: str | None = None
    negative_prompt: str | None = None
    true_cfg_scale: float | None = None  # HunyuanVideo: real classifier-free guidance (needs negative embeds)
    guidance_scale_2: float | None = None  # Wan2.2 A14B: guidance of the low-noise expert
    shift: float | None = None  # scheduler flow shift override
    max_sequence_length: int | None = None
    image: str | None = None  # image-to-video pipelines: the first frame's image file
    extra: dict[str, Any] = field(default_factory=dict)  # passed to the pipeline call as is

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "num_inference_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {self.guidance_scale}")


def frames_for_length(geom: LatentGeometry, length: str | int) -> int:
    """Pixel frames of "1x".."4x" (m x the base model's clip, `LatentGeometry.scaled_frames`) or of an explicit count.

    Wan: 1x = 81 frames (21 latent), 2x = 161, 4x = 321 (81 latent frames); HunyuanVideo 129 -> 513; Mochi 163.
    The same rule as data.video.clip_frames (datasets are prepared at these lengths).
    """
    text = str(length).strip().lower()
    try:
        frames = int(text[:-1]) if text.endswith("x") else int(text)
    except ValueError:
        raise ValueError(f"length {length!r}: expected '<m>x' (1x, 2x, 4x) or a frame count") from None
    if text.endswith("x"):
        if frames < 1:
            raise ValueError(f"length {length!r}: the multiple must be >= 1")
        frames = geom.scaled_frames(frames)
    geom.latent_frames(frames)  # the VAE's frame rule, with the nearest valid counts in the error
    return frames
