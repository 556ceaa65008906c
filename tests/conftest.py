"""Test setup: Triton kernels run in interpreter mode where there is no GPU; GPU tests skip without CUDA."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before triton is imported anywhere.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps one process-wide state; tests that build trainers with other settings need it reset."""
    yield
    try:
        from accelerate.state import AcceleratorState, GradientState
    except ImportError:  # pragma: no cover
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
