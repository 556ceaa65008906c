"""Wan 2.1 / 2.2 encoders: AutoencoderKLWan (16 channels; 48 for Wan2.2 TI2V-5B) + UMT5EncoderModel."""

from __future__ import annotations

import torch

from data.encoders.base import tiny_vision_model
from data.encoders.t5 import TINY_MAX_SEQUENCE_LENGTH as TINY_MAX_SEQUENCE_LENGTH  # public here too
from data.encoders.t5 import T5FamilyEncoders
from data.latents import make_latent_norm
from radial.families import family_spec

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


TINY_IMAGE_DIM = family_spec("wan").tiny_image_dim  # the tiny CLIP vision encoder (= the tiny Wan I2V image_dim)
TINY_IMAGE_SIZE = 32  # its input resolution (patch 8: 16 patches + the class token = 17 image tokens)
I2V_MASK_CHANNELS = 4  # WanImageToVideoPipeline's mask: one channel per pixel frame of a latent frame


def tiny_image_encoder(seed: int):
    """A tiny random-init CLIPVisionModel and the CLIPImageProcessor sized for it (seeded: the same in every process)."""
    import transformers

    model = tiny_vision_model(
        transformers.CLIPVisionConfig, transformers.CLIPVisionModel, seed, TINY_IMAGE_DIM, TINY_IMAGE_SIZE, 3,
        projection_dim=TINY_IMAGE_DIM,
    )  # fmt: skip
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    return model, processor


def i2v_mask(latent_frames: int, height: int, width: int, temporal_factor: int) -> torch.Tensor:
    """WanImageToVideoPipeline.prepare_latents' mask [temporal_factor, f, h, w]: 1 on the first latent frame (the
    given image), 0 after; its channels are the pixel frames of each latent frame (the first one repeated)."""
    frames = (latent_frames - 1) * temporal_factor + 1
    mask = torch.zeros(1, frames, height, width)
    mask[:, 0] = 1
    first = mask[:, 0:1].repeat_interleave(temporal_factor, dim=1)
    mask = torch.cat([first, mask[:, 1:]], dim=1)
    return mask.view(latent_frames, temporal_factor, height, width).transpose(0, 1).contiguous()


class WanEncoders(T5FamilyEncoders):
    vae_class = "AutoencoderKLWan"
    text_encoder_class = "UMT5EncoderModel"
    text_config_class = "UMT5Config"
    default_max_sequence_length = MAX_SEQUENCE_LENGTH
    clean_prompts = True  # WanPipeline runs prompt_clean on every caption

    image_conditioning = False  # whether encode_image_conditioning is wanted (prepare --i2v)
    image_encoder = None  # CLIPVisionModel of Wan2.1 I2V (set by with_image_encoder)
    image_processor = None

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

    def with_image_encoder(self, image_encoder, image_processor) -> WanEncoders:
        """Add Wan2.1 I2V's CLIP vision encoder (None for Wan2.2 I2V, which conditions on the latents only)."""
        if image_encoder is not None:
            self._hold_image_encoder(image_encoder, image_processor, "image_processor")
        self.image_conditioning = True
        return self

    @property
    def image_fields(self) -> dict[str, list[int]]:
        """What encode_image_conditioning writes: name -> the shape after the latent grid (image_latents: channels)
        or the whole shape (image_embeds: tokens, dim); {} for text-to-video encoders."""
        if not self.image_conditioning:
            return {}
        if self.family == "wan22_ti2v":  # the clean first latent frame and the per-token mask (0 where clean)
            return {"image_latents": [self.geometry.latent_channels, 1], "first_frame_mask": [1]}
        fields = {"image_latents": [I2V_MASK_CHANNELS + self.geometry.latent_channels]}
        if self.image_encoder is not None:
            c = self.image_encoder.config
            fields["image_embeds"] = [(c.image_size // c.patch_size) ** 2 + 1, c.hidden_size]
        return fields

    @torch.no_grad()
    def encode_image_conditioning(self, clip: torch.Tensor, image) -> dict[str, torch.Tensor]:
        """What WanImageToVideoPipeline computes from the first frame: `image_latents` [4 + 16, f, h, w] (its mask,
        then the VAE latent of the first frame followed by black frames) and `image_embeds` [N, D] (the CLIP vision
        encoder's penultimate hidden states). `clip`: pixels [3, F, H, W] in [-1, 1]; `image`: that first frame as
        the PIL image a user would give the pipeline."""
        _, frames, h, w = clip.shape
        if self.family == "wan22_ti2v":  # expand_timesteps: the first frame alone, encoded; 0 in the mask there
            latent = self.encode_video(clip[:, :1].unsqueeze(0))[0]
            _, f, lh, lw = self.latent_shape(frames, h, w)
            mask = torch.ones(1, f, lh, lw)
            mask[:, 0] = 0
            return {"image_latents": latent, "first_frame_mask": mask}
        condition = torch.cat([clip[:, :1], clip.new_zeros(3, frames - 1, h, w)], dim=1)
        latent = self.encode_video(condition.unsqueeze(0))[0]
        f, lh, lw = latent.shape[1:]
        out = {"image_latents": torch.cat([i2v_mask(f, lh, lw, self.geometry.temporal_factor), latent])}
        if self.image_encoder is not None:
            pixels = self.image_processor(images=image, return_tensors="pt").pixel_values
            dtype = next(self.image_encoder.parameters()).dtype
            states = self.image_encoder(pixel_values=pixels.to(self.device, dtype), output_hidden_states=True)
            out["image_embeds"] = states.hidden_states[-2][0].float().cpu()
        return out
