"""`flashinfer` backend (inference, forward only): FlashInfer's block-sparse wrapper, planned once per layout.

The official code builds a wrapper, allocates a 128 MB workspace and re-plans on every attention call; here the
wrapper is planned once per (plan, part, heads, head dim, dtype, device) and reused, and one workspace per device is
shared by all wrappers (it holds only per-run temporaries; calls on one stream run one after another).

FlashInfer's block-sparse kernel takes whole blocks only, so the partial last block and (with a key padding mask)
the text tokens are handled by dense calls with a token mask, merged with the block-sparse part by LSE: see
`flashinfer_attention`.
"""

from __future__ import annotations

import weakref

import torch

from radial.plan import RadialPlan

_WORKSPACE_BYTES = 128 * 2**20
_workspaces: dict[str, torch.Tensor] = {}
_wrappers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flashinfer():
    try:
        import flashinfer
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "backend='flashinfer' needs the optional package flashinfer-python (pip install flashinfer-python); "
            "use backend='triton' otherwise"
        ) from err
    return flashinfer


def _workspace(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _workspaces:
        _workspaces[key] = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    return _workspaces[key]


def _bsr(block_mask: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    counts = block_mask.sum(dim=1, dtype=torch.int32)
    indptr = torch.zeros(block_mask.shape[0] + 1, dtype=torch.int32, device=device)
    indptr[1:] = torch.cumsum(counts, 0).to(device)
    indices = block_mask.nonzero(as_tuple=True)[1].to(device=device, dtype=torch.int32)
    return indptr, indices


def planned_wrapper(plan: RadialPlan, tokens: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
    """A BlockSparseAttentionWrapper planned for the plan's mask over its first `tokens` tokens, cached."""
    fi = _flashinfer()
    per_plan = _wrappers.setdefault(plan, {})
    key = (tokens, heads, head_dim, dtype, str(device))
    if key not in per_plan:
        nb = -(-tokens // plan.block_size)
        indptr, indices = _bsr(plan.block_mask[:nb, :nb], device)
        wrapper = fi.BlockSparseAttentionWrapper(_workspace(device))
        wrapper.plan(
            indptr, indices, tokens, tokens, plan.block_size, plan.block_size, heads, heads, head_dim,
            q_data_type=dtype, kv_data_type=dtype,
        )  # fmt: skip
        per_plan[key] = wrapper
    return per_plan[key]


def _allowed(plan: RadialPlan, rows: slice, cols: slice, device: torch.device) -> torch.Tensor:
    """Token-level bool mask [rows, cols] of the plan's blocks."""
    bs = plan.block_size
    blocks = plan.block_mask[rows.start // bs : -(-rows.stop // bs), cols.start // bs : -(-cols.stop // bs)].to(device)
    full = blocks.repeat_interleave(bs, 0).repeat_interleave(bs, 1)
    r0, c0 = rows.start % bs, cols.start % bs
    return full[r0 : r0 + rows.stop - rows.start, c0 : c0 + cols.stop - cols.start]


def flashinfer_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: RadialPlan,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Radial attention [B, S, H, D], forward only, through FlashInfer (inference).

    FlashInfer's block-sparse kernel needs whole blocks and cannot mask single keys, so the sequence is cut at
    `cut` (a block multiple: the last whole block, or the end of the whole video blocks when keys are padded):
    queries [0, cut) x keys [0, cut) run block-sparse; queries [0, cut) x keys [cut, S) run dense with a token mask
    (plan blocks and padding) and are merged by LSE; queries [cut, S) x all keys run dense with a token mask.
    """
    fi = _flashinfer()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise ValueError("backend='flashinfer' is forward only (inference); use backend='triton' or 'flex' to train")
    if query.device.type != "cuda":
        raise ValueError(f"backend='flashinfer' needs CUDA tensors, got device={query.device}")
    if query.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"backend='flashinfer' supports float16 and bfloat16, got dtype={query.dtype}")
    bsz, seq, heads, head_dim = query.shape
    bs = plan.block_size
    cut = (seq // bs) * bs
    keep = None
    if key_padding_mask is not None:
        keep = key_padding_mask.to(device=query.device, dtype=torch.bool)
        cut = min(cut, (plan.video_tokens // bs) * bs)
        if not bool(keep[:, :cut].all()):
            raise ValueError("backend='flashinfer' supports key padding after the video tokens only (text keys)")
    out = torch.empty_like(query)
    wrapper = planned_wrapper(plan, cut, heads, head_dim, query.dtype, query.device) if cut > 0 else None
    tail_cols = _allowed(plan, slice(0, cut), slice(cut, seq), query.device) if seq > cut else None
    tail_rows = _allowed(plan, slice(cut, seq), slice(0, seq), query.device) if seq > cut else None
    for b in range(bsz):
        q, k, v = query[b], key[b], value[b]
        if cut > 0:
            o_main, lse_main = wrapper.run(q[:cut], k[:cut], v[:cut], return_lse=True)
            if seq > cut:
                mask = tail_cols if keep is None else tail_cols & keep[b, None, cut:]
                o_tail, lse_tail = fi.single_prefill_with_kv_cache(
                    q[:cut], k[cut:], v[cut:], custom_mask=mask.contiguous(), causal=False, return_lse=True
                )
                o_main, _ = fi.merge_state(o_main, lse_main, o_tail, lse_tail)
            out[b, :cut] = o_main
        if seq > cut:
            mask = tail_rows if keep is None else tail_rows & keep[b, None, :]
            out[b, cut:] = fi.single_prefill_with_kv_cache(q[cut:], k, v, custom_mask=mask.contiguous(), causal=False)
    return out
