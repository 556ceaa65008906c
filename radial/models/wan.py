"""Wan2.1 (1.3B, 14B; T2V and I2V) and Wan2.2 (A14B experts, TI2V-5B): diffusers' WanTransformer3DModel.

Radial attention goes into each block's self-attention `attn1` (video tokens only, no text); the cross-attention
`attn2` (text, and the image for I2V) stays stock. Three registered families share the class:
    "wan"         Wan2.1 T2V 1.3B / 14B, I2V 14B (variants "t2v-1.3b", "t2v-14b", "i2v-14b")
    "wan22"       Wan2.2 A14B: two experts of the 14B architecture, each injected on its own
                  (variants "t2v-a14b", "i2v-a14b"; `experts` names their pipeline subfolders)
    "wan22_ti2v"  Wan2.2 TI2V-5B with its 48-channel, 16x VAE (variant "ti2v-5b"; per-token timesteps)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from radial.comfy import ComfyRule
from radial.families import family_spec
from radial.fused import fused_linears
from radial.models.base import ModelAdapter, register
from radial.models.context import RadialProcessor
from radial.rope_extension import RotarySpec


def _apply_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding, as in diffusers' WanAttnProcessor."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class WanRadialProcessor(RadialProcessor):
    """WanAttnProcessor for `attn1` with the attention call replaced; anything else goes to the stock processor."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or attn.is_cross_attention:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

        if self.state.fuse_qkv:
            query, key, value = fused_linears((attn.to_q, attn.to_k, attn.to_v), hidden_states)
        else:
            query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary(query, *rotary_emb)
            key = _apply_rotary(key, *rotary_emb)

        out = self.attend(query, key, value, video_tokens=hidden_states.shape[1])
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


#: diffusers' WanAttnProcessor takes the last 512 context tokens as text and the ones before as the image states
I2V_TEXT_LEN = 512


def pad_text_for_image(prompt_embeds: torch.Tensor) -> torch.Tensor:
    """Zero-pad text states [B, L, D] to the 512 tokens Wan I2V splits at (the pipeline zero-pads to 512 too)."""
    extra = I2V_TEXT_LEN - prompt_embeds.shape[1]
    if extra < 0:
        raise ValueError(f"prompt_embeds have {prompt_embeds.shape[1]} tokens; Wan I2V takes at most {I2V_TEXT_LEN}")
    return torch.nn.functional.pad(prompt_embeds, (0, 0, 0, extra)) if extra else prompt_embeds


# What every Wan2.1 transformer has, full-size or tiny: the patch, the VAE's channels, the norms, the rotary positions
# (4x of the longest clip: Wan 321 frames, 81 latent frames).
_WAN_ARCH = {
    "patch_size": (1, 2, 2),
    "in_channels": 16,
    "out_channels": 16,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
}
_WAN_BASE = {**_WAN_ARCH, "attention_head_dim": 128, "text_dim": 4096, "freq_dim": 256, "eps": 1e-6}
_WAN_14B = {**_WAN_BASE, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}

_WAN_TINY = {
    **_WAN_ARCH,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": family_spec("wan").tiny_text_dim,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
}


_WAN_COMFY = [
    *(ComfyRule(rf"blocks\.(\d+)\.attn1\.{d}", rf"blocks.\1.self_attn.{o}") for d, o in
      (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), (r"to_out\.0", "o"))),
    *(ComfyRule(rf"blocks\.(\d+)\.attn2\.{d}", rf"blocks.\1.cross_attn.{o}") for d, o in
      (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), (r"to_out\.0", "o"), ("add_k_proj", "k_img"),
       ("add_v_proj", "v_img"))),
    ComfyRule(r"blocks\.(\d+)\.ffn\.net\.0\.proj", r"blocks.\1.ffn.0"),
    ComfyRule(r"blocks\.(\d+)\.ffn\.net\.2", r"blocks.\1.ffn.2"),
]  # fmt: skip


class WanAdapter(ModelAdapter):
    """Wan2.1: self-attention `attn1` of every block is radial; the Wan mask keeps key frame 0 (attention sink)."""

    family = "wan"
    class_name = "WanTransformer3DModel"
    mask_model = "wan"
    processor_class = WanRadialProcessor
    attention_blocks = ("blocks",)
    attention_name = "attn1"
    text_len = 512
    variants = {
        "t2v-1.3b": {**_WAN_BASE, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
        "t2v-14b": _WAN_14B,
        "i2v-14b": {**_WAN_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120},
    }
    default_variant = "t2v-1.3b"
    tiny_config = _WAN_TINY
    # Tiny image-to-video: 16 noisy + 4 mask + 16 first-frame latent channels, the image states of the tiny CLIP
    # vision encoder of data/encoders (hidden size TINY_IMAGE_DIM) and the image key/value projections of I2V-14B.
    tiny_variants = {
        "i2v": {**_WAN_TINY, "in_channels": 36, "image_dim": family_spec("wan").tiny_image_dim, "added_kv_proj_dim": 32}
    }
    image_tokens = 257  # CLIP ViT-H/14 states of Wan2.1 I2V

    def comfy_rules(self) -> list[ComfyRule]:
        return _WAN_COMFY

    def matches(self, transformer) -> bool:
        return super().matches(transformer) and self.latent_channels(transformer) != 48

    def patch_size(self, transformer) -> tuple[int, int, int]:
        return tuple(transformer.config.patch_size)

    def rotary_spec(self, transformer) -> RotarySpec:
        rope = transformer.rope
        pt, ph, pw = self.patch_size(transformer)
        # WanTransformer3DModel builds WanRotaryPosEmbed with its default base 10000, in float64 (float32 where MPS
        # exists, as WanRotaryPosEmbed itself decides).
        dtype = torch.float32 if torch.backends.mps.is_available() else torch.float64
        return RotarySpec(rope, rope.t_dim, 10000.0, dtype, pt, (ph, pw))

    def _lora_alternatives(self, projections: list[str], text: bool) -> list[str]:
        alts = [rf"blocks\.\d+\.attn1\.{self._lora_video[p]}" for p in projections]
        if text:  # the cross-attention; on I2V models also its image key / value projections (ComfyUI k_img, v_img)
            alts += [rf"blocks\.\d+\.attn2\.{self._lora_video[p]}" for p in projections]
            alts += [rf"blocks\.\d+\.attn2\.{self._lora_text[p]}" for p in projections if p in "kv"]
        return alts

    def make_dummy_conditions(
        self, transformer, batch, text_len=None, *, latent_shape=None, seed=0, valid_text=None
    ) -> dict[str, Any]:
        cfg, gen, text_len = self._dummy_start(transformer, text_len, seed)
        embeds = self._randn((batch, text_len, cfg.text_dim), gen, transformer)
        if valid_text is not None:  # the Wan pipeline zero-pads the T5 states past the prompt
            embeds = embeds * self._text_mask(batch, text_len, valid_text, embeds.device)[..., None]
        cond: dict[str, Any] = {"prompt_embeds": embeds}
        if (image := self._dummy_image_latents(transformer, latent_shape, gen)) is not None:
            cond["image_latents"] = image
        if cfg.image_dim is not None:  # predict pads the text to the 512 tokens diffusers splits I2V states at
            cond["image_embeds"] = self._randn((batch, self.image_tokens, cfg.image_dim), gen, transformer)
        return cond

    def _hidden(self, latents: torch.Tensor, conditions: Mapping[str, Any]) -> torch.Tensor:
        if conditions.get("image_latents") is None:
            return latents
        # WanImageToVideoPipeline's order: noisy latents, then the 4 mask and 16 first-frame latent channels.
        return torch.cat([latents, conditions["image_latents"].to(latents.dtype)], dim=1)

    def _model_timestep(self, transformer, latents, t, conditions) -> torch.Tensor:
        return t

    def predict(self, transformer, latents, timestep, conditions: Mapping[str, Any]) -> torch.Tensor:
        t = self._timesteps(timestep, latents)
        hidden = self._hidden(latents, conditions)
        # Multi-process training wraps the model (DDP, DeepSpeed): its config and patch size are the inner module's.
        base = getattr(transformer, "module", transformer)
        text = conditions["prompt_embeds"]
        if conditions.get("image_embeds") is not None and base.config.added_kv_proj_dim is not None:
            text = pad_text_for_image(text)
        return transformer(
            hidden_states=hidden,
            timestep=self._model_timestep(base, latents, t, conditions),
            encoder_hidden_states=text,
            encoder_hidden_states_image=conditions.get("image_embeds"),
            attention_kwargs=conditions.get("attention_kwargs"),
            return_dict=False,
        )[0]

    def image_input(self, config: Mapping[str, Any]) -> str:
        # I2V transformers read the image conditioning as extra input channels (4 mask + 16 first-frame latent).
        c = dict(config)
        return "required" if (c.get("out_channels") or c["in_channels"]) != c["in_channels"] else "none"

    def fixed_text_len(self, config: Mapping[str, Any]) -> int | None:
        # Wan2.1 I2V splits its context at the last 512 tokens: text, then the image states
        return I2V_TEXT_LEN if dict(config).get("added_kv_proj_dim") else None

    def dataset_expectations(self, config: Mapping[str, Any]) -> dict[str, Any]:
        c = dict(config)
        if not c.get("in_channels"):
            return {}
        extra_channels = c["in_channels"] - (c.get("out_channels") or c["in_channels"])  # Wan I2V: 36 - 16
        return {"image_channels": extra_channels, "image_dim": c.get("image_dim") or 0}

    def first_frame_latent(self, item: Mapping[str, Any]) -> torch.Tensor | None:
        # image_latents: [4 mask + C, F, h, w] (I2V; the first latent frame encodes the first pixel frame alone) or
        # [C, 1, h, w] (TI2V): the latent is the last C channels either way.
        latents = item.get("image_latents")
        return None if latents is None else latents[-self.geometry.latent_channels :, :1]


class Wan22Adapter(WanAdapter):
    """Wan2.2 A14B: a high-noise and a low-noise expert, each a Wan2.1-14B architecture; inject each one.

    Detection never picks this family (the class and config equal Wan2.1-14B's); name it: family="wan22".
    """

    family = "wan22"
    mask_model = "wan22"
    variants = {
        "t2v-a14b": _WAN_14B,
        "i2v-a14b": {**_WAN_14B, "in_channels": 36},
    }
    default_variant = "t2v-a14b"
    tiny_variants = {"i2v": {**_WAN_TINY, "in_channels": 36}}  # Wan2.2 A14B I2V: latent conditioning, no CLIP
    experts = ("transformer", "transformer_2")  # pipeline subfolders: high-noise, low-noise expert
    # The pipelines' boundary_ratio: the high-noise expert denoises t >= ratio * 1000, the low-noise one the rest
    # (used when the config names no model.path to read it from; the tiny "i2v" expert takes I2V-A14B's).
    boundary_ratios = {"t2v-a14b": 0.875, "i2v-a14b": 0.9, "i2v": 0.9}

    def matches(self, transformer) -> bool:
        return False


class Wan22TI2VAdapter(WanAdapter):
    """Wan2.2 TI2V-5B: 48-channel latents of a 16x VAE; timesteps per token (0 on a clean first frame for I2V)."""

    family = "wan22_ti2v"
    mask_model = "wan22_ti2v"
    variants = {
        "ti2v-5b": {
            **_WAN_BASE,
            "num_attention_heads": 24,
            "ffn_dim": 14336,
            "num_layers": 30,
            "in_channels": 48,
            "out_channels": 48,
        }
    }
    default_variant = "ti2v-5b"
    tiny_config = {**_WAN_TINY, "in_channels": 48, "out_channels": 48}
    tiny_variants = {}  # one model for text- and image-to-video (not Wan2.1's channel-concatenating "i2v")
    pipeline_config = {"expand_timesteps": True}  # Wan2.2-TI2V-5B-Diffusers' model_index.json

    def image_input(self, config: Mapping[str, Any]) -> str:
        return "optional"  # a clean first latent frame, or none

    def dataset_expectations(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {}  # its first frame is a clean latent frame, not conditioning channels

    def matches(self, transformer) -> bool:
        return ModelAdapter.matches(self, transformer) and self.latent_channels(transformer) == 48

    def _hidden(self, latents: torch.Tensor, conditions: Mapping[str, Any]) -> torch.Tensor:
        # WanImageToVideoPipeline with expand_timesteps: the clean first-frame latent where the mask is 0 (no
        # channel concatenation), the noisy latents elsewhere.
        mask = conditions.get("first_frame_mask")
        if mask is None or conditions.get("image_latents") is None:
            return latents
        mask = mask.to(latents.dtype)
        return (1 - mask) * conditions["image_latents"].to(latents.dtype) + mask * latents

    def _model_timestep(self, transformer, latents, t, conditions) -> torch.Tensor:
        # The pipeline's expand_timesteps: one timestep per token, t where noised and 0 on clean conditioning.
        pt, ph, pw = self.patch_size(transformer)
        mask = conditions.get("first_frame_mask")
        if mask is None:
            b, _, f, h, w = latents.shape
            return t[:, None].expand(b, (f // pt) * (h // ph) * (w // pw))
        return (mask[:, 0, ::pt, ::ph, ::pw].to(t.dtype) * t[:, None, None, None]).flatten(1)


register(WanAdapter())
register(Wan22Adapter())
register(Wan22TI2VAdapter())
