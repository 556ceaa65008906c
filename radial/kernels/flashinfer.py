"""`flashinfer` backend (inference, forward only): FlashInfer's block-sparse wrapper, planned once per layout.

The official code builds a wrapper, allocates a 128 MB workspace and re-plans on every attention call; here the
wrapper is planned once per (plan, part, heads, head dim, dtype, device) and reused, and one workspace per device is
shared by all wrappers (it holds only per-run temporaries; calls on one stream run one after another).

Without key padding the whole sequence is one block-sparse call. With a key padding mask (padded text keys), the
attention is split where the video ends: video queries x video keys (block-sparse) merged by LSE with video queries
x the batch's valid text keys (dense), and text queries x all valid keys (dense; text rows of the plan are dense).
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


def flashinfer_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: RadialPlan,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Radial attention [B, S, H, D], forward only, through FlashInfer (inference)."""
    fi = _flashinfer()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise ValueError("backend='flashinfer' is forward only (inference); use backend='triton' or 'flex' to train")
    if query.device.type != "cuda":
        raise ValueError(f"backend='flashinfer' needs CUDA tensors, got device={query.device}")
    if query.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"backend='flashinfer' supports float16 and bfloat16, got dtype={query.dtype}")
    bsz, seq, heads, head_dim = query.shape
    out = torch.empty_like(query)
    if key_padding_mask is None:
        wrapper = planned_wrapper(plan, seq, heads, head_dim, query.dtype, query.device)
        for b in range(bsz):
            out[b] = wrapper.run(query[b], key[b], value[b])
        return out

    n = plan.video_tokens
    keep = key_padding_mask.to(device=query.device, dtype=torch.bool)
    if not bool(keep[:, :n].all()):
        raise ValueError("backend='flashinfer' supports key padding on text keys only (video keys must all be valid)")
    wrapper = planned_wrapper(plan, n, heads, head_dim, query.dtype, query.device)
    for b in range(bsz):
        q, k, v = query[b], key[b], value[b]
        o_vv, lse_vv = wrapper.run(q[:n], k[:n], v[:n], return_lse=True)
        text_keep = keep[b, n:]
        k_text, v_text = k[n:][text_keep], v[n:][text_keep]
        if k_text.shape[0] > 0:
            o_vt, lse_vt = fi.single_prefill_with_kv_cache(q[:n], k_text, v_text, causal=False, return_lse=True)
            o_vv, _ = fi.merge_state(o_vv, lse_vv, o_vt, lse_vt)
        out[b, :n] = o_vv
        if seq > n:
            k_all = torch.cat([k[:n], k_text])
            v_all = torch.cat([v[:n], v_text])
            out[b, n:] = fi.single_prefill_with_kv_cache(q[n:], k_all, v_all, causal=False)
    return out
