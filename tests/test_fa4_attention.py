"""The fa4 backend's wrapper on CPU, against a fake `flash_attn.cute` that mimics flash-attn-4 4.0.0b36.

The fake follows the source (flash_attn/cute/interface.py, block_sparsity.py, block_sparse_utils.py): q/k/v are
[B, S, H, D] in float16/bfloat16; block-sparse tensors are int32 (cnt [B|1, H|1, rows], idx [B|1, H|1, rows, <=
cols]) with an explicit block_size; the forward walks each row's list from its last entry and masks keys >= seqlen_k
in that first block only (keys past the end read as zeros, as TMA does); the backward takes the transposed lists,
masks seqlen everywhere, rejects deterministic=True with block sparsity, and rejects seqused_k with block sparsity.
It computes in fp32, so outputs match the reference backend to bf16 rounding. The real kernels run in
tests/gpu/test_fa4_gpu.py.
"""

from __future__ import annotations

import math
import sys
import types
from typing import NamedTuple

import pytest
import torch

import radial
from radial import attention
from radial.checkpointing import attention_saving_checkpoint, saved_ops
from radial.kernels import dense as dense_mod
from radial.kernels import fa4, registry
from radial.kernels.call import AttentionCall
from radial.kernels.reference import reference_attention
from radial.mask import MaskOptions


class FakeBlockSparseTensorsTorch(NamedTuple):
    mask_block_cnt: torch.Tensor
    mask_block_idx: torch.Tensor
    full_block_cnt: torch.Tensor | None = None
    full_block_idx: torch.Tensor | None = None
    cu_total_m_blocks: torch.Tensor | None = None
    cu_block_idx_offsets: torch.Tensor | None = None
    block_size: tuple[int, int] | None = None
    dq_write_order: torch.Tensor | None = None
    dq_write_order_full: torch.Tensor | None = None
    spt: bool | None = None


def _check_lists(t: FakeBlockSparseTensorsTorch, batch: int, heads: int, rows: int, cols: int) -> None:
    assert t.block_size is not None, "block_size must be given (ambiguous otherwise)"
    for cnt, idx in ((t.mask_block_cnt, t.mask_block_idx), (t.full_block_cnt, t.full_block_idx)):
        assert cnt.dtype == torch.int32 and idx.dtype == torch.int32
        assert cnt.ndim == 3 and idx.ndim == 4
        assert cnt.shape[0] in (1, batch) and cnt.shape[1] in (1, heads) and cnt.shape[2] == rows, cnt.shape
        assert idx.shape[:3] == cnt.shape and idx.shape[3] <= cols, (idx.shape, cols)


def _token_mask(cnt, idx, rows_tokens, cols_padded, bs_row, bs, seqlen_k, first_only):
    """[rows_tokens, cols_padded] allowed mask of (batch 0, head 0) lists of `bs_row`-token rows and `bs`-token
    columns; seqlen mask on the first block walked."""
    allowed = torch.zeros(rows_tokens, cols_padded, dtype=torch.bool)
    for r in range(cnt.shape[2]):
        n = int(cnt[0, 0, r])
        for i in range(n - 1, -1, -1):  # the forward walks a list from its last entry
            j = int(idx[0, 0, r, i])
            cols = torch.arange(j * bs, (j + 1) * bs)
            keep = cols < seqlen_k if (i == n - 1 or not first_only) else torch.ones_like(cols, dtype=torch.bool)
            allowed[r * bs_row : (r + 1) * bs_row, cols[keep]] = True
    return allowed[:rows_tokens]


class FakeInterface(types.ModuleType):
    def __init__(self):
        super().__init__("flash_attn.cute.interface")
        self.calls: list[dict] = []

    def _attend(self, q, k, v, scale, allowed):
        """fp32 attention with keys zero-padded to the mask's width (what TMA reads past the end)."""
        pad = allowed.shape[1] - k.shape[1]
        kf, vf = (torch.nn.functional.pad(t.float(), (0, 0, 0, 0, 0, pad)) for t in (k, v))
        s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kf) * scale
        s = s.masked_fill(~allowed, float("-inf"))
        lse = torch.logsumexp(s, -1)
        p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
        return torch.einsum("bhqk,bkhd->bqhd", p, vf), lse

    def _flash_attn_fwd(self, q, k, v, softmax_scale=None, block_sparse_tensors=None, return_lse=False,
                        seqused_k=None, **kwargs):  # fmt: skip
        assert not kwargs, kwargs
        assert q.dtype in (torch.float16, torch.bfloat16) and k.dtype == q.dtype and v.dtype == q.dtype
        b, sq, h, _ = q.shape
        sk = k.shape[1]
        assert k.shape[0] == b and k.shape[2:] == q.shape[2:] and v.shape == k.shape
        t = block_sparse_tensors
        self.calls.append({"op": "fwd", "q": q.shape, "k": k.shape, "tensors": t})
        if t is None:
            allowed = torch.ones(sq, sk, dtype=torch.bool)
        else:
            bs_q, bs_k = t.block_size
            _check_lists(t, b, h, -(-sq // bs_q), -(-sk // bs_k))
            assert int(t.mask_block_cnt.max()) == 0, "every kept block is a full block"
            allowed = _token_mask(t.full_block_cnt, t.full_block_idx, sq, -(-sk // bs_k) * bs_k, bs_q, bs_k, sk, True)
        out, lse = self._attend(q, k, v, softmax_scale, allowed)
        return out.to(q.dtype), lse, None, None, None

    def _flash_attn_bwd(self, q, k, v, out, dout, lse, softmax_scale=None, causal=False, softcap=0.0,
                        block_sparse_tensors=None, deterministic=False, seqused_k=None, **kwargs):  # fmt: skip
        assert not kwargs and not causal, kwargs
        t = block_sparse_tensors
        if t is not None and seqused_k is not None:
            raise AssertionError("Varlen backward with block sparsity is not yet supported")
        if t is not None and deterministic:
            raise NotImplementedError("deterministic is not implemented for block-sparse backward")
        b, sq, h, _ = q.shape
        sk = k.shape[1]
        assert lse.shape == (b, h, sq) and lse.dtype == torch.float32 and out.shape == q.shape
        self.calls.append({"op": "bwd", "q": q.shape, "k": k.shape, "tensors": t})
        if t is None:
            allowed = torch.ones(sq, sk, dtype=torch.bool)
        else:
            bs_q, bs_k = t.block_size
            _check_lists(t, b, h, -(-sk // bs_k), -(-sq // bs_q))
            assert int(t.mask_block_cnt.max()) == 0
            # Transposed lists: rows are key blocks. Build [key tokens, q tokens] and transpose.
            allowed = _token_mask(
                t.full_block_cnt, t.full_block_idx, sk, -(-sq // bs_q) * bs_q, bs_k, bs_q, sq, False
            ).t()
            allowed = allowed[:sq]
        # By hand: a custom op's implementation runs below autograd.
        qf, kf, vf, do = (x.float() for x in (q, k, v, dout))
        s_ = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * softmax_scale
        p = torch.softmax(s_.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
        o = torch.einsum("bhqk,bkhd->bqhd", p, vf)
        dv = torch.einsum("bhqk,bqhd->bkhd", p, do)
        dp = torch.einsum("bqhd,bkhd->bhqk", do, vf)
        ds = p * (dp - (do * o).sum(-1).transpose(1, 2)[..., None])
        dq = torch.einsum("bhqk,bkhd->bqhd", ds, kf) * softmax_scale
        dk = torch.einsum("bhqk,bqhd->bkhd", ds, qf) * softmax_scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@pytest.fixture
def fake(monkeypatch):
    interface = FakeInterface()
    sparsity = types.ModuleType("flash_attn.cute.block_sparsity")
    sparsity.BlockSparseTensorsTorch = FakeBlockSparseTensorsTorch
    cute = types.ModuleType("flash_attn.cute")
    cute.interface, cute.block_sparsity = interface, sparsity
    pkg = types.ModuleType("flash_attn")
    pkg.cute = cute
    for name, mod in (("flash_attn", pkg), ("flash_attn.cute", cute), ("flash_attn.cute.interface", interface),
                      ("flash_attn.cute.block_sparsity", sparsity)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(fa4, "_REQUIRE_CUDA", False)
    monkeypatch.setattr(fa4, "_import_error", [])
    monkeypatch.setattr(registry, "_logged", set())
    return interface


@pytest.fixture
def triton_calls(monkeypatch):
    """The triton fallback, recorded and answered by the reference backend (no interpreter run needed)."""
    import radial.kernels.triton as triton_mod

    calls = []

    def fake_triton(call):
        calls.append(call.plan.block_size)
        return reference_attention(call)

    monkeypatch.setattr(triton_mod, "triton_attention", fake_triton)
    return calls


def _inputs(plan, batch, heads=2, dim=32, dtype=torch.bfloat16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(batch, plan.seq_len, heads, dim, generator=gen).to(dtype) for _ in range(4))
    return [t.requires_grad_() for t in (q, k, v)], do


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def _check(plan, batch, kpm=None, backend="fa4"):
    (q, k, v), do = _inputs(plan, batch)
    out = radial.radial_attention(q, k, v, plan, backend=backend, key_padding_mask=kpm)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = reference_attention(AttentionCall(q, k, v, plan, kpm))
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), strict=True):
        assert got.dtype == q.dtype and got.shape == q.shape
        assert _rel(got, want) < 1e-2, (name, _rel(got, want))


def test_partial_last_block_forward_and_backward(fake):
    plan = radial.make_plan(6, 100, model="wan")  # 600 tokens: 4 whole blocks of 128 + a partial one
    _check(plan, 2)
    fwd, bwd = (c for c in fake.calls if c["op"] in ("fwd", "bwd"))
    assert fwd["q"] == fwd["k"] == (2, 600, 2, 32)  # one call for the batch: nothing cut


def test_argument_conversion(fake):
    plan = radial.make_plan(6, 100, model="wan")
    (q, k, v), do = _inputs(plan, 1)
    out = radial.radial_attention(q, k, v, plan, backend="fa4")
    out.backward(do)
    fwd, bwd = fake.calls
    nb = plan.num_blocks
    for call, cnt, idx in ((fwd, plan.kv_counts, plan.kv_indices), (bwd, plan.q_counts, plan.q_indices)):
        t = call["tensors"]
        assert t.block_size == (128, 128)
        assert t.full_block_cnt.shape == (1, 1, nb) and t.full_block_idx.shape == (1, 1, nb, idx.shape[1])
        assert torch.equal(t.full_block_cnt[0, 0], cnt) and torch.equal(t.full_block_idx[0, 0], idx)
        assert t.mask_block_cnt.shape == (1, 1, nb) and int(t.mask_block_cnt.abs().sum()) == 0
        assert t.mask_block_idx.shape == (1, 1, nb, 1)
        assert all(x.dtype == torch.int32 and x.is_contiguous() for x in t[:4])


def test_lists_built_once_per_plan_and_device(fake):
    plan = radial.make_plan(6, 100, model="wan")
    (q, k, v), _ = _inputs(plan, 1)
    with torch.no_grad():
        radial.radial_attention(q, k, v, plan, backend="fa4")
        radial.radial_attention(q, k, v, plan, backend="fa4")
    first, second = (c["tensors"] for c in fake.calls)
    assert first.full_block_idx is second.full_block_idx  # the cached tensors, not rebuilt
    assert fa4.plan_tensors(plan, q.device) is fa4.plan_tensors(plan, q.device)
    assert list(fa4._plan_tensors[plan]) == [("cpu", plan.num_blocks)]


def test_padded_text_keys_per_sample(fake):
    # Hunyuan layout: 4 frames x 100 tokens + 150 text tokens = 550; samples padded by 120 (two key blocks cut),
    # 0 (unpadded), and every text token (keys end with the video).
    plan = radial.make_plan(4, 100, text_tokens=150, model="hunyuan")
    kpm = torch.ones(3, plan.seq_len, dtype=torch.bool)
    kpm[0, -120:] = False
    kpm[2, plan.video_tokens :] = False
    _check(plan, 3, kpm)
    fwd_keys = [c["k"][1] for c in fake.calls if c["op"] == "fwd"]
    assert fwd_keys == [430, 550, 400]
    cut = fake.calls[0]["tensors"]
    assert cut.full_block_cnt.shape == (1, 1, plan.num_blocks) and int(cut.full_block_idx.max()) <= 3
    bwd = [c["tensors"] for c in fake.calls if c["op"] == "bwd"]
    assert [t.full_block_cnt.shape[2] for t in bwd] == [-(-n // 128) for n in (430, 550, 400)]


def test_non_tail_padding_runs_triton(fake, triton_calls, caplog):
    plan = radial.make_plan(4, 100, text_tokens=150, model="hunyuan")
    kpm = torch.ones(2, plan.seq_len, dtype=torch.bool)
    kpm[1, 10:20] = False
    _check(plan, 2, kpm)
    assert triton_calls == [128] and fake.calls == []
    assert "not a tail" in caplog.text


def test_block_64_and_deterministic_run_triton(fake, triton_calls, caplog):
    plan = radial.make_plan(6, 100, block_size=64)
    _check(plan, 1)
    assert triton_calls == [64] and "128-token blocks" in caplog.text
    plan = radial.make_plan(6, 100)
    torch.use_deterministic_algorithms(True)
    try:
        _check(plan, 1)
        assert attention.resolve_backend("fa4", torch.device("cuda", 0)) == "triton"
    finally:
        torch.use_deterministic_algorithms(False)
    assert triton_calls == [64, 128] and fake.calls == [] and "not deterministic" in caplog.text
    assert caplog.text.count("not deterministic") == 1  # said once, not per call


def test_float32_runs_triton(fake, triton_calls):
    plan = radial.make_plan(6, 100)
    (q, k, v), _ = _inputs(plan, 1, dtype=torch.float32)
    radial.radial_attention(q, k, v, plan, backend="fa4")
    assert triton_calls == [128] and fake.calls == []


def test_missing_module_and_cpu_tensors(monkeypatch):
    monkeypatch.setattr(fa4, "_import_error", ["flash_attn.cute does not import (ImportError: no module)"])
    plan = radial.make_plan(6, 100)
    q = torch.randn(1, plan.seq_len, 2, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        radial.radial_attention(q, q, q, plan, backend="fa4")
    monkeypatch.setattr(fa4, "_REQUIRE_CUDA", False)
    with pytest.raises(ImportError, match=r"radial-lora\[fa4\]"):
        radial.radial_attention(q, q, q, plan, backend="fa4")


@pytest.mark.parametrize(
    "major,installed,deterministic,block,want",
    [
        (9, True, False, 128, "fa4"),
        (10, True, False, 128, "triton"),  # SM100: 256-row sparse q blocks (see radial/kernels/fa4.py)
        (8, True, False, 128, "triton"),
        (9, False, False, 128, "triton"),
        (9, True, True, 128, "triton"),
        (9, True, False, 64, "triton"),
    ],
)
def test_auto_selection(monkeypatch, major, installed, deterministic, block, want):
    monkeypatch.setattr(fa4, "_capability_major", lambda device: major)
    monkeypatch.setattr(fa4, "_import_error", [None if installed else "flash_attn.cute does not import"])
    monkeypatch.setattr(registry, "_logged", set())
    torch.use_deterministic_algorithms(deterministic)
    try:
        assert attention.resolve_backend("auto", torch.device("cuda", 0), block) == want
    finally:
        torch.use_deterministic_algorithms(False)
    assert attention.resolve_backend("auto", torch.device("cpu"), block) == "reference"


def test_saved_by_the_attention_checkpoint_policy(fake):
    assert torch.ops.radial.fa4_attn_fwd.default in saved_ops()
    plan = radial.make_plan(6, 100)
    (q, k, v), do = _inputs(plan, 1)
    lin = torch.nn.Linear(32, 32).to(torch.bfloat16)

    def block(x):
        return radial.radial_attention(lin(x), k, v, plan, backend="fa4") * 2

    for fn, forwards in ((attention_saving_checkpoint, 1), (torch.utils.checkpoint.checkpoint, 2)):
        fake.calls.clear()
        out = fn(block, q, use_reentrant=False) if fn is not attention_saving_checkpoint else fn(block, q)
        out.backward(do)
        assert [c["op"] for c in fake.calls].count("fwd") == forwards


def test_torch_compile_fullgraph(fake):
    plan = radial.make_plan(6, 100)
    (q, k, v), do = _inputs(plan, 1)

    def layer(q, k, v):
        return radial.radial_attention(q * 1.0, k, v, plan, backend="fa4") * 2.0

    out = torch.compile(layer, fullgraph=True, backend="aot_eager")(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = layer(q, k, v)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    assert _rel(out, ref) < 1e-3 and all(_rel(g, r) < 1e-3 for g, r in zip(grads, ref_grads, strict=True))


@pytest.mark.parametrize("padded", [0, 50])
def test_dense_backend_kernel_switch(fake, monkeypatch, padded):
    monkeypatch.setattr(fa4, "_capability_major", lambda device: 9)
    plan = radial.make_plan(4, 100, text_tokens=64, model="hunyuan")
    kpm = None
    if padded:
        kpm = torch.ones(2, plan.seq_len, dtype=torch.bool)
        kpm[1, -padded:] = False
    dense_plan = radial.dense_plan(4, 100, text_tokens=64)
    for kernel, fa4_calls in (("sdpa", 0), ("auto", 1), ("fa4", 1)):
        monkeypatch.setenv(dense_mod.DENSE_KERNEL_ENV, kernel)
        fake.calls.clear()
        _check(dense_plan, 2, kpm, backend="dense")
        fwd = [c for c in fake.calls if c["op"] == "fwd"]
        assert len(fwd) == fa4_calls * (2 if padded else 1) and all(c["tensors"] is None for c in fwd)
    monkeypatch.setenv(dense_mod.DENSE_KERNEL_ENV, "auto")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert dense_mod.dense_kernel(torch.empty(1, 1, 1, 32, dtype=torch.bfloat16)) == "sdpa"
    finally:
        torch.use_deterministic_algorithms(False)
    monkeypatch.setenv(dense_mod.DENSE_KERNEL_ENV, "cudnn")
    q = torch.randn(1, plan.seq_len, 2, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="RADIAL_DENSE_KERNEL"):
        radial.radial_attention(q, q, q, plan, backend="dense")
    monkeypatch.setenv(dense_mod.DENSE_KERNEL_ENV, "fa4")
    with pytest.raises(ValueError, match="float16/bfloat16"):
        radial.radial_attention(q.float(), q.float(), q.float(), plan, backend="dense")


def test_blocks_cut_to_a_sample_keep_the_boundary_block_last(fake):
    """Keys cut mid-block: every row that keeps the boundary block lists it last, so the seqlen mask reaches it."""
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(3)) < 0.5
    mask |= torch.eye(6, dtype=torch.bool)
    mask[:, 4] = True
    plan = radial.plan_from_mask(mask, 1, 700, 0, MaskOptions(block_size=128))
    (fwd, _), n = fa4.plan_tensors(plan, torch.device("cpu"), 5), 5
    cnt, idx = fwd[2][0, 0], fwd[3][0, 0]
    for r in range(6):
        row = idx[r, : cnt[r]].tolist()
        assert row == sorted(row) and all(j < n for j in row) and row[-1] == n - 1
    assert math.isclose(float(cnt.sum()), float(mask[:, :5].sum()))


def test_head_group_views_as_ulysses_passes_them(fake):
    """Ulysses SP calls the backend on the full sequence with a head group: non-contiguous views, gathered padding."""
    plan = radial.make_plan(4, 100, text_tokens=150, model="hunyuan")
    (q, k, v), do = _inputs(plan, 2, heads=4)
    kpm = torch.ones(2, plan.seq_len, dtype=torch.bool)
    kpm[1, -70:] = False
    group = [t[:, :, 2:4] for t in (q, k, v)]  # rank 1 of sp=2: heads 2-3, a strided view
    assert not group[0].is_contiguous()
    out = radial.radial_attention(*group, plan, backend="fa4", key_padding_mask=kpm)
    ref = reference_attention(AttentionCall(*group, plan, kpm))
    grads = torch.autograd.grad(out, (q, k, v), do[:, :, 2:4])
    ref_grads = torch.autograd.grad(ref, (q, k, v), do[:, :, 2:4])
    assert _rel(out, ref) < 1e-2 and all(_rel(g, r) < 1e-2 for g, r in zip(grads, ref_grads, strict=True))
    assert all(float(g[:, :, :2].abs().max()) == 0 for g in grads)  # the other rank's heads get no gradient
