"""HunyuanVideo encoders: AutoencoderKLHunyuanVideo + a Llama text encoder (prompt template, layer -3) + CLIP
(pooled), as diffusers' HunyuanVideoPipeline.encode_prompt computes them."""

from __future__ import annotations

from pathlib import Path

import torch

from data.encoders.base import DualTextEncoders, TextField, load_components, read_text_settings, require_folder
from data.latents import make_latent_norm

MAX_SEQUENCE_LENGTH = 256  # HunyuanVideoPipeline default, counted after the template is cropped
CLIP_MAX_LENGTH = 77
HIDDEN_LAYERS_TO_SKIP = 2  # prompt_embeds = hidden_states[-(2 + 1)]
TINY_MAX_SEQUENCE_LENGTH = 128
TINY_TEMPLATE = {"template": "Describe the video: {}", "crop_start": None}


def default_template() -> dict:
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    return dict(DEFAULT_PROMPT_TEMPLATE)


def tiny_vae_config() -> dict:
    return {
        "latent_channels": 16,
        "block_out_channels": (8, 8, 8, 8),
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "mid_block_add_attention": False,
    }


class HunyuanEncoders(DualTextEncoders):
    vae_class = "AutoencoderKLHunyuanVideo"

    def __init__(
        self,
        family,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        source,
        device="cpu",
        max_sequence_length=None,
        prompt_template=None,
    ):
        super().__init__(family, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, source, device)
        self.max_sequence_length = int(max_sequence_length or MAX_SEQUENCE_LENGTH)
        self.prompt_template = dict(prompt_template or default_template())
        if "{}" not in self.prompt_template["template"]:
            raise ValueError(f"hunyuan prompt template has no '{{}}' placeholder: {self.prompt_template['template']!r}")
        self.crop_start = self._crop_start()
        self._check_vae()

    def _crop_start(self) -> int:
        crop = self.prompt_template.get("crop_start")
        if crop is not None:
            return int(crop)
        # Template tokens before the caption: the common prefix of two different fillings.
        a = self.tokenizer(self.prompt_template["template"].format("a")).input_ids
        b = self.tokenizer(self.prompt_template["template"].format("b")).input_ids
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    def _check_vae(self) -> None:
        c = self.vae.config
        self._check_channels(c.latent_channels, c.temporal_compression_ratio, c.spatial_compression_ratio)

    def text_settings(self) -> dict:
        settings = {}
        if self.max_sequence_length != MAX_SEQUENCE_LENGTH:
            settings["max_sequence_length"] = self.max_sequence_length
        if self.prompt_template != default_template():
            settings["prompt_template"] = self.prompt_template
        return settings

    @property
    def text_fields(self) -> dict[str, TextField]:
        return {
            "prompt_embeds": TextField(
                "prompt_embeds", self.text_encoder.config.hidden_size, self.max_sequence_length, "prompt_attention_mask"
            ),
            "pooled_prompt_embeds": TextField("pooled_prompt_embeds", self.text_encoder_2.config.hidden_size),
        }

    @property
    def latent_norm(self) -> dict:
        c = self.vae.config
        return make_latent_norm("hunyuan", [0.0] * c.latent_channels, [c.scaling_factor] * c.latent_channels)

    def _encode_text(self, captions):
        prompts = [self.prompt_template["template"].format(c) for c in captions]
        enc = self.tokenizer(
            prompts,
            max_length=self.max_sequence_length + self.crop_start,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        ids, mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)
        out = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-(HIDDEN_LAYERS_TO_SKIP + 1)]
        hidden, mask = hidden[:, self.crop_start :], mask[:, self.crop_start :]

        enc2 = self.tokenizer_2(
            list(captions), padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt"
        )
        pooled = self.text_encoder_2(enc2.input_ids.to(self.device), output_hidden_states=False).pooler_output
        return [
            {"prompt_embeds": e, "pooled_prompt_embeds": p}
            for e, p in zip(self._trim(hidden, mask), pooled, strict=True)
        ]

    @classmethod
    def tiny(cls, family: str = "hunyuan", seed: int = 0, device="cpu", text_dim: int = 32, pooled_dim: int = 16):
        from diffusers import AutoencoderKLHunyuanVideo
        from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

        from data.encoders.tokenizer import byte_level_tokenizer, tiny_decoder_config

        tokenizer = byte_level_tokenizer(TINY_MAX_SEQUENCE_LENGTH + 64, add_bos=True)
        tokenizer_2 = byte_level_tokenizer(CLIP_MAX_LENGTH, add_bos=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLHunyuanVideo(**tiny_vae_config())
            llama = LlamaModel(LlamaConfig(**tiny_decoder_config(tokenizer, text_dim)))
            clip = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=len(tokenizer_2),
                    hidden_size=pooled_dim,
                    intermediate_size=2 * pooled_dim,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    max_position_embeddings=CLIP_MAX_LENGTH,
                    projection_dim=pooled_dim,
                    pad_token_id=tokenizer_2.pad_token_id,
                    bos_token_id=tokenizer_2.bos_token_id,
                    eos_token_id=tokenizer_2.eos_token_id,
                )
            )
        return cls(
            family,
            vae,
            llama,
            tokenizer,
            clip,
            tokenizer_2,
            f"tiny:seed={seed}",
            device,
            TINY_MAX_SEQUENCE_LENGTH,
            TINY_TEMPLATE,
        ).to(device)

    @classmethod
    def from_pretrained(
        cls, family, path, device="cpu", vae_dtype=torch.float32, text_dtype=None, max_sequence_length=None
    ) -> HunyuanEncoders:
        root = require_folder(path, family, list(cls.components))
        device = torch.device(device)
        classes = {
            "vae": "AutoencoderKLHunyuanVideo",
            "text_encoder": "LlamaModel",
            "tokenizer": "AutoTokenizer",
            "text_encoder_2": "CLIPTextModel",
            "tokenizer_2": "AutoTokenizer",
        }
        parts = load_components(root, classes, device, vae_dtype, text_dtype)
        settings = read_text_settings(root)
        return cls(
            family,
            *parts,
            str(Path(root).resolve()),
            device,
            max_sequence_length or settings.get("max_sequence_length"),
            settings.get("prompt_template"),
        ).to(device)
