"""The flashinfer backend's splitting and merging logic on CPU, against a fake `flashinfer` module.

The fake follows FlashInfer 0.5.3's documented and source-read behaviour (flashinfer/sparse.py, cascade.py,
prefill.py) including its traps: `plan(o_data_type=...)` defaults to float16, `merge_state` reads its second
operand with the first one's dtype, LSE is base 2, a fully masked row gets lse ~ -5e4, and FA3's vector-sparse
index buffer overflows when nnz * C reaches its size. The real kernels run in tests/gpu/test_attention_gpu.py.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

import radial
from radial.kernels import flashinfer as fi_backend
from radial.kernels.call import AttentionCall
from radial.kernels.reference import reference_attention
from radial.mask import MaskOptions

_MASKED_M = -5e4  # FlashInfer's math::inf is 5e4: a fully masked row keeps m = -5e4


def _attend(q, k, v, allowed, out_dtype):
    """[M, H, D] attention with a token mask [M, N], FlashInfer-style outputs: (o in out_dtype, lse2 fp32 [M, H])."""
    scale = q.shape[-1] ** -0.5
    s = torch.einsum("mhd,nhd->hmn", q.float(), k.float()) * scale * math.log2(math.e)
    s = s.masked_fill(~allowed[None], _MASKED_M)
    m = s.amax(-1, keepdim=True)
    p = torch.exp2(s - m)
    d = p.sum(-1, keepdim=True)
    o = torch.einsum("hmn,nhd->mhd", p / d, v.float())
    lse = (m + torch.log2(d)).squeeze(-1).transpose(0, 1).contiguous()
    return o.to(out_dtype), lse


class FakeBlockSparseWrapper:
    def __init__(self, float_workspace_buffer, backend="auto"):
        self._vector_sparse_indices_buffer = torch.empty(FakeFlashInfer.vector_buffer_size, dtype=torch.int32)

    def reset_workspace_buffer(
        self, float_ws, int_ws, vector_sparse_indices_buffer=None, vector_sparse_indptr_buffer=None
    ):
        if vector_sparse_indices_buffer is not None:
            self._vector_sparse_indices_buffer = vector_sparse_indices_buffer

    def plan(self, indptr, indices, M, N, R, C, num_qo_heads, num_kv_heads, head_dim, *, q_data_type="float16",
             kv_data_type=None, o_data_type="float16"):  # fmt: skip
        assert N % C == 0 and indptr.dtype == torch.int32 and indices.dtype == torch.int32
        mask = torch.zeros(len(indptr) - 1, N // C, dtype=torch.bool)
        for r in range(len(indptr) - 1):
            mask[r, indices[indptr[r] : indptr[r + 1]].long()] = True
        self.allowed = mask.repeat_interleave(R, 0)[:M].repeat_interleave(C, 1)
        self.nnz, self.C = indices.numel(), C
        self.o_dtype = o_data_type if isinstance(o_data_type, torch.dtype) else getattr(torch, o_data_type)

    def run(self, q, k, v, return_lse=False):
        if self._vector_sparse_indices_buffer.numel() <= self.nnz * self.C:
            raise ValueError("_vector_sparse_indices_buffer is not large enough. Please increase the size.")
        o, lse = _attend(q, k, v, self.allowed, self.o_dtype)
        return (o, lse) if return_lse else o


class FakeFlashInfer(types.ModuleType):
    vector_buffer_size = 128 * 2**20

    def __init__(self):
        super().__init__("flashinfer")
        self.BlockSparseAttentionWrapper = FakeBlockSparseWrapper

    @staticmethod
    def single_prefill_with_kv_cache(q, k, v, custom_mask=None, causal=False, return_lse=False):
        o, lse = _attend(q, k, v, custom_mask, q.dtype)
        return (o, lse) if return_lse else o

    @staticmethod
    def merge_state(v_a, s_a, v_b, s_b):
        v_b = v_b.view(v_a.dtype)  # the real kernel casts v_b's pointer to v_a's element type
        s_max = torch.maximum(s_a, s_b)
        wa, wb = torch.exp2(s_a - s_max)[..., None], torch.exp2(s_b - s_max)[..., None]
        v = (wa * v_a.float() + wb * v_b.float()) / (wa + wb)
        return v.to(v_a.dtype), s_max + torch.log2((wa + wb)[..., 0])


@pytest.fixture
def fake_flashinfer(monkeypatch):
    fake = FakeFlashInfer()
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    monkeypatch.setattr(fi_backend, "_REQUIRE_CUDA", False)
    monkeypatch.setattr(fi_backend, "_vector_indices", {})
    return fake


def _check(plan, batch, heads, dim, dtype, kpm=None):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(batch, plan.seq_len, heads, dim, generator=gen).to(dtype) for _ in range(3))
    out = radial.radial_attention(q, k, v, plan, backend="flashinfer", key_padding_mask=kpm)
    ref = reference_attention(AttentionCall(q, k, v, plan, kpm))
    assert out.dtype == dtype and out.shape == q.shape
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert err < 1e-2, err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_partial_last_block(fake_flashinfer, dtype):
    # 8 x 100 = 800 tokens: 12 whole blocks of 64 + a partial one, merged by LSE (the bf16 case was the 0.8 error).
    _check(radial.make_plan(8, 100, block_size=64), 2, 2, 32, dtype)


def test_whole_blocks_only(fake_flashinfer):
    _check(radial.make_plan(8, 64, block_size=64), 1, 2, 32, torch.bfloat16)


def test_text_tokens_with_key_padding(fake_flashinfer):
    plan = radial.make_plan(6, 100, text_tokens=37, block_size=64, model="hunyuan")
    kpm = torch.ones(2, plan.seq_len, dtype=torch.bool)
    kpm[0, -10:] = False
    kpm[1, -30:] = False
    _check(plan, 2, 2, 32, torch.bfloat16, kpm)


def test_vector_index_buffer_sized_for_the_plan(fake_flashinfer):
    # A buffer smaller than nnz * C (like HunyuanVideo 4x against FlashInfer's 128M default) must not be used.
    fake_flashinfer.vector_buffer_size = 16
    plan = radial.make_plan(8, 100, block_size=64)
    _check(plan, 1, 1, 32, torch.bfloat16)
    nnz = int(plan.block_mask[:12, :12].sum())
    assert fi_backend._vector_indices["cpu"].numel() > nnz * 64


def test_empty_rows_rejected(fake_flashinfer):
    mask = torch.eye(4, dtype=torch.bool)
    mask[2, 2] = False
    plan = radial.plan_from_mask(mask, 4, 64, 0, MaskOptions(block_size=64))
    q = torch.randn(1, plan.seq_len, 1, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="empty rows"):
        radial.radial_attention(q, q, q, plan, backend="flashinfer")
