"""Probe: can FlashInfer be imported and JIT-build its block-sparse kernel here, and how long does that take?"""

import time

import torch

import radial

t0 = time.time()
try:
    import flashinfer

    print("flashinfer", flashinfer.__version__, "import %.1fs" % (time.time() - t0), flush=True)
    plan = radial.make_plan(21, 1560, device="cuda")
    q, k, v = (torch.randn(1, plan.seq_len, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with torch.no_grad():
        out = radial.radial_attention(q, k, v, plan, backend="flashinfer")
        ref = radial.radial_attention(q, k, v, plan, backend="triton")
    torch.cuda.synchronize()
    print(f"first call (JIT) {time.time() - t0:.1f}s rel diff vs triton {((out - ref).norm() / ref.norm()).item():.2e}")
except Exception as err:
    print(f"flashinfer probe failed after {time.time() - t0:.1f}s: {type(err).__name__}: {str(err)[:2000]}")
