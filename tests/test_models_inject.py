"""`radial.inject` and its handle: option errors, removal, dense layers and steps, two models, checkpointing."""

from __future__ import annotations

import types

import pytest
import torch

import radial
import radial.models.context as context
from radial.attention_settings import AttentionSettings
from radial.inject import RadialHandle, inject_pipeline
from radial.models import get_adapter
from radial.models.context import InjectionState, LatentGrid, RadialProcessor

BLOCK = 16


@pytest.fixture(scope="module")
def wan():
    return get_adapter("wan")


def _wan(wan, seed=0):
    return wan.build_tiny(seed=seed)


def _run(adapter, model, frames=8, height=8, width=8, seed=0):
    latents = adapter.make_dummy_latents(model, 1, frames, height, width, seed=seed)
    cond = adapter.make_dummy_conditions(model, 1, 8, latent_shape=latents.shape, seed=seed)
    return adapter.predict(model, latents, torch.tensor([500.0]), cond)


@pytest.fixture
def backends(monkeypatch):
    """The backend of every attention call made through the injected processors, in call order."""
    calls = []
    real = context.radial_attention

    def spy(q, k, v, plan, *, backend="auto", **kwargs):
        calls.append(backend)
        return real(q, k, v, plan, backend=backend, **kwargs)

    monkeypatch.setattr(context, "radial_attention", spy)
    return calls


# -- options ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"family": "cogvideox"}, "family"),
        ({"family": "hunyuan"}, "family"),  # a Wan model named as another family
        ({"backend": "cuda-magic"}, "backend"),
        ({"dense_layers": 3}, "dense_layers"),  # the tiny Wan has 2 layers
        ({"dense_layers": -1}, "dense_layers"),
        ({"dense_timesteps": 1.5}, "dense_timesteps"),
        ({"block_size": 24}, "block_size"),
        ({"decay_factor": 0.0}, "decay_factor"),
        ({"sink": "yes"}, "sink"),
    ],
)
def test_bad_options_name_the_key(wan, kwargs, key):
    model = _wan(wan)
    with pytest.raises(ValueError, match=key):
        radial.inject(model, **kwargs)
    assert not any(isinstance(a.processor, RadialProcessor) for a in wan.attention_layers(model))


def test_not_a_supported_transformer():
    with pytest.raises(ValueError, match="no adapter"):
        radial.inject(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("shape", "match"),
    [((8, 7, 8), "hidden_states.*patch size 1x2x2"), ((8, 8, 9), "hidden_states")],
)
def test_latents_the_patch_does_not_divide(wan, shape, match):
    model = _wan(wan)
    with radial.inject(model, backend="reference", block_size=BLOCK), pytest.raises(ValueError, match=match):
        _run(wan, model, *shape)


def test_four_dimensional_latents_are_refused(wan):
    model = _wan(wan)
    with radial.inject(model, block_size=BLOCK) as handle, pytest.raises(ValueError, match=r"\[B, C, F, H, W\]"):
        handle.adapter.latent_grid(model, torch.zeros(1, 16, 8, 8))


def test_injecting_twice_is_refused(wan):
    model = _wan(wan)
    with radial.inject(model), pytest.raises(ValueError, match="already"):
        radial.inject(model)
    radial.inject(model).remove()  # fine again after removal


# -- removal ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["wan", "hunyuan", "mochi"])
def test_remove_restores_the_stock_processors(family):
    adapter = get_adapter(family)
    model = adapter.build_tiny()
    layers = adapter.attention_layers(model)
    stock = [a.processor for a in layers]
    other = {n: m.processor for n, m in model.named_modules() if hasattr(m, "processor") and m not in layers}
    handle = radial.inject(model, backend="reference", block_size=BLOCK)
    assert all(isinstance(a.processor, RadialProcessor) for a in layers)
    assert {n: m.processor for n, m in model.named_modules() if hasattr(m, "processor") and m not in layers} == other
    assert handle.num_layers == len(layers) and handle.family == family
    hooks = (len(model._forward_pre_hooks), len(model._forward_hooks))
    handle.remove()
    handle.remove()  # idempotent
    assert [a.processor for a in layers] == stock
    assert hooks == (1, 1) and not model._forward_pre_hooks and not model._forward_hooks
    assert not handle.active and "active=False" in repr(handle)


def test_a_failed_forward_leaves_no_state_behind(wan):
    model = _wan(wan)
    with radial.inject(model, backend="reference", block_size=BLOCK) as handle:
        with pytest.raises(ValueError):
            _run(wan, model, 8, 7, 8)
        assert not handle._frames and not handle.state._stack
        with torch.no_grad():
            _run(wan, model)
        assert handle.last_grid == LatentGrid(8, 4, 4)


# -- dense layers and dense steps -------------------------------------------------------------------------------
def test_dense_layers_run_the_first_layers_dense(wan, backends):
    model = _wan(wan)
    with torch.no_grad(), radial.inject(model, backend="reference", block_size=BLOCK, dense_layers=1):
        _run(wan, model)
    assert backends == ["dense", "reference"]


def test_dense_layers_count_double_then_single_stream_blocks(backends):
    adapter = get_adapter("hunyuan")
    model = adapter.build_tiny(num_layers=2, num_single_layers=2)
    with torch.no_grad(), radial.inject(model, backend="reference", block_size=BLOCK, dense_layers=3):
        _run(adapter, model)
    assert backends == ["dense", "dense", "dense", "reference"]


def test_dense_timesteps_follow_the_step_the_handle_is_told(wan, backends):
    model = _wan(wan)
    with torch.no_grad(), radial.inject(model, backend="reference", block_size=BLOCK, dense_timesteps=2) as handle:
        with pytest.raises(RuntimeError, match="set_step"):
            _run(wan, model)
        handle.set_step(0)
        for _ in range(3):  # the way a diffusers pipeline drives callback_on_step_end
            _run(wan, model)
            handle.step_callback(None, handle.state.step, None, {})
        with pytest.raises(ValueError, match="step"):
            handle.set_step(-1)
    assert backends == ["dense"] * 4 + ["reference"] * 2


def test_step_decision_is_kept_for_the_backward_recomputation(wan, backends):
    model = _wan(wan)
    model.enable_gradient_checkpointing()
    with radial.inject(model, backend="reference", block_size=BLOCK, dense_timesteps=1) as handle:
        handle.set_step(0)
        out = _run(wan, model)
        handle.set_step(5)  # changed before backward: the recomputation must still run dense
        out.sum().backward()
    assert backends == ["dense"] * 4


# -- several models, re-entrancy, checkpointing -----------------------------------------------------------------
def test_two_injected_models_keep_their_own_layouts_even_nested(wan):
    a, b = _wan(wan, seed=0), _wan(wan, seed=1)
    with torch.no_grad():
        ha = radial.inject(a, backend="reference", block_size=BLOCK)
        hb = radial.inject(b, backend="reference", block_size=32, decay_factor=0.5)
        alone = _run(wan, a)

        # Run expert b (another layout) inside expert a's forward, between a's two blocks.
        def run_b(*args):
            _run(wan, b, 6, 8, 12)  # returns None: a's block output is untouched

        nested = a.blocks[0].register_forward_hook(run_b)
        inside = _run(wan, a)
        nested.remove()
    assert torch.equal(alone, inside)
    assert ha.last_grid == LatentGrid(8, 4, 4) and hb.last_grid == LatentGrid(6, 4, 6)
    assert hb.last_plan.block_size == 32 and ha.last_plan.block_size == BLOCK
    ha.remove()
    hb.remove()


def test_inject_pipeline_drives_both_experts(wan):
    pipe = types.SimpleNamespace(transformer=_wan(wan), transformer_2=_wan(wan, seed=1))
    with inject_pipeline(pipe, family="wan22", backend="reference", block_size=BLOCK, dense_timesteps=1) as handles:
        assert [h.family for h in handles] == ["wan22", "wan22"]
        assert handles["transformer_2"].state.mask_model == "wan22"
        handles.set_step(3)
        assert handles.step_callback(None, 3, None, {"x": 1}) == {"x": 1}
        assert all(h.state.step == 4 for h in handles)
    assert not any(h.active for h in handles)
    with pytest.raises(ValueError, match="no transformer"):
        inject_pipeline(types.SimpleNamespace(transformer=None))


def test_checkpoint_recomputation_uses_its_own_forward_layout(wan):
    """Two forwards with the same token count but different grids, then one backward: exact under checkpointing."""
    model = _wan(wan)
    for p in model.parameters():
        p.requires_grad_(True)
    shapes = [(8, 8, 8), (4, 8, 16)]  # 8x4x4 and 4x4x8 tokens: 128 each

    def grads(checkpointing: bool):
        model.zero_grad(set_to_none=True)
        (model.enable_gradient_checkpointing if checkpointing else model.disable_gradient_checkpointing)()
        with radial.inject(model, backend="reference", block_size=BLOCK):
            loss = sum(_run(wan, model, *s, seed=i).square().mean() for i, s in enumerate(shapes))
            loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain, ckpt = grads(False), grads(True)
    for g0, g1 in zip(plain, ckpt, strict=True):
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7)
    assert model._gradient_checkpointing_func.__name__ == "_gradient_checkpointing_func"  # restored after forward


def test_recomputation_outside_the_forward_falls_back_to_the_newest_matching_layout():
    state = InjectionState(AttentionSettings(), "wan")
    for grid in (LatentGrid(8, 4, 4), LatentGrid(4, 4, 8), LatentGrid(6, 4, 6)):
        state.end(state.begin(grid))
    assert state.current(128).grid == LatentGrid(4, 4, 8)
    assert state.current(144).grid == LatentGrid(6, 4, 6)
    with pytest.raises(RuntimeError, match="outside a forward"):
        state.current(100)
    record = state.begin(LatentGrid(8, 4, 4))
    with pytest.raises(RuntimeError, match="layout mismatch"):
        state.current(144)
    state.end(record)


def test_handle_surface(wan):
    model = _wan(wan)
    handle = radial.inject(model, backend="reference", block_size=BLOCK, dense_layers=1)
    assert isinstance(handle, RadialHandle) and handle.last_plan is None and handle.last_grid is None
    assert handle.config == AttentionSettings(backend="reference", block_size=BLOCK, dense_layers=1)
    with torch.no_grad():
        _run(wan, model)
    assert handle.last_plan.stats.block_density < 0.5
    assert "dense_layers=1" in repr(handle) and "layer=1" in repr(wan.attention_layers(model)[1].processor)
    handle.remove()


def test_works_under_a_peft_model_wrapper(wan):
    from peft import LoraConfig, get_peft_model

    model = _wan(wan)
    with torch.no_grad():
        stock = _run(wan, model)
    handle = radial.inject(model, backend="dense", block_size=BLOCK)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=wan.lora_target_modules()))
    with torch.no_grad():
        out = _run(wan, wrapped)
    assert handle.last_grid == LatentGrid(8, 4, 4) and (out - stock).abs().max() < 1e-5
    assert handle.last_plan is None  # no mask ran: a dense run's metrics and export report no block density
    handle.remove()
