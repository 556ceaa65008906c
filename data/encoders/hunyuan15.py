"""HunyuanVideo-1.5 encoders: AutoencoderKLHunyuanVideo15 (32 channels, 16x) + Qwen2.5-VL text states (chat template,
layer -3, template cropped) + ByT5 states of the prompt's quoted glyph text, and for image-to-video a SigLIP vision
encoder and the first frame's latent. Every state comes from the diffusers pipelines' own static methods
(HunyuanVideo15Pipeline._get_mllm_prompt_embeds / _get_byt5_prompt_embeds, HunyuanVideo15ImageToVideoPipeline.
_get_image_embeds / _get_image_latents), so prepared data is what those pipelines compute."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from data.encoders.base import (
    DualTextEncoders,
    TextField,
    load_components,
    read_text_settings,
    require_folder,
    tiny_vision_model,
)
from data.latents import make_latent_norm
from radial.families import family_spec

MAX_SEQUENCE_LENGTH = 1000  # HunyuanVideo15Pipeline.tokenizer_max_length (Qwen tokens after the cropped template)
CROP_START = 108  # its prompt_template_encode_start_idx: the system message's tokens in Qwen's chat template
GLYPH_MAX_LENGTH = 256  # its tokenizer_2_max_length (ByT5 bytes of the quoted text)
#: subfolder -> class of a HunyuanVideo-1.5 diffusers folder, in the constructor's order
PRETRAINED_CLASSES = {
    "vae": "AutoencoderKLHunyuanVideo15",
    "text_encoder": "Qwen2_5_VLTextModel",
    "tokenizer": "AutoTokenizer",
    "text_encoder_2": "T5EncoderModel",
    "tokenizer_2": "ByT5Tokenizer",
}
TINY_MAX_SEQUENCE_LENGTH = 64
TINY_GLYPH_MAX_LENGTH = 32
TINY_SYSTEM_MESSAGE = "Describe the video."
# Qwen2's chat layout (what apply_chat_template renders for [system, user] with add_generation_prompt) for the tiny
# byte-level tokenizer; the real Qwen2.5-VL tokenizer brings its own.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_IMAGE_DIM = family_spec("hunyuan15").tiny_image_dim  # the tiny SigLIP (= the tiny transformer's image_embed_dim)
TINY_IMAGE_SIZE = 32  # its input resolution (patch 8: 16 image tokens)
MASK_CHANNELS = 1  # the pipelines' conditioning mask: one channel, 1 on the first latent frame for I2V


def default_system_message() -> str:
    from diffusers import HunyuanVideo15Pipeline

    return inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters["system_message"].default


def tiny_vae_config() -> dict:
    """A ~2M-parameter AutoencoderKLHunyuanVideo15 with the real compression (4x temporal, 16x spatial, 32 channels);
    the last width must be a multiple of 2 x 32 (the encoder's channel-averaging shortcut)."""
    return {"block_out_channels": (8, 8, 8, 16, 64), "layers_per_block": 1, "latent_channels": 32}


def tiny_image_encoder(seed: int):
    """A tiny random-init SiglipVisionModel and the SiglipImageProcessor sized for it (seeded)."""
    import transformers

    model = tiny_vision_model(
        transformers.SiglipVisionConfig, transformers.SiglipVisionModel, seed, TINY_IMAGE_DIM, TINY_IMAGE_SIZE, 2
    )
    # the PIL processor: SiglipImageProcessor itself warns and falls back to it without torchvision
    processor_class = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    processor = processor_class(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return model, processor


class Hunyuan15Encoders(DualTextEncoders):
    vae_class = "AutoencoderKLHunyuanVideo15"

    image_conditioning = False  # whether encode_image_conditioning is wanted (prepare --i2v)
    image_encoder = None  # SiglipVisionModel of the I2V pipeline (set by with_image_encoder)
    feature_extractor = None

    def __init__(self, family, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, source, device="cpu",
                 settings: dict | None = None):  # fmt: skip
        super().__init__(family, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, source, device)
        settings = settings or {}
        self.max_sequence_length = int(settings.get("max_sequence_length", MAX_SEQUENCE_LENGTH))
        self.crop_start = int(settings.get("crop_start", CROP_START))
        self.glyph_max_length = int(settings.get("glyph_max_length", GLYPH_MAX_LENGTH))
        self.system_message = settings.get("system_message") or default_system_message()
        self._check_vae()

    def _check_vae(self) -> None:
        c = self.vae.config
        self._check_channels(c.latent_channels, c.temporal_compression_ratio, c.spatial_compression_ratio)

    def text_settings(self) -> dict:
        """Settings that differ from HunyuanVideo15Pipeline's (the attribute names it reads them from are in
        radial.generation.pipeline.apply_text_settings)."""
        ours = {
            "max_sequence_length": self.max_sequence_length,
            "crop_start": self.crop_start,
            "glyph_max_length": self.glyph_max_length,
            "system_message": self.system_message,
        }
        defaults = {
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
            "crop_start": CROP_START,
            "glyph_max_length": GLYPH_MAX_LENGTH,
            "system_message": default_system_message(),
        }
        return {k: v for k, v in ours.items() if v != defaults[k]}

    @property
    def text_fields(self) -> dict[str, TextField]:
        return {
            "prompt_embeds": TextField(
                "prompt_embeds", self.text_encoder.config.hidden_size, self.max_sequence_length, "prompt_attention_mask"
            ),
            "prompt_embeds_2": TextField(
                "prompt_embeds_2", self.text_encoder_2.config.d_model, self.glyph_max_length, "prompt_attention_mask_2"
            ),
        }

    @property
    def latent_norm(self) -> dict:
        c = self.vae.config
        return make_latent_norm("hunyuan", [0.0] * c.latent_channels, [c.scaling_factor] * c.latent_channels)

    def _encode_text(self, captions):
        from diffusers import HunyuanVideo15Pipeline as Pipe

        embeds, mask = Pipe._get_mllm_prompt_embeds(
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            prompt=captions,
            device=self.device,
            tokenizer_max_length=self.max_sequence_length,
            system_message=self.system_message,
            crop_start=self.crop_start,
        )
        # ByT5 states of the quoted text; a prompt without quotes has none (zeros, mask 0: stored as 0 tokens)
        glyph, glyph_mask = Pipe._get_byt5_prompt_embeds(
            tokenizer=self.tokenizer_2,
            text_encoder=self.text_encoder_2,
            prompt=captions,
            device=self.device,
            tokenizer_max_length=self.glyph_max_length,
        )
        return [
            {"prompt_embeds": e, "prompt_embeds_2": g}
            for e, g in zip(self._trim(embeds, mask), self._trim(glyph, glyph_mask), strict=True)
        ]

    # ----- image-to-video -----

    def with_image_encoder(self, image_encoder, feature_extractor) -> Hunyuan15Encoders:
        """Add the I2V pipeline's SigLIP vision encoder and its image processor."""
        self._hold_image_encoder(image_encoder, feature_extractor, "feature_extractor")
        self.image_conditioning = True
        return self

    @property
    def image_fields(self) -> dict[str, list[int]]:
        """image_latents: [32 first-frame latent + 1 mask] channels over the latent grid; image_embeds: SigLIP
        [tokens, dim]; {} for text-to-video encoders."""
        if not self.image_conditioning:
            return {}
        c = self.image_encoder.config
        return {
            "image_latents": [self.geometry.latent_channels + MASK_CHANNELS],
            "image_embeds": [(c.image_size // c.patch_size) ** 2, c.hidden_size],
        }

    @torch.no_grad()
    def encode_image_conditioning(self, clip: torch.Tensor, image) -> dict[str, torch.Tensor]:
        """What HunyuanVideo15ImageToVideoPipeline computes from the first frame: `image_latents` [32 + 1, f, h, w]
        (prepare_cond_latents_and_mask: the VAE latent of the image alone on latent frame 0, zeros after, then the
        mask, 1 on frame 0) and `image_embeds` [N, D] (SigLIP's last hidden state). `clip`: pixels [3, F, H, W] in
        [-1, 1]; `image`: its first frame as the PIL image a user would give the pipeline."""
        from diffusers import HunyuanVideo15ImageToVideoPipeline as Pipe
        from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

        _, frames, h, w = clip.shape
        processor = HunyuanVideo15ImageProcessor(
            vae_scale_factor=self.geometry.spatial_factor, do_resize=False, do_convert_rgb=True
        )
        raw = Pipe._get_image_latents(self.vae, processor, image, h, w, self.device)[0].float().cpu()  # * scaling
        _, f, lh, lw = self.latent_shape(frames, h, w)
        cond = torch.zeros(raw.shape[0], f, lh, lw)
        cond[:, :1] = raw
        mask = torch.zeros(MASK_CHANNELS, f, lh, lw)
        mask[:, 0] = 1.0
        embeds = Pipe._get_image_embeds(self.image_encoder, self.feature_extractor, image, self.device)
        return {"image_latents": torch.cat([cond, mask]), "image_embeds": embeds[0].float().cpu()}

    # ----- construction -----

    @classmethod
    def tiny(cls, family: str = "hunyuan15", seed: int = 0, device="cpu", text_dim: int = 32, glyph_dim: int = 16):
        """Seeded random-init real classes: a 3-layer Qwen2.5-VL text model over the byte-level tokenizer (with a
        Qwen-style chat template) and a 2-layer T5 encoder over the real ByT5 tokenizer (it needs no files)."""
        from diffusers import AutoencoderKLHunyuanVideo15
        from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

        from data.encoders.tokenizer import byte_level_tokenizer, tiny_decoder_config, tiny_t5_config

        tokenizer = byte_level_tokenizer(TINY_MAX_SEQUENCE_LENGTH + 128)
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
        tokenizer_2 = ByT5Tokenizer()
        prefix = f"<|im_start|>system\n{TINY_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n"
        crop_start = len(tokenizer(prefix, add_special_tokens=False).input_ids)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLHunyuanVideo15(**tiny_vae_config())
            # mrope over a head dim of 8: (temporal, height, width) sections of 1, 1 and 2 rotary pairs
            mrope = {"type": "mrope", "mrope_section": [1, 1, 2]}
            qwen = Qwen2_5_VLTextModel(
                Qwen2_5_VLTextConfig(**tiny_decoder_config(tokenizer, text_dim), rope_scaling=mrope)
            )
            t5 = T5EncoderModel(T5Config(**tiny_t5_config(tokenizer_2, glyph_dim, 2)))
        settings = {
            "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
            "crop_start": crop_start,
            "glyph_max_length": TINY_GLYPH_MAX_LENGTH,
            "system_message": TINY_SYSTEM_MESSAGE,
        }
        return cls(family, vae, qwen, tokenizer, t5, tokenizer_2, f"tiny:seed={seed}", device, settings).to(device)

    @classmethod
    def from_pretrained(cls, family, path, device="cpu", vae_dtype=torch.float32, text_dtype=None) -> Hunyuan15Encoders:
        root = require_folder(path, family, list(cls.components))
        device = torch.device(device)
        parts = load_components(root, PRETRAINED_CLASSES, device, vae_dtype, text_dtype)
        return cls(family, *parts, str(Path(root).resolve()), device, read_text_settings(root)).to(device)
