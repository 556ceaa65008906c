"""`fa4` backend: flash-attn-4's CuTe-DSL block-sparse kernels (Hopper), forward and backward, as torch.library ops.

The plan's lists go to flash-attn-4 as they are: every kept block is a "full" block (no per-token mask inside a
block), the "mask" lists are empty, the forward gets the kv lists and the backward the transposed q lists, with
leading dims of 1 that broadcast over batch and heads. They are built once per (plan, device, key blocks) and cached
with the plan (weak refs), like the triton backend's device copies.

What flash-attn-4 4.0.0b36 does, read in flash_attn/cute (interface.py, block_sparsity.py, block_sparse_utils.py),
and how each case is handled here:
- A partial last block: the forward walks a row's list from its last (highest) entry and masks keys >= seqlen_k in
  that first block only; our lists ascend, so the last block, the only one with keys past the end, is that one. The
  SM90 backward masks seqlen in every block.
- Key padding (text tokens padded per sample, a tail of the sequence): `seqused_k` would be the natural tool but the
  backward refuses it with block sparsity ("Varlen backward with block sparsity is not yet supported"). A padded
  sample runs on its own with keys cut to its length L: kv lists restricted to blocks < ceil(L / block) (so the one
  partial block is again a row's last), seqlen_k = L masks the rest, and the cut keys get zero gradient. Padding that
  is not a tail of the keys (not HunyuanVideo's or Mochi's layout), or padding under torch.compile (lengths are data),
  runs the triton kernel instead, said once in the log.
- Block size: SM90 ties the backward tile to 128-wide kv blocks for head dim 128 (a 64-wide sparse kv block is
  rejected), so block 64 runs triton, said once. Its query tile must divide the sparse block, so the block-sparse
  backward runs 64-row tiles where the dense one runs 80: about 5% of backward time (benchmarks/results/fa4_bwd_tile.md,
  with what the radial mask's own layout costs). On SM100 the forward runs two 128-row q tiles per CTA and requires
  256-row sparse q blocks, so `auto` picks fa4 on 9.x only (`AUTO_MAJORS`); `backend="fa4"` still runs on 10.x.
- The block-sparse backward is not deterministic (`deterministic=True` raises in 4.0.0b36): a deterministic run
  (`torch.use_deterministic_algorithms(True)`) runs triton, said once.
- dtypes float16 / bfloat16 and head dims up to 256 (multiple of 16); anything else runs triton.
Without block tensors the same ops run flash-attn-4's dense kernel (the `dense` backend's fa4 kernel).
"""

from __future__ import annotations

import weakref

import torch

from radial.kernels.call import AttentionCall, softmax_scale
from radial.kernels.custom_ops import fake_grads, fake_out_lse, register_autograd
from radial.kernels.registry import Backend, log_once, register
from radial.plan import RadialPlan, block_index_lists

AUTO_MAJORS = (9,)  # compute capability majors where `auto` picks fa4 (see the module doc for 10.x)
DENSE_MAJORS = (9, 10)  # where flash-attn-4's dense kernel is used by the dense backend
BLOCK_SIZES = (128,)
_REQUIRE_CUDA = True  # the CPU tests run this module against a fake flash_attn.cute

_import_error: list[str | None] = []  # [] = not tried yet; a plain global (not functools.cache) for torch.compile


def _available() -> str | None:
    """None when flash_attn.cute imports, else why not (tried once per process)."""
    if not _import_error:
        try:
            import flash_attn.cute.interface  # noqa: F401

            _import_error.append(None)
        except Exception as err:  # an ImportError, or a DSL that fails to initialise
            _import_error.append(f"flash_attn.cute does not import ({type(err).__name__}: {err})")
    return _import_error[0]


def _cute():
    why = _available()
    if why is not None:
        raise ImportError(f"backend='fa4' needs flash-attn-4 (pip install 'radial-lora[fa4]'): {why}")
    from flash_attn.cute import interface
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    return interface, BlockSparseTensorsTorch


def _capability_major(device: torch.device) -> int | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)[0]


def auto_reason(device: torch.device, block_size: int, deterministic: bool | None = None) -> str | None:
    """None when `auto` should run fa4 on this device and block size, else why it runs triton."""
    if device.type != "cuda":
        return f"device {device} is not CUDA"
    major = _capability_major(device)
    if major not in AUTO_MAJORS:
        return f"compute capability {major}.x is not {'/'.join(f'{m}.x' for m in AUTO_MAJORS)}"
    return _available() or unsupported_reason(block_size, deterministic=deterministic)


def unsupported_reason(
    block_size: int,
    dtype: torch.dtype | None = None,
    head_dim: int | None = None,
    deterministic: bool | None = None,
) -> str | None:
    """Why the fa4 kernels cannot run this call (None: they can): determinism (None: torch's flag), block size,
    dtype, head dim."""
    if torch.are_deterministic_algorithms_enabled() if deterministic is None else deterministic:
        return "deterministic algorithms are on and flash-attn-4's block-sparse backward is not deterministic"
    if block_size not in BLOCK_SIZES:
        return f"flash-attn-4 needs 128-token blocks on Hopper (its backward tile), got block_size={block_size}"
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn-4 runs float16 / bfloat16, got {dtype}"
    if head_dim is not None and (head_dim % 16 or head_dim > 256):
        return f"flash-attn-4 needs a head dim <= 256 and a multiple of 16, got {head_dim}"
    return None


def dense_usable(query: torch.Tensor) -> bool:
    """Whether the dense backend can run flash-attn-4's dense kernel on these tensors: installed, 9.x/10.x, dtype,
    and not a deterministic run (its dQ is accumulated by atomics)."""
    if _REQUIRE_CUDA and _capability_major(query.device) not in DENSE_MAJORS:
        return False
    if torch.are_deterministic_algorithms_enabled():
        return False
    if query.dtype not in (torch.float16, torch.bfloat16) or query.shape[-1] % 16 or query.shape[-1] > 256:
        return False
    return _available() is None


def _block_sparse(tensors: tuple | None, block_size: int):
    """flash-attn-4's BlockSparseTensorsTorch from (mask_cnt, mask_idx, full_cnt, full_idx), or None (dense)."""
    if tensors is None or tensors[0] is None:
        return None
    _, bst = _cute()
    return bst(*tensors, block_size=(block_size, block_size))


@torch.library.custom_op("radial::fa4_attn_fwd", mutates_args=())
def fa4_attn_fwd(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    fwd_mask_cnt: torch.Tensor | None,
    fwd_mask_idx: torch.Tensor | None,
    fwd_full_cnt: torch.Tensor | None,
    fwd_full_idx: torch.Tensor | None,
    bwd_mask_cnt: torch.Tensor | None,
    bwd_mask_idx: torch.Tensor | None,
    bwd_full_cnt: torch.Tensor | None,
    bwd_full_idx: torch.Tensor | None,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Sq, H, D], lse fp32 [B, H, Sq]) of flash-attn-4 over keys [B, Sk, H, D]; no block tensors = dense.

    The backward's lists are inputs so that the autograd formula can reach them.
    """
    interface, _ = _cute()
    sparse = _block_sparse((fwd_mask_cnt, fwd_mask_idx, fwd_full_cnt, fwd_full_idx), block_size)
    out, lse, *_ = interface._flash_attn_fwd(
        query, key, value, softmax_scale=scale, block_sparse_tensors=sparse, return_lse=True
    )
    return out, lse


@fa4_attn_fwd.register_fake
def _(query, key, value, *lists_and_args):
    return fake_out_lse(query, query.shape[1])


@torch.library.custom_op("radial::fa4_attn_bwd", mutates_args=())
def fa4_attn_bwd(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    bwd_mask_cnt: torch.Tensor | None,
    bwd_mask_idx: torch.Tensor | None,
    bwd_full_cnt: torch.Tensor | None,
    bwd_full_idx: torch.Tensor | None,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `fa4_attn_fwd`, over the transposed (q) lists."""
    interface, _ = _cute()
    sparse = _block_sparse((bwd_mask_cnt, bwd_mask_idx, bwd_full_cnt, bwd_full_idx), block_size)
    grad_out = grad_out if grad_out.is_contiguous() else grad_out.contiguous()
    dq, dk, dv = interface._flash_attn_bwd(
        query, key, value, out, grad_out, lse, scale, False, block_sparse_tensors=sparse, deterministic=False
    )
    return dq, dk, dv


@fa4_attn_bwd.register_fake
def _(grad_out, query, key, value, *rest):
    return fake_grads(query, key, value)


register_autograd(fa4_attn_fwd, fa4_attn_bwd, slice(4, 8))  # saves the backward (transposed) lists


# Per plan: {(device, key blocks): (forward lists, backward lists)}, each (mask_cnt, mask_idx, full_cnt, full_idx).
_plan_tensors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _as_fa4(counts: torch.Tensor, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(empty mask lists, the given lists as full lists), int32 with broadcast leading dims [1, 1, rows(, width)]."""
    rows = counts.shape[0]
    full_cnt = counts.to(device=device, dtype=torch.int32).reshape(1, 1, rows).contiguous()
    full_idx = indices.to(device=device, dtype=torch.int32).reshape(1, 1, rows, -1).contiguous()
    mask_cnt = torch.zeros(1, 1, rows, dtype=torch.int32, device=device)
    mask_idx = torch.zeros(1, 1, rows, 1, dtype=torch.int32, device=device)
    return mask_cnt, mask_idx, full_cnt, full_idx


def plan_tensors(plan: RadialPlan, device: torch.device, key_blocks: int | None = None) -> tuple[tuple, tuple]:
    """(forward, backward) flash-attn-4 lists of the plan on `device` for keys cut to `key_blocks` blocks, cached."""
    nkb = plan.num_blocks if key_blocks is None else key_blocks
    per_plan = _plan_tensors.setdefault(plan, {})
    cache_key = (str(device), nkb)
    if cache_key not in per_plan:
        if nkb == plan.num_blocks:
            kv = (plan.kv_counts, plan.kv_indices)
            q = (plan.q_counts, plan.q_indices)
        else:  # keys cut to a sample's length: only the first nkb key blocks exist
            idx, cnt = block_index_lists(plan.block_mask[:, :nkb])
            kv = (cnt, idx)
            q = (plan.q_counts[:nkb], plan.q_indices[:nkb])
        per_plan[cache_key] = (_as_fa4(*kv, device), _as_fa4(*q, device))
    return per_plan[cache_key]


def key_lengths(key_padding_mask: torch.Tensor) -> list[int] | None:
    """Per-sample key counts when every sample's valid keys are a prefix (padding is a tail), else None."""
    valid = key_padding_mask.to(torch.bool)
    lengths = valid.sum(dim=1)
    prefix = torch.arange(valid.shape[1], device=valid.device)[None, :] < lengths[:, None]
    if not bool((prefix == valid).all()):
        return None
    return [int(n) for n in lengths.tolist()]


def dense(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Full attention [B, Sq, H, D] over keys [B, Sk, H, D] through flash-attn-4's dense kernel (with backward)."""
    return fa4_attn_fwd(query, key, value, *(None,) * 8, 0, softmax_scale(query, scale))[0]


def fa4_attention(call: AttentionCall) -> torch.Tensor:
    """Radial attention [B, S, H, D] under the plan through flash-attn-4's block-sparse kernels (fwd and bwd)."""
    query, key, value, plan, key_padding_mask = call.query, call.key, call.value, call.plan, call.key_padding_mask
    if _REQUIRE_CUDA and query.device.type != "cuda":
        raise ValueError(f"backend='fa4' needs CUDA tensors, got device={query.device}")
    _cute()
    why = unsupported_reason(plan.block_size, query.dtype, query.shape[-1])
    lengths = None
    if why is None and key_padding_mask is not None:
        if torch.compiler.is_compiling():
            why = "key padding under torch.compile (per-sample key lengths are data)"
        else:
            lengths = key_lengths(key_padding_mask.to(query.device))
            if lengths is None:
                why = "the key padding is not a tail of each sample's keys"
    if why is not None:
        log_once(f"attention backend fa4 -> triton: {why}")
        from radial.kernels.triton import triton_attention

        return triton_attention(call)
    scale = call.softmax_scale
    bs = plan.block_size

    def run(q, k, v):
        fwd, bwd = plan_tensors(plan, query.device, -(-k.shape[1] // bs))
        return fa4_attn_fwd(q, k, v, *fwd, *bwd, bs, scale)[0]

    if lengths is None or all(n == plan.seq_len for n in lengths):
        return run(query, key, value)
    outs = []
    for b, n in enumerate(lengths):  # a padded sample alone, its keys cut to its length (see the module doc)
        q = query[b : b + 1]
        outs.append(torch.zeros_like(q) if n == 0 else run(q, key[b : b + 1, :n], value[b : b + 1, :n]))
    return torch.cat(outs)


def _request_reason(device: torch.device, block_size: int, deterministic: bool) -> str | None:
    # off CUDA the call itself says that fa4 needs CUDA tensors (the CPU tests run it against a fake)
    return unsupported_reason(block_size, deterministic=deterministic) if device.type == "cuda" else None


BACKEND = register(
    Backend(
        name="fa4",
        function=fa4_attention,
        deterministic=False,
        description="flash-attn-4 block-sparse",
        unsupported_reason=_request_reason,
        fallback="triton",
        auto=True,
        auto_reason=auto_reason,
    )
)
