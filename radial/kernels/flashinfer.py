"""`flashinfer` backend (inference, forward only): FlashInfer's block-sparse wrapper, planned once per layout.

The official code builds a wrapper, allocates a 128 MB workspace and re-plans on every attention call; here the
wrapper is planned once per (plan, tokens, heads, head dim, dtype, device) and reused, and the per-run temporaries
(the float workspace and FA3's vector-sparse index buffer) are shared per device by all wrappers (calls on one stream
run one after another).

FlashInfer's block-sparse kernel takes whole blocks only, so the partial last block and (with a key padding mask)
the text tokens are handled by dense calls with a token mask, merged with the block-sparse part by LSE: see
`flashinfer_attention`.

Pitfalls of `BlockSparseAttentionWrapper` (FlashInfer 0.5.3, flashinfer/sparse.py), each one handled here:
- `plan(o_data_type=...)` defaults to float16 whatever the input dtype, and `merge_state` reads its second operand
  with the first one's dtype without checking: bf16 inputs gave fp16 block-sparse outputs that `merge_state` merged
  with bf16 tail outputs read as fp16 (relative error 0.8). The output dtype is now always the input dtype.
- On Hopper (FA3) every run expands the block indices into per-token offsets in `_vector_sparse_indices_buffer`,
  which the constructor sizes for 128M offsets (512 MB): nnz blocks x C columns overflow it at HunyuanVideo 4x
  (1.43M blocks x 128 = 183M). The buffer is replaced through the documented `reset_workspace_buffer(...,
  vector_sparse_indices_buffer=...)` by one sized for the plan (with slack: the gather may read one tile past the
  last list), shared per device and grown on demand.
- Layout: q/k/v are NHD [tokens, heads, dim] per batch element, so a [B, S, H, D] batch runs one call per element.
- LSE (`return_lse`) is log2 of the sum of exp2 of the scaled scores, in FA2 and FA3 alike, which is what
  `merge_state` expects; sm_scale is FlashInfer's default 1/sqrt(head_dim), as in the other backends.
"""

from __future__ import annotations

import weakref

import torch

from radial.kernels.call import AttentionCall
from radial.kernels.registry import Backend, register
from radial.plan import RadialPlan

_WORKSPACE_BYTES = 128 * 2**20
_INT_WORKSPACE_BYTES = 8 * 2**20  # FlashInfer's own default: plan info of one wrapper
_INDEX_SLACK = 8192  # FA3's gather may read a kv tile (<= 256 offsets) past the last list: see block_sparse_gather.cuh
_workspaces: dict[str, torch.Tensor] = {}
_vector_indices: dict[str, torch.Tensor] = {}
_wrappers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_REQUIRE_CUDA = True  # the CPU tests run this module against a fake flashinfer


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


def vector_indices_buffer(device: torch.device, offsets: int) -> torch.Tensor:
    """Shared int32 buffer for FA3's per-token kv offsets, with room for `offsets` (+ slack), grown on demand."""
    key = str(device)
    need = offsets + _INDEX_SLACK
    buf = _vector_indices.get(key)
    if buf is None or buf.numel() < need:
        buf = torch.empty(need, dtype=torch.int32, device=device)
        _vector_indices[key] = buf
    return buf


def bsr(block_mask: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(indptr int32 [nb + 1], indices int32 [nnz]) of a square bool block mask: row-major BSR, columns ascending."""
    counts = block_mask.sum(dim=1, dtype=torch.int32)
    if bool((counts == 0).any()):
        raise ValueError(
            "backend='flashinfer' needs every query block to attend at least one whole key block; "
            "this plan has empty rows (use backend='triton')"
        )
    indptr = torch.zeros(block_mask.shape[0] + 1, dtype=torch.int32, device=device)
    indptr[1:] = torch.cumsum(counts, 0).to(device)
    indices = block_mask.nonzero(as_tuple=True)[1].to(device=device, dtype=torch.int32)
    return indptr, indices


def planned_wrapper(plan: RadialPlan, tokens: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
    """A BlockSparseAttentionWrapper planned for the plan's mask over its first `tokens` (a block multiple), cached."""
    fi = _flashinfer()
    per_plan = _wrappers.setdefault(plan, {})
    key = ("wrapper", tokens, heads, head_dim, dtype, str(device))
    if key not in per_plan:
        bs = plan.block_size
        nb = tokens // bs
        indptr, indices = bsr(plan.block_mask[:nb, :nb], device)
        wrapper = fi.BlockSparseAttentionWrapper(_workspace(device))
        if hasattr(wrapper, "_vector_sparse_indices_buffer"):  # FA3 path (Hopper): size the offsets buffer
            wrapper.reset_workspace_buffer(
                _workspace(device),
                torch.empty(_INT_WORKSPACE_BYTES, dtype=torch.uint8, device=device),
                vector_sparse_indices_buffer=vector_indices_buffer(device, indices.numel() * bs),
            )
        wrapper.plan(
            indptr, indices, tokens, tokens, bs, bs, heads, heads, head_dim,
            q_data_type=dtype, kv_data_type=dtype, o_data_type=dtype,
        )  # fmt: skip
        per_plan[key] = wrapper
    return per_plan[key]


def allowed_tokens(plan: RadialPlan, rows: slice, cols: slice, device: torch.device) -> torch.Tensor:
    """Token-level bool mask [rows, cols] of the plan's blocks."""
    bs = plan.block_size
    blocks = plan.block_mask[rows.start // bs : -(-rows.stop // bs), cols.start // bs : -(-cols.stop // bs)].to(device)
    full = blocks.repeat_interleave(bs, 0).repeat_interleave(bs, 1)
    r0, c0 = rows.start % bs, cols.start % bs
    return full[r0 : r0 + rows.stop - rows.start, c0 : c0 + cols.stop - cols.start].contiguous()


def _tail_masks(plan: RadialPlan, cut: int, seq: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [0, cut) x keys [cut, seq), rows [cut, seq) x all keys) token masks, cached per plan."""
    per_plan = _wrappers.setdefault(plan, {})
    key = ("tail", cut, seq, str(device))
    if key not in per_plan:
        per_plan[key] = (
            allowed_tokens(plan, slice(0, cut), slice(cut, seq), device),
            allowed_tokens(plan, slice(cut, seq), slice(0, seq), device),
        )
    return per_plan[key]


def flashinfer_attention(call: AttentionCall) -> torch.Tensor:
    """Radial attention [B, S, H, D], forward only, through FlashInfer (inference).

    FlashInfer's block-sparse kernel needs whole blocks and cannot mask single keys, so the sequence is cut at
    `cut` (a block multiple: the last whole block, or the end of the whole video blocks when keys are padded):
    queries [0, cut) x keys [0, cut) run block-sparse; queries [0, cut) x keys [cut, S) run dense with a token mask
    (plan blocks and padding) and are merged by LSE; queries [cut, S) x all keys run dense with a token mask.
    """
    query, key, value, plan, key_padding_mask = call.query, call.key, call.value, call.plan, call.key_padding_mask
    fi = _flashinfer()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise ValueError("backend='flashinfer' is forward only (inference); use backend='triton' or 'flex' to train")
    if _REQUIRE_CUDA and query.device.type != "cuda":
        raise ValueError(f"backend='flashinfer' needs CUDA tensors, got device={query.device}")
    if query.dtype not in (torch.float16, torch.bfloat16) or key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(
            f"backend='flashinfer' supports float16 and bfloat16 (one dtype for q, k, v), got "
            f"{query.dtype}, {key.dtype}, {value.dtype}"
        )
    query, key, value = (t if t.is_contiguous() else t.contiguous() for t in (query, key, value))
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
    tail_cols, tail_rows = _tail_masks(plan, cut, seq, query.device) if seq > cut else (None, None)
    for b in range(bsz):
        q, k, v = query[b], key[b], value[b]
        if cut > 0:
            o_main, lse_main = wrapper.run(q[:cut], k[:cut], v[:cut], return_lse=True)
            if seq > cut:
                mask = tail_cols if keep is None else tail_cols & keep[b, None, cut:]
                o_tail, lse_tail = fi.single_prefill_with_kv_cache(
                    q[:cut], k[cut:], v[cut:], custom_mask=mask, causal=False, return_lse=True
                )
                if o_main.dtype != o_tail.dtype:  # merge_state reads both with the first one's dtype
                    raise RuntimeError(f"flashinfer outputs differ in dtype: {o_main.dtype} vs {o_tail.dtype}")
                # Rows with no allowed tail key: FlashInfer's lse is about -5e4 there, so their tail weight is 0.
                o_main, _ = fi.merge_state(o_main, lse_main, o_tail, lse_tail)
            out[b, :cut] = o_main
        if seq > cut:
            mask = tail_rows if keep is None else tail_rows & keep[b, None, :]
            out[b, cut:] = fi.single_prefill_with_kv_cache(q[cut:], k, v, custom_mask=mask, causal=False)
    return out


BACKEND = register(
    Backend(
        name="flashinfer",
        function=flashinfer_attention,
        deterministic=False,
        description="FlashInfer block-sparse, forward only (inference)",
    )
)
