"""benchmarks/saved_activations.py: the saved-tensor census counts each storage once, attributes it to its block,
agrees with an independent count, and sees what compiled blocks save."""

from __future__ import annotations

import json
from contextlib import contextmanager

import torch
from torch import nn

from benchmarks import saved_activations
from benchmarks.saved_activations import SavedTensorCensus
from radial.models import get_adapter


class _Square(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8, bias=False)

    def forward(self, hidden_states):
        y = hidden_states * hidden_states  # saves the input twice
        flat = y.view(-1)
        z = flat * flat  # saves two views of y's storage
        return self.proj(z.view_as(y))  # saves z's storage (a view) and the weight (a parameter)


def test_census_counts_each_storage_once_per_block():
    blocks = nn.ModuleList([_Square(), _Square()])
    x = torch.randn(4, 8, requires_grad=True)
    census = SavedTensorCensus(blocks, exclude=list(blocks.parameters()))
    with census.watching(), census.recording():
        h = blocks[1](hidden_states=blocks[0](x))  # the hidden size from a positional and a keyword input
        loss = (h * h).sum()  # saves h outside the blocks
    loss.backward()
    assert census.saves == 2 * (2 + 2 + 2) + 2  # each block: x twice, y twice, z and the weight; h twice
    summary = census.summary()
    assert set(summary) == {"block 0", "block 1", "outside", "total"}
    for name in ("block 0", "block 1"):
        # x (the block's input), y and z: three distinct storages of 4x8 fp32; the weight is not an activation
        assert summary[name]["tensors"] == 3
        assert summary[name]["bytes"] == summary[name]["bytes_by_dtype"]["float32"] == 3 * 4 * 8 * 4
        assert summary[name]["hidden_numel"] == 32 and summary[name]["hidden_states"] == 3 * 4 * 8 * 4 / 64
        assert len(summary[name]["large_fp32"]) == 3
    assert summary["outside"]["tensors"] == 1 and summary["outside"]["bytes"] == 4 * 8 * 4
    assert census.excluded_bytes == 2 * 8 * 8 * 4
    assert summary["total"]["bytes"] == 7 * 4 * 8 * 4


@contextmanager
def _both(census: SavedTensorCensus):
    with census.watching(), census.recording():
        yield


def _wan_forward(hooks) -> None:
    """A tiny bf16 Wan's forward and backward (an input that needs grad, so every block saves), under `hooks`."""
    adapter = get_adapter("wan")
    model = adapter.build_tiny(seed=0, dtype=torch.bfloat16)
    latents = adapter.make_dummy_latents(model, 1, 3, 8, 8, seed=1).to(torch.bfloat16).requires_grad_(True)
    conds = adapter.make_dummy_conditions(model, 1, text_len=4, seed=2)
    with hooks(model, adapter):
        out = adapter.predict(model, latents, torch.tensor([500.0]), conds)
    out.float().square().mean().backward()


def test_census_total_equals_an_independent_count_of_distinct_storages():
    raw: list[torch.Tensor] = []
    params: set[int] = set()

    def record_all(model, adapter):
        params.update(p.untyped_storage().data_ptr() for p in model.parameters())
        return torch.autograd.graph.saved_tensors_hooks(lambda t: raw.append(t) or t, lambda t: t)

    _wan_forward(record_all)
    distinct = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in raw}
    independent = sum(n for ptr, n in distinct.items() if ptr not in params)
    censuses = []

    def record_census(model, adapter):
        censuses.append(SavedTensorCensus(adapter.blocks(model), exclude=list(model.parameters())))
        return _both(censuses[0])

    _wan_forward(record_census)
    census = censuses[0]
    assert census.saves == len(raw) and len(census.records) < len(raw)  # some tensors are saved more than once
    summary = census.summary()
    assert summary["total"]["bytes"] == independent > 0
    assert sum(summary[k]["bytes"] for k in ("block 0", "block 1", "outside")) == independent
    assert summary["block 0"]["tensors"] > 0 and summary["block 1"]["tensors"] > 0


def test_script_eager_and_compiled_census_of_the_tiny_wan(tmp_path):
    saved_activations.main(
        ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--compile", "--compile-backend", "aot_eager"]
    )
    rows = json.loads((tmp_path / "saved_activations.json").read_text())["rows"]
    eager, compiled = rows
    assert not eager["compile"] and compiled["compile"] and compiled["graphs"] > 0
    assert compiled["graphs_compiled_in_census"] == 0  # the warm-up's graphs were measured
    for row in rows:
        census = row["census"]
        assert row["checkpointed_blocks"] == 0 and row["lora_grads"] > 0
        assert set(census) == {"block 0", "block 1", "outside", "total"}
        for name in ("block 0", "block 1"):  # the hooks see what the compiled graphs save, block by block
            assert census[name]["tensors"] > 0 and census[name]["hidden_numel"] == 3 * 4 * 4 * 32
            assert census[name]["bytes"] == sum(census[name]["bytes_by_dtype"].values())
        assert census["total"]["bytes"] == sum(census[k]["bytes"] for k in ("block 0", "block 1", "outside"))
    for name in ("block 0", "block 1"):
        # diffusers' FP32LayerNorm (norm1, norm3) keeps its fp32 input, hidden_states.float(), for its backward
        norms = [t for t in eager["census"][name]["large_fp32"] if "normalization.py" in t["site"]]
        assert len(norms) >= 2 and all(t["numel"] == 3 * 4 * 4 * 32 and t["bytes"] == t["numel"] * 4 for t in norms)
    md = (tmp_path / "saved_activations.md").read_text()
    assert "| eager | block 0 |" in md and "| compiled (aot_eager) | total |" in md
