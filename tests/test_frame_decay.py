"""`attention.extrapolation_decay` (radial.frame_decay): the reference and flex backends against a brute-force fp64
softmax with lambda-weighted weights, on radial and dense masks; lambda = 1 and short clips unchanged bitwise; text
tokens untouched; the fallback of the other backends; one-line errors."""

from __future__ import annotations

import logging

import pytest
import torch

import radial
from radial.attention import radial_attention
from radial.errors import ConfigError
from radial.frame_decay import FrameDecay
from radial.models import get_adapter
from radial.plan import make_plan

FRAMES, TPF, TEXT, BLOCK = 7, 24, 10, 16


@pytest.fixture(scope="module")
def plan():
    return make_plan(FRAMES, TPF, text_tokens=TEXT, block_size=BLOCK, model="wan")


def _inputs(seq, heads=2, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, seq, heads, dim, generator=g) for _ in range(3))
    padding = torch.ones(2, seq, dtype=torch.bool)
    padding[1, seq - 4 :] = False  # the second sample's last text keys are padding
    return q, k, v, padding


def brute_force(q, k, v, allowed, padding, factor, train_frames):
    """fp64 softmax over the allowed keys, each weight exp(score) times lambda where the frame distance between
    two video tokens is >= train_frames, renormalised."""
    seq, n = q.shape[1], FRAMES * TPF
    frame = torch.arange(seq) // TPF
    video = torch.arange(seq) < n
    far = ((frame[:, None] - frame[None, :]).abs() >= train_frames) & video[:, None] & video[None, :]
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    weights = torch.exp(scores - scores.amax(-1, keepdim=True)) * torch.where(far, factor, 1.0).double()
    weights = weights * (allowed[None, None] & padding[:, None, None, :])
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v.double())


def _token_mask(plan):
    m = plan.block_mask.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    return m[: plan.seq_len, : plan.seq_len]


@pytest.mark.parametrize("backend", ["reference", "flex", "dense"])
def test_decay_equals_brute_force(plan, backend):
    q, k, v, padding = _inputs(plan.seq_len)
    decay = FrameDecay(0.3, 3)
    out = radial_attention(q, k, v, plan, backend=backend, key_padding_mask=padding, decay=decay)
    allowed = torch.ones_like(_token_mask(plan)) if backend == "dense" else _token_mask(plan)
    expected = brute_force(q, k, v, allowed, padding, 0.3, 3)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-6)
    # The decay is real: without it the result differs.
    plain = brute_force(q, k, v, allowed, padding, 1.0, 3)
    assert (out.double() - plain).abs().max() > 1e-2


def test_lambda_one_and_short_clips_are_unchanged_bitwise(plan):
    q, k, v, padding = _inputs(plan.seq_len)
    for backend in ("reference", "dense"):
        plain = radial_attention(q, k, v, plan, backend=backend, key_padding_mask=padding)
        for decay in (FrameDecay(1.0, 3), FrameDecay(0.3, FRAMES)):  # lambda 1; no pair FRAMES frames apart
            out = radial_attention(q, k, v, plan, backend=backend, key_padding_mask=padding, decay=decay)
            assert torch.equal(out, plain)


def test_text_tokens_are_not_decayed(plan):
    """Text query rows see undecayed video and text keys: bitwise the result without decay."""
    q, k, v, padding = _inputs(plan.seq_len)
    plain = radial_attention(q, k, v, plan, backend="reference", key_padding_mask=padding)
    out = radial_attention(q, k, v, plan, backend="reference", key_padding_mask=padding, decay=FrameDecay(0.3, 2))
    n = FRAMES * TPF
    assert torch.equal(out[:, n:], plain[:, n:]) and not torch.equal(out[:, :n], plain[:, :n])
    bias = FrameDecay(0.3, 2).bias(plan, slice(0, plan.seq_len), torch.device("cpu"))
    assert not bias[n:].any() and not bias[:, n:].any()


def test_flex_score_mod_matches_reference(plan):
    """Forward only: this torch's FlexAttention has no backward on CPU (tests/gpu checks it)."""
    q, k, v, padding = _inputs(plan.seq_len)
    decay = FrameDecay(0.5, 2)
    ref = radial_attention(q, k, v, plan, backend="reference", key_padding_mask=padding, decay=decay)
    flex = radial_attention(q, k, v, plan, backend="flex", key_padding_mask=padding, decay=decay)
    torch.testing.assert_close(flex, ref, rtol=0, atol=1e-5)
    assert FrameDecay(0.5, 2).score_mod(plan) is decay.score_mod(plan)  # one function: the compiled kernel is reused


def test_other_backends_fall_back_logged(plan, caplog):
    q, k, v, padding = _inputs(plan.seq_len)
    decay = FrameDecay(0.4, 3)
    expected = radial_attention(q, k, v, plan, backend="reference", key_padding_mask=padding, decay=decay)
    with caplog.at_level(logging.WARNING):
        out = radial_attention(q, k, v, plan, backend="triton", key_padding_mask=padding, decay=decay)
    assert torch.equal(out, expected)
    assert "attention backend triton -> reference: attention.extrapolation_decay" in caplog.text


def test_injected_radial_and_dense_with_decay():
    """Through the injector: lambda = 1 is bitwise the plain injection; lambda < 1 changes long clips only."""
    wan = get_adapter("wan")
    model = wan.build_tiny()

    def predict(frames, **kwargs):
        with radial.inject(model, backend="reference", block_size=BLOCK, **kwargs):
            latents = wan.make_dummy_latents(model, 1, frames, 8, 8)
            cond = wan.make_dummy_conditions(model, 1, 8, latent_shape=latents.shape)
            return wan.predict(model, latents, torch.tensor([500.0]), cond)

    with torch.no_grad():
        for extra in ({}, {"dense_layers": 2}):
            plain = predict(6, **extra)
            assert torch.equal(predict(6, train_frames=2, extrapolation_decay=1.0, **extra), plain)
            assert not torch.allclose(predict(6, train_frames=2, extrapolation_decay=0.2, **extra), plain, atol=1e-4)
            assert torch.equal(predict(2, train_frames=2, extrapolation_decay=0.2, **extra), predict(2, **extra))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extrapolation_decay": 0.0, "train_frames": 2}, r"^attention.extrapolation_decay=0.0: expected 0 < lambda"),
        ({"extrapolation_decay": -0.5, "train_frames": 2}, r"^attention.extrapolation_decay=-0.5: expected"),
        ({"extrapolation_decay": 1.5, "train_frames": 2}, r"^attention.extrapolation_decay=1.5: expected"),
        ({"extrapolation_decay": 0.5}, r"^attention.extrapolation_decay needs attention.train_frames"),
        ({"extrapolation_decay": "0.5", "train_frames": 2}, r"^attention.extrapolation_decay='0.5': expected a num"),
    ],
)
def test_bad_values_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as e:
        radial.inject(get_adapter("wan").build_tiny(), **kwargs)
    assert "\n" not in str(e.value)


def test_hunyuan_joint_attention_with_both_extensions():
    """Text tokens and their padding (joint attention) with the decay and RIFLEx on: finite, and only long clips
    change."""
    hunyuan = get_adapter("hunyuan")
    model = hunyuan.build_tiny()

    def predict(frames, **kwargs):
        with radial.inject(model, backend="reference", block_size=BLOCK, **kwargs):
            latents = hunyuan.make_dummy_latents(model, 1, frames, 8, 8)
            cond = hunyuan.make_dummy_conditions(model, 1, 8, latent_shape=latents.shape, valid_text=5)
            return hunyuan.predict(model, latents, torch.tensor([500.0]), cond)

    both = {"train_frames": 2, "rope_extension": "riflex", "extrapolation_decay": 0.3}
    with torch.no_grad():
        extended = predict(5, **both)
        assert torch.isfinite(extended).all() and not torch.allclose(extended, predict(5), atol=1e-4)
        assert torch.equal(predict(2, **both), predict(2))
