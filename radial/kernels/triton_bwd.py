"""Backward of the block-sparse flash attention, in three launches (no atomics by default: deterministic):

1. preprocess: delta = rowsum(dO * O) per query row (fp32 [B, H, S_pad], 0 on padded rows);
2. dK/dV: one program per (key tile, batch*head), walking the plan's transposed list (q_indices) of query blocks;
3. dQ: one program per (query tile, batch*head), walking the plan's kv list, like the forward.

P is recomputed from the saved base-2 LSE. Query rows past S load as zeros (their dO and delta are 0, so they add
nothing); key tiles of boundary blocks (partial tail, padded keys) get P = 0 on masked keys.
With BwdConfig.atomic_dq the dK/dV pass also adds dS^T K into an fp32 dQ buffer by atomics (5 matmuls per block pair
instead of 7); kept as a measured option, not the default.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radial.kernels.triton_common import LOG2E, bwd_config, interior_count, key_limit, key_valid


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
    dq_base,
    lse_base,
    delta_base,
    idx_ptr,
    t_lo,
    t_hi,
    stride_s,
    qk_scale,
    sm_scale,
    kvalid,
    S,
    MASKED: tl.constexpr,
    ROW_MASK: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
    PLAN_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    SUB: tl.constexpr = PLAN_BLOCK // BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    local = offs_m[:, None] * stride_s + offs_d[None, :]
    for t in range(t_lo, t_hi):
        qb = tl.load(idx_ptr + t // SUB)
        start_m = qb * PLAN_BLOCK + (t % SUB) * BLOCK_M
        off = start_m.to(tl.int64) * stride_s
        row_ok = (start_m + offs_m) < S
        if ROW_MASK:  # only the partial last query block; its rows past S load as zeros and add nothing
            q = tl.load(q_base + off + local, mask=row_ok[:, None], other=0.0)
        else:
            q = tl.load(q_base + off + local)
        lse = tl.load(lse_base + start_m + offs_m)
        qk_t = tl.dot(k, tl.trans(q))
        p_t = tl.math.exp2(qk_t * qk_scale - lse[None, :])
        if MASKED:
            p_t = tl.where(kvalid[:, None], p_t, 0.0)
        if ROW_MASK:
            do = tl.load(do_base + off + local, mask=row_ok[:, None], other=0.0)
        else:
            do = tl.load(do_base + off + local)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        delta = tl.load(delta_base + start_m + offs_m)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk = tl.dot(ds_t, q, dk)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(ds_t), k) * sm_scale
            dq_ptrs = dq_base + start_m.to(tl.int64) * stride_s + local
            tl.atomic_add(dq_ptrs, dq, mask=row_ok[:, None], sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    DQ_ACC,
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
    PLAN_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    pid_n = NUM_N_TILES - 1 - tl.program_id(0)  # the dense text / tail columns first
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    base = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    stat = bh.to(tl.int64) * S_PAD
    start_n = pid_n * BLOCK_N
    col = start_n // PLAN_BLOCK

    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    local = offs_n[:, None] * stride_s + offs_d[None, :]
    cols = start_n + offs_n
    col_ok = cols < S
    kv_off = base + start_n.to(tl.int64) * stride_s
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
    if start_n + BLOCK_N <= lim:
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q + base, DO + base, DQ_ACC + base, LSE + stat, DELTA + stat, idx_ptr,
            0, n_full, stride_s, qk_scale, sm_scale, col_ok, S,
            False, False, ATOMIC_DQ, PLAN_BLOCK, BLOCK_M, HEAD_DIM,
        )  # fmt: skip
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q + base, DO + base, DQ_ACC + base, LSE + stat, DELTA + stat, idx_ptr,
            n_full, cnt * SUB, stride_s, qk_scale, sm_scale, col_ok, S,
            False, True, ATOMIC_DQ, PLAN_BLOCK, BLOCK_M, HEAD_DIM,
        )  # fmt: skip
    else:
        kvalid = key_valid(KPM, b, cols, S, HAS_PAD)
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q + base, DO + base, DQ_ACC + base, LSE + stat, DELTA + stat, idx_ptr,
            0, n_full, stride_s, qk_scale, sm_scale, kvalid, S,
            True, False, ATOMIC_DQ, PLAN_BLOCK, BLOCK_M, HEAD_DIM,
        )  # fmt: skip
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q + base, DO + base, DQ_ACC + base, LSE + stat, DELTA + stat, idx_ptr,
            n_full, cnt * SUB, stride_s, qk_scale, sm_scale, kvalid, S,
            True, True, ATOMIC_DQ, PLAN_BLOCK, BLOCK_M, HEAD_DIM,
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
    SUB: tl.constexpr = PLAN_BLOCK // BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    local = offs_n[:, None] * stride_s + offs_d[None, :]
    for t in range(t_lo, t_hi):
        kb = tl.load(idx_ptr + t // SUB)
        start_n = kb * PLAN_BLOCK + (t % SUB) * BLOCK_N
        off = start_n.to(tl.int64) * stride_s
        if MASKED:
            cols = start_n + offs_n
            valid = key_valid(KPM, b, cols, S, HAS_PAD)
            k = tl.load(k_base + off + local, mask=(cols < S)[:, None], other=0.0)
            v = tl.load(v_base + off + local, mask=(cols < S)[:, None], other=0.0)
        else:
            k = tl.load(k_base + off + local)
            v = tl.load(v_base + off + local)
        qk = tl.dot(q, tl.trans(k))
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(valid[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = (p * (dp - delta[:, None])).to(k.dtype)
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
    pid_m = NUM_M_TILES - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    base = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    stat = bh.to(tl.int64) * S_PAD
    start_m = pid_m * BLOCK_M
    row = start_m // PLAN_BLOCK

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    local = offs_m[:, None] * stride_s + offs_d[None, :]
    row_ok = (start_m + offs_m) < S
    q_off = base + start_m.to(tl.int64) * stride_s
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
    dq_acc = torch.zeros(q.shape, device=q.device, dtype=torch.float32) if cfg.atomic_dq else dk
    n_n = s_pad // cfg.block_n1
    _dkdv_kernel[(n_n, bsz * heads)](
        q, k, v, do, dk, dv, dq_acc, lse, delta, q_indices, q_counts, pad_arg, mask_arg,
        *strides, q_indices.stride(0), heads, seq, s_pad, num_blocks, n_n, qk_scale, scale,
        HAS_PAD=has_pad, ATOMIC_DQ=cfg.atomic_dq, PLAN_BLOCK=plan_block, BLOCK_M=cfg.block_m1,
        BLOCK_N=cfg.block_n1, HEAD_DIM=head_dim, num_warps=cfg.warps1, num_stages=cfg.stages1,
    )  # fmt: skip
    if cfg.atomic_dq:
        return dq_acc.to(q.dtype), dk, dv

    dq = torch.empty_like(q)
    n_m = s_pad // cfg.block_m2
    _dq_kernel[(n_m, bsz * heads)](
        q, k, v, do, dq, lse, delta, kv_indices, kv_counts, pad_arg, mask_arg,
        *strides, kv_indices.stride(0), heads, seq, s_pad, num_blocks, n_m, qk_scale, scale,
        HAS_PAD=has_pad, PLAN_BLOCK=plan_block, BLOCK_M=cfg.block_m2, BLOCK_N=cfg.block_n2, HEAD_DIM=head_dim,
        num_warps=cfg.warps2, num_stages=cfg.stages2,
    )  # fmt: skip
    return dq, dk, dv
