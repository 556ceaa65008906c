"""Wan 2.1 / 2.2 encoders: AutoencoderKLWan (16 channels; 48 for Wan2.2 TI2V-5B) + UMT5EncoderModel."""

from __future__ import annotations

from pathlib import Path

import torch

from data.encoders.base import (
    FamilyEncoders,
    TextField,
    default_text_dtype,
    prompt_clean,
    read_text_settings,
    require_folder,
)
from data.latents import make_latent_norm

MAX_SEQUENCE_LENGTH = 512  # WanPipeline.__call__ default
TINY_MAX_SEQUENCE_LENGTH = 128


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


class WanEncoders(FamilyEncoders):
    components = ("vae", "text_encoder", "tokenizer")

    def __init__(self, family, vae, text_encoder, tokenizer, source, device="cpu", max_sequence_length=None):
        super().__init__(family, source, device)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.max_sequence_length = int(max_sequence_length or MAX_SEQUENCE_LENGTH)
        self._check_vae()

    def _check_vae(self) -> None:
        c = self.vae.config
        self._check_channels(c.z_dim, c.scale_factor_temporal, c.scale_factor_spatial)

    def text_settings(self) -> dict:
        if self.max_sequence_length == MAX_SEQUENCE_LENGTH:
            return {}
        return {"max_sequence_length": self.max_sequence_length}

    @property
    def text_fields(self) -> dict[str, TextField]:
        dim = self.text_encoder.config.d_model
        return {"prompt_embeds": TextField("prompt_embeds", dim, self.max_sequence_length, "prompt_attention_mask")}

    @property
    def latent_norm(self) -> dict:
        c = self.vae.config
        return make_latent_norm("wan", c.latents_mean, [1.0 / s for s in c.latents_std])

    def _encode_text(self, captions):
        captions = [prompt_clean(c) for c in captions]
        enc = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)
        hidden = self.text_encoder(ids, mask).last_hidden_state
        return [{"prompt_embeds": e} for e in self._trim(hidden, mask)]

    @classmethod
    def tiny(cls, family: str, seed: int = 0, device="cpu", text_dim: int = 32) -> WanEncoders:
        from diffusers import AutoencoderKLWan
        from transformers import UMT5Config, UMT5EncoderModel

        from data.encoders.tokenizer import byte_level_tokenizer

        tokenizer = byte_level_tokenizer(TINY_MAX_SEQUENCE_LENGTH)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**tiny_vae_config(family))
            config = UMT5Config(
                vocab_size=len(tokenizer),
                d_model=text_dim,
                d_kv=8,
                d_ff=2 * text_dim,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
            text_encoder = UMT5EncoderModel(config)
        return cls(family, vae, text_encoder, tokenizer, f"tiny:seed={seed}", device, TINY_MAX_SEQUENCE_LENGTH).to(
            device
        )

    @classmethod
    def from_pretrained(
        cls, family, path, device="cpu", vae_dtype=torch.float32, text_dtype=None, max_sequence_length=None
    ) -> WanEncoders:
        root = require_folder(path, family, list(cls.components))
        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, UMT5EncoderModel

        device = torch.device(device)
        text_dtype = text_dtype or default_text_dtype(device)
        vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae", torch_dtype=vae_dtype)
        text_encoder = UMT5EncoderModel.from_pretrained(root, subfolder="text_encoder", dtype=text_dtype)
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        max_sequence_length = max_sequence_length or read_text_settings(root).get("max_sequence_length")
        source = str(Path(root).resolve())
        return cls(family, vae, text_encoder, tokenizer, source, device, max_sequence_length).to(device)
