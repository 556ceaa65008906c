"""Dense attention (no sparsity, the speed baseline): flash-attn-4's dense kernel where it runs, else torch SDPA.

flash-attn-4's dense kernel was measured 1.04-1.13x faster than cuDNN SDPA (fwd+bwd, H200), so it is the default on
compute capability 9.x/10.x when installed. `RADIAL_DENSE_KERNEL` picks one: `auto` (default), `fa4`, `sdpa` (torch
SDPA, cuDNN on Hopper); benchmarks time both.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from radial.kernels.call import AttentionCall
from radial.kernels.registry import Backend, register


def dense_attention(call: AttentionCall) -> torch.Tensor:
    """Full attention [B, S, H, D]; padded keys (key_padding_mask False) get zero weight. The plan is ignored."""
    query, key, value, key_padding_mask = call.query, call.key, call.value, call.key_padding_mask
    if key_padding_mask is None:
        return _attend(query, key, value)
    valid = key_padding_mask.to(torch.bool)
    if torch.compiler.is_compiling():  # data-dependent shapes below would break the graph
        return _sdpa(query, key, value, valid[:, None, None, :])
    # A boolean mask sends SDPA to its memory-efficient kernel, about half cuDNN's speed at long lengths; dropping the
    # padded keys instead keeps every call on the unmasked fast path (one host sync per call, nothing at these sizes).
    if bool(valid.all()):
        return _attend(query, key, value)
    out = []
    for b in range(query.shape[0]):
        keep = valid[b].nonzero().squeeze(1)
        if keep.numel() == 0:  # no key to attend to: zeros, as the sparse kernels return for an empty row
            out.append(torch.zeros_like(query[b : b + 1]))
            continue
        k, v = (t[b : b + 1].index_select(1, keep) for t in (key, value))
        out.append(_attend(query[b : b + 1], k, v))
    return torch.cat(out)


DENSE_KERNEL_ENV = "RADIAL_DENSE_KERNEL"
DENSE_KERNELS = ("auto", "fa4", "sdpa")


def dense_kernel(query: torch.Tensor) -> str:
    """`fa4` or `sdpa`: the kernel the dense backend runs on these tensors (RADIAL_DENSE_KERNEL, then availability)."""
    from radial.kernels import fa4

    choice = os.environ.get(DENSE_KERNEL_ENV, "auto")
    if choice not in DENSE_KERNELS:
        raise ValueError(f"{DENSE_KERNEL_ENV}={choice!r}: expected one of {list(DENSE_KERNELS)}")
    if choice == "sdpa":
        return "sdpa"
    if fa4.dense_usable(query):
        return "fa4"
    if choice == "fa4":
        raise ValueError(
            f"{DENSE_KERNEL_ENV}=fa4 needs flash-attn-4 on a compute capability 9.x/10.x GPU with float16/bfloat16 "
            f"inputs ({fa4._available() or f'device {query.device}, dtype {query.dtype}'})"
        )
    return "sdpa"


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    if dense_kernel(query) == "fa4":
        from radial.kernels import fa4

        return fa4.dense(query, key, value)
    return _sdpa(query, key, value)


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None):
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


BACKEND = register(
    Backend(
        name="dense",
        function=dense_attention,
        deterministic=True,  # flash-attn-4's dense kernel, whose dQ is not, is skipped in deterministic runs
        description="no sparsity: flash-attn-4's dense kernel or SDPA",
    )
)
