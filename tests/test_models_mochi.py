"""Mochi specifics: the batched padded attention reproduces the stock per-sample loop, text order included."""

from __future__ import annotations

import pytest
import torch

import radial
from radial.models import get_adapter
from radial.models.mochi import compact_text


def test_compact_text_matches_the_stock_layout():
    out = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1, 1) + 1
    valid = torch.tensor([[True, False, True, False, True], [True, True, True, True, True]])
    got = compact_text(out, valid)[..., 0, 0]
    assert got.tolist() == [[1.0, 3.0, 5.0, 0.0, 0.0], [6.0, 7.0, 8.0, 9.0, 10.0]]


@pytest.mark.parametrize("holes", [False, True])
def test_dense_backend_equals_the_stock_loop_with_uneven_padding(holes):
    mochi = get_adapter("mochi")
    model = mochi.build_tiny()
    latents = mochi.make_dummy_latents(model, 3, 4, 8, 8)
    cond = mochi.make_dummy_conditions(model, 3, 8, valid_text=[1, 5, 8])
    if holes:  # a mask that is not a prefix: the stock loop gathers the valid tokens to the front
        cond["prompt_attention_mask"] = torch.tensor([[1, 0, 1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 1, 1, 1, 1], [1] * 8])
    t = torch.tensor([100.0, 500.0, 900.0])
    with torch.no_grad():
        stock = mochi.predict(model, latents, t, cond)
        with radial.inject(model, backend="dense", block_size=16):
            ours = mochi.predict(model, latents, t, cond)
    assert (ours - stock).abs().max().item() < 1e-5


def test_text_stream_outputs_match_per_block():
    """Block by block, video and text stream outputs equal stock (padded text rows stay zero)."""
    mochi = get_adapter("mochi")
    model = mochi.build_tiny()
    attn = model.transformer_blocks[0].attn1
    latents = mochi.make_dummy_latents(model, 2, 4, 8, 8)
    cond = mochi.make_dummy_conditions(model, 2, 8, valid_text=[3, 8])
    captured = {}
    hook = attn.register_forward_hook(lambda m, a, kw, out: captured.setdefault(len(captured), out), with_kwargs=True)
    with torch.no_grad():
        mochi.predict(model, latents, 500.0, cond)
        with radial.inject(model, backend="dense", block_size=16):
            mochi.predict(model, latents, 500.0, cond)
    hook.remove()
    (video0, text0), (video1, text1) = captured[0], captured[1]
    assert (video1 - video0).abs().max() < 1e-5 and (text1 - text0).abs().max() < 1e-5
