"""The kernels' argument object (radial.kernels.call) and the Triton loop helpers (triton_common) changed no
behaviour: every CPU backend gives bitwise the outputs and gradients it gave before them
(tests/data/kernel_parity_before.json, written by tests/kernel_parity.py on main e6b35da), and each one still
equals the reference backend at the tolerances of the existing backend tests. The Triton kernels run in the
interpreter (TRITON_INTERPRET=1, set by conftest). The three costliest Triton cases (text tokens with padding,
about 4 s each here) run in `python -m tests.kernel_parity`, not here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.kernel_parity import CASES, digest, run_case, versions

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter fingerprints (tests/gpu: CUDA)")

BEFORE = json.loads((Path(__file__).resolve().parent / "data" / "kernel_parity_before.json").read_text())
SLOW = {"triton_text_pad", "triton_text_pad_fp16", "triton_text_pad_gpu_tiles"}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("name", [n for n in CASES if n not in SLOW])
def test_same_bits_as_before_and_close_to_reference(name):
    got = run_case(name)
    if BEFORE["_versions"] == versions():  # bits depend on the torch / Triton builds; closeness below does not
        assert {k: digest(t) for k, t in got.items()} == BEFORE[name]
    if CASES[name][1] == "reference":
        return
    want = run_case(name, backend="reference")
    tol = 1e-5 if CASES[name][2] == torch.float32 else 3e-3
    for key, tensor in got.items():
        assert torch.isfinite(tensor).all(), key
        assert rel(tensor, want[key]) < tol, f"{key}: {rel(tensor, want[key]):.2e}"


def test_every_case_has_a_fingerprint():
    assert set(BEFORE) - {"_versions"} == set(CASES)


def test_bits_do_not_depend_on_the_callers_thread_count():
    """Guards the thread pin of run_case: on one thread torch's CPU backward gave other dq / dk bits (CI's failure)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = {k: digest(t) for k, t in run_case("reference_decay").items()}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
    if BEFORE["_versions"] == versions():
        assert got == BEFORE["reference_decay"]
    else:
        assert got == {k: digest(t) for k, t in run_case("reference_decay").items()}
