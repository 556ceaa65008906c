"""ComfyUI / original-key LoRA export: exact fused updates, and diffusers' own converter reads it back."""

import re

import pytest
import torch

from radial.comfy import PREFIX, fused_delta
from radial.lora import attach_lora, lora_state_dict
from radial.models import get_adapter


def _tiny_with_lora(family: str, text: bool):
    adapter = get_adapter(family)
    model = adapter.build_tiny()
    attach_lora(model, rank=4, alpha=8, target_modules=adapter.lora_target_modules(text=text))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return adapter, model


def comfy_parts(adapter, model, comfy) -> list[tuple[str, torch.Tensor]]:
    """(diffusers module, its rows of its original module's update up @ down in `comfy`) for every LoRA module of
    `model`; asserts each module has one rule and the file its target."""
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in lora_state_dict(model)})
    found = []
    for module in modules:
        (rule, m), *more = [(r, m) for r in adapter.comfy_rules() if (m := re.fullmatch(r.pattern, module))] or [
            (None, None)
        ]
        assert rule is not None and not more, f"{module}: {0 if rule is None else 1 + len(more)} ComfyUI rules"
        delta = fused_delta(comfy, m.expand(rule.target))
        if rule.slot is not None:
            sizes = [model.get_submodule(m.expand(t)).out_features for t in rule.parts]
            start = sum(sizes[: rule.slot])
            delta = delta[start : start + sizes[rule.slot]]
        found.append((module, delta))
    return found


@pytest.mark.parametrize("family", ["wan", "hunyuan", "hunyuan15", "mochi", "h3"])
def test_every_update_is_preserved(family):
    """Each original module's up @ down equals the diffusers parts' scaled updates, stacked in their rows."""
    adapter, model = _tiny_with_lora(family, text=True)
    sd = lora_state_dict(model)
    comfy = adapter.comfy_lora_state_dict(sd, model, scale=2.0)
    assert all(k.startswith(PREFIX) for k in comfy)
    for module, delta in comfy_parts(adapter, model, comfy):
        part = 2.0 * sd[f"{module}.lora_B.weight"] @ sd[f"{module}.lora_A.weight"]
        torch.testing.assert_close(delta, part, atol=1e-5, rtol=1e-5)


def test_fused_rows_of_untrained_parts_are_zero():
    adapter, model = _tiny_with_lora("hunyuan", text=False)
    comfy = adapter.comfy_lora_state_dict(lora_state_dict(model), model, scale=1.0)
    delta = fused_delta(comfy, "single_blocks.0.linear1")
    inner = model.single_transformer_blocks[0].attn.to_q.out_features
    assert delta[: 3 * inner].abs().sum() > 0 and delta[3 * inner :].abs().sum() == 0


def test_hunyuan15_comfy_keys_and_fused_weights():
    """HunyuanVideo-1.5 in ComfyUI's HunyuanVideo names: fused img/txt_attn_qkv and the two output projections;
    the fused original weight plus the file's update equals the PEFT-merged q, k, v weights side by side."""
    adapter, model = _tiny_with_lora("hunyuan15", text=True)
    comfy = adapter.comfy_lora_state_dict(lora_state_dict(model), model, scale=2.0)  # alpha / rank = 8 / 4
    blocks = range(len(model.transformer_blocks))
    names = ("img_attn_qkv", "txt_attn_qkv", "img_attn_proj", "txt_attn_proj")
    assert set(comfy) == {
        f"{PREFIX}double_blocks.{i}.{n}.lora_{ab}.weight" for i in blocks for n in names for ab in "AB"
    }
    parts = {"img_attn_qkv": ("to_q", "to_k", "to_v"), "txt_attn_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}
    parts |= {"img_attn_proj": ("to_out.0",), "txt_attn_proj": ("to_add_out",)}
    for i in blocks:
        for name, modules in parts.items():
            layers = [model.get_submodule(f"transformer_blocks.{i}.attn.{m}") for m in modules]
            original = torch.cat([layer.base_layer.weight for layer in layers]) + fused_delta(
                comfy, f"double_blocks.{i}.{name}"
            )
            merged = torch.cat([layer.base_layer.weight + layer.get_delta_weight("default") for layer in layers])
            torch.testing.assert_close(original, merged, atol=1e-5, rtol=1e-5)


def test_wan_comfy_file_loads_through_diffusers_original_format_converter(tmp_path):
    """diffusers recognises the file as an original (non-diffusers) Wan LoRA and maps it back to the same update."""
    import diffusers
    from safetensors.torch import save_file

    adapter, model = _tiny_with_lora("wan", text=True)
    sd = lora_state_dict(model)
    save_file(adapter.comfy_lora_state_dict(sd, model, scale=2.0), str(tmp_path / "comfy.safetensors"))
    back = diffusers.WanPipeline.lora_state_dict(str(tmp_path / "comfy.safetensors"))
    back = {k.removeprefix("transformer."): v for k, v in back.items()}
    for key in sd:
        if key.endswith("lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            want = 2.0 * sd[f"{module}.lora_B.weight"] @ sd[key]
            got = back[f"{module}.lora_B.weight"] @ back[key]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_unknown_module_is_an_error():
    adapter, model = _tiny_with_lora("wan", text=False)
    sd = {
        "blocks.0.scale_shift_table.lora_A.weight": torch.zeros(1),
        "blocks.0.scale_shift_table.lora_B.weight": torch.zeros(1),
    }
    with pytest.raises(ValueError, match="no ComfyUI"):
        adapter.comfy_lora_state_dict(sd, model, scale=1.0)
