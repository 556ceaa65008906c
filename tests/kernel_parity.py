"""Fingerprints of every attention backend that runs on the CPU: a SHA-256 of the output and of the three input
gradients of `radial_attention` (reference, flex, dense, and triton under TRITON_INTERPRET=1 in fp32 and fp16) on
small seeded layouts, with text tokens, a key padding mask, an extrapolation decay where a backend takes one, and
the GPU tile shapes (atomic dQ, rotated walk, TMA loads) of the triton kernels. Refactors of the kernels that must
not change behaviour compare these before and after, bitwise (tests/test_kernel_refactor_parity.py).

    TRITON_INTERPRET=1 python -m tests.kernel_parity OUT.json [TENSORS.pt]   # writes the fingerprints (and tensors)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported, as tests/conftest.py does

import torch  # noqa: E402

import radial  # noqa: E402
from radial.frame_decay import FrameDecay  # noqa: E402

#: name -> (frames, tokens per frame, text tokens, block size, batch, heads, head dim, padded key tails per batch)
LAYOUTS: dict[str, tuple[int, int, int, int, int, int, int, tuple[int, ...]]] = {
    "text_pad": (6, 100, 37, 64, 2, 2, 64, (10, 30)),
    "partial": (5, 90, 0, 64, 1, 2, 64, ()),
    "block128": (4, 100, 20, 128, 1, 1, 128, (7,)),
}
#: name -> (layout, backend, dtype, decay, triton tile override: "gpu" = the GPU's tile shapes and variants)
CASES: dict[str, tuple[str, str, torch.dtype, FrameDecay | None, str | None]] = {
    "reference_text_pad": ("text_pad", "reference", torch.float32, None, None),
    "reference_decay": ("partial", "reference", torch.float32, FrameDecay(0.5, 2), None),
    "flex_text_pad": ("text_pad", "flex", torch.float32, None, None),
    "flex_decay": ("partial", "flex", torch.float32, FrameDecay(0.5, 2), None),
    "dense_text_pad": ("text_pad", "dense", torch.float32, None, None),
    "dense_decay": ("partial", "dense", torch.float32, FrameDecay(0.5, 2), None),
    "triton_text_pad": ("text_pad", "triton", torch.float32, None, None),
    "triton_text_pad_fp16": ("text_pad", "triton", torch.float16, None, None),
    "triton_partial": ("partial", "triton", torch.float32, None, None),
    "triton_block128": ("block128", "triton", torch.float32, None, None),
    "triton_block128_gpu_tiles": ("block128", "triton", torch.float32, None, "gpu"),
    "triton_text_pad_gpu_tiles": ("text_pad", "triton", torch.float32, None, "gpu"),
}


@contextlib.contextmanager
def _tiles(kind: str | None) -> Iterator[None]:
    if kind is None:
        yield
        return
    from radial.kernels import triton_common as tc

    bwd = tc.BwdConfig(64, 128, 4, 1, 128, 64, 4, 1, atomic_dq=True, rotate=True, tma_loads=True)
    tc.set_config_override(tc.FwdConfig(128, 64, 4, 1, tma=True), bwd)
    try:
        yield
    finally:
        tc.set_config_override()


#: torch's CPU reductions split by thread count, so dq / dk of the ATen backends change bits with it (one thread
#: differs from two; two and four agree here): every case runs on this many, whatever the machine or test sets.
THREADS = 2


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run_case(name: str, backend: str | None = None) -> dict[str, torch.Tensor]:
    """The output and the gradients (dq, dk, dv) of one case, seeded, on `THREADS` CPU threads; flex forward only
    (FlexAttention has no backward on the CPU). `backend` runs the case's inputs on another backend (the reference,
    to compare; with a dense plan for a case of the dense backend)."""
    with _threads(THREADS):
        return _run_case(name, backend)


def _run_case(name: str, backend: str | None) -> dict[str, torch.Tensor]:
    layout, case_backend, dtype, decay, tiles = CASES[name]
    grad = case_backend != "flex"
    backend = backend or case_backend
    frames, tpf, text, block, batch, heads, dim, tails = LAYOUTS[layout]
    plan = radial.make_plan(frames, tpf, text_tokens=text, block_size=block)
    if case_backend == "dense" and backend != "dense":  # the same attention as the dense backend's: a dense plan
        plan = radial.dense_plan(frames, tpf, text_tokens=text, block_size=block)
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(batch, plan.seq_len, heads, dim, generator=gen).to(dtype) for _ in range(4))
    q, k, v = (t.requires_grad_(grad) for t in (q, k, v))
    kpm = None
    if tails:
        kpm = torch.ones(batch, plan.seq_len, dtype=torch.bool)
        for b, n in enumerate(tails):
            kpm[b, plan.seq_len - n :] = False
    with _tiles(tiles):
        out = radial.radial_attention(q, k, v, plan, backend=backend, key_padding_mask=kpm, decay=decay)
        if not grad:
            return {"out": out}
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    return {"out": out.detach(), "dq": dq, "dk": dk, "dv": dv}


def digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode())
    h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprints(names=None) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, torch.Tensor]]]:
    """({case: {tensor: sha256}}, {case: {tensor: tensor}}) of the named cases (all by default)."""
    hashes, tensors = {}, {}
    for name in names or CASES:
        tensors[name] = run_case(name)
        hashes[name] = {k: digest(t) for k, t in tensors[name].items()}
    return hashes, tensors


def versions() -> dict[str, str]:
    """What the fingerprints depend on besides the code: the builds of torch and Triton (its interpreter)."""
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m tests.kernel_parity OUT.json [TENSORS.pt]", file=sys.stderr)
        return 2
    hashes, tensors = fingerprints()
    with open(argv[0], "w") as f:
        json.dump({**hashes, "_versions": versions()}, f, indent=1, sort_keys=True)
    if len(argv) == 2:
        torch.save(tensors, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
