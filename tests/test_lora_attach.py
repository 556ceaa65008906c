"""radial.lora and radial.comfy in small pieces (seconds): attach with its checks and exclusions, state dicts in and
out, the safetensors header, the pipeline saver, and the ComfyUI converter's refusals."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from radial.comfy import PREFIX, ComfyRule, fused, to_comfy
from radial.errors import LoraFileError
from radial.lora import (
    METADATA_KEY,
    adapter_metadata,
    add_metadata,
    attach_lora,
    export_comfy,
    export_diffusers,
    load_lora_state_dict,
    lora_saver,
    lora_state_dict,
    lora_target_names,
    read_metadata,
)
from radial.models import get_adapter


def tiny():
    adapter = get_adapter("wan")
    return adapter, adapter.build_tiny()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=0), r"^lora.rank must be >= 1, got 0$"),
        (dict(dropout=1.0), r"^lora.dropout must be in \[0, 1\), got 1.0$"),
        (dict(dropout=-0.1), r"^lora.dropout must be in \[0, 1\), got -0.1$"),
        (dict(target_modules=[]), r"^lora.target_modules is empty: name at least one module \(e.g. to_q\)$"),
        # PEFT refuses targets that match nothing before our own check (kept for PEFT versions that do not)
        (dict(target_modules=["no_such"]), r"no_such.* not found in the base model"),
    ],
)  # fmt: skip
def test_attach_checks_name_the_key(kwargs, match):
    """Guards attach_lora's checks and their messages."""
    _, model = tiny()
    args = dict(rank=2, alpha=2, target_modules=["to_q"]) | kwargs
    with pytest.raises(ValueError, match=match):
        attach_lora(model, **args)


def test_attach_freezes_the_base_and_sets_rank_alpha_dropout():
    """Guards the LoraConfig handed to PEFT and the frozen base: only LoRA weights train, at the given rank."""
    _, model = tiny()
    config = attach_lora(model, rank=3, alpha=6, dropout=0.25, target_modules=["to_q"])
    assert (config.r, config.lora_alpha, config.lora_dropout) == (3, 6, 0.25)
    trainable = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "to_q" in n for n in trainable)
    assert all(s[0] == 3 for n, s in trainable.items() if "lora_A" in n)
    layer = model.get_submodule("blocks.0.attn1.to_q")
    assert layer.scaling["default"] == 2.0 and layer.lora_dropout["default"].p == 0.25


def test_a_new_adapter_leaves_the_model_as_it_was():
    """Guards attach_lora's default init (PEFT's: B = 0), so training starts from the base model's own output, and
    its smallest rank, 1; `init=False` reaches PEFT (no zero B)."""
    adapter, model = tiny()
    latents = adapter.make_dummy_latents(model, 1, 2, 4, 4)
    conditions = adapter.make_dummy_conditions(model, 1, 8, latent_shape=latents.shape)
    with torch.no_grad():
        before = adapter.predict(model, latents, torch.tensor([500.0]), conditions)
        attach_lora(model, rank=1, alpha=1, target_modules=["to_q", "to_v"])
        after = adapter.predict(model, latents, torch.tensor([500.0]), conditions)
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert b and all(p.shape[1] == 1 and not p.any() for p in b)
    assert torch.equal(before, after)
    _, other = tiny()
    attach_lora(other, rank=2, alpha=2, target_modules=["to_q"], init=False)  # PEFT's init skipped: B not zero
    assert all(p.any() for n, p in other.named_parameters() if "lora_B" in n)


def test_targets_that_adapt_nothing_are_one_error(monkeypatch):
    """Guards attach_lora's own check, for PEFT versions that attach nothing without an error (0.22 raises first):
    the message names the targets and the transformer's class."""
    _, model = tiny()
    monkeypatch.setattr(type(model), "add_adapter", lambda self, config: None)
    with pytest.raises(ValueError) as e:
        attach_lora(model, rank=2, alpha=2, target_modules=("to_q", "to_k"))
    assert str(e.value) == "lora.target_modules ['to_q', 'to_k'] matched no module of WanTransformer3DModel"


@pytest.mark.parametrize("targets", [["to_q", "to_k"], r".*\.(to_q|to_k)"])
def test_excluded_modules_get_no_adapter(targets):
    """Guards _excluding for both PEFT target forms (name list, regex): the excluded full names get no LoRA, the
    other matches do."""
    _, model = tiny()
    excluded = ["blocks.0.attn1.to_q", "blocks.1.attn1.to_k"]
    attach_lora(model, rank=2, alpha=2, target_modules=targets, exclude_modules=excluded)
    adapted = {n.rsplit(".lora_", 1)[0] for n in lora_state_dict(model)}
    assert not adapted & set(excluded)
    assert {"blocks.0.attn1.to_k", "blocks.1.attn1.to_q", "blocks.0.attn2.to_q"} <= adapted


@pytest.mark.parametrize("targets", [("to_q", "to_k"), ["to_out.0"], r".*\.(to_q|to_k)"])
@pytest.mark.parametrize("excluded", [(), ("blocks.0.attn1.to_q", "blocks.1.attn2.to_k")])
def test_target_names_are_what_attach_adapts(targets, excluded):
    """Guards lora_target_names against PEFT itself: the linear layers it names (in module order, for a tuple or
    list of names and for a regex, with and without exclusions) are exactly those attach_lora gives an adapter."""
    _, model = tiny()
    names = lora_target_names(model, targets, excluded)
    attach_lora(model, rank=2, alpha=2, target_modules=targets, exclude_modules=excluded)
    adapted = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert names == adapted and len(names) >= 2


def test_adapter_metadata_is_what_diffusers_stores():
    """Guards adapter_metadata: rank, alpha, dropout, and the targets as given (a regex) or sorted (PEFT keeps a
    list as a set, which JSON cannot hold)."""
    from peft import LoraConfig

    config = LoraConfig(r=3, lora_alpha=6, lora_dropout=0.1, target_modules=["to_v", "to_q", "to_k"])
    assert adapter_metadata(config) == {"r": 3, "lora_alpha": 6, "target_modules": ["to_k", "to_q", "to_v"],
                                        "lora_dropout": 0.1}  # fmt: skip
    regex = LoraConfig(r=2, lora_alpha=2, target_modules=r".*\.(to_v|to_q)")
    assert adapter_metadata(regex)["target_modules"] == r".*\.(to_v|to_q)"


def test_state_dict_round_trip_and_foreign_keys(tmp_path):
    """Guards lora_state_dict (PEFT keys, detached, contiguous) and load_lora_state_dict: its own weights load
    back; keys this adapter lacks are one error naming the file (or none when no file is given)."""
    _, a = tiny()
    attach_lora(a, rank=2, alpha=2, target_modules=["to_q"])
    sd = lora_state_dict(a)
    assert sd and all(not v.requires_grad and v.is_contiguous() for v in sd.values())
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in sd)
    new = {k: torch.randn_like(v) for k, v in sd.items()}
    load_lora_state_dict(a, new)
    assert all(torch.equal(lora_state_dict(a)[k], v) for k, v in new.items())
    tail = r"; it was written for other LoRA targets \(lora.projections, lora.text, lora.target_modules\) or another model$"
    key = r"blocks\.0\.ffn\.net\.\d\.lora_A\.weight"
    foreign = dict(new, **{f"blocks.0.ffn.net.{i}.lora_A.weight": torch.zeros(2, 2) for i in range(4)})
    four = rf"^x.safetensors: LoRA weights do not fit this transformer's adapter: 4 unexpected keys \({key}, {key}, {key}, \.\.\.\)"
    with pytest.raises(LoraFileError, match=four + tail):
        load_lora_state_dict(a, foreign, source="x.safetensors")
    three = {k: v for k, v in foreign.items() if not k.startswith("blocks.0.ffn.net.3.")}
    with pytest.raises(
        LoraFileError, match=rf"^LoRA weights do not fit .*: 3 unexpected keys \({key}, {key}, {key}\)" + tail
    ):
        load_lora_state_dict(a, three)


def test_header_is_added_read_and_kept(tmp_path):
    """Guards add_metadata / read_metadata: tensors and existing header entries kept, our JSON added under
    radial_lora, no temporary file left; a file without it reads as {}."""
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.arange(4.0)}, str(path), metadata={"format": "pt"})
    assert read_metadata(path) == {}
    add_metadata(path, {"rank": 4, "nested": {"b": 1, "a": 2}})
    assert read_metadata(path) == {"rank": 4, "nested": {"a": 2, "b": 1}}
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "pt"
    assert torch.equal(load_file(str(path))["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_headers_are_sorted_json_with_paths_as_text(tmp_path):
    """Guards the JSON of our header in both writers (add_metadata, export_comfy): keys sorted at every level (the same
    record, the same text), and values JSON lacks (a Path) stored as their text."""
    info = {"z": 1, "a": {"y": tmp_path, "b": 2}}
    want = json.dumps({"a": {"b": 2, "y": str(tmp_path)}, "z": 1})
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    add_metadata(path, info)
    comfy = export_comfy({"w": torch.zeros(2)}, tmp_path / "c.safetensors", info)
    for file in (path, comfy):
        with safe_open(str(file), framework="pt") as f:
            assert f.metadata()[METADATA_KEY] == want, file


def test_comfy_file_has_tensors_header_and_format(tmp_path):
    out = export_comfy(
        {"k": torch.ones(2, 2, requires_grad=True) * 2}, tmp_path / "a" / "b" / "c.safetensors", {"r": 1}
    )
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and json.loads(meta[METADATA_KEY]) == {"r": 1}
    assert torch.equal(load_file(str(out))["k"], torch.full((2, 2), 2.0))


def test_info_command_reads_its_arguments(tmp_path, capsys):
    """Guards radial.lora's `main`: the arguments given (not the process's) reach radial.lora_info."""
    from radial.lora import main

    save_file({"a.lora_A.weight": torch.zeros(4, 8)}, str(tmp_path / "other.safetensors"))
    assert main(["info", str(tmp_path / "other.safetensors")]) == 0
    assert "no radial_lora header" in capsys.readouterr().out


def test_saver_of_pipelines_without_a_lora_mixin():
    """Guards lora_saver: a pipeline's own saver where it has one, diffusers' HunyuanVideo mixin otherwise."""
    import diffusers
    from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin

    assert lora_saver(diffusers.WanPipeline) is diffusers.WanPipeline
    assert lora_saver(object) is HunyuanVideoLoraLoaderMixin


@pytest.mark.parametrize("targets", [["to_q", "to_k"], r".*\.(to_q|to_k)"])
def test_diffusers_file_carries_the_adapter_config(tmp_path, targets):
    """Guards the adapter metadata diffusers reads back (rank, alpha, targets as given or sorted, dropout)."""
    import diffusers

    _, model = tiny()
    config = attach_lora(model, rank=2, alpha=6, dropout=0.1, target_modules=targets)
    path = export_diffusers(model, diffusers.WanPipeline, tmp_path, config, {"x": 1})
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()["lora_adapter_metadata"])
    adapter = {k.removeprefix("transformer."): v for k, v in stored.items()}
    assert adapter["r"] == 2 and adapter["lora_alpha"] == 6 and adapter["lora_dropout"] == 0.1
    assert adapter["target_modules"] == (targets if isinstance(targets, str) else sorted(config.target_modules))
    assert read_metadata(path) == {"x": 1}


def test_comfy_converter_refuses_what_it_cannot_map():
    """Guards to_comfy's refusals: a non-LoRA key, a module with only one of its two matrices, a fused part whose
    size differs from its module's."""
    adapter, model = tiny()
    rules = adapter.comfy_rules()
    with pytest.raises(ValueError, match=r"^not a PEFT LoRA key: 'blocks.0.attn1.to_q.weight'$"):
        to_comfy({"blocks.0.attn1.to_q.weight": torch.zeros(1)}, rules, model, 1.0)
    with pytest.raises(ValueError, match=r"^LoRA of blocks.0.attn1.to_q lacks \['lora_B'\]$"):
        to_comfy({"blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 8)}, rules, model, 1.0)
    fused_rules = fused("blocks.{i}.attn1.", "blocks.{i}.qkv", ["to_q", "to_k"])
    inner = model.get_submodule("blocks.0.attn1.to_q").out_features
    sd = {
        "blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, inner),
        "blocks.0.attn1.to_q.lora_B.weight": torch.zeros(inner + 1, 2),
        "blocks.0.attn1.to_k.lora_A.weight": torch.zeros(2, inner),
        "blocks.0.attn1.to_k.lora_B.weight": torch.zeros(inner, 2),
    }
    with pytest.raises(ValueError, match=rf"^blocks.0.qkv part 0: {inner + 1} outputs, expected {inner}$"):
        to_comfy(sd, fused_rules, model, 1.0)


def test_fused_rules_place_each_part_in_its_rows_and_columns():
    """Guards fused(): one rule per part (slot, the parts' module names for this block) and to_comfy's layout:
    parts stacked in slot order whatever order the state dict lists them in, each up matrix scaled; a part alone
    (the other part not adapted) keeps its own rows, the others' rows zero."""
    _, model = tiny()
    rules = fused("blocks.{i}.attn1.", "blocks.{i}.qkv", ["to_q", "to_k"])
    assert [r.slot for r in rules] == [0, 1]
    assert rules[1] == ComfyRule(
        r"blocks\.(\d+)\.attn1\.to_k", r"blocks.\1.qkv", 1, (r"blocks.\1.attn1.to_q", r"blocks.\1.attn1.to_k")
    )
    n = model.get_submodule("blocks.0.attn1.to_q").out_features
    g = torch.Generator().manual_seed(0)
    a_q, b_q, a_k, b_k = (torch.randn(s, generator=g) for s in ((2, n), (n, 2), (3, n), (n, 3)))
    sd = {"blocks.0.attn1.to_k.lora_A.weight": a_k, "blocks.0.attn1.to_k.lora_B.weight": b_k,
          "blocks.0.attn1.to_q.lora_A.weight": a_q, "blocks.0.attn1.to_q.lora_B.weight": b_q}  # fmt: skip
    out = to_comfy(sd, rules, model, 0.5)
    down, up = out[f"{PREFIX}blocks.0.qkv.lora_A.weight"], out[f"{PREFIX}blocks.0.qkv.lora_B.weight"]
    assert torch.equal(down, torch.cat([a_q, a_k]))
    want = torch.zeros(2 * n, 5)
    want[:n, :2], want[n:, 2:] = 0.5 * b_q, 0.5 * b_k
    assert torch.equal(up, want)
    only_k = to_comfy({k: v for k, v in sd.items() if ".to_k." in k}, rules, model, 0.5)  # lora.projections=[k]
    assert torch.equal(only_k[f"{PREFIX}blocks.0.qkv.lora_A.weight"], a_k)
    assert torch.equal(only_k[f"{PREFIX}blocks.0.qkv.lora_B.weight"], torch.cat([torch.zeros(n, 3), 0.5 * b_k]))
