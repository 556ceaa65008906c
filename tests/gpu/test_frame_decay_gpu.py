"""The extrapolation decay on CUDA at ~32k tokens: FlexAttention's score_mod (forward and backward) against the fp32
reference, radial and dense masks, without an S x S bias (peak memory far under one)."""

from __future__ import annotations

import pytest
import torch

from radial.attention import radial_attention
from radial.frame_decay import FrameDecay
from radial.plan import make_plan

pytestmark = pytest.mark.gpu


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("backend", ["flex", "dense", "triton"])  # dense and triton fall back to flex
def test_decay_at_32k_tokens_matches_the_reference(backend):
    plan = make_plan(32, 1024, text_tokens=256, block_size=128, model="wan", device="cuda")  # 33,024 tokens
    decay = FrameDecay(0.5, 8)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(1, plan.seq_len, 2, 128, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
        for _ in range(3)
    )
    do = torch.randn_like(q)
    ref_plan = plan
    if backend == "dense":
        from radial.plan import dense_plan

        ref_plan = dense_plan(32, 1024, text_tokens=256, block_size=128, device="cuda")
    ref = radial_attention(q, k, v, ref_plan, backend="reference", decay=decay)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = radial_attention(q, k, v, plan, backend=backend, decay=decay)
    grads = torch.autograd.grad(out, (q, k, v), do)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < plan.seq_len**2 * 2 / 4  # a bf16 S x S bias alone would be 4x this
    assert rel(out, ref) < 1e-2
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel(g, r) < 2e-2
