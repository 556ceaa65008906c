"""MiniMax-H3 (diffusers' MiniMaxH3Transformer3DModel): radial attention over the video rows of its packed sequence.

H3 runs one full self-attention per block over a single packed sequence `[text | keyframe conditions | audio | video]`
(the modular pipeline's `MiniMaxH3PrepareLayoutStep.build_packed_sequence`, which `predict` calls too). The target
video rows come last and form the latent grid; the radial mask covers them, and every other row (text, conditioning
frames, the stereo audio rows) is a prefix row attended densely in both directions, as text is for HunyuanVideo.
The processor moves the prefix rows after the video rows (the plan's layout: video, then dense rows), attends, and
moves them back; the rows are a rotation of the sequence, so the result is the stock one up to the mask.

The forward has no latents [B, C, F, H, W]: the grid is read from the layout arguments (`forward_grid`): the video
rows after the last prefix row, frames from their temporal coordinate, height and width from their spatial ones.
The mask model is "hunyuan" (no attention sink: H3 has no official radial mask; the prefix rows already give every
query dense keys). The token refiner (text only) keeps its stock attention.

Conventions: H3's `t = 1 - sigma` (1 = clean) and its data-ward velocity `x0 - noise`; `predict` converts from and to
the trainer's (`sigma * 1000`, `noise - x0`). One packed layout serves every item of a forward call (the batch is a
replication axis with one shared timestep table), so `predict` runs one forward per item: each item keeps its own
noise level and its own text length (no padding rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from radial.comfy import ComfyRule, fused
from radial.families import family_spec
from radial.models.base import ModelAdapter, PipelineRun, register
from radial.models.context import LatentGrid, RadialProcessor

VIDEO_SHIFT, AUDIO_SHIFT = 12.0, 3.0  # the pipeline's two MiniMaxH3Scheduler shifts
VIDEO_TAG, TEXT_TAG, AUDIO_TAG = 0, 1, 2  # the pipeline's modality tags (a checkpoint contract)
AUDIO_CHANNELS = 2  # stereo, packed channel-major
AUDIO_LATENTS_PER_SECOND = 40  # the audio VAE's latent rate


def audio_latent_count(latent_frames: int, fps: int = 24) -> int:
    """Audio latents per channel that cover `latent_frames` video latent frames (the pipeline's
    `audio_latent_num_frames` of their pixel frames; latent counts off the 5k+2 rule are interpolated)."""
    g = family_spec("h3").geometry
    pixel = (latent_frames - g.first_latents) / g.chunk_latents * g.temporal_factor + g.first_frames
    return max(1, int(round(pixel / fps * AUDIO_LATENTS_PER_SECOND)))


def packed_layout(text_tokens: int, grid: LatentGrid, audio_latents: int, patch: tuple[int, int, int], device):
    """The pipeline's `t2va` layout: position_ids [S, 3], token_tags, video / audio / text indices, on `device`."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import MiniMaxH3PrepareLayoutStep

    position_ids, tags, video, audio, text, _, _ = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
        torch.full((text_tokens,), TEXT_TAG, dtype=torch.long),
        grid.frames * patch[0],
        grid.height * patch[1],
        grid.width * patch[2],
        audio_latents,
        patch,
        AUDIO_CHANNELS,
        AUDIO_TAG,
        VIDEO_TAG,
    )
    # fp32 as the rope computes (the pipeline keeps fp64 only where the device has it; the rope casts)
    return {
        "position_ids": position_ids.to(device, torch.float32),
        "token_tags": tags.to(device),
        "video_indices": video.to(device),
        "audio_indices": audio.to(device),
        "text_indices": text.to(device),
    }


def patchify(latents: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, F, H, W] -> rows [B, N, C*pt*ph*pw], frame-major then row-major (the pipeline's patchify)."""
    pt, ph, pw = patch
    b, c, f, h, w = latents.shape
    x = latents.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (f // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(rows: torch.Tensor, channels: int, grid: LatentGrid, patch: tuple[int, int, int]) -> torch.Tensor:
    """Rows [B, N, C*pt*ph*pw] -> [B, C, F, H, W] (inverse of `patchify`)."""
    pt, ph, pw = patch
    b = rows.shape[0]
    x = rows.reshape(b, grid.frames, grid.height, grid.width, channels, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, channels, grid.frames * pt, grid.height * ph, grid.width * pw)


def audio_rows(audio: torch.Tensor) -> torch.Tensor:
    """Audio latents [B, 2, C, A] -> channel-major rows [B, 2*A, C] (the pipeline's packing)."""
    return audio.permute(0, 1, 3, 2).reshape(audio.shape[0], -1, audio.shape[2])


def audio_from_rows(rows: torch.Tensor, channels: int = AUDIO_CHANNELS) -> torch.Tensor:
    """Channel-major rows [B, 2*A, C] -> audio latents [B, 2, C, A]."""
    b, n, c = rows.shape
    return rows.reshape(b, channels, n // channels, c).permute(0, 1, 3, 2)


# ComfyUI's MiniMax-H3 model (comfy/ldm/minimax/model.py, MiniMaxH3Model): `blocks.N.attn.qkv_proj` (q, k, v fused,
# in that order) and `blocks.N.attn.out_proj`.
_H3_COMFY = [
    *fused("transformer_blocks.{i}.attn.", "blocks.{i}.attn.qkv_proj", ("to_q", "to_k", "to_v")),
    ComfyRule(r"transformer_blocks\.(\d+)\.attn\.to_out\.0", r"blocks.\1.attn.out_proj"),
]


class MiniMaxH3RadialProcessor(RadialProcessor):
    """MiniMaxH3AttnProcessor with radial attention: video rows radial, prefix rows (text, conditions, audio) dense."""

    def __call__(self, attn, hidden_states, rotary_emb=None, attention_mask=None) -> torch.Tensor:
        from diffusers.models.transformers.transformer_minimax_h3 import _apply_rotary_emb

        if attention_mask is not None:
            raise ValueError("MiniMax-H3 radial attention takes no attention_mask (the packed sequence has no padding)")
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key, value = (t.unflatten(-1, (attn.heads, -1)) for t in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        video = self.state.current_grid().video_tokens
        prefix = hidden_states.shape[1] - video
        q, k, v = (torch.cat([t[:, prefix:], t[:, :prefix]], dim=1) for t in (query, key, value))
        out = self.attend(q, k, v, video_tokens=video)
        out = torch.cat([out[:, video:], out[:, :video]], dim=1).flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


class MiniMaxH3Adapter(ModelAdapter):
    """MiniMax-H3 T2VA (33B: 50 blocks of 56 heads over the packed sequence), 768x1344 x 124 frames at 1x."""

    family = "h3"
    class_name = "MiniMaxH3Transformer3DModel"
    mask_model = "hunyuan"
    processor_class = MiniMaxH3RadialProcessor
    text_len = 128  # dummy prompts (H3 packs the prompt's own tokens, no padding)
    variants = {
        "t2va": {
            "num_attention_heads": 56,
            "attention_head_dim": 128,
            "hidden_size": 5376,
            "num_layers": 50,
            "num_refiner_layers": 2,
            "ffn_dim": 14336,
            "in_channels": 24,
            "audio_in_channels": 32,
            "patch_size": (1, 2, 2),
            "text_dim": 5120,
            "freq_dim": 256,
            "time_embed_hidden_dim": 5376,
            "time_embed_dim": 2688,
            "rope_freq_dim": 16,
        }
    }
    default_variant = "t2va"
    tiny_config = {
        "num_attention_heads": 2,
        "attention_head_dim": 32,
        "hidden_size": 48,
        "num_layers": 2,
        "num_refiner_layers": 1,
        "ffn_dim": 64,
        "in_channels": 24,
        "audio_in_channels": 8,
        "patch_size": (1, 2, 2),
        "text_dim": family_spec("h3").tiny_text_dim,
        "freq_dim": 32,
        "time_embed_hidden_dim": 48,
        "time_embed_dim": 24,
        "rope_freq_dim": 4,
    }

    # -- its pipeline: diffusers' modular MiniMaxH3ModularPipeline (t2va), called by its blocks' inputs and outputs --
    def build_pipeline(self, name, transformer, scheduler, components):
        """MiniMaxH3ModularPipeline (t2va) from its parts: the modular blocks' pipeline with the two schedulers of
        the released shifts (video 12, audio 3) in place of `scheduler` (the FlowMatchEuler families' one)."""
        from diffusers import MiniMaxH3Scheduler
        from diffusers.modular_pipelines.minimax_h3 import MiniMaxH3Blocks
        from diffusers.video_processor import VideoProcessor

        pipe = MiniMaxH3Blocks().init_pipeline()
        parts = {k: v for k, v in components.items() if v is not None}
        pipe.update_components(
            transformer=transformer,
            scheduler=MiniMaxH3Scheduler(shift=VIDEO_SHIFT),
            audio_scheduler=MiniMaxH3Scheduler(shift=AUDIO_SHIFT),
            video_processor=VideoProcessor(vae_scale_factor=parts["vae"].spatial_compression_ratio),
            **parts,
        )
        return pipe

    def pipeline_call_kwargs(self, pipe, clip, embeds, image: dict[str, Any]) -> dict[str, Any]:
        """A text-to-video-and-audio call: the prompt through the pipeline's own text encoder step, or stored text
        states (the valid rows, tagged text) for the blocks after it (`run_pipeline`); guidance-distilled, it takes
        no guidance or negative prompt. (`image` is always {}: radial.generation refuses --image for its
        text-to-video pipeline before this.)"""
        kw = dict(
            height=clip.height, width=clip.width, num_frames=clip.frames, num_inference_steps=clip.num_inference_steps
        )
        if embeds is not None:
            if clip.prompt is not None:
                raise ValueError("give a prompt or prompt embeddings, not both")
            tensors = embeds.call_kwargs(self.family, pipe.transformer.device, pipe.transformer.dtype)
            states, mask = tensors["prompt_embeds"], tensors.get("prompt_attention_mask")
            n = int(mask[0].sum()) if mask is not None else states.shape[1]
            tags = torch.full((n,), pipe.text_tag, dtype=torch.long, device=states.device)
            return {**kw, "prompt_embeds": states[:1, :n], "text_token_tags": tags, **clip.extra}
        if clip.prompt is None:
            raise ValueError("nothing to generate from: give a prompt or prompt embeddings (--prompt-embeds)")
        if getattr(pipe, "text_encoder", None) is None:
            raise ValueError("a text prompt needs the pipeline's text encoder; load it or pass --prompt-embeds")
        return {**kw, "prompt": clip.prompt, **clip.extra}

    def run_pipeline(self, pipe, kwargs, *, generator, decode) -> PipelineRun:
        """Its outputs by name (it decodes video and sound in its own last blocks); stored text states go to the
        blocks after its text encoder (`pipeline_after_text`)."""
        runner = self.pipeline_after_text(pipe) if "prompt_embeds" in kwargs else pipe
        names = ["videos", "latents", "audio", "sampling_rate"]
        out = runner(**kwargs, generator=generator, output_type="np", output=names)
        latents = out["latents"]  # the scheduler steps packed rows; this is [1, C, F, H, W]
        audio = out["audio"][0].float().cpu().numpy()
        return PipelineRun(out["videos"] if decode else latents, latents, audio, int(out["sampling_rate"]))

    def pipeline_after_text(self, pipe):
        """The t2va blocks after the text encoder (layout, noise, denoising, decoding) over `pipe`'s components: the
        pipeline that stored text states (prompt_embeds, text_token_tags) are given to."""
        from diffusers.modular_pipelines import SequentialPipelineBlocks
        from diffusers.modular_pipelines.minimax_h3.modular_blocks_minimax_h3 import (
            MiniMaxH3CoreDenoiseStep,
            MiniMaxH3DecodeStep,
        )

        blocks = SequentialPipelineBlocks.from_blocks_dict(
            {"denoise": MiniMaxH3CoreDenoiseStep(), "decode": MiniMaxH3DecodeStep()}
        )
        names = {spec.name for spec in blocks.expected_components}
        sub = blocks.init_pipeline()
        sub.update_components(**{k: v for k, v in pipe.components.items() if k in names and v is not None})
        return sub

    def dataset_expectations(self, config: Mapping[str, Any]) -> dict[str, Any]:
        # the sound track is denoised with the video: its latents' channels are the transformer's audio input
        return {"audio_channels": dict(config)["audio_in_channels"]}

    def comfy_rules(self) -> list[ComfyRule]:
        return _H3_COMFY

    def sequence_rows(self, latent_frames: int, video_tokens: int) -> int:
        # the packed sequence: the text rows (the dummy prompts' length) and the stereo audio rows beside the video
        return video_tokens + AUDIO_CHANNELS * audio_latent_count(latent_frames) + self.text_len

    def patch_size(self, transformer) -> tuple[int, int, int]:
        return tuple(int(p) for p in transformer.config.patch_size)

    def latent_channels(self, transformer) -> int:
        return transformer.config.in_channels

    def context_parallel_plan(self, transformer) -> dict | None:
        # The class's own plan splits the whole packed sequence, prefix and video rows alike, so a rank's chunk is
        # not "its video share, then its prefix share" as the Ulysses exchange (radial.parallel) needs.
        return None

    def forward_grid(self, transformer, arguments: Mapping[str, Any]) -> LatentGrid:
        """The target video rows' grid from the layout arguments: they follow the last text / audio row."""
        position_ids, video_indices = arguments.get("position_ids"), arguments.get("video_indices")
        text, audio = arguments.get("text_indices"), arguments.get("audio_indices")
        if any(not isinstance(t, torch.Tensor) for t in (position_ids, video_indices, text, audio)):
            raise ValueError("MiniMax-H3 forward needs position_ids, video_indices, text_indices and audio_indices")
        seq = position_ids.shape[0]
        start = int(max(int(t.max()) + 1 if t.numel() else 0 for t in (text, audio)))
        tail = video_indices[video_indices >= start]
        if tail.numel() == 0 or tail.numel() != seq - start or int(tail.min()) != start:
            raise ValueError(
                f"MiniMax-H3 radial attention needs the target video rows last in the packed sequence (rows {start}.."
                f"{seq - 1}); video_indices holds {tail.numel()} of them"
            )
        pos = position_ids[start:]
        per_frame = int((pos[:, 0] == pos[0, 0]).sum())
        height = int(torch.unique(pos[:per_frame, 1]).numel())
        if per_frame % height or tail.numel() % per_frame:
            raise ValueError(f"MiniMax-H3 video rows ({tail.numel()}) do not form whole frames of {per_frame} rows")
        return LatentGrid(tail.numel() // per_frame, height, per_frame // height)

    def _lora_alternatives(self, projections: list[str], text: bool) -> list[str]:
        # One set of projections reads every row (text, audio and video alike): `text` adds nothing.
        return [rf"transformer_blocks\.\d+\.attn\.{self._lora_video[p]}" for p in projections]

    def make_dummy_conditions(
        self, transformer, batch, text_len=None, *, latent_shape=None, seed=0, valid_text=None
    ) -> dict[str, Any]:
        cfg, gen, text_len = self._dummy_start(transformer, text_len, seed)
        cond: dict[str, Any] = {
            "prompt_embeds": self._randn((batch, text_len, cfg.text_dim), gen, transformer),
            "prompt_attention_mask": self._text_mask(batch, text_len, valid_text, transformer.device),
        }
        frames = latent_shape[2] if latent_shape is not None else 2
        audio = (batch, AUDIO_CHANNELS, cfg.audio_in_channels, audio_latent_count(frames))
        cond["audio_latents"] = self._randn(audio, gen, transformer)
        return cond

    def predict(self, transformer, latents, timestep, conditions: Mapping[str, Any]) -> torch.Tensor:
        return self.predict_joint(transformer, latents, timestep, conditions)[0]

    def predict_joint(
        self, transformer, latents, timestep, conditions: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The velocities `noise - x0` of the video [B, C, F, H, W] and of `audio_latents` [B, 2, C_a, A], both at
        `timestep` (x1000); the audio latents are taken as given (noised by the caller)."""
        base = getattr(transformer, "module", transformer)  # DDP and DeepSpeed wrap the model (no `.config`)
        patch = self.patch_size(base)
        grid = self.latent_grid(base, latents)
        sigma = self._timesteps(timestep, latents).float() / 1000.0
        embeds = conditions["prompt_embeds"]
        mask = conditions.get("prompt_attention_mask")
        audio = conditions.get("audio_latents")
        if audio is None:
            raise ValueError("MiniMax-H3 needs conditions['audio_latents'] [B, 2, C, A] (silence latents for none)")
        video_out, audio_out = [], []
        for i in range(latents.shape[0]):
            n = int(mask[i].sum()) if mask is not None else embeds.shape[1]
            layout = packed_layout(n, grid, audio.shape[-1], patch, latents.device)
            seq = layout["position_ids"].shape[0]
            video, sound = transformer(
                hidden_states=patchify(latents[i : i + 1], patch),
                audio_hidden_states=audio_rows(audio[i : i + 1].to(latents.dtype)),
                encoder_hidden_states=embeds[i : i + 1, :n],
                timestep=(1.0 - sigma[i : i + 1]).to(latents.dtype),
                timestep_indices=torch.zeros(seq, dtype=torch.long, device=latents.device),
                attention_kwargs=conditions.get("attention_kwargs"),
                return_dict=False,
                **layout,
            )
            # H3 predicts the data-ward velocity x0 - noise; the trainer's convention is noise - x0.
            video_out.append(-unpatchify(video, latents.shape[1], grid, patch))
            audio_out.append(-audio_from_rows(sound))
        return torch.cat(video_out).to(latents.dtype), {"audio_latents": torch.cat(audio_out).to(latents.dtype)}


register(MiniMaxH3Adapter())
