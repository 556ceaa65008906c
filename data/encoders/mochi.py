"""Mochi-1 encoders: AutoencoderKLMochi (12 channels, 6x temporal) + T5EncoderModel, as MochiPipeline uses them."""

from __future__ import annotations

from pathlib import Path

import torch

from data.encoders.base import FamilyEncoders, TextField, default_text_dtype, read_text_settings, require_folder
from data.latents import make_latent_norm

MAX_SEQUENCE_LENGTH = 256  # MochiPipeline default
TINY_MAX_SEQUENCE_LENGTH = 128


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


class MochiEncoders(FamilyEncoders):
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
        self._check_channels(c.latent_channels, _prod(c.temporal_expansions), _prod(c.spatial_expansions))

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
        mean, std, sf = c.latents_mean, c.latents_std, c.scaling_factor
        if mean is None or std is None:  # MochiPipeline then only divides by scaling_factor on decode
            return make_latent_norm("mochi", [0.0] * c.latent_channels, [sf] * c.latent_channels)
        return make_latent_norm("mochi", mean, [sf / s for s in std])

    def _encode_text(self, captions):
        enc = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids, mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)
        hidden = self.text_encoder(ids, attention_mask=mask)[0]
        return [{"prompt_embeds": e} for e in self._trim(hidden, mask)]

    @classmethod
    def tiny(cls, family: str = "mochi", seed: int = 0, device="cpu", text_dim: int = 32) -> MochiEncoders:
        from diffusers import AutoencoderKLMochi
        from transformers import T5Config, T5EncoderModel

        from data.encoders.tokenizer import byte_level_tokenizer

        tokenizer = byte_level_tokenizer(TINY_MAX_SEQUENCE_LENGTH)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLMochi(**tiny_vae_config())
            text_encoder = T5EncoderModel(
                T5Config(
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
            )
        return cls(family, vae, text_encoder, tokenizer, f"tiny:seed={seed}", device, TINY_MAX_SEQUENCE_LENGTH).to(
            device
        )

    @classmethod
    def from_pretrained(
        cls, family, path, device="cpu", vae_dtype=torch.float32, text_dtype=None, max_sequence_length=None
    ) -> MochiEncoders:
        root = require_folder(path, family, list(cls.components))
        from diffusers import AutoencoderKLMochi
        from transformers import AutoTokenizer, T5EncoderModel

        device = torch.device(device)
        text_dtype = text_dtype or default_text_dtype(device)
        vae = AutoencoderKLMochi.from_pretrained(root, subfolder="vae", torch_dtype=vae_dtype)
        text_encoder = T5EncoderModel.from_pretrained(root, subfolder="text_encoder", dtype=text_dtype)
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        max_sequence_length = max_sequence_length or read_text_settings(root).get("max_sequence_length")
        source = str(Path(root).resolve())
        return cls(family, vae, text_encoder, tokenizer, source, device, max_sequence_length).to(device)
