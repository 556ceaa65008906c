"""HunyuanVideo (diffusers' HunyuanVideoTransformer3DModel): radial joint attention in the double- and single-stream
blocks.

Both block kinds attend over [video tokens, text tokens] (text last, padded to the prompt length, 256 in the
pipeline); the forward's [B, 1, 1, S] boolean mask, which marks padded text keys, becomes the key padding mask.
Layer indices run over the double-stream blocks first, then the single-stream ones (as in the official code), so
dense_layers=k keeps the first k blocks of the forward dense. The text token refiner keeps its stock attention.
The mask model is "hunyuan" (no attention sink, as in the official code).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb

from radial.comfy import ComfyRule, fused
from radial.families import family_spec
from radial.models.base import ModelAdapter, register
from radial.models.context import RadialProcessor, project_qkv
from radial.rope_extension import RotarySpec


def key_padding_from_attention_mask(attention_mask: torch.Tensor | None, batch: int, seq_len: int):
    """[B, S] bool (True = attend) from HunyuanVideo's [B, 1, 1, S] (or [B, S]) key mask; None stays None."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4 and attention_mask.shape[1] == 1 and attention_mask.shape[2] == 1:
        attention_mask = attention_mask[:, 0, 0]
    if tuple(attention_mask.shape) != (batch, seq_len):
        raise ValueError(
            f"radial attention needs a key padding mask ([B, 1, 1, S] or [B, S] with B={batch}, S={seq_len}), "
            f"got attention_mask of shape {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != torch.bool:
        raise ValueError(f"attention_mask must be boolean (True = attend), got {attention_mask.dtype}")
    return attention_mask


def append_text_stream(
    attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, encoder_hidden_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project the text stream with the added (double-stream) projections and append it after the video tokens."""
    encoder_query, encoder_key, encoder_value = project_qkv(attn, encoder_hidden_states, added=True)
    query = torch.cat([query, encoder_query], dim=1)
    key = torch.cat([key, encoder_key], dim=1)
    value = torch.cat([value, encoder_value], dim=1)
    return query, key, value


def project_out(
    attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None, video_tokens: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split the joint output [video, text] and apply the video and text output projections the block has."""
    if encoder_hidden_states is not None:
        # The joint sequence is exactly video + text tokens, so everything after the video is text.
        hidden_states, encoder_hidden_states = hidden_states[:, :video_tokens], hidden_states[:, video_tokens:]
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
    return hidden_states, encoder_hidden_states


def video_split_plan() -> dict:
    """Context-parallel plan (diffusers' `_cp_plan` format) of the HunyuanVideo classes (1.0 and 1.5): split the
    patch embedding's output [B, S, C] and the rotary tables (cos, sin [S, D/2]) over the sequence, gather at
    `proj_out`. The text stream is not named, so it stays whole on every rank (`sp_text = "replicated"`)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    rotary = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)
    return {
        "rope": {0: rotary, 1: rotary},
        "x_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


class HunyuanVideoRadialProcessor(RadialProcessor):
    """HunyuanVideoAttnProcessor2_0 with the attention call replaced by radial attention (video first, text last)."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        video_tokens = hidden_states.shape[1]
        if attn.add_q_proj is None and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)  # single-stream block

        # 1. QKV projections, 2. QK norm
        query, key, value = project_qkv(attn, hidden_states, fuse=self.state.fuse_qkv)

        # 3. Rotary embedding on the video tokens only
        if image_rotary_emb is not None:
            if attn.add_q_proj is None and encoder_hidden_states is not None:
                query = torch.cat(
                    [
                        apply_rotary_emb(query[:, :video_tokens], image_rotary_emb, sequence_dim=1),
                        query[:, video_tokens:],
                    ],
                    dim=1,
                )
                key = torch.cat(
                    [apply_rotary_emb(key[:, :video_tokens], image_rotary_emb, sequence_dim=1), key[:, video_tokens:]],
                    dim=1,
                )
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # 4. Text stream projections (double-stream blocks)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            query, key, value = append_text_stream(attn, query, key, value, encoder_hidden_states)

        # 5. Attention
        padding = key_padding_from_attention_mask(attention_mask, query.shape[0], query.shape[1])
        hidden_states = self.attend(query, key, value, video_tokens=video_tokens, key_padding_mask=padding)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        # 6. Output projection
        return project_out(attn, hidden_states, encoder_hidden_states, video_tokens)


# Double-block attention in ComfyUI's HunyuanVideo model (HunyuanVideo-1.5 loads into the same class): fused
# img_attn_qkv / txt_attn_qkv, even where the original checkpoint stores q, k and v apart (HunyuanVideo-1.5).
DOUBLE_BLOCK_ATTN_COMFY = [
    *fused("transformer_blocks.{i}.attn.", "double_blocks.{i}.img_attn_qkv", ("to_q", "to_k", "to_v")),
    *fused("transformer_blocks.{i}.attn.", "double_blocks.{i}.txt_attn_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
    ComfyRule(r"transformer_blocks\.(\d+)\.attn\.to_out\.0", r"double_blocks.\1.img_attn_proj"),
    ComfyRule(r"transformer_blocks\.(\d+)\.attn\.to_add_out", r"double_blocks.\1.txt_attn_proj"),
]  # fmt: skip

_HUNYUAN_COMFY = [
    *DOUBLE_BLOCK_ATTN_COMFY,
    *fused("single_transformer_blocks.{i}.", "single_blocks.{i}.linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ComfyRule(r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj", r"double_blocks.\1.img_mlp.fc1"),
    ComfyRule(r"transformer_blocks\.(\d+)\.ff\.net\.2", r"double_blocks.\1.img_mlp.fc2"),
    ComfyRule(r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj", r"double_blocks.\1.txt_mlp.fc1"),
    ComfyRule(r"transformer_blocks\.(\d+)\.ff_context\.net\.2", r"double_blocks.\1.txt_mlp.fc2"),
    ComfyRule(r"single_transformer_blocks\.(\d+)\.proj_out", r"single_blocks.\1.linear2"),
]  # fmt: skip


class HunyuanVideoAdapter(ModelAdapter):
    """HunyuanVideo T2V (13B: 20 double-stream + 40 single-stream blocks), 720p x 129 frames at 1x."""

    family = "hunyuan"
    class_name = "HunyuanVideoTransformer3DModel"
    mask_model = "hunyuan"
    processor_class = HunyuanVideoRadialProcessor
    attention_blocks = ("transformer_blocks", "single_transformer_blocks")
    text_len = 256
    variants = {
        "t2v": {
            "in_channels": 16,
            "out_channels": 16,
            "num_attention_heads": 24,
            "attention_head_dim": 128,
            "num_layers": 20,
            "num_single_layers": 40,
            "num_refiner_layers": 2,
            "mlp_ratio": 4.0,
            "patch_size": 2,
            "patch_size_t": 1,
            "qk_norm": "rms_norm",
            "guidance_embeds": True,
            "text_embed_dim": 4096,
            "pooled_projection_dim": 768,
            "rope_theta": 256.0,
            "rope_axes_dim": (16, 56, 56),
        }
    }
    default_variant = "t2v"
    tiny_config = {
        "in_channels": 16,
        "out_channels": 16,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "num_layers": 1,
        "num_single_layers": 1,
        "num_refiner_layers": 1,
        "mlp_ratio": 2.0,
        "patch_size": 2,
        "patch_size_t": 1,
        "qk_norm": "rms_norm",
        "guidance_embeds": True,
        "text_embed_dim": family_spec("hunyuan").tiny_text_dim,
        "pooled_projection_dim": family_spec("hunyuan").tiny_pooled_dim,
        "rope_axes_dim": (4, 6, 6),
    }

    def comfy_rules(self) -> list[ComfyRule]:
        return _HUNYUAN_COMFY

    def rotary_spec(self, transformer) -> RotarySpec:
        rope = transformer.rope  # HunyuanVideoRotaryPosEmbed: tables computed per forward, float32 angles
        pt, ph, pw = self.patch_size(transformer)
        return RotarySpec(rope, rope.rope_dim[0], float(rope.theta), torch.float32, pt, (ph, pw))

    # Sequence parallelism: only the video tokens are split; the text stream (`encoder_hidden_states`, 256 tokens
    # against 100k-460k video tokens) stays whole on every rank, so the text length needs no divisibility.
    sp_text = "replicated"

    def context_parallel_plan(self, transformer) -> dict:
        """Split the patch-embedded video tokens and the rotary tables, gather at `proj_out` (diffusers has no plan
        for this class). The forward builds its key mask from the local token count: [local video, whole text]."""
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            raise NotImplementedError(
                "parallel.sp_degree > 1 does not support HunyuanVideo with image_condition_type='token_replace' "
                "(its blocks treat the first frame's tokens apart, which one rank's share of the tokens breaks); "
                "train it with parallel.sp_degree=1"
            )
        return video_split_plan()

    def _lora_alternatives(self, projections: list[str], text: bool) -> list[str]:
        alts = [rf"transformer_blocks\.\d+\.attn\.{self._lora_video[p]}" for p in projections]
        # Single-stream blocks project video and text together with to_q/k/v; their output goes through proj_out
        # together with the MLP, so "o" has no single-stream module.
        alts += [rf"single_transformer_blocks\.\d+\.attn\.{self._lora_video[p]}" for p in projections if p != "o"]
        if text:
            alts += [rf"transformer_blocks\.\d+\.attn\.{self._lora_text[p]}" for p in projections]
        return alts

    def make_dummy_conditions(
        self, transformer, batch, text_len=None, *, latent_shape=None, seed=0, valid_text=None
    ) -> dict[str, Any]:
        cfg, gen, text_len = self._dummy_start(transformer, text_len, seed)
        cond: dict[str, Any] = {
            "prompt_embeds": self._randn((batch, text_len, cfg.text_embed_dim), gen, transformer),
            "prompt_attention_mask": self._text_mask(batch, text_len, valid_text, transformer.device),
            "pooled_prompt_embeds": self._randn((batch, cfg.pooled_projection_dim), gen, transformer),
        }
        if (image := self._dummy_image_latents(transformer, latent_shape, gen)) is not None:
            cond["image_latents"] = image
        return cond

    def predict(self, transformer, latents, timestep, conditions: Mapping[str, Any]) -> torch.Tensor:
        t = self._timesteps(timestep, latents)
        hidden = latents
        if conditions.get("image_latents") is not None:
            hidden = torch.cat([latents, conditions["image_latents"].to(latents.dtype)], dim=1)
        embeds, mask = self._text_and_mask(conditions)
        guidance = None
        base = getattr(transformer, "module", transformer)  # DDP and DeepSpeed wrap the model (no `.config`)
        if base.config.guidance_embeds:
            g = torch.as_tensor(conditions.get("guidance", 1.0), device=latents.device, dtype=torch.float32)
            guidance = (g.expand(latents.shape[0]) * 1000.0).to(latents.dtype)
        return transformer(
            hidden_states=hidden,
            timestep=t,
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            pooled_projections=conditions["pooled_prompt_embeds"],
            guidance=guidance,
            attention_kwargs=conditions.get("attention_kwargs"),
            return_dict=False,
        )[0]


register(HunyuanVideoAdapter())
