"""HunyuanVideo-1.5 (diffusers' HunyuanVideo15Transformer3DModel), text- and image-to-video: radial joint attention
in its 54 double-stream blocks. Variants "t2v" and "i2v" share the architecture (65 input channels: noisy latents,
32 first-frame latent channels and a mask channel, zeros for T2V) and differ in their config's task_type, which
tells the dataset check which conditioning a model takes (data/encoders/hunyuan15.py prepares it).

The forward joins three conditioning streams into the text part of the joint sequence, valid tokens first:
[image (SigLIP, 729), ByT5 glyph text (256), Qwen text (1000)], padding after; the processor gets that [B, T] mask
and builds a 2-D mask from it (padded text neither attends nor is attended). Here it is the key padding mask, and
the outputs of padded text queries are zeroed, which is what the stock 2-D mask gives. The plan's text length is
the padded length of the call (1985 in the pipeline). Patch size 1 over a 16x, 32-channel VAE: 480x848 is 30x53
tokens per frame. No attention sink (the "hunyuan" mask). The text refiner keeps its stock attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb

from radial.comfy import ComfyRule
from radial.families import family_spec
from radial.models.base import ModelAdapter, register
from radial.models.context import RadialProcessor
from radial.models.hunyuan import DOUBLE_BLOCK_ATTN_COMFY, append_text_stream, project_out, video_split_plan


class HunyuanVideo15RadialProcessor(RadialProcessor):
    """HunyuanVideo15AttnProcessor2_0 with the attention call replaced by radial attention (video, then text)."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, video_tokens = hidden_states.shape[:2]
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)))
        key = attn.norm_k(attn.to_k(hidden_states).unflatten(2, (attn.heads, -1)))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if encoder_hidden_states is not None:
            query, key, value = append_text_stream(attn, query, key, value, encoder_hidden_states)

        seq = query.shape[1]
        valid = None
        if attention_mask is not None:  # [B, text] (stock pads it on the left with True for the video tokens)
            valid = attention_mask.reshape(batch, -1).bool()
            valid = torch.cat([valid.new_ones(batch, seq - valid.shape[1]), valid], dim=1)
        out = self.attend(query, key, value, video_tokens=video_tokens, key_padding_mask=valid)
        if valid is not None:
            out = torch.where(valid[:, :, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        hidden_states = out.flatten(2, 3).to(query.dtype)

        return project_out(attn, hidden_states, encoder_hidden_states, video_tokens)


_HY15 = {
    "in_channels": 65,
    "out_channels": 32,
    "num_attention_heads": 16,
    "attention_head_dim": 128,
    "num_layers": 54,
    "num_refiner_layers": 2,
    "mlp_ratio": 4.0,
    "patch_size": 1,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
    "text_embed_dim": 3584,
    "text_embed_2_dim": 1472,
    "image_embed_dim": 1152,
    "rope_theta": 256.0,
    "rope_axes_dim": (16, 56, 56),
}


#: text settings (radial_text_settings.json keys) -> the pipelines' attributes that hold them
TEXT_ATTRS = {
    "max_sequence_length": "tokenizer_max_length",
    "crop_start": "prompt_template_encode_start_idx",
    "glyph_max_length": "tokenizer_2_max_length",
    "system_message": "system_message",
}
#: stored text states (data.prepare's names) -> the pipelines' argument names
EMBED_ARGS = {
    "prompt_embeds": "prompt_embeds",
    "prompt_attention_mask": "prompt_embeds_mask",
    "prompt_embeds_2": "prompt_embeds_2",
    "prompt_attention_mask_2": "prompt_embeds_mask_2",
}


def _embeds_kwargs(pipe, clip, embeds) -> dict[str, Any]:
    """The pipelines' prompt-state arguments from stored Qwen and ByT5 states (and their negatives, needed when the
    guider does classifier-free guidance: the pipeline has no text encoder to make them)."""
    if clip.prompt is not None:
        raise ValueError("give a prompt or prompt embeddings, not both")
    cfg = pipe.guider._enabled and pipe.guider.num_conditions > 1  # the pipeline's test (its scale is set)
    wanted = list(EMBED_ARGS.items())
    if cfg:
        wanted += [(f"negative_{k}", f"negative_{v}") for k, v in EMBED_ARGS.items()]
    missing = [k for k, _ in wanted if k not in embeds.tensors]
    if missing:
        need = " (classifier-free guidance needs the negative prompt's states)" if cfg else ""
        raise ValueError(
            f"{embeds.source}: HunyuanVideo-1.5 prompt embeddings lack {', '.join(missing)}{need}; they need the Qwen "
            "states (prompt_embeds) and the ByT5 glyph states (prompt_embeds_2), each with its mask"
        )
    tensors = embeds.call_kwargs("hunyuan15", pipe.transformer.device, pipe.transformer.dtype)
    return {arg: tensors[k] for k, arg in wanted}


class HunyuanVideo15Adapter(ModelAdapter):
    """HunyuanVideo-1.5 (8.3B), 480p x 121 frames at 1x; latents are concatenated with 32 conditioning channels
    and a mask channel (zeros for text-to-video), as the pipeline does."""

    family = "hunyuan15"
    class_name = "HunyuanVideo15Transformer3DModel"
    mask_model = "hunyuan"
    processor_class = HunyuanVideo15RadialProcessor
    text_len = 1000  # Qwen tokens; ByT5 adds 256 and the image 729
    glyph_len = 256
    image_tokens = 729
    variants = {"t2v": {**_HY15, "task_type": "t2v"}, "i2v": {**_HY15, "task_type": "i2v"}}
    default_variant = "t2v"
    # Tiny: text-to-video by default; "i2v" reads the tiny SigLIP states of data/encoders (TINY_IMAGE_DIM 16). The
    # pipelines size the image from target_size (64: a 64x64 image stays 64x64).
    tiny_config = {
        **_HY15,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "num_layers": 2,
        "num_refiner_layers": 1,
        "mlp_ratio": 2.0,
        "text_embed_dim": family_spec("hunyuan15").tiny_text_dim,
        "text_embed_2_dim": 16,
        "image_embed_dim": family_spec("hunyuan15").tiny_image_dim,
        "rope_axes_dim": (4, 6, 6),
        "target_size": 64,
        "task_type": "t2v",
    }
    tiny_variants = {"i2v": {**tiny_config, "task_type": "i2v"}}

    def image_input(self, config: Mapping[str, Any]) -> str:
        # T2V and I2V share 65 input channels; the config's task_type (diffusers' default "i2v") tells them apart.
        return "required" if dict(config).get("task_type", "i2v") == "i2v" else "none"

    def first_frame_latent(self, item: Mapping[str, Any]) -> torch.Tensor | None:
        # image_latents: [C first-frame latent (on latent frame 0), 1 mask, F, h, w]
        latents = item.get("image_latents")
        return None if latents is None else latents[: self.geometry.latent_channels, :1]

    def dataset_expectations(self, config: Mapping[str, Any]) -> dict[str, Any]:
        # 65 input channels either way (T2V feeds zeros): the task type tells them apart
        c = dict(config)
        i2v = self.image_input(c) == "required"
        channels = c.get("out_channels") or c.get("in_channels")
        return {
            "image_channels": c["in_channels"] - channels if i2v else 0,
            "image_dim": c.get("image_embed_dim", 0) if i2v else 0,
            "text_dim_2": c.get("text_embed_2_dim"),
        }

    # -- its pipelines: guidance is a guider component, text settings are attributes, embeddings other arguments --
    def pipeline_components(self, guidance_scale: float) -> dict[str, Any]:
        import diffusers

        return {"guider": diffusers.ClassifierFreeGuidance(guidance_scale=guidance_scale)}

    def apply_text_settings(self, pipe, settings: Mapping[str, Any]) -> None:
        for key, attr in TEXT_ATTRS.items():
            if key in settings:
                setattr(pipe, attr, settings[key])

    def pipeline_call_kwargs(self, pipe, clip, embeds, image: dict[str, Any]) -> dict[str, Any]:
        """Its guidance is the guider's scale (set here), its text settings pipeline attributes
        (`apply_text_settings`), and the I2V pipeline sizes the video from the image (its transformer's target_size
        bucket), so it takes no height / width."""
        pipe.guider.guidance_scale = clip.guidance_scale
        kw: dict[str, Any] = dict(num_frames=clip.frames, num_inference_steps=clip.num_inference_steps)
        if embeds is not None:
            kw.update(_embeds_kwargs(pipe, clip, embeds))
        elif clip.prompt is None:
            raise ValueError("nothing to generate from: give a prompt")
        elif getattr(pipe, "text_encoder", None) is None:
            raise ValueError("a text prompt needs the pipeline's text encoder; load it")
        else:
            kw.update(prompt=clip.prompt, negative_prompt=clip.negative_prompt)
        kw.update(image or dict(height=clip.height, width=clip.width))
        kw.update(clip.extra)
        return kw

    def comfy_rules(self) -> list[ComfyRule]:
        # ComfyUI runs HunyuanVideo-1.5 in its HunyuanVideo model: q, k, v (img_attn_q/k/v and txt_attn_q/k/v in the
        # original checkpoint) are one fused img_attn_qkv / txt_attn_qkv there, as in musubi-tuner's ComfyUI LoRAs.
        return DOUBLE_BLOCK_ATTN_COMFY

    # Sequence parallelism as for HunyuanVideo: the video tokens split, the joined conditioning stream (image, ByT5
    # and Qwen tokens) whole on every rank; the processor's key mask is [local video, whole text].
    sp_text = "replicated"

    def context_parallel_plan(self, transformer) -> dict:
        """Split the patch-embedded video tokens and the rotary tables, gather at `proj_out` (as HunyuanVideo)."""
        return video_split_plan()

    def _lora_alternatives(self, projections: list[str], text: bool) -> list[str]:
        alts = [rf"transformer_blocks\.\d+\.attn\.{self._lora_video[p]}" for p in projections]
        if text:
            alts += [rf"transformer_blocks\.\d+\.attn\.{self._lora_text[p]}" for p in projections]
        return alts

    def lora_unused_modules(self, transformer) -> list[str]:
        # No single-stream blocks follow: the forward drops the last block's text stream, so its text output
        # projection feeds nothing (the last block of HunyuanVideo 1.0 and Mochi has no such projection).
        return [f"transformer_blocks.{len(transformer.transformer_blocks) - 1}.attn.to_add_out"]

    def make_dummy_conditions(
        self, transformer, batch, text_len=None, *, latent_shape=None, seed=0, valid_text=None
    ) -> dict[str, Any]:
        """Qwen and ByT5 states with masks; for text-to-video zero image states and conditioning channels, for an
        image-to-video config (task_type "i2v") random SigLIP states and a first-frame latent with its mask.

        `text_len` sets the Qwen length; the ByT5 and image lengths scale with it below the pipeline's (tiny runs).
        """
        cfg, gen, text_len = self._dummy_start(transformer, text_len, seed)
        glyph = self.glyph_len if text_len == self.text_len else max(1, text_len // 2)
        image = self.image_tokens if text_len == self.text_len else max(1, text_len // 2)
        dev = transformer.device
        i2v = cfg.task_type == "i2v" and cfg.in_channels > self.latent_channels(transformer)
        cond: dict[str, Any] = {
            "prompt_embeds": self._randn((batch, text_len, cfg.text_embed_dim), gen, transformer),
            "prompt_attention_mask": self._text_mask(batch, text_len, valid_text, dev),
            "prompt_embeds_2": self._randn((batch, glyph, cfg.text_embed_2_dim), gen, transformer),
            "prompt_attention_mask_2": self._text_mask(batch, glyph, [max(1, glyph // 2)] * batch, dev),
            "image_embeds": torch.zeros(batch, image, cfg.image_embed_dim, device=dev, dtype=transformer.dtype),
        }
        extra = cfg.in_channels - self.latent_channels(transformer)
        if extra:
            if latent_shape is None:
                raise ValueError(f"latent_shape is needed for the {extra} conditioning channels of this model")
            b, _, f, h, w = latent_shape
            cond["image_latents"] = torch.zeros(b, extra, f, h, w, device=dev, dtype=transformer.dtype)
        if i2v:  # image-to-video: SigLIP states and a first-frame latent under the mask (1 on latent frame 0)
            cond["image_embeds"] = self._randn(cond["image_embeds"].shape, gen, transformer)
            latent = self._randn((b, extra - 1, 1, h, w), gen, transformer)
            cond["image_latents"][:, : extra - 1, :1] = latent
            cond["image_latents"][:, extra - 1, 0] = 1.0
        return cond

    def predict(self, transformer, latents, timestep, conditions: Mapping[str, Any]) -> torch.Tensor:
        """The stock call as HunyuanVideo15Pipeline / HunyuanVideo15ImageToVideoPipeline make it: [noisy latents, 32
        first-frame latent channels, 1 mask channel] (zeros for text-to-video), one timestep for every frame (the
        conditioning rides in the channels, not in the noisy latents), SigLIP states (729 zero tokens for T2V)."""
        t = self._timesteps(timestep, latents)
        cfg = getattr(transformer, "module", transformer).config  # DDP / DeepSpeed wrap the model
        if cfg.get("use_meanflow") and conditions.get("timestep_r") is None:
            raise ValueError(
                "this HunyuanVideo-1.5 transformer has use_meanflow=true (a step-distilled checkpoint: the pipeline "
                "passes the next step's timestep as timestep_r); train the non-distilled checkpoint instead"
            )
        image_latents = conditions.get("image_latents")
        extra = cfg.in_channels - latents.shape[1]
        if image_latents is None and extra > 0:
            b, _, f, h, w = latents.shape
            image_latents = latents.new_zeros(b, extra, f, h, w)
        hidden = latents if image_latents is None else torch.cat([latents, image_latents.to(latents.dtype)], dim=1)
        embeds = conditions["prompt_embeds"]
        embeds_2 = conditions["prompt_embeds_2"]
        image_embeds = conditions.get("image_embeds")
        if image_embeds is None:
            image_embeds = embeds.new_zeros(latents.shape[0], self.image_tokens, cfg.image_embed_dim)

        def mask(key, states):
            m = conditions.get(key)
            return torch.ones(states.shape[:2], dtype=torch.bool, device=states.device) if m is None else m

        return transformer(
            hidden_states=hidden,
            timestep=t,
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask("prompt_attention_mask", embeds),
            encoder_hidden_states_2=embeds_2,
            encoder_attention_mask_2=mask("prompt_attention_mask_2", embeds_2),
            image_embeds=image_embeds,
            timestep_r=conditions.get("timestep_r"),
            attention_kwargs=conditions.get("attention_kwargs"),
            return_dict=False,
        )[0]


register(HunyuanVideo15Adapter())
