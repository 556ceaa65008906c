"""GPU: attention.deterministic=true repeats a training step bit for bit on CUDA (`auto` resolves to triton, whose
backward uses no atomics; the dense layer runs without flash-attn-4's dense kernel in this mode).

    python -m pytest tests/gpu/test_deterministic_gpu.py -v
"""

from __future__ import annotations

import pytest
import torch

from radial.attention import resolve_backend
from tests.gpu.test_step_settings_gpu import SHAPE
from tests.test_compile import compiled_step
from tests.test_deterministic import restore_determinism  # noqa: F401 - fixture

pytestmark = pytest.mark.gpu


def test_deterministic_step_is_bitwise_repeatable_on_cuda(restore_determinism):  # noqa: F811
    """Guards the deterministic mode on the GPU: the same step twice gives the same loss and LoRA gradients
    exactly, with the radial layers on triton."""
    extra = ("attention.deterministic=true", "attention.block_size=64", "attention.dense_layers=1")
    first = compiled_step(None, *extra, device="cuda", **SHAPE)
    assert torch.are_deterministic_algorithms_enabled()
    assert resolve_backend("auto", torch.device("cuda"), 64) == "triton"
    second = compiled_step(None, *extra, device="cuda", **SHAPE)
    assert torch.equal(first[0], second[0])
    assert first[1].keys() == second[1].keys() and first[1]
    for name, grad in first[1].items():
        assert torch.equal(grad, second[1][name]), name
