"""Latent geometry of each model family: how pixels and frames become latent frames and tokens per frame."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatentGeometry:
    """VAE compression and transformer patch size of a family, and the clip it was trained on (its "1x")."""

    family: str
    temporal_factor: int
    spatial_factor: int
    latent_channels: int
    patch_t: int
    patch_hw: int
    base_frames: int
    base_height: int
    base_width: int
    fps: int

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip; the causal VAEs need frames = k * temporal_factor + 1."""
        if frames < 1 or (frames - 1) % self.temporal_factor:
            lower = max(1, (frames - 1) // self.temporal_factor * self.temporal_factor + 1)
            raise ValueError(
                f"{self.family}: frames must be k*{self.temporal_factor}+1 (the VAE's rule), got {frames}; "
                f"nearest valid: {lower} or {lower + self.temporal_factor}"
            )
        return ((frames - 1) // self.temporal_factor + 1) // self.patch_t

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames that encode to `latent_frames` latent frames."""
        return (latent_frames * self.patch_t - 1) * self.temporal_factor + 1

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens per latent frame after the VAE and the transformer's spatial patchify."""
        step = self.spatial_factor * self.patch_hw
        if height % step or width % step or height <= 0 or width <= 0:
            raise ValueError(
                f"{self.family}: height and width must be positive multiples of {step}, got {height}x{width}"
            )
        return (height // step) * (width // step)


GEOMETRY: dict[str, LatentGeometry] = {
    "wan": LatentGeometry("wan", 4, 8, 16, 1, 2, 81, 480, 832, 16),
    # Wan2.2 A14B keeps the Wan2.1 VAE; TI2V-5B has its own 16x-spatial, 48-channel VAE.
    "wan22": LatentGeometry("wan22", 4, 8, 16, 1, 2, 81, 480, 832, 16),
    "wan22_ti2v": LatentGeometry("wan22_ti2v", 4, 16, 48, 1, 2, 121, 704, 1280, 24),
    "hunyuan": LatentGeometry("hunyuan", 4, 8, 16, 1, 2, 129, 720, 1280, 24),
    # HunyuanVideo-1.5: a 16x, 32-channel VAE and patch size 1 (480p x 121 frames at 1x).
    "hunyuan15": LatentGeometry("hunyuan15", 4, 16, 32, 1, 1, 121, 480, 848, 24),
    "mochi": LatentGeometry("mochi", 6, 8, 12, 1, 2, 163, 480, 848, 30),
}


def geometry(family: str) -> LatentGeometry:
    """The geometry of a family by name, with a clear error for unknown names."""
    if family not in GEOMETRY:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(GEOMETRY)}")
    return GEOMETRY[family]
