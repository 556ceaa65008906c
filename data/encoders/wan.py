"""Wan 2.1 / 2.2 encoders: AutoencoderKLWan (16 channels; 48 for Wan2.2 TI2V-5B) + UMT5EncoderModel."""

from __future__ import annotations

from data.encoders.t5 import TINY_MAX_SEQUENCE_LENGTH as TINY_MAX_SEQUENCE_LENGTH  # public here too
from data.encoders.t5 import T5FamilyEncoders
from data.latents import make_latent_norm

MAX_SEQUENCE_LENGTH = 512  # WanPipeline.__call__ default


def tiny_vae_config(family: str) -> dict:
    """A ~0.1M-parameter AutoencoderKLWan with the real compression (4x temporal; 8x, or 16x for TI2V, spatial)."""
    base = {"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1, "temperal_downsample": [False, True, True]}
    if family == "wan22_ti2v":
        # Wan2.2 TI2V-5B's VAE layout: residual blocks, 2x2 pixel patchify (12 input channels), 48 latent channels.
        channels = 48
        return {
            **base,
            "decoder_base_dim": 8,
            "z_dim": channels,
            "is_residual": True,
            "in_channels": 12,
            "out_channels": 12,
            "patch_size": 2,
            "scale_factor_temporal": 4,
            "scale_factor_spatial": 16,
            "latents_mean": [round(-0.5 + i / channels, 4) for i in range(channels)],
            "latents_std": [round(0.5 + i / channels, 4) for i in range(channels)],
        }
    return {**base, "z_dim": 16}  # the class defaults keep the real Wan2.1 latents_mean / latents_std


class WanEncoders(T5FamilyEncoders):
    vae_class = "AutoencoderKLWan"
    text_encoder_class = "UMT5EncoderModel"
    text_config_class = "UMT5Config"
    default_max_sequence_length = MAX_SEQUENCE_LENGTH
    clean_prompts = True  # WanPipeline runs prompt_clean on every caption

    @classmethod
    def _tiny_vae_config(cls, family: str) -> dict:
        return tiny_vae_config(family)

    def _check_vae(self) -> None:
        c = self.vae.config
        self._check_channels(c.z_dim, c.scale_factor_temporal, c.scale_factor_spatial)

    @property
    def latent_norm(self) -> dict:
        c = self.vae.config
        return make_latent_norm("wan", c.latents_mean, [1.0 / s for s in c.latents_std])
