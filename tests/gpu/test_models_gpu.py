"""GPU: the full-size architectures train with the triton backend at long lengths without running out of memory.

    OUT=/some/dir python -m pytest tests/gpu/test_models_gpu.py -v -s

Each test runs one warm-up and one timed LoRA training step (bf16, gradient checkpointing, random weights) and
writes its time and peak memory to $OUT/models_gpu_<name>.json (a temporary folder when $OUT is unset).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

import radial
from radial.models import get_adapter

pytestmark = pytest.mark.gpu
GIB = 2**30


@pytest.fixture
def out_dir(tmp_path) -> Path:
    path = Path(os.environ.get("OUT") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _train_step(adapter, model, latents, cond) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss = adapter.predict(model, latents, torch.tensor([600.0], device="cuda"), cond).float().square().mean()
    loss.backward()
    return loss.detach()


def _lora_model(family: str, variant: str, **overrides):
    from peft import LoraConfig

    adapter = get_adapter(family)
    model = adapter.build_full(variant, dtype=torch.bfloat16, device="cuda", **overrides)
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=64, lora_alpha=64, target_modules=adapter.lora_target_modules()))
    model.enable_gradient_checkpointing()
    model.train()
    return adapter, model


def _timed_training(name, adapter, model, latents, cond, out_dir, **extra) -> dict:
    with radial.inject(model, backend="triton", block_size=128) as handle:
        _train_step(adapter, model, latents, cond)  # warm-up: kernel compilation
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        loss = _train_step(adapter, model, latents, cond)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        plan = handle.last_plan
    lora = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    result = {
        "name": name,
        "device": torch.cuda.get_device_name(),
        "latent_shape": list(latents.shape),
        "video_tokens": plan.video_tokens,
        "text_tokens": plan.text_tokens,
        "token_density": plan.stats.token_density,
        "train_step_s": seconds,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / GIB,
        "loss": loss.item(),
        **extra,
    }
    (out_dir / f"models_gpu_{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    assert torch.isfinite(loss)
    assert lora and all(g is not None and torch.isfinite(g).all() for g in lora.values())
    assert any(g.abs().sum() > 0 for g in lora.values())
    return result


def test_wan_1_3b_480p_4x_length_trains_with_triton(out_dir):
    adapter, model = _lora_model("wan", "t2v-1.3b")
    shape = adapter.latent_shape(321, 480, 832)  # 81 latent frames x 30x52 tokens = 126,360 tokens
    assert shape == (1, 16, 81, 60, 104)
    latents = adapter.make_dummy_latents(model, 1, *shape[2:])
    cond = adapter.make_dummy_conditions(model, 1)
    result = _timed_training("wan_1_3b_480p_81f", adapter, model, latents, cond, out_dir)
    assert result["video_tokens"] == 126_360 and result["token_density"] < 0.25


def test_hunyuan_double_and_single_blocks_720p_train_with_triton(out_dir):
    # Full width, 2 double-stream + 2 single-stream blocks (the whole 60-block model at 720p needs sequence
    # parallelism or more memory for its checkpoints); 129 frames at 720p with padded text.
    adapter, model = _lora_model("hunyuan", "t2v", num_layers=2, num_single_layers=2)
    shape = adapter.latent_shape(129, 720, 1280)  # 33 latent frames x 45x80 tokens = 118,800 + 256 text
    latents = adapter.make_dummy_latents(model, 1, *shape[2:])
    cond = adapter.make_dummy_conditions(model, 1, valid_text=100)
    result = _timed_training("hunyuan_blocks_720p_33f", adapter, model, latents, cond, out_dir, blocks="2+2")
    assert result["video_tokens"] == 118_800 and result["text_tokens"] == 256


def assert_triton_equals_reference(adapter, model, latents, cond, max_density: float) -> None:
    """With a LoRA on `model` (bf16, CUDA): the forward and LoRA gradients of the injected triton backend equal the
    reference backend's, on a plan sparser than `max_density`."""
    from peft import LoraConfig

    model.add_adapter(
        LoraConfig(r=8, lora_alpha=8, target_modules=adapter.lora_target_modules(), init_lora_weights="gaussian")
    )

    def run(backend):
        model.zero_grad(set_to_none=True)
        with radial.inject(model, backend=backend, block_size=128) as handle:
            out = adapter.predict(model, latents, torch.tensor([300.0, 800.0], device="cuda"), cond)
            out.float().square().mean().backward()
        return out.float(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}, handle

    ref, ref_grads, handle = run("reference")
    out, grads, _ = run("triton")
    assert handle.last_plan.stats.block_density < max_density
    assert (out - ref).abs().max() / ref.abs().max() < 2e-2
    for name, g in ref_grads.items():
        assert (grads[name] - g).abs().max() <= 5e-2 * g.abs().max() + 1e-6, name


def test_triton_equals_reference_in_a_small_cuda_model():
    """bf16 on the GPU: the injected triton backend against the reference backend, forward and LoRA gradients."""
    adapter = get_adapter("hunyuan")
    model = adapter.build_tiny(
        num_attention_heads=2, attention_head_dim=128, rope_axes_dim=(16, 56, 56), dtype=torch.bfloat16, device="cuda"
    )
    latents = adapter.make_dummy_latents(model, 2, 32, 16, 32)  # 32 frames x 128 tokens + 64 text: density 0.33
    cond = adapter.make_dummy_conditions(model, 2, 64, valid_text=[20, 64])
    assert_triton_equals_reference(adapter, model, latents, cond, max_density=0.5)
