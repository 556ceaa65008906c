"""GPU checks of the fa4 backend (flash-attn-4 block-sparse).

Forward and gradients against the fp32 reference on Wan and HunyuanVideo layouts with odd lengths and padded text,
`auto` selection, the deterministic and block-64 fallbacks, torch.compile (fullgraph) over the op, and the
attention-saving checkpoint policy keeping its output. Skipped without CUDA or without flash_attn.cute. The dense
backend's flash-attn-4 kernel is checked in test_attention_gpu.py (test_dense_backend_drops_padded_keys).
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from test_attention_gpu import (  # tests/gpu is on sys.path under pytest
    HUN,
    WAN,
    check_backend,
    check_hunyuan_4x_forward,
    inputs,
    rel,
)

import radial
from radial.kernels import fa4

pytestmark = pytest.mark.gpu

if torch.cuda.is_available():
    pytest.importorskip("flash_attn.cute.interface")
    if torch.cuda.get_device_capability()[0] not in fa4.DENSE_MAJORS:
        pytest.skip("flash-attn-4 runs on compute capability 9.x / 10.x here", allow_module_level=True)


@pytest.mark.parametrize(
    "layout,batch,heads,padded",
    [
        (WAN, 1, 2, 0),  # 32760 tokens: a partial last block
        (WAN, 2, 3, 0),
        (HUN, 2, 2, 0),  # 32656 tokens with 256 text tokens
        (HUN, 2, 2, 200),  # sample 0 loses two key blocks' worth of text, sample 1 a third of that
        (HUN, 3, 2, 77),
    ],
)
def test_fa4_matches_reference(layout, batch, heads, padded):
    plan = radial.make_plan(**layout, device="cuda")
    check_backend("fa4", plan, batch, heads, 128, torch.bfloat16, padded)


def test_fa4_fp16_and_all_text_padded():
    plan = radial.make_plan(**HUN, device="cuda")
    check_backend("fa4", plan, 2, 2, 128, torch.float16, 256)  # sample 0: every text key padded


def test_auto_picks_fa4_on_hopper():
    want = "fa4" if torch.cuda.get_device_capability()[0] in fa4.AUTO_MAJORS else "triton"
    assert radial.attention.resolve_backend("auto", torch.device("cuda"), 128) == want
    assert radial.attention.resolve_backend("auto", torch.device("cuda"), 64) == "triton"


def test_deterministic_run_uses_triton(caplog):
    plan = radial.make_plan(**HUN, device="cuda")
    q, k, v, do, kpm = inputs(plan, 1, 2, 128, torch.bfloat16, 50)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with caplog.at_level(logging.WARNING):
            assert radial.attention.resolve_backend("auto", q.device, 128) == "triton"
            runs = []
            for _ in range(2):
                out = radial.radial_attention(q, k, v, plan, backend="fa4", key_padding_mask=kpm)
                runs.append((out, *torch.autograd.grad(out, (q, k, v), do)))
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))  # triton: bitwise reproducible
    assert "not deterministic" in caplog.text


def test_block_64_runs_triton():
    plan = radial.make_plan(**WAN, block_size=64, device="cuda")
    check_backend("fa4", plan, 1, 2, 128, torch.bfloat16, 0)


def test_torch_compile_fullgraph():
    plan = radial.make_plan(**WAN, device="cuda")
    q, k, v, do, _ = inputs(plan, 1, 2, 128, torch.bfloat16)

    def layer(q, k, v):
        return radial.radial_attention(q * 1.0, k, v, plan, backend="fa4") * 2.0

    out = torch.compile(layer, fullgraph=True)(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = layer(q, k, v)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    assert rel(out, ref) < 1e-3
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel(g, r) < 1e-3


def test_save_attention_keeps_the_fa4_output(monkeypatch):
    from flash_attn.cute import interface

    from radial.checkpointing import attention_saving_checkpoint

    calls = []
    real = interface._flash_attn_fwd

    # flash-attn-4 reaches its compile cache through the module global (`_flash_attn_fwd.compile_cache`); wraps
    # copies the function's __dict__, so the stand-in shares that cache.
    @functools.wraps(real)
    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(interface, "_flash_attn_fwd", counting)
    plan = radial.make_plan(**WAN, device="cuda")
    q, k, v, do, _ = inputs(plan, 1, 2, 128, torch.bfloat16)
    lin = torch.nn.Linear(128, 128, device="cuda", dtype=torch.bfloat16)

    def block(x):
        return radial.radial_attention(lin(x), k, v, plan, backend="fa4")

    for checkpoint, forwards in ((attention_saving_checkpoint, 1), (torch.utils.checkpoint.checkpoint, 2)):
        calls.clear()
        kwargs = {} if checkpoint is attention_saving_checkpoint else {"use_reentrant": False}
        checkpoint(block, q, **kwargs).backward(do)
        assert len(calls) == forwards, (checkpoint, len(calls))


def test_hunyuan_4x_plan_forward():
    """HunyuanVideo 720p 4x (461k tokens, 1.4M kept blocks), one head, padded text: fa4 against triton."""
    check_hunyuan_4x_forward("fa4")
