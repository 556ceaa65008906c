"""The Triton block-sparse attention on CPU (TRITON_INTERPRET=1, set by conftest): outputs and the three gradients
equal the fp32 reference, with text tokens, key padding, odd lengths, B > 1, empty rows; plus errors and compile."""

from __future__ import annotations

import pytest
import torch

import radial
from radial.kernels import triton_common as tc
from radial.kernels.call import AttentionCall
from radial.kernels.reference import reference_attention
from radial.mask import MaskOptions

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter checks (tests/gpu covers CUDA)")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def compare(plan, batch, heads, dim, dtype=torch.float32, kpm=None, tol=None, seed=0):
    torch.manual_seed(seed)
    seq = plan.seq_len
    q, k, v = (torch.randn(batch, seq, heads, dim, dtype=dtype, requires_grad=True) for _ in range(3))
    out = radial.radial_attention(q, k, v, plan, backend="triton", key_padding_mask=kpm)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = reference_attention(AttentionCall(q, k, v, plan, kpm))
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    tol = tol or (1e-5 if dtype == torch.float32 else 3e-3)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), strict=False):
        assert got.dtype == dtype and got.shape == want.shape
        assert torch.isfinite(got).all(), name
        assert rel(got, want) < tol, f"{name}: {rel(got, want):.2e}"
    return out, grads


def padding(batch, seq, *tails):
    kpm = torch.ones(batch, seq, dtype=torch.bool)
    for b, n in enumerate(tails):
        if n:
            kpm[b, seq - n :] = False
    return kpm


@pytest.mark.parametrize(
    "frames,tpf,text,block,batch,heads,dim,dtype,pad",
    [
        (8, 64, 0, 64, 1, 2, 64, torch.float32, ()),  # sparse radial mask, whole blocks
        (6, 100, 37, 64, 2, 2, 64, torch.float32, (10, 30)),  # text + per-batch padding, odd length
        (5, 130, 40, 128, 2, 1, 128, torch.float32, (7, 0)),  # head dim 128, plan block 128 (sub-tiled)
        (8, 64, 13, 64, 1, 1, 64, torch.float16, (5,)),  # fp16
        (9, 50, 0, 64, 3, 1, 64, torch.float32, ()),  # B=3, no text, partial last block
    ],
)
def test_matches_reference(frames, tpf, text, block, batch, heads, dim, dtype, pad):
    plan = radial.make_plan(frames, tpf, text_tokens=text, block_size=block)
    kpm = padding(batch, plan.seq_len, *pad) if pad else None
    compare(plan, batch, heads, dim, dtype, kpm)


def test_empty_rows_columns_and_fully_padded_batch():
    nb = 6
    torch.manual_seed(1)
    mask = torch.rand(nb, nb) < 0.4
    mask[2, :] = False  # a query block with no key block
    mask[:, 3] = False  # a key block no query attends
    plan = radial.plan_from_mask(mask, 3, 100, 50, MaskOptions(block_size=64))
    kpm = torch.ones(2, plan.seq_len, dtype=torch.bool)
    kpm[1] = False  # every key of batch 1 padded: its output and gradients are 0
    kpm[0, 5:9] = False  # padding in the middle of a block: masked per element
    out, grads = compare(plan, 2, 1, 64, kpm=kpm)
    assert out[1].abs().max() == 0 and all(g[1].abs().max() == 0 for g in grads)
    assert out[0, 128:192].abs().max() == 0  # query block 2 attends nothing


@pytest.mark.parametrize(
    "atomic,tma,rotate,tma_loads", [(False, False, False, False), (True, False, False, False), (True, True, True, True)]
)
def test_gpu_tile_shapes(atomic, tma, rotate, tma_loads):
    """The tile shapes used on the GPU (128-row q tiles, 64-key sub-tiles of a 128 block), the atomic-dQ variants
    (the TMA reduce falls back to element atomics in the interpreter; the rotated walk is checked here) and the
    TMA-load variants (descriptor loads, zero rows past S)."""
    bwd = tc.BwdConfig(64, 128, 4, 1, 128, 64, 4, 1, atomic_dq=atomic, dq_tma=tma, rotate=rotate, tma_loads=tma_loads)
    tc.set_config_override(tc.FwdConfig(128, 64, 4, 1, tma=tma_loads), bwd)
    try:
        plan = radial.make_plan(6, 100, text_tokens=30, block_size=128)
        compare(plan, 2, 2, 64, kpm=padding(2, plan.seq_len, 7, 40))
    finally:
        tc.set_config_override()


def test_noncontiguous_inputs():
    plan = radial.make_plan(4, 100, text_tokens=20, block_size=64)
    torch.manual_seed(2)
    qkv = torch.randn(1, plan.seq_len, 3, 2, 64, requires_grad=True)
    q, k, v = qkv.unbind(2)
    out = radial.radial_attention(q, k, v, plan, backend="triton")
    assert rel(out, reference_attention(AttentionCall(q, k, v, plan))) < 1e-5


def test_torch_compile_fullgraph():
    plan = radial.make_plan(4, 100, text_tokens=20, block_size=64)

    def layer(q, k, v):
        return radial.radial_attention(q, k, v, plan, backend="triton") * 2.0

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    q, k, v = (torch.randn(1, plan.seq_len, 2, 64, requires_grad=True) for _ in range(3))
    out = compiled(q, k, v)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref = layer(q, k, v)
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    assert rel(out, ref) < 1e-6
    assert all(rel(g, r) < 1e-6 for g, r in zip(grads, ref_grads, strict=False))


def test_auto_is_reference_on_cpu():
    plan = radial.make_plan(4, 100, block_size=64)
    q, k, v = (torch.randn(1, plan.seq_len, 1, 64) for _ in range(3))
    assert torch.equal(radial.radial_attention(q, k, v, plan), reference_attention(AttentionCall(q, k, v, plan)))


@pytest.mark.parametrize(
    "shape,dtype,block,match",
    [
        ((1, 400, 2, 96), torch.float32, 64, "head_dim=96"),
        ((1, 400, 2, 64), torch.float64, 64, "dtype=torch.float64"),
        ((1, 400, 2, 64), torch.float32, 32, "block_size=32"),
    ],
)
def test_clear_errors(shape, dtype, block, match):
    plan = radial.make_plan(4, 100, block_size=block)
    q = torch.randn(*shape, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        radial.radial_attention(q, q, q, plan, backend="triton")


def test_not_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    plan = radial.make_plan(4, 100, block_size=64)
    q = torch.randn(1, 400, 1, 64)
    with pytest.raises(ValueError, match="device=cpu"):
        radial.radial_attention(q, q, q, plan, backend="triton")
