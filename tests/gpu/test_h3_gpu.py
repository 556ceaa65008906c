"""GPU: MiniMax-H3 full-width blocks train with the fused kernel at 2x its clip length, and the injected triton backend
equals the reference one on its packed [text | audio | video] sequence.

    OUT=/some/dir python -m pytest tests/gpu/test_h3_gpu.py -v -s
"""

from __future__ import annotations

import pytest
import torch
from test_models_gpu import (  # noqa: F401  (tests/gpu is on sys.path)
    _lora_model,
    _timed_training,
    assert_triton_equals_reference,
    out_dir,
)

from radial.models import get_adapter

pytestmark = pytest.mark.gpu


def test_h3_blocks_768p_2x_length_train_with_triton(out_dir):  # noqa: F811
    # Full width (56 heads of 128, hidden 5376), 2 of the 50 blocks; 243 frames (2x its 5 s clip) at 768x1344.
    adapter, model = _lora_model("h3", "t2va", num_layers=2)
    shape = adapter.latent_shape(243, 768, 1344)  # 72 latent frames x 24x42 tokens = 72,576 video tokens
    assert shape == (1, 24, 72, 48, 84)
    latents = adapter.make_dummy_latents(model, 1, *shape[2:])
    cond = adapter.make_dummy_conditions(model, 1, 128, latent_shape=shape)  # 128 text + 2 x 405 audio rows
    result = _timed_training("h3_blocks_768p_72f", adapter, model, latents, cond, out_dir, blocks=2)
    assert result["video_tokens"] == 72_576 and result["text_tokens"] == 128 + 2 * 405
    assert result["token_density"] < 0.3


def test_h3_triton_equals_reference_in_a_small_cuda_model():
    """bf16 on the GPU: forward and LoRA gradients of the triton backend against the reference one."""
    adapter = get_adapter("h3")
    model = adapter.build_tiny(attention_head_dim=128, rope_freq_dim=16, dtype=torch.bfloat16, device="cuda")
    latents = adapter.make_dummy_latents(model, 2, 32, 16, 32)  # 32 frames x 128 tokens, text + audio dense
    cond = adapter.make_dummy_conditions(model, 2, 64, latent_shape=latents.shape, valid_text=[20, 64])
    assert_triton_equals_reference(adapter, model, latents, cond, max_density=0.6)
