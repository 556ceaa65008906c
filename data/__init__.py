"""Long-video latent data: prepare (videos -> latent shards), a validated dataset with frame buckets, synthetic videos.

Run from the repository root:

    python -m data.synthetic --out outputs/syn --num 8 --frames 33 --fps 16 --size 64x64
    python -m data.prepare --model wan --tiny --input outputs/syn --out outputs/latents --length 17 33 --fps 16 \\
        --buckets 64x64
    python -m data.prepare --model wan --pretrained /models/Wan2.1-T2V-1.3B-Diffusers --input videos/ \\
        --out latents/wan_2x --length 2x            # 161 frames at 16 fps, 480x832 / 832x480 / 624x624 buckets
    accelerate launch -m data.prepare ...           # one process per GPU (or --workers N on one machine)
    python -m data.shards check latents/wan_2x [--full]     # validate as the dataset does, values too

The trainer's side
------------------
    from torch.utils.data import DataLoader
    from data import BucketBatchSampler, Expect, LatentDataset, collate, data_parallel_rank

    ds = LatentDataset(root, model="wan", expect=Expect(latent_channels=16, text_dim=4096))
    #   or expect=Expect.from_transformer_config("wan", transformer.config); root may be a list of roots
    dp_rank, dp_world = data_parallel_rank(rank, world_size, sp_degree)   # SP-group ranks share samples
    sampler = BucketBatchSampler(ds, batch_size, seed, rank=dp_rank, world_size=dp_world, shuffle=True)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2, pin_memory=True)
    for batch in loader:
        ...
        state = sampler.state_dict(after=batch)    # exact even with DataLoader prefetching; save with the ckpt
    sampler.load_state_dict(state)                 # on resume, before iterating the loader again

Do not pass this DataLoader through `accelerator.prepare` (that would shard it across ranks a second time); move
batches to the device yourself. Iterating the loader again continues with the next epoch (or `set_epoch`).

Batches (B = batch_size; one bucket per batch, so one shape):
    latents                [B, C, F, H, W]  stored dtype (bf16 default); C, F, H, W = latent channels, frames,
                                            height, width (F = (frames - 1) / temporal_factor + 1)
    prompt_embeds          [B, L, D]        text encoder output, zero past the valid tokens; L = max length
                                            (Wan 512, HunyuanVideo 256 after the template crop, Mochi 256,
                                            HunyuanVideo-1.5 1000 Qwen2.5-VL tokens after the chat-template crop)
    prompt_attention_mask  [B, L] bool      True on valid tokens
    pooled_prompt_embeds   [B, Dp]          HunyuanVideo only: CLIP pooled output (diffusers: pooled_projections)
    prompt_embeds_2, prompt_attention_mask_2  [B, L2, D2], [B, L2]  HunyuanVideo-1.5 only: ByT5 states of the
                                            caption's quoted text (L2 = 256; all padding without quotes)
    image_latents, image_embeds, first_frame_mask  image-to-video datasets only (prepare --i2v; see shards.py)
    meta                   list of B dicts  key, source, caption, frames, fps, height, width, clip, clip_start, index
    cursor                 {"epoch", "batch"}  where the batch is in the sampler's order (for state_dict)
Names are those of the diffusers pipelines' encode_prompt; transformer arguments: encoder_hidden_states =
prompt_embeds, encoder_attention_mask = prompt_attention_mask (Hunyuan, Mochi; Wan takes no mask: its pipeline
feeds the zero-padded 512 tokens, as the batch has them), pooled_projections = pooled_prompt_embeds (Hunyuan),
encoder_hidden_states_2 / encoder_attention_mask_2 = prompt_embeds_2 / prompt_attention_mask_2 (HunyuanVideo-1.5).

Latents are stored *normalized*, ready for the transformer (flow matching on them directly):
Wan (raw - latents_mean) / latents_std; HunyuanVideo (1.0 and 1.5) raw * scaling_factor; Mochi (raw - latents_mean) *
scaling_factor / latents_std; all recorded as `ds.latent_norm` = {"convention", "shift", "scale"}
(normalized = (raw - shift) * scale); `data.latents.denormalize_latents(latents, ds.latent_norm)` gives raw
latents for `vae.decode` (validation videos). The latents are the posterior mode unless prepare ran with
--latent-sample sample.

Tiny encoders (tests, CPU demo) are the real classes with tiny configs: text hidden size TINY_TEXT_DIM (32), CLIP
pooled size TINY_POOLED_DIM (16), text length 128: the text dims of radial.models' tiny transformers.

Modules: encoders/ (VAE + text encoders per family), video.py (decode, sample, resize/crop), sources.py (folders
and CSV / JSONL manifests -> videos + captions), prepare.py (CLI and `prepare(PrepareConfig)`), shards.py (format, writer, validation, `python -m data.shards`), dataset.py, buckets.py (sampler, collate),
synthetic.py, latents.py (normalisation conventions).
"""

from __future__ import annotations

import importlib

# Names resolve on first use, so that `python -m data.shards` (or .prepare) runs its module only once and
# `import data` stays light.
_EXPORTS = {
    "BucketBatchSampler": "data.buckets",
    "Expect": "data.dataset",
    "LatentDataset": "data.dataset",
    "SampleRef": "data.dataset",
    "collate": "data.buckets",
    "data_parallel_rank": "data.buckets",
    "TINY_POOLED_DIM": "data.encoders",
    "TINY_TEXT_DIM": "data.encoders",
    "load_encoders": "data.encoders",
    "denormalize_latents": "data.latents",
    "normalize_latents": "data.latents",
    "FORMAT_VERSION": "data.shards",
    "ShardError": "data.shards",
    "PrepareConfig": "data.prepare",
    "prepare": "data.prepare",
    "make_synthetic_videos": "data.synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
