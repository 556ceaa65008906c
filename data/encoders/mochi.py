"""Mochi-1 encoders: AutoencoderKLMochi (12 channels, 6x temporal) + T5EncoderModel, as MochiPipeline uses them."""

from __future__ import annotations

from data.encoders.t5 import TINY_MAX_SEQUENCE_LENGTH as TINY_MAX_SEQUENCE_LENGTH  # public here too
from data.encoders.t5 import T5FamilyEncoders
from data.latents import make_latent_norm

MAX_SEQUENCE_LENGTH = 256  # MochiPipeline default


def tiny_vae_config() -> dict:
    # Mochi's group norms have 32 groups, so 32 channels is the smallest width.
    return {
        "encoder_block_out_channels": (32, 32, 32, 32),
        "decoder_block_out_channels": (32, 32, 32, 32),
        "layers_per_block": (1, 1, 1, 1, 1),
        "add_attention_block": (False, False, False, False, False),
    }


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


class MochiEncoders(T5FamilyEncoders):
    vae_class = "AutoencoderKLMochi"
    text_encoder_class = "T5EncoderModel"
    text_config_class = "T5Config"
    default_max_sequence_length = MAX_SEQUENCE_LENGTH

    @classmethod
    def _tiny_vae_config(cls, family: str) -> dict:
        return tiny_vae_config()

    def _check_vae(self) -> None:
        c = self.vae.config
        self._check_channels(c.latent_channels, _prod(c.temporal_expansions), _prod(c.spatial_expansions))

    @property
    def latent_norm(self) -> dict:
        c = self.vae.config
        mean, std, sf = c.latents_mean, c.latents_std, c.scaling_factor
        if mean is None or std is None:  # MochiPipeline then only divides by scaling_factor on decode
            return make_latent_norm("mochi", [0.0] * c.latent_channels, [sf] * c.latent_channels)
        return make_latent_norm("mochi", mean, [sf / s for s in std])

    @classmethod
    def tiny(cls, family: str = "mochi", seed: int = 0, device="cpu", text_dim: int = 32) -> MochiEncoders:
        """Tiny random-init Mochi encoders (mochi is the only family name, hence the default)."""
        return super().tiny(family, seed, device, text_dim)
