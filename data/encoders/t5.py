"""Families whose encoders are one VAE plus one T5-type text encoder (Wan: UMT5, Mochi: T5)."""

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

TINY_MAX_SEQUENCE_LENGTH = 128


class T5FamilyEncoders(FamilyEncoders):
    """A VAE and one T5-type encoder; subclasses name the classes and give `_check_vae`, `latent_norm`."""

    components = ("vae", "text_encoder", "tokenizer")

    #: class names, looked up in diffusers / transformers only when a model is built (importing them is slow)
    text_encoder_class: str = ""
    text_config_class: str = ""
    #: the diffusers pipeline's default max_sequence_length (text_settings saves only a different one)
    default_max_sequence_length: int = 512
    #: whether captions go through diffusers' `prompt_clean` first, as the family's pipeline does
    clean_prompts: bool = False

    def __init__(self, family, vae, text_encoder, tokenizer, source, device="cpu", max_sequence_length=None):
        super().__init__(family, source, device)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.max_sequence_length = int(max_sequence_length or self.default_max_sequence_length)
        self._check_vae()

    @classmethod
    def _tiny_vae_config(cls, family: str) -> dict:
        """Keyword arguments of the tiny random-init VAE of `family`."""
        raise NotImplementedError

    def text_settings(self) -> dict:
        """Only a non-default max_sequence_length (see FamilyEncoders.text_settings)."""
        if self.max_sequence_length == self.default_max_sequence_length:
            return {}
        return {"max_sequence_length": self.max_sequence_length}

    @property
    def text_fields(self) -> dict[str, TextField]:
        """One sequence field, prompt_embeds [max_sequence_length, d_model], masked by prompt_attention_mask."""
        dim = self.text_encoder.config.d_model
        return {"prompt_embeds": TextField("prompt_embeds", dim, self.max_sequence_length, "prompt_attention_mask")}

    def _encode_text(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        if self.clean_prompts:
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
        hidden = self.text_encoder(ids, attention_mask=mask).last_hidden_state
        return [{"prompt_embeds": e} for e in self._trim(hidden, mask)]

    @classmethod
    def tiny(cls, family: str, seed: int = 0, device="cpu", text_dim: int = 32) -> T5FamilyEncoders:
        """Tiny random-init encoders with the real classes; the same seed gives the same weights in every process."""
        import diffusers
        import transformers

        from data.encoders.tokenizer import byte_level_tokenizer, tiny_t5_config

        tokenizer = byte_level_tokenizer(TINY_MAX_SEQUENCE_LENGTH)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # The VAE is built first: the seeded draw order fixes the weights, which resume compares.
            vae = getattr(diffusers, cls.vae_class)(**cls._tiny_vae_config(family))
            config = getattr(transformers, cls.text_config_class)(
                **tiny_t5_config(tokenizer, text_dim, 4),
                relative_attention_num_buckets=8,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
            text_encoder = getattr(transformers, cls.text_encoder_class)(config)
        return cls(family, vae, text_encoder, tokenizer, f"tiny:seed={seed}", device, TINY_MAX_SEQUENCE_LENGTH).to(
            device
        )

    @classmethod
    def from_pretrained(
        cls, family, path, device="cpu", vae_dtype=torch.float32, text_dtype=None, max_sequence_length=None
    ) -> T5FamilyEncoders:
        """Load vae/, text_encoder/ and tokenizer/ of a local diffusers folder (and its saved text settings)."""
        root = require_folder(path, family, list(cls.components))
        import diffusers
        import transformers

        device = torch.device(device)
        text_dtype = text_dtype or default_text_dtype(device)
        vae = getattr(diffusers, cls.vae_class).from_pretrained(root, subfolder="vae", torch_dtype=vae_dtype)
        text_encoder = getattr(transformers, cls.text_encoder_class).from_pretrained(
            root, subfolder="text_encoder", dtype=text_dtype
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        max_sequence_length = max_sequence_length or read_text_settings(root).get("max_sequence_length")
        source = str(Path(root).resolve())
        return cls(family, vae, text_encoder, tokenizer, source, device, max_sequence_length).to(device)
