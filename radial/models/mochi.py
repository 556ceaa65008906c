"""Mochi-1 (diffusers' MochiTransformer3DModel): radial joint attention over [video, text] in all 48 blocks.

The official radial-attention repository never shipped Mochi; this adapter is ours. Mochi's stock processor loops
over the batch and attends [video, valid text tokens] per sample, then writes the valid text outputs first and
zeros after them. We attend the whole padded sequence at once with the text padding as a key padding mask (the
plan's text length is the padded length of the call), then put the text outputs in the stock order: equal to the
stock result for every token, without the per-sample loop. The mask model is "mochi" (no attention sink).

Mochi's own timestep runs the other way (0 = noise) and it predicts x0 - noise; `predict` converts both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from radial.comfy import ComfyRule, fused
from radial.families import family_spec
from radial.models.base import ModelAdapter, register
from radial.models.context import RadialProcessor, project_qkv


def _mochi_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Mochi's rotary embedding, as in diffusers' MochiAttnProcessor2_0."""
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


def compact_text(text_out: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Stock Mochi text layout: per sample the outputs of the valid tokens first, in order, then zeros. [B, L, ...]"""
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid positions first, order kept
    index = order.reshape(*order.shape, *([1] * (text_out.dim() - 2))).expand_as(text_out)
    gathered = text_out.gather(1, index)
    keep = torch.arange(valid.shape[1], device=valid.device)[None, :] < valid.sum(dim=1, keepdim=True)
    keep = keep.reshape(*keep.shape, *([1] * (text_out.dim() - 2)))
    return torch.where(keep, gathered, torch.zeros((), dtype=text_out.dtype, device=text_out.device))


class MochiRadialProcessor(RadialProcessor):
    """MochiAttnProcessor2_0 with one batched radial attention call instead of the per-sample SDPA loop."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        query, key, value = project_qkv(attn, hidden_states, fuse=self.state.fuse_qkv)
        encoder_query, encoder_key, encoder_value = project_qkv(attn, encoder_hidden_states, added=True)

        if image_rotary_emb is not None:
            query = _mochi_rotary(query, *image_rotary_emb)
            key = _mochi_rotary(key, *image_rotary_emb)

        batch, video_tokens = hidden_states.shape[:2]
        text_tokens = encoder_hidden_states.shape[1]
        if attention_mask is None:
            valid = torch.ones(batch, text_tokens, dtype=torch.bool, device=hidden_states.device)
        else:
            valid = attention_mask.reshape(batch, -1).bool()
            if valid.shape[1] != text_tokens:
                raise ValueError(
                    f"encoder_attention_mask must be [B, {text_tokens}] (one entry per text token), "
                    f"got {tuple(attention_mask.shape)}"
                )
        padding = torch.cat([valid.new_ones(batch, video_tokens), valid], dim=1)

        out = self.attend(
            torch.cat([query, encoder_query], dim=1),
            torch.cat([key, encoder_key], dim=1),
            torch.cat([value, encoder_value], dim=1),
            video_tokens=video_tokens,
            key_padding_mask=padding,
        )
        hidden_states = out[:, :video_tokens].flatten(2, 3)
        encoder_hidden_states = compact_text(out[:, video_tokens:], valid).flatten(2, 3)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


# genmo's original AsymmetricAttention fuses q/k/v per stream (qkv_x video, qkv_y text). Feed-forward layers are not
# mapped: the SwiGLU halves' order in the original checkpoint is not verified here.
_MOCHI_COMFY = [
    *fused("transformer_blocks.{i}.attn1.", "blocks.{i}.attn.qkv_x", ("to_q", "to_k", "to_v")),
    *fused("transformer_blocks.{i}.attn1.", "blocks.{i}.attn.qkv_y", ("add_q_proj", "add_k_proj", "add_v_proj")),
    ComfyRule(r"transformer_blocks\.(\d+)\.attn1\.to_out\.0", r"blocks.\1.attn.proj_x"),
    ComfyRule(r"transformer_blocks\.(\d+)\.attn1\.to_add_out", r"blocks.\1.attn.proj_y"),
]  # fmt: skip


class MochiAdapter(ModelAdapter):
    """Mochi-1 preview (10B, 48 blocks), 480x848 x 163 frames at 1x; its VAE needs frames = 6k+1."""

    family = "mochi"
    class_name = "MochiTransformer3DModel"
    mask_model = "mochi"
    processor_class = MochiRadialProcessor
    attention_name = "attn1"
    text_len = 256
    variants = {
        "preview": {
            "patch_size": 2,
            "num_attention_heads": 24,
            "attention_head_dim": 128,
            "num_layers": 48,
            "pooled_projection_dim": 1536,
            "in_channels": 12,
            "out_channels": None,
            "qk_norm": "rms_norm",
            "text_embed_dim": 4096,
            "time_embed_dim": 256,
            "activation_fn": "swiglu",
            "max_sequence_length": 256,
        }
    }
    default_variant = "preview"
    tiny_config = {
        "patch_size": 2,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "num_layers": 2,
        "pooled_projection_dim": 16,
        "in_channels": 12,
        "text_embed_dim": family_spec("mochi").tiny_text_dim,  # the caption pooling has 8 heads: a multiple of 8
        "time_embed_dim": 32,
        "max_sequence_length": 16,
    }

    def comfy_rules(self) -> list[ComfyRule]:
        return _MOCHI_COMFY

    def patch_size(self, transformer) -> tuple[int, int, int]:
        p = transformer.config.patch_size
        return (1, p, p)

    # Sequence parallelism: only the video tokens are split; the text stream (256 tokens, updated by every block but
    # the last) stays whole on every rank, as for HunyuanVideo.
    sp_text = "replicated"

    def context_parallel_plan(self, transformer) -> dict:
        """Split the video tokens entering the first block and the rotary tables, gather at `proj_out` (diffusers has
        no plan for this class). The patch embedding runs per frame, so the split comes after it; the processor
        builds its key mask from the local token count: [local video, whole text]."""
        from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

        rotary = ContextParallelInput(split_dim=0, expected_dims=3, split_output=True)  # cos, sin: [S, H, D/2]
        return {
            "rope": {0: rotary, 1: rotary},
            "transformer_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }

    def _lora_alternatives(self, projections: list[str], text: bool) -> list[str]:
        alts = [rf"transformer_blocks\.\d+\.attn1\.{self._lora_video[p]}" for p in projections]
        if text:
            alts += [rf"transformer_blocks\.\d+\.attn1\.{self._lora_text[p]}" for p in projections]
        return alts

    def make_dummy_conditions(
        self, transformer, batch, text_len=None, *, latent_shape=None, seed=0, valid_text=None
    ) -> dict[str, Any]:
        cfg, gen, text_len = self._dummy_start(transformer, text_len, seed)
        return {
            "prompt_embeds": self._randn((batch, text_len, cfg.text_embed_dim), gen, transformer),
            "prompt_attention_mask": self._text_mask(batch, text_len, valid_text, transformer.device),
        }

    def predict(self, transformer, latents, timestep, conditions: Mapping[str, Any]) -> torch.Tensor:
        t = self._timesteps(timestep, latents)
        embeds, mask = self._text_and_mask(conditions)
        out = transformer(
            hidden_states=latents,
            encoder_hidden_states=embeds,
            timestep=1000.0 - t,  # Mochi's timestep is 1000 at the clean end
            encoder_attention_mask=mask,
            attention_kwargs=conditions.get("attention_kwargs"),
            return_dict=False,
        )[0]
        return -out  # Mochi predicts x0 - noise


register(MochiAdapter())
