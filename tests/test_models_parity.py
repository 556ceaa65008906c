"""Injected tiny models against stock diffusers: dense backend = stock; radial = an independent masked oracle.

The oracle runs the *stock* model with torch's SDPA replaced by fp32 attention under the token mask expanded from
`radial_block_mask` for the layout the test knows, so it checks our processors, layout capture, text placement and
padding handling without going through any of them.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import radial
from radial.mask import radial_block_mask
from radial.models import get_adapter

FAMILIES = ["wan", "wan22_ti2v", "hunyuan", "mochi", "hunyuan15", "h3"]
# MiniMax-H3 packs [text | audio | video] rows, each item with its own text length, which this oracle's [video, text]
# layout does not model: its radial mask is checked against the masked stock model in tests/test_models_h3.py.
ORACLE_FAMILIES = [f for f in FAMILIES if f != "h3"]
BLOCK = 16
TEXT = 8
VALID = [5, 8]  # real text tokens per sample (the rest is padding) where the family has a text mask
# latent frames, height, width -> token grids 8x4x4, 4x4x8 (the same 128 tokens, another layout), 6x4x6
SHAPES = [(8, 8, 8), (4, 8, 16), (6, 8, 12)]


def _inputs(adapter, model, shape, seed=0):
    latents = adapter.make_dummy_latents(model, 2, *shape, seed=seed)
    cond = adapter.make_dummy_conditions(model, 2, TEXT, latent_shape=latents.shape, seed=seed + 1, valid_text=VALID)
    timestep = torch.tensor([700.0, 300.0])
    return latents, timestep, cond


def _token_mask(adapter, model, shape, text: int) -> torch.Tensor:
    pt, ph, pw = adapter.patch_size(model)
    f, h, w = shape[0] // pt, shape[1] // ph, shape[2] // pw
    blocks = radial_block_mask(f, h * w, block_size=BLOCK, model=adapter.mask_model, text_tokens=text)
    seq = f * h * w + text
    return blocks.repeat_interleave(BLOCK, 0)[:seq].repeat_interleave(BLOCK, 1)[:, :seq], f * h * w


@contextlib.contextmanager
def oracle_sdpa(full_mask: torch.Tensor, video: int, text: int):
    """Stock SDPA calls over the joint sequence get the radial token mask; other calls (cross-attention, the text
    refiner) run unchanged. Mochi's per-sample calls over [video, first n valid text] get the restricted mask."""
    real = F.scaled_dot_product_attention
    hits = []

    def patched(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        q, k, v = query, key, value
        s_q, s_k = q.shape[-2], k.shape[-2]
        if s_q != s_k or not (s_q == video + text or (text and video < s_q < video + text)):
            return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        allowed = full_mask[:s_q, :s_q].to(q.device)  # valid text is a prefix, so the restriction is a crop
        if attn_mask is not None:
            allowed = allowed & attn_mask.bool()
        hits.append(s_q)
        scores = (q.float() @ k.float().transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
        return (probs @ v.float()).to(q.dtype)

    torch.nn.functional.scaled_dot_product_attention = patched
    try:
        yield hits
    finally:
        torch.nn.functional.scaled_dot_product_attention = real


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_backend_equals_stock(family):
    adapter = get_adapter(family)
    model = adapter.build_tiny()
    latents, t, cond = _inputs(adapter, model, SHAPES[0])
    with torch.no_grad():
        stock = adapter.predict(model, latents, t, cond)
        with radial.inject(model, backend="dense", block_size=BLOCK):
            ours = adapter.predict(model, latents, t, cond)
        restored = adapter.predict(model, latents, t, cond)
    assert (ours - stock).abs().max().item() < 1e-5
    assert torch.equal(restored, stock)


@pytest.mark.parametrize("family", ORACLE_FAMILIES)
def test_radial_equals_masked_oracle_and_layout_follows_each_call(family):
    adapter = get_adapter(family)
    model = adapter.build_tiny()
    # Text tokens in the joint sequence: none for Wan; HunyuanVideo-1.5 adds glyph and image tokens (TEXT // 2 each).
    text = {"hunyuan": TEXT, "mochi": TEXT, "hunyuan15": 2 * TEXT}.get(family, 0)
    runs = []
    with radial.inject(model, backend="reference", block_size=BLOCK) as handle:
        # Several layouts in one process, two of them with the same token count: nothing may be stale.
        for shape in SHAPES:
            latents, t, cond = _inputs(adapter, model, shape)
            with torch.no_grad():
                runs.append((shape, latents, t, cond, adapter.predict(model, latents, t, cond), handle.last_plan))
    for shape, latents, t, cond, ours, plan in runs:
        mask, video = _token_mask(adapter, model, shape, text)
        assert (plan.num_frames, plan.video_tokens, plan.text_tokens) == (shape[0], video, text)
        assert plan.stats.block_density < (0.5 if shape == SHAPES[0] else 1.0), "the test layout must be sparse"
        with torch.no_grad(), oracle_sdpa(mask, video, text) as hits:
            expected = adapter.predict(model, latents, t, cond)
        assert hits, "the oracle intercepted no attention call"
        assert (ours - expected).abs().max().item() < 1e-5, shape
        with torch.no_grad():
            stock = adapter.predict(model, latents, t, cond)
        assert (ours - stock).abs().max().item() > 1e-3, "the radial mask must change the result"


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_lora_parameters(family):
    pytest.importorskip("peft")
    from peft import LoraConfig

    adapter = get_adapter(family)
    model = adapter.build_tiny()
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=adapter.lora_target_modules()))
    latents, t, cond = _inputs(adapter, model, SHAPES[0])

    def lora_grads(checkpointing: bool):
        model.zero_grad(set_to_none=True)
        if checkpointing:
            model.enable_gradient_checkpointing()
        else:
            model.disable_gradient_checkpointing()
        model.train()
        with radial.inject(model, backend="reference", block_size=BLOCK):
            adapter.predict(model, latents, t, cond).square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}

    grads = lora_grads(False)
    lora_b = {n: g for n, g in grads.items() if "lora_B" in n}
    assert lora_b and len(lora_b) == len(adapter.lora_target_names(model))
    assert all(g is not None and g.abs().sum() > 0 for g in lora_b.values())
    base_grads = [p.grad for n, p in model.named_parameters() if "lora_" not in n]
    assert all(g is None for g in base_grads), "only LoRA parameters train"
    ckpt = lora_grads(True)
    # Bitwise: checkpointing recomputes the same ops on the same inputs (measured: 0 difference for every family).
    for name, g in grads.items():
        torch.testing.assert_close(ckpt[name], g, rtol=0, atol=0)
