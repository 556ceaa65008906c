"""The reference backend equals naive masked attention, in value and gradient, chunked or not."""

import pytest
import torch

import radial.kernels.reference as ref
from radial import dense_plan, make_plan, radial_attention


def naive(q, k, v, plan, pad=None):
    bs = plan.block_size
    s = q.shape[1]
    tok = plan.block_mask.repeat_interleave(bs, 0).repeat_interleave(bs, 1)[:s, :s]
    allowed = tok[None, None] if pad is None else tok[None, None] & pad[:, None, None, :]
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * q.shape[-1] ** -0.5
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.double())


def _inputs(plan, b=2, h=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, plan.seq_len, h, d, generator=g, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("small_chunks", [False, True])
def test_matches_naive_with_padding_and_grads(monkeypatch, small_chunks):
    if small_chunks:
        monkeypatch.setattr(ref, "_CHUNK_BYTES", 1)
    plan = make_plan(6, 50, text_tokens=21, block_size=16, model="hunyuan")
    assert plan.stats.block_density < 0.9
    q, k, v = _inputs(plan)
    pad = torch.ones(2, plan.seq_len, dtype=torch.bool)
    pad[1, -9:] = False
    out = radial_attention(q, k, v, plan, backend="reference", key_padding_mask=pad)
    exp = naive(q, k, v, plan, pad)
    assert out.dtype == q.dtype
    torch.testing.assert_close(out.double(), exp, atol=2e-6, rtol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(exp, (q, k, v), grad.double())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-4)


def test_rows_with_no_key_are_zero():
    plan = dense_plan(1, 40, block_size=16)
    q, k, v = (t.detach() for t in _inputs(plan, b=1))
    pad = torch.zeros(1, 40, dtype=torch.bool)
    out = radial_attention(q, k, v, plan, backend="reference", key_padding_mask=pad)
    assert torch.equal(out, torch.zeros_like(out))


def test_dense_backend_equals_reference_on_dense_plan():
    plan = dense_plan(3, 37, text_tokens=5, block_size=16)
    q, k, v = (t.detach() for t in _inputs(plan))
    pad = torch.ones(2, plan.seq_len, dtype=torch.bool)
    pad[0, -3:] = False
    a = radial_attention(q, k, v, plan, backend="reference", key_padding_mask=pad)
    b = radial_attention(q, k, v, plan, backend="dense", key_padding_mask=pad)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bad_calls_are_reported():
    plan = make_plan(2, 64, block_size=16)
    q = torch.randn(1, plan.seq_len, 2, 8)
    with pytest.raises(ValueError, match="does not match the plan"):
        radial_attention(q[:, :-1], q[:, :-1], q[:, :-1], plan)
    with pytest.raises(ValueError, match="share one"):
        radial_attention(q, q[..., :4], q, plan)
    with pytest.raises(ValueError, match="key_padding_mask"):
        radial_attention(q, q, q, plan, key_padding_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="backend must be"):
        radial_attention(q, q, q, plan, backend="magic")
