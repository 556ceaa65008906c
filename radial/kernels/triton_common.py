"""Shared pieces of the Triton block-sparse attention: input checks, key-padding limits, tile configs, jit helpers.

Conventions of every kernel in radial/kernels/triton_*.py:
- q, k, v, o and their gradients are [B, S, H, D] with the last dim contiguous and one shared set of strides;
  batch/head offsets and `token * stride_s` are computed in int64 (B*S*H*D passes 2^31 at ~300k tokens).
- The plan cuts S into PLAN_BLOCK-token blocks (the last one may be partial); kernels tile a plan block into
  BLOCK_M / BLOCK_N sub-tiles and walk the plan's index lists (ascending) one sub-tile per loop iteration.
- LSE is stored in base 2 of the scaled scores (lse2 = log2 sum exp2(q.k * scale * log2 e)), fp32 [B, H, S_pad],
  S_pad = num_blocks * PLAN_BLOCK, written for every row (padded rows too, so that backward reads no garbage);
  rows with no allowed key get output 0 and lse2 = +inf (so that backward's P = exp2(s - lse2) is 0 there).
- Keys at index >= `lim` (lim = min(first padded key of the batch, S)) may need masking: a plan block kb is
  "interior" when (kb + 1) * PLAN_BLOCK <= lim, and interior tiles run without any per-element mask. Because
  the lists ascend, the interior entries of a list are a prefix; its length is found by a short binary search.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_tensors(query: torch.Tensor, block_size: int) -> None:
    """Clear ValueErrors for what the kernels do not support (each names the offending value); the shapes and dtypes
    that every backend needs are checked where the call is built (radial.kernels.call)."""
    head_dim = query.shape[-1]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"triton backend supports head dim {SUPPORTED_HEAD_DIMS}, got head_dim={head_dim}")
    if query.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"triton backend supports float16, bfloat16 (and float32 for checks), got dtype={query.dtype}")
    if query.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU checks), got device={query.device}"
        )
    if block_size not in (64, 128):
        raise ValueError(f"triton backend supports plan block_size 64 or 128, got block_size={block_size}")


def pad_starts(key_padding_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
    """int32 [B]: index of the first padded key of each batch (seq_len when none); no host sync."""
    if key_padding_mask is None:
        return None
    valid = key_padding_mask.to(torch.bool)
    first_pad = torch.argmin(valid.to(torch.uint8), dim=1)  # first False (ties: first index)
    return torch.where(valid.all(dim=1), seq_len, first_pad).to(torch.int32).contiguous()


def key_mask_bytes(key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """uint8 [B, S] (1 = attend), contiguous, for the kernels' boundary tiles."""
    if key_padding_mask is None:
        return None
    return key_padding_mask.to(torch.bool).contiguous().view(torch.uint8)


@dataclass(frozen=True)
class FwdConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    # K/V tiles by TMA (host descriptors over [B, S, H*D]: rows past S read as zeros) instead of pointer loads.
    tma: bool = False


@dataclass(frozen=True)
class BwdConfig:
    # dK/dV: a program owns BLOCK_N1 keys and walks q sub-tiles of BLOCK_M1; dQ: BLOCK_M2 queries, kv tiles of BLOCK_N2.
    block_m1: int
    block_n1: int
    warps1: int
    stages1: int
    block_m2: int
    block_n2: int
    warps2: int
    stages2: int
    # dQ by fp32 atomics inside the dK/dV pass (5 matmuls instead of 7, not deterministic) instead of its own pass.
    atomic_dq: bool = False
    # With atomic_dq: add each [BLOCK_M1, D] dQ tile by one TMA reduce (cp.reduce.async.bulk, Hopper; the CPU
    # interpreter falls back to element atomics) instead of per-element atomics.
    dq_tma: bool = False
    # With atomic_dq: each key tile starts its query walk at a different list entry (rotated by its column), so that
    # neighbouring key tiles, whose lists are nearly the same, do not add into the same dQ rows at the same time.
    rotate: bool = False
    # dK/dV pass: query and dO tiles by TMA (descriptors over [B, S, H*D], rows past S read as zeros).
    tma_loads: bool = False


# Measured on an H100 (benchmarks/NOTES_attention.md); the CPU interpreter uses small tiles (numpy speed).
GPU_FWD = {64: FwdConfig(128, 128, 8, 3), 128: FwdConfig(128, 128, 8, 3)}
GPU_BWD = {
    64: BwdConfig(64, 128, 8, 3, 128, 128, 8, 2),
    128: BwdConfig(64, 128, 8, 3, 128, 128, 8, 2, tma_loads=True),  # TMA q/dO loads: 131 -> 126 ms at wan4x (H100)
}
CPU_FWD = FwdConfig(64, 64, 4, 1)
CPU_BWD = BwdConfig(32, 64, 4, 1, 64, 32, 4, 1)

# Optional overrides for tuning runs (benchmarks/attention.py): set by `set_config_override`.
_override: dict[str, object] = {}


def set_config_override(fwd: FwdConfig | None = None, bwd: BwdConfig | None = None) -> None:
    """Force tile configs (None restores the defaults); for benchmarks and tests only."""
    _override.clear()
    if fwd is not None:
        _override["fwd"] = fwd
    if bwd is not None:
        _override["bwd"] = bwd


def fwd_config(head_dim: int, plan_block: int) -> FwdConfig:
    cfg = _override.get("fwd") or (CPU_FWD if interpreting() else GPU_FWD[head_dim])
    return FwdConfig(min(cfg.block_m, plan_block), min(cfg.block_n, plan_block), cfg.num_warps, cfg.num_stages, cfg.tma)


def bwd_config(head_dim: int, plan_block: int) -> BwdConfig:
    c = _override.get("bwd") or (CPU_BWD if interpreting() else GPU_BWD[head_dim])
    p = plan_block
    return BwdConfig(
        min(c.block_m1, p), min(c.block_n1, p), c.warps1, c.stages1,
        min(c.block_m2, p), min(c.block_n2, p), c.warps2, c.stages2, c.atomic_dq,
        c.atomic_dq and c.dq_tma and not interpreting(), c.atomic_dq and c.rotate, c.tma_loads,
    )  # fmt: skip


@triton.jit
def interior_count(idx_ptr, cnt, limit_block, num_blocks):
    """How many entries of the ascending list idx_ptr[0:cnt] are < limit_block.

    Entries >= limit_block lie in [limit_block, num_blocks), so at most num_blocks - limit_block of them exist and the
    search starts there: one or two loads in the usual case (only the last block, or the text blocks, are boundary).
    """
    lo = tl.maximum(cnt - (num_blocks - limit_block), 0)
    hi = cnt
    while lo < hi:
        mid = (lo + hi) // 2
        below = tl.load(idx_ptr + mid) < limit_block
        lo = tl.where(below, mid + 1, lo)
        hi = tl.where(below, hi, mid)
    return lo


@triton.jit
def key_limit(PAD_START, b, S, HAS_PAD: tl.constexpr):
    """First key index of batch b that may need masking: min(first padded key, S)."""
    lim = S
    if HAS_PAD:
        lim = tl.minimum(tl.load(PAD_START + b), S)
    return lim


@triton.jit
def key_valid(KPM, b, cols, S, HAS_PAD: tl.constexpr):
    """bool [N]: key columns that exist (< S) and are not padding."""
    valid = cols < S
    if HAS_PAD:
        keep = tl.load(KPM + b * S + cols, mask=valid, other=0)
        valid = valid & (keep != 0)
    return valid


# The helpers below are the pieces of the block loops that the forward, dK/dV and dQ kernels share. Triton inlines
# jit functions called from a kernel, so a kernel compiles to the same code as with the lines written in place.


@triton.jit
def program_tile(NUM_TILES, H, stride_b, stride_h):
    """(tile, bh, b, h, base offset of [b, :, h, :]) of this program of a (tiles, B*H) grid.

    The tiles run last first: the dense rows and columns (text, partial tail block) are the longest programs, so
    they start early."""
    pid = NUM_TILES - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    return pid, bh, b, h, b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def tile_local(stride_s, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Element offsets [ROWS, HEAD_DIM] of a tile of rows (tokens) `stride_s` apart, from its first element."""
    rows = tl.arange(0, ROWS)
    dims = tl.arange(0, HEAD_DIM)
    return rows[:, None] * stride_s + dims[None, :]


@triton.jit
def tile_at(base, start, stride_s, S, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """(offset of token `start` of the (batch, head) at `base`, element offsets, rows < S) of the ROWS-token tile
    that starts there."""
    local = tile_local(stride_s, ROWS, HEAD_DIM)
    in_seq = (start + tl.arange(0, ROWS)) < S
    return base + start.to(tl.int64) * stride_s, local, in_seq


@triton.jit
def list_tile(idx_ptr, t, PLAN_BLOCK: tl.constexpr, TILE: tl.constexpr):
    """First token of sub-tile t of an index list walked in TILE-token sub-tiles of its PLAN_BLOCK-token blocks."""
    SUB: tl.constexpr = PLAN_BLOCK // TILE
    blk = tl.load(idx_ptr + t // SUB)
    return blk * PLAN_BLOCK + (t % SUB) * TILE


@triton.jit
def load_tile(
    ptr, off, local, desc, b, start, col, rows, S, TMA: tl.constexpr, MASKED: tl.constexpr, ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """[ROWS, HEAD_DIM] rows `start`.. of one (batch, head): by TMA descriptor (box at (b, start, col); rows past S
    read as zeros), else at ptr + off + local, rows (token indices `rows`) past S as zeros (MASKED) or unmasked."""
    if TMA:
        x = desc.load([b, start, col]).reshape(ROWS, HEAD_DIM)
    elif MASKED:
        x = tl.load(ptr + off + local, mask=(rows < S)[:, None], other=0.0)
    else:
        x = tl.load(ptr + off + local)
    return x


@triton.jit
def probs(scores, qk_scale, lse, valid, MASKED: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Softmax probabilities P [queries, keys] (P^T [keys, queries] when TRANSPOSED) of base-2 scores recomputed from
    the saved LSE [queries]; 0 on keys not `valid` [keys] (MASKED)."""
    if TRANSPOSED:
        p = tl.math.exp2(scores * qk_scale - lse[None, :])
        if MASKED:
            p = tl.where(valid[:, None], p, 0.0)
    else:
        p = tl.math.exp2(scores * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(valid[None, :], p, 0.0)
    return p


@triton.jit
def dscores(p, dp, delta, like, TRANSPOSED: tl.constexpr):
    """dS = P * (dP - delta) (dS^T when TRANSPOSED; delta = rowsum(dO * O) [queries]), in the dtype of `like` (the
    other operand of the matmul it goes to)."""
    if TRANSPOSED:  # noqa: SIM108 - a constexpr branch
        ds = (p * (dp - delta[None, :])).to(like.dtype)
    else:
        ds = (p * (dp - delta[:, None])).to(like.dtype)
    return ds
