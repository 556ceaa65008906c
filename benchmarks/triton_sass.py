"""The machine code of the Triton attention kernels, compiled for Hopper (sm_90) on any machine (no GPU needed):
a SHA-256 of each kernel variant's SASS, to show that a refactor of the kernels' source leaves the compiled kernels
as they were.

    python benchmarks/triton_sass.py CHECKOUT [SASS_DIR]   # one line per variant: kernel, its constexprs, hash, count

Run it on two checkouts (say the main branch's and a branch's) and diff the outputs. Set TRITON_DISABLE_LINE_INFO=1
for both: with line info (Triton's default) ptxas allocates registers a little differently when the same code
comes from other source lines (a jit helper), which changes the SASS without changing what it computes.
The variants are the GPU's tile shapes (triton_common.GPU_FWD / GPU_BWD) at head dims 64 and 128, in float16 and
bfloat16, with and without key padding, with pointer and TMA-descriptor loads, and the atomic-dQ variants.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def _sass(cubin: bytes, nvdisasm: str) -> list[str]:
    """The instructions of a cubin, without addresses and comments."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    lines = (re.sub(r"/\*[0-9a-f]+\*/", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(("//", "."))]


def variants(fwd, bwd):
    """(kernel, pointer dtypes by argument, constexprs, compile options) of every variant compiled."""
    for dt in ("bf16", "fp16"):
        for pad in (False, True):
            for hd, pb in ((128, 128), (64, 64)):
                ints = {"KV_IDX": "*i32", "KV_CNT": "*i32", "Q_IDX": "*i32", "Q_CNT": "*i32", "PAD_START": "*i32"}
                ints.update(KPM="*u8", LSE="*fp32", DELTA="*fp32", DQ_ACC="*fp32", DQ_DESC="*fp32")
                types = {**ints, **{n: "*" + dt for n in ("Q", "K", "V", "DO", "Q_DESC", "DO_DESC", "DK", "DV", "DQ")}}
                types.update({n: "*" + dt for n in ("K_DESC", "V_DESC", "Out")}, qk_scale="fp32", sm_scale="fp32")
                tile = min(128, pb)
                fc = dict(HAS_PAD=pad, TMA=False, PLAN_BLOCK=pb, BLOCK_M=tile, BLOCK_N=pb, HEAD_DIM=hd)
                yield fwd._fwd_kernel, types, fc, dict(num_warps=8, num_stages=3)
                for atomic, rotate in ((False, False), (True, False), (True, True)):
                    c = dict(HAS_PAD=pad, ATOMIC_DQ=atomic, DQ_TMA=False, ROTATE=rotate, TMA_LOADS=False)
                    c.update(PLAN_BLOCK=pb, BLOCK_M=64, BLOCK_N=tile, HEAD_DIM=hd)
                    yield bwd._dkdv_kernel, types, c, dict(num_warps=8, num_stages=3)
                c = dict(HAS_PAD=pad, PLAN_BLOCK=pb, BLOCK_M=tile, BLOCK_N=tile, HEAD_DIM=hd)
                yield bwd._dq_kernel, types, c, dict(num_warps=8, num_stages=2)
                # TMA loads through host descriptors over [B, S, H*D]: a [1, rows, D] box
                desc = {f"{n}_DESC": f"tensordesc<{dt}[1,{rows},{hd}]>" for n, rows in (("K", pb), ("V", pb))}
                desc.update({f"{n}_DESC": f"tensordesc<{dt}[1,64,{hd}]>" for n in ("Q", "DO")})
                yield fwd._fwd_kernel, {**types, **desc}, {**fc, "TMA": True}, dict(num_warps=8, num_stages=3)
                c = dict(HAS_PAD=pad, ATOMIC_DQ=False, DQ_TMA=False, ROTATE=False, TMA_LOADS=True)
                c.update(PLAN_BLOCK=pb, BLOCK_M=64, BLOCK_N=tile, HEAD_DIM=hd)
                yield bwd._dkdv_kernel, {**types, **desc}, c, dict(num_warps=8, num_stages=3)
    types = {"Out": "*bf16", "DO": "*bf16", "DELTA": "*fp32"}
    yield bwd._preprocess_kernel, types, dict(BLOCK=128, HEAD_DIM=128), dict(num_warps=4, num_stages=1)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python benchmarks/triton_sass.py CHECKOUT [SASS_DIR]", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
    sys.path.insert(0, str(Path(argv[0]).resolve()))
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fwd = importlib.import_module("radial.kernels.triton_fwd")
    bwd = importlib.import_module("radial.kernels.triton_bwd")
    nvdisasm = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm")
    out = Path(argv[1]) if len(argv) == 2 else None
    for n, (kernel, types, consts, options) in enumerate(variants(fwd, bwd)):
        signature = {a: "constexpr" if a in consts else types.get(a, "i32") for a in kernel.arg_names}
        compiled = triton.compile(
            ASTSource(kernel, signature, consts), target=GPUTarget("cuda", 90, 32), options=options
        )
        sass = _sass(compiled.asm["cubin"], nvdisasm)
        name = kernel.fn.__name__
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{n:02d}{name}.sass").write_text("\n".join(sass))
        digest = hashlib.sha256("\n".join(sass).encode()).hexdigest()[:16]
        print(name, " ".join(f"{k}={v}" for k, v in consts.items()), digest, len(sass), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
