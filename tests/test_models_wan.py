"""Wan specifics: I2V (image conditioning channels, CLIP states in the cross-attention), TI2V-5B per-token
timesteps, Wan2.2 experts named as their own family, cross-attention left stock."""

from __future__ import annotations

import torch

import radial
from radial.mask import radial_block_mask
from radial.models import get_adapter
from radial.models.wan import WanRadialProcessor
from tests.test_models_parity import BLOCK, oracle_sdpa

I2V_TINY = {"in_channels": 36, "image_dim": 16, "added_kv_proj_dim": 32}


def _token_mask(frames, tpf, model="wan"):
    seq = frames * tpf
    blocks = radial_block_mask(frames, tpf, block_size=BLOCK, model=model)
    return blocks.repeat_interleave(BLOCK, 0)[:seq].repeat_interleave(BLOCK, 1)[:, :seq]


def test_i2v_self_attention_is_radial_and_the_image_cross_attention_stock():
    wan = get_adapter("wan")
    model = wan.build_tiny(**I2V_TINY)
    assert wan.latent_channels(model) == 16
    latents = wan.make_dummy_latents(model, 1, 8, 8, 8)
    cond = wan.make_dummy_conditions(model, 1, 512, latent_shape=latents.shape)
    assert cond["image_latents"].shape == (1, 20, 8, 8, 8) and cond["image_embeds"].shape == (1, 257, 16)
    with torch.no_grad():
        stock = wan.predict(model, latents, 400.0, cond)
        with radial.inject(model, backend="dense", block_size=BLOCK):
            dense = wan.predict(model, latents, 400.0, cond)
        with radial.inject(model, backend="reference", block_size=BLOCK) as handle:
            ours = wan.predict(model, latents, 400.0, cond)
            assert all(not isinstance(b.attn2.processor, WanRadialProcessor) for b in model.blocks)
        with oracle_sdpa(_token_mask(8, 16), 128, 0) as hits:
            expected = wan.predict(model, latents, 400.0, cond)
    assert len(hits) == 2  # only the two attn1 calls were masked; attn2 (text, image) went through
    assert (dense - stock).abs().max() < 1e-5
    assert (ours - expected).abs().max() < 1e-5
    assert handle.last_plan.stats.block_density < 0.5


def test_ti2v_first_frame_mask_becomes_per_token_timesteps():
    ti2v = get_adapter("wan22_ti2v")
    model = ti2v.build_tiny()
    latents = ti2v.make_dummy_latents(model, 2, 4, 8, 8)
    cond = ti2v.make_dummy_conditions(model, 2, 8)
    mask = torch.ones(2, 1, 4, 8, 8)
    mask[:, :, 0] = 0  # a clean conditioning first frame
    t = torch.tensor([900.0, 100.0])
    with torch.no_grad():
        expected = model(latents, (mask[:, 0, :, ::2, ::2] * t[:, None, None, None]).flatten(1), cond["prompt_embeds"])[
            0
        ]
        assert torch.equal(ti2v.predict(model, latents, t, {**cond, "first_frame_mask": mask}), expected)
        plain = model(latents, t[:, None].expand(2, 64), cond["prompt_embeds"])[0]
        assert torch.equal(ti2v.predict(model, latents, t, cond), plain)


def test_wan22_expert_uses_its_mask_model():
    wan22 = get_adapter("wan22")
    model = wan22.build_tiny()
    latents = wan22.make_dummy_latents(model, 1, 8, 8, 8)
    cond = wan22.make_dummy_conditions(model, 1, 8)
    with torch.no_grad(), radial.inject(model, family="wan22", backend="reference", block_size=BLOCK) as handle:
        ours = wan22.predict(model, latents, 500.0, cond)
    with torch.no_grad(), oracle_sdpa(_token_mask(8, 16, "wan22"), 128, 0):
        expected = wan22.predict(model, latents, 500.0, cond)
    assert handle.state.mask_model == "wan22" and (ours - expected).abs().max() < 1e-5


def test_fused_projections_keep_working():
    wan = get_adapter("wan")
    model = wan.build_tiny()
    latents = wan.make_dummy_latents(model, 1, 8, 8, 8)
    cond = wan.make_dummy_conditions(model, 1, 8)
    with torch.no_grad():
        stock = wan.predict(model, latents, 500.0, cond)
        model.fuse_qkv_projections()
        assert model.blocks[0].attn1.fused_projections
        with radial.inject(model, backend="dense", block_size=BLOCK):
            fused = wan.predict(model, latents, 500.0, cond)
    assert (fused - stock).abs().max() < 1e-5
