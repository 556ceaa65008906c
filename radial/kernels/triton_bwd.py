"""Backward of the block-sparse flash attention, in three launches (no atomics by default: deterministic):

1. preprocess: delta = rowsum(dO * O) per query row (fp32 [B, H, S_pad], 0 on padded rows);
2. dK/dV: one program per (key tile, batch*head), walking the plan's transposed list (q_indices) of query blocks;
3. dQ: one program per (query tile, batch*head), walking the plan's kv list, like the forward.

P is recomputed from the saved base-2 LSE. Query rows past S load as zeros (their dO and delta are 0, so they add
nothing); key tiles of boundary blocks (partial tail, padded keys) get P = 0 on masked keys.
With BwdConfig.atomic_dq the dK/dV pass also adds dS^T K (scaled) into an fp32 dQ buffer [B, H, S_pad, D] by atomics
(5 matmuls per block pair instead of 7, no dQ pass; summation order not deterministic): per element (tl.atomic_add),
or with dq_tma one TMA reduce per [BLOCK_M1, D] tile, optionally with rotated walks (BwdConfig.rotate). Both were
slower than the default on an H100 (benchmarks/NOTES_attention.md). With BwdConfig.tma_loads (the default at head dim
128) the dK/dV pass loads its Q/dO tiles through TMA descriptors over [B, S, H*D] (rows past S read as zeros).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors (triton >= 3.3); only the dq_tma variant needs them
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

from radial.kernels.triton_common import (
    LOG2E,
    bwd_config,
    dscores,
    interior_count,
    key_limit,
    key_valid,
    list_tile,
    load_tile,
    probs,
    program_tile,
    tile_at,
    tile_local,
)


@triton.jit
def _preprocess_kernel(
    Out, DO, DELTA, stride_b, stride_s, stride_h, H, S, S_PAD, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start = pid * BLOCK
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    off = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + start.to(tl.int64) * stride_s
    local = offs[:, None] * stride_s + offs_d[None, :]
    ok = (start + offs) < S
    o = tl.load(Out + off + local, mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + off + local, mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * S_PAD + start + offs, tl.sum(o * do, axis=1))


@triton.jit
def _dkdv_tiles(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    q_desc,
    do_desc,
    b,
    q_col,
    dq_base,
    dq_desc,
    dq_row0,
    lse_base,
    delta_base,
    idx_ptr,
    t_lo,
    t_hi,
    rot,
    stride_s,
    qk_scale,
    sm_scale,
    kvalid,
    S,
    MASKED: tl.constexpr,
    ROW_MASK: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
    DQ_TMA: tl.constexpr,
    ROTATE: tl.constexpr,
    TMA_LOADS: tl.constexpr,
    PLAN_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    local = tile_local(stride_s, BLOCK_M, HEAD_DIM)
    for t in range(t_lo, t_hi):
        tt = t
        if ROTATE:  # walk [t_lo, t_hi) starting at t_lo + rot, wrapping around
            tt = t + rot
            tt = tl.where(tt >= t_hi, tt - (t_hi - t_lo), tt)
        start_m = list_tile(idx_ptr, tt, PLAN_BLOCK, BLOCK_M)
        off = start_m.to(tl.int64) * stride_s
        rows = start_m + offs_m
        # ROW_MASK: only the partial last query block; its rows past S load as zeros and add nothing
        q = load_tile(q_base, off, local, q_desc, b, start_m, q_col, rows, S, TMA_LOADS, ROW_MASK, BLOCK_M, HEAD_DIM)
        lse = tl.load(lse_base + start_m + offs_m)
        qk_t = tl.dot(k, tl.trans(q))
        p_t = probs(qk_t, qk_scale, lse, kvalid, MASKED, True)
        do = load_tile(do_base, off, local, do_desc, b, start_m, q_col, rows, S, TMA_LOADS, ROW_MASK, BLOCK_M, HEAD_DIM)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        delta = tl.load(delta_base + start_m + offs_m)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = dscores(p_t, dp_t, delta, q, True)
        dk = tl.dot(ds_t, q, dk)
        if ATOMIC_DQ:
            # fp32 [B, H, S_pad, D] accumulator; rows past S (partial last block) get zeros, inside S_pad.
            dq = tl.dot(tl.trans(ds_t), k) * sm_scale
            if DQ_TMA:
                dq_desc.atomic_add([dq_row0 + start_m, 0], dq)
            else:
                dq_ptrs = dq_base + (start_m + offs_m)[:, None] * HEAD_DIM + offs_d[None, :]
                tl.atomic_add(dq_ptrs, dq, sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_kernel(
    Q,
    K,
    V,
    DO,
    Q_DESC,
    DO_DESC,
    DK,
    DV,
    DQ_ACC,
    DQ_DESC,
    LSE,
    DELTA,
    Q_IDX,
    Q_CNT,
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
    NUM_N_TILES,
    qk_scale,
    sm_scale,
    HAS_PAD: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
    DQ_TMA: tl.constexpr,
    ROTATE: tl.constexpr,
    TMA_LOADS: tl.constexpr,
    PLAN_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    pid_n, bh, b, h, base = program_tile(NUM_N_TILES, H, stride_b, stride_h)
    stat = bh.to(tl.int64) * S_PAD
    start_n = pid_n * BLOCK_N
    col = start_n // PLAN_BLOCK

    kv_off, local, col_ok = tile_at(base, start_n, stride_s, S, BLOCK_N, HEAD_DIM)
    cols = start_n + tl.arange(0, BLOCK_N)
    k = tl.load(K + kv_off + local, mask=col_ok[:, None], other=0.0)
    v = tl.load(V + kv_off + local, mask=col_ok[:, None], other=0.0)

    cnt = tl.load(Q_CNT + col)
    idx_ptr = Q_IDX + col * idx_stride
    SUB: tl.constexpr = PLAN_BLOCK // BLOCK_M
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lim = key_limit(PAD_START, b, S, HAS_PAD)
    # Entries before n_full are whole query blocks (no row mask); only the partial last block, if listed, follows.
    n_full = interior_count(idx_ptr, cnt, S // PLAN_BLOCK, NUM_BLOCKS) * SUB
    rot = 0
    if ROTATE:
        rot = (col % tl.maximum(n_full // SUB, 1)) * SUB
    dq_base = DQ_ACC + bh.to(tl.int64) * S_PAD * HEAD_DIM
    dq_row0 = bh * S_PAD
    if start_n + BLOCK_N <= lim:
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q + base, DO + base, Q_DESC, DO_DESC, b, h * HEAD_DIM, dq_base, DQ_DESC, dq_row0, LSE + stat, DELTA + stat, idx_ptr,
            0, n_full, rot, stride_s, qk_scale, sm_scale, col_ok, S,
            False, False, ATOMIC_DQ, DQ_TMA, ROTATE, TMA_LOADS, PLAN_BLOCK, BLOCK_M, HEAD_DIM,
        )  # fmt: skip
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q + base, DO + base, Q_DESC, DO_DESC, b, h * HEAD_DIM, dq_base, DQ_DESC, dq_row0, LSE + stat, DELTA + stat, idx_ptr,
            n_full, cnt * SUB, 0, stride_s, qk_scale, sm_scale, col_ok, S,
            False, True, ATOMIC_DQ, DQ_TMA, False, TMA_LOADS, PLAN_BLOCK, BLOCK_M, HEAD_DIM,
        )  # fmt: skip
    else:
        kvalid = key_valid(KPM, b, cols, S, HAS_PAD)
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q + base, DO + base, Q_DESC, DO_DESC, b, h * HEAD_DIM, dq_base, DQ_DESC, dq_row0, LSE + stat, DELTA + stat, idx_ptr,
            0, n_full, rot, stride_s, qk_scale, sm_scale, kvalid, S,
            True, False, ATOMIC_DQ, DQ_TMA, ROTATE, TMA_LOADS, PLAN_BLOCK, BLOCK_M, HEAD_DIM,
        )  # fmt: skip
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q + base, DO + base, Q_DESC, DO_DESC, b, h * HEAD_DIM, dq_base, DQ_DESC, dq_row0, LSE + stat, DELTA + stat, idx_ptr,
            n_full, cnt * SUB, 0, stride_s, qk_scale, sm_scale, kvalid, S,
            True, True, ATOMIC_DQ, DQ_TMA, False, TMA_LOADS, PLAN_BLOCK, BLOCK_M, HEAD_DIM,
        )  # fmt: skip
    tl.store(DV + kv_off + local, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DK + kv_off + local, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_tiles(
    dq,
    q,
    do,
    lse,
    delta,
    k_base,
    v_base,
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
    PLAN_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    local = tile_local(stride_s, BLOCK_N, HEAD_DIM)
    for t in range(t_lo, t_hi):
        start_n = list_tile(idx_ptr, t, PLAN_BLOCK, BLOCK_N)
        off = start_n.to(tl.int64) * stride_s
        cols = start_n + offs_n  # interior tiles (not MASKED) leave cols and valid unused: compiled away
        valid = key_valid(KPM, b, cols, S, HAS_PAD) if MASKED else cols < S
        k = load_tile(k_base, off, local, None, b, start_n, 0, cols, S, False, MASKED, BLOCK_N, HEAD_DIM)
        v = load_tile(v_base, off, local, None, b, start_n, 0, cols, S, False, MASKED, BLOCK_N, HEAD_DIM)
        qk = tl.dot(q, tl.trans(k))
        p = probs(qk, qk_scale, lse, valid, MASKED, False)
        dp = tl.dot(do, tl.trans(v))
        ds = dscores(p, dp, delta, k, False)
        dq = tl.dot(ds, k, dq)
    return dq


@triton.jit
def _dq_kernel(
    Q,
    K,
    V,
    DO,
    DQ,
    LSE,
    DELTA,
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
    sm_scale,
    HAS_PAD: tl.constexpr,
    PLAN_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    pid_m, bh, b, h, base = program_tile(NUM_M_TILES, H, stride_b, stride_h)
    stat = bh.to(tl.int64) * S_PAD
    start_m = pid_m * BLOCK_M
    row = start_m // PLAN_BLOCK

    offs_m = tl.arange(0, BLOCK_M)
    q_off, local, row_ok = tile_at(base, start_m, stride_s, S, BLOCK_M, HEAD_DIM)
    q = tl.load(Q + q_off + local, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + q_off + local, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + stat + start_m + offs_m)
    delta = tl.load(DELTA + stat + start_m + offs_m)

    cnt = tl.load(KV_CNT + row)
    idx_ptr = KV_IDX + row * idx_stride
    lim = key_limit(PAD_START, b, S, HAS_PAD)
    n_int = interior_count(idx_ptr, cnt, lim // PLAN_BLOCK, NUM_BLOCKS)
    SUB: tl.constexpr = PLAN_BLOCK // BLOCK_N
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _dq_tiles(
        dq, q, do, lse, delta, K + base, V + base, idx_ptr, 0, n_int * SUB, stride_s, qk_scale, KPM, b, S,
        HAS_PAD, False, PLAN_BLOCK, BLOCK_N, HEAD_DIM,
    )  # fmt: skip
    dq = _dq_tiles(
        dq, q, do, lse, delta, K + base, V + base, idx_ptr, n_int * SUB, cnt * SUB, stride_s, qk_scale, KPM, b, S,
        HAS_PAD, True, PLAN_BLOCK, BLOCK_N, HEAD_DIM,
    )  # fmt: skip
    tl.store(DQ + q_off + local, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


def attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_counts: torch.Tensor,
    q_indices: torch.Tensor,
    q_counts: torch.Tensor,
    pad_start: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    plan_block: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) for contiguous [B, S, H, D] tensors sharing one layout; lse from `attention_forward`."""
    bsz, seq, heads, head_dim = q.shape
    num_blocks = kv_counts.shape[0]
    s_pad = num_blocks * plan_block
    cfg = bwd_config(head_dim, plan_block)
    strides = (q.stride(0), q.stride(1), q.stride(2))
    has_pad = pad_start is not None
    pad_arg = pad_start if has_pad else kv_counts
    mask_arg = key_mask if has_pad else kv_counts
    qk_scale = scale * LOG2E

    delta = torch.empty((bsz, heads, s_pad), device=q.device, dtype=torch.float32)
    _preprocess_kernel[(s_pad // plan_block, bsz * heads)](
        out, do, delta, *strides, heads, seq, s_pad, BLOCK=plan_block, HEAD_DIM=head_dim
    )

    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if cfg.atomic_dq:
        dq_acc = torch.zeros((bsz, heads, s_pad, head_dim), device=q.device, dtype=torch.float32)
        dq_desc = dq_acc
        if cfg.dq_tma:
            dq_desc = TensorDescriptor(dq_acc, [bsz * heads * s_pad, head_dim], [head_dim, 1], [cfg.block_m1, head_dim])
    else:
        dq_acc = dq_desc = dk  # unused
    q_desc, do_desc = q, do
    if (
        cfg.tma_loads and q.data_ptr() % 16 == 0 and do.data_ptr() % 16 == 0
    ):  # [B, S, H*D] views: a [1, BLOCK_M1, D] box at (b, query, h*D); rows past S read as zeros
        box = [1, cfg.block_m1, head_dim]
        q_desc, do_desc = (
            TensorDescriptor(t, [bsz, seq, heads * head_dim], [t.stride(0), t.stride(1), 1], box) for t in (q, do)
        )
    n_n = s_pad // cfg.block_n1
    _dkdv_kernel[(n_n, bsz * heads)](
        q, k, v, do, q_desc, do_desc, dk, dv, dq_acc, dq_desc, lse, delta, q_indices, q_counts, pad_arg, mask_arg,
        *strides, q_indices.stride(0), heads, seq, s_pad, num_blocks, n_n, qk_scale, scale,
        HAS_PAD=has_pad, ATOMIC_DQ=cfg.atomic_dq, DQ_TMA=cfg.dq_tma, ROTATE=cfg.rotate, TMA_LOADS=q_desc is not q,
        PLAN_BLOCK=plan_block,
        BLOCK_M=cfg.block_m1, BLOCK_N=cfg.block_n1, HEAD_DIM=head_dim, num_warps=cfg.warps1, num_stages=cfg.stages1,
    )  # fmt: skip
    if cfg.atomic_dq:
        dq = torch.empty_like(q)
        dq.copy_(dq_acc[:, :, :seq].transpose(1, 2))
        return dq, dk, dv

    dq = torch.empty_like(q)
    n_m = s_pad // cfg.block_m2
    _dq_kernel[(n_m, bsz * heads)](
        q, k, v, do, dq, lse, delta, kv_indices, kv_counts, pad_arg, mask_arg,
        *strides, kv_indices.stride(0), heads, seq, s_pad, num_blocks, n_m, qk_scale, scale,
        HAS_PAD=has_pad, PLAN_BLOCK=plan_block, BLOCK_M=cfg.block_m2, BLOCK_N=cfg.block_n2, HEAD_DIM=head_dim,
        num_warps=cfg.warps2, num_stages=cfg.stages2,
    )  # fmt: skip
    return dq, dk, dv
