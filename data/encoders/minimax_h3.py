"""MiniMax-H3 encoders: AutoencoderKLMiniMaxH3 (24 channels, 16x spatial, 17 frames -> 5 latent frames), the mono
AutoencoderKLMiniMaxH3Audio over each stereo channel (32 kHz, 40 latents a second), and Qwen3-VL text states
(`hidden_states[50]` of the untemplated prompt) through the modular pipeline's own `get_qwen3vl_prompt_embeds`.

The sound track of a clip becomes `audio_latents` [2, C, A] (A = the pipeline's `audio_latent_num_frames` of the clip),
normalised with the audio VAE's latents_mean / latents_std as the pipeline does; a clip without an audio stream gets
the latents of silence (a zero waveform through the same VAE) and its record says `"audio": "silence"`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from data.encoders.base import FamilyEncoders, TextField, load_components, read_text_settings, require_folder
from data.latents import make_latent_norm

TEXT_ENCODER_LAYER = 50  # MiniMaxH3ModularPipeline.text_encoder_layer
MAX_SEQUENCE_LENGTH = 1024  # the longest prompt a dataset stores (H3 packs the prompt's own tokens, no padding)
AUDIO_CHANNELS = 2  # stereo, as two batch items of the mono audio VAE
PIXEL_MEAN = (0.485, 0.456, 0.406)  # MiniMaxH3ModularPipeline.pixel_mean / pixel_std (ImageNet)
PIXEL_STD = (0.229, 0.224, 0.225)
PRETRAINED_CLASSES = {
    "vae": "AutoencoderKLMiniMaxH3",
    "audio_vae": "AutoencoderKLMiniMaxH3Audio",
    "text_encoder": "Qwen3VLForConditionalGeneration",
    "tokenizer": "Qwen2TokenizerFast",
}
TINY_MAX_SEQUENCE_LENGTH = 64
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
TEXT_ONLY_FILE = "text_only_processor.json"


class TextOnlyTokenTypes:
    """What `get_qwen3vl_prompt_embeds` asks of the Qwen3VLProcessor for a text-only (t2va) prompt: token type ids
    with no vision tokens, all 0 (text), as `Qwen3VLProcessor.create_mm_token_type_ids` gives them. The tiny encoders
    use it because the real processor's image and video processors need torchvision."""

    def create_mm_token_type_ids(self, input_ids: list) -> list[list[int]]:
        return [[0] * len(ids) for ids in input_ids]

    def to_dict(self) -> dict:
        return {"class": "TextOnlyTokenTypes"}

    def save_pretrained(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / TEXT_ONLY_FILE).write_text(json.dumps(self.to_dict()))


def tiny_vae_configs() -> tuple[dict, dict]:
    """A ~130k-parameter video VAE with the real compression (16x spatial, 17-frame chunks -> 5 latent frames, 24
    channels) and a ~400k-parameter audio VAE with the real hop (800 samples at 32 kHz) and 8 latent channels."""
    video = {
        "block_out_channels": (8, 8, 16, 16),
        "layers_per_block": 1,
        "spatial_downsample_factors": (2, 2, 2, 2),
        "temporal_downsample_factors": (1, 2, 2, 1),
        "norm_num_groups": 4,
        "decoder_num_layers": 1,
        "decoder_num_attention_heads": 2,
        "decoder_attention_head_dim": 8,
        "decoder_num_register_tokens": 1,
        "decoder_ffn_mult": 2,
    }
    audio = {
        "encoder_dim": 4,
        "latent_dim": 16,
        "latent_channels": 8,
        "num_attention_heads": 2,
        "decoder_dim": 128,  # halved by each of the 7 upsamplers
        "resblock_kernel_sizes": (3,),
        "resblock_dilation_sizes": ((1,),),
        "latents_mean": [0.0] * 8,  # the pipeline normalises with them (the real VAE's config has its own)
        "latents_std": [1.0] * 8,
    }
    return video, audio


def audio_latent_count(frames: int, fps: float) -> int:
    """Audio latents per channel of a clip of `frames` at `fps` (the pipeline's `audio_latent_num_frames`)."""
    from diffusers.modular_pipelines.minimax_h3.modular_pipeline import audio_latent_num_frames

    return audio_latent_num_frames(frames, fps)


class MiniMaxH3Encoders(FamilyEncoders):
    components = ("vae", "audio_vae", "text_encoder", "tokenizer", "processor")
    vae_class = "AutoencoderKLMiniMaxH3"

    def __init__(self, family, vae, audio_vae, text_encoder, tokenizer, processor, source, device="cpu",
                 settings: dict | None = None):  # fmt: skip
        super().__init__(family, source, device)
        self.vae = vae.eval().requires_grad_(False)
        self.audio_vae = audio_vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer, self.processor = tokenizer, processor
        settings = settings or {}
        self.max_sequence_length = int(settings.get("max_sequence_length", MAX_SEQUENCE_LENGTH))
        self.text_encoder_layer = int(settings.get("text_encoder_layer", TEXT_ENCODER_LAYER))
        self._check_vae()

    def _check_vae(self) -> None:
        c = self.vae.config
        if (c.clip_length, self.vae.tokens_chunk_size) != (self.geometry.temporal_factor, self.geometry.chunk_latents):
            raise ValueError(
                f"{self.source}: vae/ encodes {c.clip_length}-frame chunks into {self.vae.tokens_chunk_size} latent "
                f"frames; model {self.family} expects {self.geometry.temporal_factor} -> {self.geometry.chunk_latents}"
            )
        self._check_channels(c.latent_channels, self.geometry.temporal_factor, self.vae.spatial_compression_ratio)

    def text_settings(self) -> dict:
        ours = {"max_sequence_length": self.max_sequence_length, "text_encoder_layer": self.text_encoder_layer}
        defaults = {"max_sequence_length": MAX_SEQUENCE_LENGTH, "text_encoder_layer": TEXT_ENCODER_LAYER}
        return {k: v for k, v in ours.items() if v != defaults[k]}

    @property
    def text_fields(self) -> dict[str, TextField]:
        dim = self.text_encoder.config.text_config.hidden_size
        return {"prompt_embeds": TextField("prompt_embeds", dim, self.max_sequence_length, "prompt_attention_mask")}

    @property
    def latent_norm(self) -> dict:
        c = self.vae.config
        return make_latent_norm("h3", c.latents_mean, [1.0 / s for s in c.latents_std])

    @property
    def joint_fields(self) -> dict[str, list[int]]:
        return {"audio_latents": [AUDIO_CHANNELS, self.audio_vae.config.latent_channels]}

    def _encode_text(self, captions):
        from diffusers.modular_pipelines.minimax_h3.encoders import get_qwen3vl_prompt_embeds

        out = []
        for caption in captions:  # the pipeline encodes one prompt per call (one packed document)
            ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"][: self.max_sequence_length]
            if not ids:  # the empty prompt (caption dropout): no text rows
                out.append({"prompt_embeds": torch.zeros(0, self.text_fields["prompt_embeds"].dim)})
                continue
            embeds = get_qwen3vl_prompt_embeds(
                self.text_encoder, self.processor, ids, {}, self.text_encoder_layer, self.device, torch.float32
            )
            out.append({"prompt_embeds": embeds[0]})
        return out

    @torch.no_grad()
    def encode_video(self, video, sample=False, generator=None) -> torch.Tensor:
        """Pixels [B, 3, F, H, W] in [-1, 1] -> normalized latents, the pixels ImageNet-normalized first as the
        pipeline's `encode_vae_condition` does."""
        mean = torch.tensor(PIXEL_MEAN, device=video.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(PIXEL_STD, device=video.device).view(1, 3, 1, 1, 1)
        return super().encode_video(((video.float() + 1) / 2 - mean) / std, sample, generator)

    @torch.no_grad()
    def encode_joint(self, path: str | Path, start: float, frames: int, fps: float) -> tuple[dict, dict]:
        """`audio_latents` [2, C, A] of the clip's sound (silence where the file has none) and the record note
        `{"audio": "track" | "silence"}`."""
        from data.audio import read_audio

        count = audio_latent_count(frames, fps)
        c = self.audio_vae.config
        wave = read_audio(path, start, count * self.audio_vae.hop_length, c.sampling_rate)
        note = {"audio": "silence" if wave is None else "track"}
        if wave is None:
            wave = torch.zeros(AUDIO_CHANNELS, count * self.audio_vae.hop_length)
        dtype = next(self.audio_vae.parameters()).dtype
        raw = self.audio_vae.encode(wave[:, None].to(self.device, dtype)).latent_dist.mode().float().cpu()
        mean = torch.tensor(c.latents_mean).view(1, -1, 1)
        std = torch.tensor(c.latents_std).view(1, -1, 1)
        return {"audio_latents": ((raw - mean) / std)[..., :count].contiguous()}, note

    @classmethod
    def tiny(cls, family: str = "h3", seed: int = 0, device="cpu", text_dim: int = 32) -> MiniMaxH3Encoders:
        """Seeded random-init real classes: a 51-layer, 32-wide Qwen3-VL (1-layer vision tower) over the byte-level
        tokenizer with Qwen's vision tokens, the tiny video and audio VAEs."""
        from diffusers import AutoencoderKLMiniMaxH3, AutoencoderKLMiniMaxH3Audio
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        from data.encoders.tokenizer import byte_level_tokenizer, tiny_decoder_config

        tokenizer = byte_level_tokenizer(4096)  # long captions are cut to max_sequence_length after tokenizing
        tokenizer.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})
        image, video, start, end = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
        text = tiny_decoder_config(tokenizer, text_dim)
        text = {k: v for k, v in text.items() if k not in ("bos_token_id", "eos_token_id")}
        # the pipeline reads hidden_states[50] and refuses a shorter stack: 51 tiny layers (each ~10k parameters)
        text.update(num_hidden_layers=TEXT_ENCODER_LAYER + 1, head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": [1, 1, 2], "mrope_interleaved": True})  # fmt: skip
        vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "patch_size": 8,
                  "out_hidden_size": text_dim, "num_position_embeddings": 16, "deepstack_visual_indexes": [0]}  # fmt: skip
        config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=image, video_token_id=video,
                               vision_start_token_id=start, vision_end_token_id=end)  # fmt: skip
        video_config, audio_config = tiny_vae_configs()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLMiniMaxH3(**video_config)
            audio_vae = AutoencoderKLMiniMaxH3Audio(**audio_config)
            qwen = Qwen3VLForConditionalGeneration(config)
        settings = {"max_sequence_length": TINY_MAX_SEQUENCE_LENGTH}
        return cls(family, vae, audio_vae, qwen, tokenizer, TextOnlyTokenTypes(), f"tiny:seed={seed}", device,
                   settings).to(device)  # fmt: skip

    @classmethod
    def from_pretrained(cls, family, path, device="cpu", vae_dtype=torch.float32, text_dtype=None) -> MiniMaxH3Encoders:
        root = require_folder(path, family, list(cls.components))
        device = torch.device(device)
        vae, audio_vae, text_encoder, tokenizer = load_components(
            root, PRETRAINED_CLASSES, device, vae_dtype, text_dtype
        )
        if (root / "processor" / TEXT_ONLY_FILE).is_file():  # a saved tiny folder
            processor = TextOnlyTokenTypes()
        else:
            from transformers import Qwen3VLProcessor

            processor = Qwen3VLProcessor.from_pretrained(root, subfolder="processor")
        return cls(family, vae, audio_vae, text_encoder, tokenizer, processor, str(Path(root).resolve()), device,
                   read_text_settings(root)).to(device)  # fmt: skip
