"""Regional compilation (train.compile): the same loss and gradients as eager, recompiles counted and bounded.

The CPU runs use the `aot_eager` backend (dynamo + AOTAutograd with its partitioner and checkpointing, no code
generation): inductor works on this CPU but takes minutes per graph on a loaded 2-core machine. `eager` (dynamo
only) is enough to count recompiles.
"""

import gc

import torch

from radial.compile import CompileWatch, compile_blocks, graph_count, without_ddp_optimizer
from radial.models import get_adapter
from tests.trainer_helpers import compose_config
from train.components import build_model
from train.config import validate
from train.flow import FlowMatching
from train.step import flow_matching_loss, input_dtype


def compiled_step(
    compile_backend: str | None,
    *extra: str,
    device: str = "cpu",
    frames: int = 3,
    size: int = 8,
    record: dict | None = None,
    **tiny,
):
    """Loss and gradients of one bf16-autocast LoRA step of a tiny Wan built by the trainer's `build_model` (with
    `extra` overrides; `tiny`: the tiny config's overrides), compiled with `compile_backend` (None: eager).
    `record` (CUDA) receives the model parts, the device memory the build added and the step's peak above what was
    allocated before the build (bytes): differences, so that what earlier steps left (a caller keeping their parts,
    garbage of reference cycles not yet collected) does not count."""
    torch._dynamo.reset()
    if record is not None:
        gc.collect()  # hooks make reference cycles: an earlier step's model may still be waiting for the collector
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    overrides = ["train.save_attention=true", "train.mixed_precision=bf16", *extra]
    if compile_backend:
        overrides += ["train.compile=true", f"train.compile_backend={compile_backend}"]
    cfg = validate(compose_config(overrides))
    torch.manual_seed(0)
    dev = torch.device(device)
    transformer = get_adapter("wan").build_tiny(seed=cfg.seed, device=dev, **tiny) if tiny else None
    parts = build_model(cfg, dev, transformer=transformer)
    model = parts.transformer
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: give the LoRA path a gradient into A as well
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    latents = parts.adapter.make_dummy_latents(model, 1, frames, size, size, seed=1).to(dev)
    conds = {k: v.to(dev) for k, v in parts.adapter.make_dummy_conditions(model, 1, text_len=4, seed=2).items()}
    if record is not None:
        torch.cuda.synchronize()
        record.update(parts=parts, built=torch.cuda.memory_allocated() - before)
        torch.cuda.reset_peak_memory_stats()
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        loss = flow_matching_loss(
            parts.adapter, model, FlowMatching(), latents, conds, torch.Generator().manual_seed(3), input_dtype(model)
        )
    loss.backward()
    if record is not None:
        torch.cuda.synchronize()
        record["peak"] = torch.cuda.max_memory_allocated() - before
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_compiled_blocks_give_the_eager_loss_and_gradients():
    eager_loss, eager_grads = compiled_step(None)
    loss, grads = compiled_step("aot_eager")
    assert graph_count() > 0  # the blocks did run compiled
    # Bitwise: aot_eager generates no code and runs the same aten ops in eager's order (measured: 0 difference in
    # the loss and every gradient, torch 2.13 CPU). The gradients are ~1e-3, so the former rtol 2e-2 / atol 1e-4
    # would have let a tenth of a gradient go wrong; inductor (GPU test) rounds elsewhere and keeps a tolerance.
    torch.testing.assert_close(loss, eager_loss, rtol=0, atol=0)
    assert grads.keys() == eager_grads.keys() and any("lora_A" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=0, atol=0, msg=name)


def test_recompiles_are_logged_and_bounded_across_layouts():
    torch._dynamo.reset()
    adapter = get_adapter("wan")
    model = adapter.build_tiny(seed=0)
    assert compile_blocks(adapter.blocks(model), backend="eager") == 2
    conds = adapter.make_dummy_conditions(model, 1, text_len=4, seed=2)
    watch = CompileWatch()
    lines = []
    for frames in (2, 2, 3, 4, 5):
        latents = adapter.make_dummy_latents(model, 1, frames, 8, 8, seed=frames)
        with torch.no_grad():
            adapter.predict(model, latents, torch.tensor([500.0]), conds)
        lines.append(watch.check(f"{frames}x4x4"))
    assert lines[0].startswith("compile: ") and "compiled for layout 2x4x4" in lines[0]
    assert lines[1] is None  # the same layout: no new graph
    assert "recompiled" in lines[2] and "recompile_limit" in lines[2]
    assert lines[3:] == [None, None]  # dynamic shapes from the second layout on


def test_ddp_optimizer_is_turned_off_with_one_log_line():
    """Under DDP the trainer turns dynamo's DDP optimizer off (its graph split fails on checkpointed block graphs;
    tests/test_compile_parallel.py runs DDP)."""
    # torch's own patch restores the setting (pytest's monkeypatch deletes it on undo, which hides the key from
    # dynamo for the rest of the process)
    with torch._dynamo.config.patch(optimize_ddp=True):
        line = without_ddp_optimizer()
        assert line.startswith("compile: ") and "optimize_ddp=False" in line
        assert torch._dynamo.config.optimize_ddp is False
        assert without_ddp_optimizer() is None  # already off: nothing to log
    assert torch._dynamo.config.optimize_ddp is True  # restored for the tests after this one
