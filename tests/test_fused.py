"""Fused q/k/v projections (train.fuse_qkv): the same outputs and gradients as the separate PEFT LoRA layers."""

import pytest
import torch
from torch import nn

import radial
from radial.fused import fused_linears
from radial.lora import attach_lora
from radial.models import get_adapter


def _lora_model(family: str, projections=("q", "k", "v", "o"), dropout: float = 0.0):
    adapter = get_adapter(family)
    model = adapter.build_tiny(seed=1)
    attach_lora(model, rank=4, alpha=8, dropout=dropout, target_modules=adapter.lora_target_modules(list(projections)))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: a non-zero LoRA path to compare
            nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(len(name)))
    return adapter, model


@pytest.mark.parametrize("projections", [("q", "k", "v"), ("q", "v")])
def test_fused_linears_equal_the_separate_layers(projections):
    _, model = _lora_model("wan", projections)
    attn = model.blocks[0].attn1
    layers = (attn.to_q, attn.to_k, attn.to_v)
    x = torch.randn(2, 7, attn.to_q.in_features, generator=torch.Generator().manual_seed(0), requires_grad=True)
    want = [layer(x) for layer in layers]
    got = fused_linears(layers, x)
    for g, w in zip(got, want, strict=True):
        assert g.is_contiguous()
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    grads_want = torch.autograd.grad(sum((w * w.detach().cos()).sum() for w in want), [x, *params], allow_unused=True)
    grads_got = torch.autograd.grad(sum((g * g.detach().cos()).sum() for g in got), [x, *params], allow_unused=True)
    for g, w in zip(grads_got, grads_want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("why", ["dropout", "hooked weights"])
def test_layers_it_cannot_fuse_exactly_run_unfused(why):
    # dropout: one mask per layer, fusing would change the draws; a hook on the base layer (layerwise casting,
    # ZeRO-3 gathering) would be skipped by the fused matmul
    _, model = _lora_model("wan", dropout=0.5 if why == "dropout" else 0.0)
    attn = model.blocks[0].attn1
    layers = (attn.to_q, attn.to_k, attn.to_v)
    if why == "hooked weights":
        attn.to_k.base_layer.register_forward_pre_hook(lambda *_: None)
    calls = []
    for layer in layers:
        layer.register_forward_hook(lambda m, *_: calls.append(m))
    fused_linears(layers, torch.randn(1, 3, attn.to_q.in_features))
    assert calls == list(layers)


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_fuse_qkv_gives_the_unfused_model_output(family):
    adapter, model = _lora_model(family)
    latents = adapter.make_dummy_latents(model, 1, 2, 8, 8, seed=2)
    conds = adapter.make_dummy_conditions(model, 1, text_len=4, seed=3)
    calls = []
    for attn in adapter.attention_layers(model):
        attn.to_q.register_forward_hook(lambda *_: calls.append(1))  # the fused path does not call the layer
    outs, layer_calls = [], []
    for fuse in (False, True):
        with radial.inject(model, family=family, backend="reference", block_size=16, fuse_qkv=fuse):
            outs.append(adapter.predict(model, latents, torch.tensor([500.0]), conds))
        layer_calls.append(len(calls))
        calls.clear()
    assert layer_calls == [len(adapter.attention_layers(model)), 0]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
