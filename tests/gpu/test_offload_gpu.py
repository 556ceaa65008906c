"""GPU: activation offload (train.offload_activations) and weight streaming (train.offload_blocks) on CUDA give the
in-memory step's loss and LoRA gradients with a lower device peak; the memory cap turns an over-cap step into the
out-of-memory error of a smaller card.

    python -m pytest tests/gpu/test_offload_gpu.py -v
"""

from __future__ import annotations

import pytest
import torch

import train.offload
from tests.test_compile import compiled_step

pytestmark = pytest.mark.gpu

# 6 blocks, 8 latent frames of 64x64 (1024 tokens a frame after the 2x2 patch), width 128: 2 MB hidden states
TINY = {"num_layers": 6, "num_attention_heads": 2, "attention_head_dim": 64}


def _step(*extra: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], int, int, object]:
    """Loss, LoRA gradients, device memory after the build and the step's device peak (bytes), and the parts."""
    torch.cuda.empty_cache()
    record: dict = {}
    settings = ("attention.backend=triton", "attention.block_size=64", "attention.deterministic=true", *extra)
    loss, grads = compiled_step(None, *settings, device="cuda", frames=8, size=64, record=record, **TINY)
    grads = {n: g.detach().clone() for n, g in grads.items()}
    return loss, grads, record["built"], record["peak"], record["parts"]


def _same(a, b) -> None:
    loss_a, grads_a = a[:2]
    loss_b, grads_b = b[:2]
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and any("lora_A" in n for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("save_attention", [True, False])
def test_activation_offload_same_gradients_lower_peak(save_attention, monkeypatch):
    monkeypatch.setattr(train.offload, "MIN_BYTES", 1 << 16)
    extra = (f"train.save_attention={str(save_attention).lower()}",)
    plain = _step(*extra)
    offloaded = _step(*extra, "train.offload_activations=true")
    _same(plain, offloaded)
    assert offloaded[4].offload.offloaded_bytes > 0 and offloaded[4].offload.prefetch_hits > 0
    assert offloaded[3] < plain[3], (offloaded[3], plain[3])


def test_weight_streaming_same_gradients_fewer_resident_weights():
    plain = _step()
    streamed = _step("train.offload_blocks=true")
    _same(plain, streamed)
    assert streamed[2] < plain[2]  # the blocks' frozen weights left the device after the build
    streamer = streamed[4].streamer
    # all of them (6 blocks of fp32 weights, 3.6 MB): the streamer's buffers hold them, page-locked in place
    assert plain[2] - streamed[2] >= 0.9 * streamer.host_bytes() > 0, (plain[2], streamed[2], streamer.host_bytes())
    assert all(b.pinned and b.data.is_pinned() for b in streamer.buffers)
    assert streamer.copies >= 2 * 6 - 1  # each block in the forward and again for its recomputation
    both = _step("train.offload_blocks=true", "train.offload_activations=true")
    _same(plain, both)


def test_memory_cap_refuses_past_the_cap():
    from train.memory_cap import apply_memory_cap

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    try:
        assert apply_memory_cap(1.0, torch.device("cuda")) == 1.0
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(int(1.5 * 2**30), dtype=torch.uint8, device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        import train.memory_cap

        train.memory_cap._caps.clear()
    assert total > 1.0
