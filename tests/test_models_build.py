"""Adapters: registry and detection, the three ways to build, the local-path checks, LoRA targets, geometry."""

from __future__ import annotations

import json

import pytest
import torch

from radial.families import FAMILIES
from radial.models import ModelPathError, available_adapters, detect_adapter, get_adapter


def test_registry_and_detection():
    assert available_adapters() == sorted(FAMILIES)
    with pytest.raises(ValueError, match="family"):
        get_adapter("ltx")
    pairs = [
        ("wan", "wan"),
        ("wan22", "wan"),
        ("wan22_ti2v", "wan22_ti2v"),
        ("hunyuan", "hunyuan"),
        ("hunyuan15",) * 2,
        ("h3", "h3"),
    ]
    for family, detected in pairs:
        model = get_adapter(family).build_tiny()
        assert detect_adapter(model).family == detected
    with pytest.raises(ValueError, match="no adapter"):
        detect_adapter(torch.nn.Linear(1, 1))


def test_a_diffusers_without_the_class_is_named_not_a_traceback(monkeypatch):
    """An older diffusers (HunyuanVideo-1.5 came in 0.36): that family says what to upgrade; detection goes on."""
    from radial.errors import ConfigError

    adapter = get_adapter("hunyuan15")
    monkeypatch.setattr(adapter, "class_name", "HunyuanVideo99Transformer3DModel")
    with pytest.raises(
        ConfigError, match=r"family='hunyuan15' needs diffusers' HunyuanVideo99Transformer3DModel.*upgrade"
    ):
        adapter.build_tiny()
    assert detect_adapter(get_adapter("mochi").build_tiny()).family == "mochi"
    with pytest.raises(ValueError, match="no adapter"):
        detect_adapter(torch.nn.Linear(1, 1))  # every adapter is asked, the one without a class included


@pytest.mark.parametrize(
    ("family", "variant", "billions"),
    [
        ("wan", "t2v-1.3b", 1.42),
        ("wan", "t2v-14b", 14.29),
        ("wan", "i2v-14b", 16.39),
        ("wan22", "t2v-a14b", 14.29),
        ("wan22", "i2v-a14b", 14.29),
        ("wan22_ti2v", "ti2v-5b", 5.00),
        ("hunyuan", "t2v", 12.82),
        ("mochi", "preview", 10.03),
        ("hunyuan15", "t2v", 8.33),
    ],
)
def test_full_size_architectures_build_on_meta(family, variant, billions):
    model = get_adapter(family).build_full(variant, device="meta")
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_full_build_materialises_parameters_buffers_and_fp32_modules():
    wan = get_adapter("wan")
    tiny = {k: v for k, v in wan.tiny_config.items()}
    model = wan.build_full("t2v-1.3b", dtype=torch.bfloat16, device="cpu", **tiny)
    reference = wan.build_tiny()
    assert not any(p.is_meta for p in model.parameters())
    for name, buf in reference.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name], buf)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["scale_shift_table"] == torch.float32  # in WanTransformer3DModel._keep_in_fp32_modules
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert torch.all(model.blocks[0].attn1.norm_q.weight == 1) and torch.all(model.blocks[0].attn1.to_q.bias == 0)
    latents = wan.make_dummy_latents(model, 1, 4, 8, 8)
    cond = wan.make_dummy_conditions(model, 1, 8)
    with torch.no_grad():
        out = wan.predict(model, latents, 500.0, cond)
    assert out.shape == latents.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="variant"):
        wan.build_full("t2v-2b", device="meta")
    with pytest.raises(ValueError, match="init"):
        wan.build_full(device="meta", init="xavier")


def test_tiny_build_is_seeded_and_leaves_the_global_rng_alone():
    mochi = get_adapter("mochi")
    state = torch.random.get_rng_state()
    a, b, c = mochi.build_tiny(seed=3), mochi.build_tiny(seed=3), mochi.build_tiny(seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert a.pos_frequencies.abs().sum() > 0  # zero-initialised parameters carry signal in the tiny model


# -- real weights from a local folder ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_wan(tmp_path_factory):
    wan = get_adapter("wan")
    root = tmp_path_factory.mktemp("Wan2.1-T2V-tiny-Diffusers")
    model = wan.build_tiny(seed=7)
    model.save_pretrained(root / "transformer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return root, model


@pytest.mark.parametrize("where", ["root", "transformer", "subfolder"])
def test_from_pretrained_loads_the_same_weights(saved_wan, where):
    root, model = saved_wan
    wan = get_adapter("wan")
    path, sub = {"root": (root, None), "transformer": (root / "transformer", None), "subfolder": (root, "transformer")}[
        where
    ]
    loaded = wan.from_pretrained(path, dtype=torch.float32, subfolder=sub)
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def test_bad_model_paths_name_the_config_key(saved_wan, tmp_path):
    root, _ = saved_wan
    wan, hunyuan = get_adapter("wan"), get_adapter("hunyuan")
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    cases = [
        (wan, None, "model.path is not set"),
        (wan, "", "model.path is not set"),
        (wan, tmp_path / "missing", "does not exist"),
        (wan, tmp_path / "file.txt", "is a file"),
        (wan, tmp_path, "no transformer/config.json"),
        (wan, tmp_path / "noweights", "no weight files"),
        (wan, tmp_path / "broken", "not valid JSON"),
        (hunyuan, root, "describes 'WanTransformer3DModel'.*HunyuanVideoTransformer3DModel"),
    ]
    for adapter, path, message in cases:
        with pytest.raises(ModelPathError, match=message) as err:
            adapter.from_pretrained(path)
        assert "model.path" in str(err.value) and isinstance(err.value, ValueError)


# -- LoRA targets and geometry ----------------------------------------------------------------------------------
def test_lora_targets_are_the_radial_attention_projections():
    wan, hunyuan, mochi = (get_adapter(f) for f in ("wan", "hunyuan", "mochi"))
    w = wan.build_tiny()
    assert wan.lora_target_names(w) == [
        f"blocks.{i}.attn1.{p}" for i in range(2) for p in ("to_q", "to_k", "to_v", "to_out.0")
    ]
    assert len(wan.lora_target_names(w, text=True)) == 16
    assert wan.lora_target_names(w, ["q", "v"]) == [
        "blocks.0.attn1.to_q",
        "blocks.0.attn1.to_v",
        "blocks.1.attn1.to_q",
        "blocks.1.attn1.to_v",
    ]
    h = hunyuan.build_tiny()
    names = hunyuan.lora_target_names(h)
    assert names == [
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_k",
        "transformer_blocks.0.attn.to_v",
        "transformer_blocks.0.attn.to_out.0",
        "single_transformer_blocks.0.attn.to_q",
        "single_transformer_blocks.0.attn.to_k",
        "single_transformer_blocks.0.attn.to_v",
    ]  # not the text refiner's attention
    assert set(hunyuan.lora_target_names(h, text=True)) - set(names) == {
        f"transformer_blocks.0.attn.{p}" for p in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    }
    m = mochi.build_tiny()
    assert (
        len(mochi.lora_target_names(m)) == 8 and len(mochi.lora_target_names(m, text=True)) == 15
    )  # last block: no to_add_out
    hy15 = get_adapter("hunyuan15")
    names = hy15.lora_target_names(hy15.build_tiny(), text=True)
    # The last block's text stream is discarded: no LoRA on its output projection (it would never get a gradient).
    assert "transformer_blocks.0.attn.to_add_out" in names and "transformer_blocks.1.attn.to_add_out" not in names
    assert len(names) == 15
    with pytest.raises(ValueError, match="projections"):
        wan.lora_target_modules(["q", "x"])


def test_latent_geometry():
    wan, ti2v, hunyuan, mochi = (get_adapter(f) for f in ("wan", "wan22_ti2v", "hunyuan", "mochi"))
    assert wan.latent_shape(81, 480, 832) == (1, 16, 21, 60, 104)
    assert wan.latent_shape(321, 480, 832, batch=2) == (2, 16, 81, 60, 104)  # 4x length: 81 latent frames
    assert ti2v.latent_shape(121, 704, 1280) == (1, 48, 31, 44, 80)
    assert hunyuan.latent_shape(129, 720, 1280) == (1, 16, 33, 90, 160)
    assert mochi.latent_shape(163, 480, 848) == (1, 12, 28, 60, 106)
    assert get_adapter("hunyuan15").latent_shape(121, 480, 848) == (1, 32, 31, 30, 53)
    with pytest.raises(ValueError, match=r"k\*4\+1"):
        wan.latent_shape(80, 480, 832)
    with pytest.raises(ValueError, match=r"k\*6\+1"):
        mochi.latent_shape(161, 480, 848)
    with pytest.raises(ValueError, match="multiples of 16"):
        wan.latent_shape(81, 481, 832)
    assert hunyuan.geometry.temporal_factor == 4 and mochi.geometry.temporal_factor == 6


def test_predict_conventions():
    """Every adapter returns noise - x0 at noise level t (x1000); Mochi's model runs the other way round."""
    mochi = get_adapter("mochi")
    model = mochi.build_tiny()
    latents = mochi.make_dummy_latents(model, 2, 3, 4, 4)
    cond = mochi.make_dummy_conditions(model, 2, 8, valid_text=[3, 8])
    assert cond["prompt_attention_mask"].sum(1).tolist() == [3, 8]
    with torch.no_grad():
        raw = model(latents, cond["prompt_embeds"], torch.tensor([750.0, 750.0]), cond["prompt_attention_mask"])[0]
        assert torch.equal(mochi.predict(model, latents, 250.0, cond), -raw)
    with pytest.raises(ValueError, match="timestep"):
        mochi.predict(model, latents, torch.zeros(3), cond)
    with pytest.raises(ValueError, match="valid_text"):
        mochi.make_dummy_conditions(model, 2, 8, valid_text=[0, 8])
