"""Forward of the block-sparse flash attention: one program per (query tile, batch*head), walking the plan's kv list.

Online softmax in base 2 (log2 e folded into the scale), fp32 accumulators, LSE saved for the backward. Interior key
tiles run unmasked; only tiles of the boundary blocks (the partial last block, padded keys) pay for masks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radial.kernels.triton_common import (
    LOG2E,
    fwd_config,
    interior_count,
    key_limit,
    key_valid,
    list_tile,
    load_tile,
    program_tile,
    tile_at,
    tile_local,
)

try:  # host-side TMA descriptors (triton >= 3.3); only FwdConfig.tma needs them
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None


@triton.jit
def _fwd_tiles(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    k_desc,
    v_desc,
    kv_col,
    idx_ptr,
    t_lo,
    t_hi,
    stride_s,
    qk_scale,
    KPM,
    b,
    S,
    HAS_PAD: tl.constexpr,
    MASKED: tl.constexpr,
    TMA: tl.constexpr,
    PLAN_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    local = tile_local(stride_s, BLOCK_N, HEAD_DIM)
    for t in range(t_lo, t_hi):
        start_n = list_tile(idx_ptr, t, PLAN_BLOCK, BLOCK_N)
        off = start_n.to(tl.int64) * stride_s
        if MASKED:
            cols = start_n + offs_n
            valid = key_valid(KPM, b, cols, S, HAS_PAD)
            k = load_tile(k_base, off, local, k_desc, b, start_n, kv_col, cols, S, TMA, True, BLOCK_N, HEAD_DIM)
            qk = tl.dot(q, tl.trans(k))
            qk = tl.where(valid[None, :], qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            # A row whose keys are all masked so far keeps m = -inf: subtract 0 there instead of -inf (no NaN).
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
            v = load_tile(v_base, off, local, v_desc, b, start_n, kv_col, cols, S, TMA, True, BLOCK_N, HEAD_DIM)
        else:
            k = load_tile(k_base, off, local, k_desc, b, start_n, kv_col, None, S, TMA, False, BLOCK_N, HEAD_DIM)
            qk = tl.dot(q, tl.trans(k))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            v = load_tile(v_base, off, local, v_desc, b, start_n, kv_col, None, S, TMA, False, BLOCK_N, HEAD_DIM)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    K_DESC,
    V_DESC,
    Out,
    LSE,
    KV_IDX,
    KV_CNT,
    PAD_START,
    KPM,
    stride_b,
    stride_s,
    stride_h,
    idx_stride,
    H,
    S,
    S_PAD,
    NUM_BLOCKS,
    NUM_M_TILES,
    qk_scale,
    HAS_PAD: tl.constexpr,
    TMA: tl.constexpr,
    PLAN_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    pid_m, bh, b, h, base = program_tile(NUM_M_TILES, H, stride_b, stride_h)
    start_m = pid_m * BLOCK_M
    row = start_m // PLAN_BLOCK

    offs_m = tl.arange(0, BLOCK_M)
    q_off, local_m, row_ok = tile_at(base, start_m, stride_s, S, BLOCK_M, HEAD_DIM)
    q = tl.load(Q + q_off + local_m, mask=row_ok[:, None], other=0.0)

    cnt = tl.load(KV_CNT + row)
    idx_ptr = KV_IDX + row * idx_stride
    lim = key_limit(PAD_START, b, S, HAS_PAD)
    n_int = interior_count(idx_ptr, cnt, lim // PLAN_BLOCK, NUM_BLOCKS)
    SUB: tl.constexpr = PLAN_BLOCK // BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    kv_col = h * HEAD_DIM
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, K + base, V + base, K_DESC, V_DESC, kv_col, idx_ptr, 0, n_int * SUB, stride_s, qk_scale,
        KPM, b, S, HAS_PAD, False, TMA, PLAN_BLOCK, BLOCK_N, HEAD_DIM,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, K + base, V + base, K_DESC, V_DESC, kv_col, idx_ptr, n_int * SUB, cnt * SUB, stride_s,
        qk_scale, KPM, b, S, HAS_PAD, True, TMA, PLAN_BLOCK, BLOCK_N, HEAD_DIM,
    )  # fmt: skip

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(Out + q_off + local_m, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * S_PAD + start_m + offs_m, lse)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_counts: torch.Tensor,
    pad_start: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    plan_block: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, S, H, D], lse2 fp32 [B, H, S_pad]) for contiguous [B, S, H, D] inputs sharing one layout."""
    bsz, seq, heads, head_dim = q.shape
    num_blocks = kv_counts.shape[0]
    s_pad = num_blocks * plan_block
    cfg = fwd_config(head_dim, plan_block)
    out = torch.empty_like(q)
    lse = torch.empty((bsz, heads, s_pad), device=q.device, dtype=torch.float32)
    n_m = s_pad // cfg.block_m
    has_pad = pad_start is not None
    k_desc, v_desc = k, v
    if cfg.tma:  # [B, S, H*D] views: a [1, BLOCK_N, D] box at (b, key, h*D); rows past S read as zeros
        box = [1, cfg.block_n, head_dim]
        k_desc, v_desc = (
            TensorDescriptor(t, [bsz, seq, heads * head_dim], [t.stride(0), t.stride(1), 1], box) for t in (k, v)
        )
    _fwd_kernel[(n_m, bsz * heads)](
        q, k, v, k_desc, v_desc, out, lse, kv_indices, kv_counts,
        pad_start if has_pad else kv_counts, key_mask if has_pad else kv_counts,
        q.stride(0), q.stride(1), q.stride(2), kv_indices.stride(0),
        heads, seq, s_pad, num_blocks, n_m, scale * LOG2E,
        HAS_PAD=has_pad, TMA=cfg.tma, PLAN_BLOCK=plan_block, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        HEAD_DIM=head_dim, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out, lse
