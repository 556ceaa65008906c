"""GPU checks of the attention backends (run on an H100): bf16/fp16 at >= 32k tokens against an fp32 reference.

Fresh random inputs each run; the caching allocator is poisoned with NaN before each run so that an output element
the kernels never write shows up as NaN.
"""

from __future__ import annotations

import pytest
import torch

import radial
from radial.kernels.call import AttentionCall
from radial.kernels.reference import reference_attention

pytestmark = pytest.mark.gpu


def poison_allocator(gib: float = 8.0) -> None:
    """Fill free cached device memory with NaN, so that torch.empty in the kernels hands back NaN-filled blocks."""
    torch.cuda.synchronize()
    blocks = []
    for _ in range(int(gib * 4)):
        blocks.append(torch.full((2**28 // 4,), float("nan"), device="cuda"))  # 256 MiB each
    del blocks
    torch.cuda.synchronize()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def inputs(plan, batch, heads, dim, dtype, padded_text=0):
    seq = plan.seq_len
    q, k, v = (torch.randn(batch, seq, heads, dim, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(batch, seq, heads, dim, device="cuda", dtype=dtype)
    kpm = None
    if padded_text:
        kpm = torch.ones(batch, seq, dtype=torch.bool, device="cuda")
        kpm[0, seq - padded_text :] = False
        if batch > 1:
            kpm[1, seq - padded_text // 3 :] = False
    return q, k, v, do, kpm


def check_backend(backend, plan, batch, heads, dim, dtype, padded_text=0, backward=True, tol=1e-2):
    q, k, v, do, kpm = inputs(plan, batch, heads, dim, dtype, padded_text)
    ref = reference_attention(AttentionCall(q, k, v, plan, kpm))
    ref_grads = torch.autograd.grad(ref, (q, k, v), do) if backward else ()
    poison_allocator()
    if backward:
        out = radial.radial_attention(q, k, v, plan, backend=backend, key_padding_mask=kpm)
        grads = torch.autograd.grad(out, (q, k, v), do)
    else:
        with torch.no_grad():
            out = radial.radial_attention(q, k, v, plan, backend=backend, key_padding_mask=kpm)
        grads = ()
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), strict=False):
        assert torch.isfinite(got).all(), f"{backend} {name}: non-finite (unwritten?) elements"
        err = rel(got, want)
        assert err < tol, f"{backend} {name}: relative error {err:.3e}"


# Wan 480p, 21 frames: 32760 tokens (partial last block); Hunyuan 720p, 9 frames + 256 text: 32656 tokens.
WAN = dict(num_frames=21, tokens_per_frame=1560)
HUN = dict(num_frames=9, tokens_per_frame=3600, text_tokens=256, model="hunyuan")


@pytest.mark.parametrize(
    "layout,batch,heads,dim,dtype,padded",
    [
        (WAN, 1, 2, 128, torch.bfloat16, 0),
        (HUN, 2, 2, 128, torch.bfloat16, 200),
        (HUN, 2, 2, 64, torch.float16, 77),
        (WAN, 1, 3, 64, torch.bfloat16, 0),
    ],
)
def test_triton_matches_reference(layout, batch, heads, dim, dtype, padded):
    plan = radial.make_plan(**layout, device="cuda")
    check_backend("triton", plan, batch, heads, dim, dtype, padded)


@pytest.mark.parametrize("tma,rotate", [(False, False), (True, False), (True, True)])
def test_triton_atomic_dq_variant(tma, rotate):
    from radial.kernels import triton_common as tc

    plan = radial.make_plan(**HUN, device="cuda")
    tc.set_config_override(
        bwd=tc.BwdConfig(64, 128, 8, 1 if tma else 3, 0, 0, 0, 0, atomic_dq=True, dq_tma=tma, rotate=rotate)
    )
    try:
        check_backend("triton", plan, 2, 2, 128, torch.bfloat16, 100)
    finally:
        tc.set_config_override()


def test_triton_empty_rows_and_block64():
    from radial.mask import MaskOptions

    nb = -(-(4 * 8192 + 100) // 64)
    mask = torch.rand(nb, nb, device="cuda") < 0.05
    mask[7] = False
    mask[:, 11] = False
    plan = radial.plan_from_mask(mask, 4, 8192, 100, MaskOptions(block_size=64))
    check_backend("triton", plan, 1, 2, 128, torch.bfloat16, 30)


@pytest.mark.parametrize("kernel", ["sdpa", "fa4"])
@pytest.mark.parametrize("padded", [0, 150])
def test_dense_backend_drops_padded_keys(padded, kernel, monkeypatch):
    """The dense backend (SDPA or flash-attn-4's dense kernel on each sample's unpadded keys) against masked SDPA in
    fp32: values and gradients."""
    import torch.nn.functional as F

    from radial.kernels import fa4

    if kernel == "fa4" and not fa4.dense_usable(torch.empty(1, 1, 1, 128, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("flash-attn-4's dense kernel does not run here (not installed, or not 9.x/10.x)")
    monkeypatch.setenv("RADIAL_DENSE_KERNEL", kernel)
    plan = radial.make_plan(**HUN, device="cuda")
    q, k, v, do, kpm = inputs(plan, 2, 2, 128, torch.bfloat16, padded)
    mask = None if kpm is None else kpm[:, None, None, :]
    q32, k32, v32 = (t.detach().float().transpose(1, 2).requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask).transpose(1, 2)
    ref_grads = [g.transpose(1, 2) for g in torch.autograd.grad(ref, (q32, k32, v32), do.float())]
    poison_allocator()
    out = radial.radial_attention(q, k, v, plan, backend="dense", key_padding_mask=kpm)
    grads = torch.autograd.grad(out, (q, k, v), do)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), strict=True):
        assert torch.isfinite(got).all(), f"dense {kernel} {name}: non-finite elements"
        assert rel(got, want) < 1e-2, f"dense {kernel} {name}: relative error {rel(got, want):.3e}"


@pytest.mark.parametrize("padded", [0, 120])
def test_flex_matches_reference(padded):
    plan = radial.make_plan(**HUN, device="cuda")
    check_backend("flex", plan, 2, 2, 128, torch.bfloat16, padded)


@pytest.mark.parametrize("padded", [0, 120])
def test_flashinfer_forward(padded):
    """Wan (partial last block, merged by LSE) and HunyuanVideo (text keys padded per batch element), B = 2."""
    pytest.importorskip("flashinfer")
    plan = radial.make_plan(**(HUN if padded else WAN), device="cuda")
    check_backend("flashinfer", plan, 2, 2, 128, torch.bfloat16, padded, backward=False)


def test_flashinfer_hunyuan_4x_plan():
    """HunyuanVideo 720p 4x (461k tokens, 1.4M kept blocks): overflowed FlashInfer's default index buffer."""
    pytest.importorskip("flashinfer")
    check_hunyuan_4x_forward("flashinfer")


def check_hunyuan_4x_forward(backend: str) -> None:
    """HunyuanVideo 720p 4x, one head, 100 padded text keys: `backend`'s forward against triton's."""
    plan = radial.make_plan(128, 3600, text_tokens=256, model="hunyuan", device="cuda")
    q, k, v = (torch.randn(1, plan.seq_len, 1, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kpm = torch.ones(1, plan.seq_len, dtype=torch.bool, device="cuda")
    kpm[0, -100:] = False
    with torch.no_grad():
        want = radial.radial_attention(q, k, v, plan, backend="triton", key_padding_mask=kpm)
        poison_allocator()
        got = radial.radial_attention(q, k, v, plan, backend=backend, key_padding_mask=kpm)
    assert torch.isfinite(got).all()
    assert rel(got, want) < 1e-2


def test_torch_compile_triton():
    plan = radial.make_plan(**HUN, device="cuda")
    q, k, v, do, kpm = inputs(plan, 1, 2, 128, torch.bfloat16, 50)

    def layer(q, k, v, kpm):
        return radial.radial_attention(q * 1.0, k, v, plan, backend="triton", key_padding_mask=kpm) * 2.0

    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(q, k, v, kpm)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = layer(q, k, v, kpm)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    assert rel(out, ref) < 1e-3
    for g, r in zip(grads, ref_grads, strict=False):
        assert rel(g, r) < 1e-3


def test_int64_offsets():
    """B*S*H*D > 2^31: a block-diagonal plan over 262k tokens x 72 heads; check the highest-offset blocks."""
    from radial.mask import MaskOptions

    seq, heads, dim, bs = 262144 + 100, 72, 128, 128
    assert seq * heads * dim > 2**31
    nb = -(-seq // bs)
    plan = radial.plan_from_mask(torch.eye(nb, dtype=torch.bool, device="cuda"), 1, seq, 0, MaskOptions(block_size=bs))
    q, k, v = (
        torch.randn(1, seq, heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
    )
    do = torch.randn_like(q)
    out = radial.radial_attention(q, k, v, plan, backend="triton")
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    lo = (nb - 3) * bs  # the last three blocks (the last one partial), last heads: offsets past 2^31
    for start in (lo, lo + bs, lo + 2 * bs):
        stop = min(start + bs, seq)
        sl = (slice(None), slice(start, stop), slice(heads - 4, heads))
        qs, ks, vs = (t[sl].detach().float().requires_grad_() for t in (q, k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (qs, ks, vs))).transpose(
            1, 2
        )
        rg = torch.autograd.grad(ref, (qs, ks, vs), do[sl].float())
        assert rel(out[sl], ref) < 1e-2
        for g, r in zip((dq[sl], dk[sl], dv[sl]), rg, strict=False):
            assert rel(g, r) < 1e-2
