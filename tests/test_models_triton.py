"""The triton backend through the adapters (Triton's interpreter on CPU): equal to the reference backend, forward
and LoRA gradients, with Hunyuan's padded text and a sequence that is not a multiple of the block."""

from __future__ import annotations

import pytest
import torch

import radial
from radial.models import get_adapter

pytest.importorskip("triton")
pytest.importorskip("radial.kernels.triton")

CONFIGS = {
    "wan": {"num_attention_heads": 1, "attention_head_dim": 64, "num_layers": 2},
    "hunyuan": {"num_attention_heads": 1, "attention_head_dim": 64, "rope_axes_dim": (16, 24, 24)},
}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_triton_backend_equals_reference_in_the_model(family):
    from peft import LoraConfig

    adapter = get_adapter(family)
    model = adapter.build_tiny(**CONFIGS[family])
    model.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=adapter.lora_target_modules(), init_lora_weights="gaussian")
    )
    latents = adapter.make_dummy_latents(model, 2, 8, 16, 16)  # 8 frames x 64 tokens (+ 8 text for hunyuan)
    cond = adapter.make_dummy_conditions(model, 2, 8, valid_text=[3, 8])

    def run(backend):
        model.zero_grad(set_to_none=True)
        with radial.inject(model, backend=backend, block_size=64) as handle:
            out = adapter.predict(model, latents, torch.tensor([300.0, 800.0]), cond)
            out.square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        return out.detach(), grads, handle.last_plan

    ref, ref_grads, plan = run("reference")
    out, grads, _ = run("triton")
    assert plan.stats.block_density < 0.5
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert ref_grads.keys() == grads.keys() and len(grads) == 2 * len(adapter.lora_target_names(model))
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-3, atol=1e-5, msg=name)
