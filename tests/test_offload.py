"""Activation offload (train/offload.py) and weight streaming (train/weight_stream.py) on the CPU: the same loss and
LoRA gradients as the in-memory step, the hooks' packing, prefetch order and block window on CPU tensors."""

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

from tests.trainer_helpers import compose_config
from train.components import build_model
from train.config import validate
from train.offload import ActivationOffload
from train.weight_stream import BlockStreamer


def _step(*overrides: str, watch=None) -> tuple[float, dict[str, torch.Tensor], object]:
    """One forward + backward of the tiny Wan (2 blocks) with `overrides`; loss, LoRA gradients, the model parts."""
    cfg = validate(compose_config(["lora.rank=4", *overrides]))
    torch.manual_seed(0)
    parts = build_model(cfg, torch.device("cpu"))
    if watch is not None:
        watch(parts)
    latents = parts.adapter.make_dummy_latents(parts.transformer, 1, 3, 8, 8, seed=1)
    conds = parts.adapter.make_dummy_conditions(parts.transformer, 1, text_len=4, seed=2)
    loss = parts.adapter.predict(parts.transformer, latents, torch.tensor([500.0]), conds).square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in parts.transformer.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads, parts


@pytest.mark.parametrize(
    "settings",
    [
        ["train.offload_activations=true"],
        ["train.offload_activations=true", "train.checkpoint_blocks=1"],
        ["train.offload_activations=true", "train.save_attention=false"],
        ["train.offload_blocks=true"],
        ["train.offload_blocks=true", "train.checkpoint_blocks=1"],
        ["train.offload_blocks=true", "train.offload_activations=true"],
        ["train.offload_blocks=true", "model.storage_dtype=float8_e4m3fn"],  # the host copy is the fp8 storage
    ],
)
def test_offloaded_step_equals_the_in_memory_step(settings):
    extra = [s for s in settings if not s.startswith(("train.offload_", "model.offload"))]
    loss, grads, _ = _step(*extra)

    def every_tensor(parts):  # the tiny model's activations are all under MIN_BYTES
        if parts.offload is not None:
            parts.offload.min_bytes = 0

    loss_off, grads_off, parts = _step(*settings, watch=every_tensor)
    assert loss_off == loss
    assert grads_off.keys() == grads.keys() and grads
    for name in grads:
        assert torch.equal(grads_off[name], grads[name]), name
    if "train.offload_activations=true" in settings:
        assert parts.offload is not None and parts.offload.offloaded_bytes > 0
        assert parts.offload.prefetch_hits > 0  # the backward found tensors already copied back
    if "train.offload_blocks=true" in settings:
        assert parts.streamer is not None and parts.streamer.copies > 0
    if "model.storage_dtype=float8_e4m3fn" in settings:
        assert any(t.dtype == torch.float8_e4m3fn for t in parts.streamer.host.values())


def test_offload_packs_large_activations_and_prefetches_in_reverse():
    """CPU tensors stand in for device tensors: large ones go to distinct host storage, parameters and small ones
    stay; each unpack starts the copy of the tensor saved before it."""
    offload = ActivationOffload(torch.device("cpu"), min_bytes=64)
    weight = torch.nn.Parameter(torch.randn(16, 16))
    x = torch.randn(4, 16, requires_grad=True)
    with offload:
        h1 = torch.tanh(x @ weight)  # saves x (64 floats: packed) and weight (a Parameter: kept)
        h2 = torch.tanh(h1)  # saves h1's tanh output
        y = (h2 * torch.ones(1)).sum()  # the one-element factor is below min_bytes: kept
    assert len(offload.packed) >= 3
    assert all(p.host.data_ptr() != x.data_ptr() for p in offload.packed)
    assert offload.offloaded_bytes == sum(p.host.numel() * p.host.element_size() for p in offload.packed)
    y.backward()
    expected = torch.autograd.grad(torch.tanh(torch.tanh(x.detach().requires_grad_() @ weight)).sum(), weight)[0]
    assert torch.allclose(weight.grad, expected)
    assert all(p.used for p in offload.packed)
    assert offload.prefetch_hits == len(offload.packed) - 1  # every unpack but the first was prefetched


def test_offload_copies_a_tensor_saved_twice_once_and_reuses_host_buffers():
    """A tensor that several ops save (every checkpointed block saves the rotary tables) gets one host copy; the
    second step takes the first step's buffers from the pool (exact sizes, nothing new allocated)."""
    offload = ActivationOffload(torch.device("cpu"), min_bytes=64)
    weight = torch.nn.Parameter(torch.randn(16, 16))
    x = torch.randn(4, 16)

    def step():
        with offload:
            shared = x * 2  # saved by both products below
            y = ((shared @ weight) * shared).sum()
        packed = list(offload.packed)
        y.backward()
        return packed

    first = step()
    shared = x * 2
    assert torch.equal(weight.grad, torch.autograd.grad(((shared @ weight) * shared).sum(), weight)[0])
    grad = weight.grad.clone()
    held = offload.pool.allocated_bytes
    assert held == sum(p.host.numel() * p.host.element_size() for p in first)
    assert len(first) == 1 and held == 4 * 16 * 4  # `shared` (saved by the product and the matmul), copied once
    del first
    weight.grad = None
    step()
    assert torch.equal(weight.grad, grad)
    assert offload.pool.allocated_bytes == held  # reused, not allocated again


def test_streamer_holds_a_window_and_moves_frozen_weights_only():
    """On a CPU "device" the host copies are distinct tensors: after the build every streamed block points at its
    host copy; when a block runs (forward, and its recomputation in the backward, last block first) it is on the
    device with at most the one ahead of it in that direction."""
    seen = []

    def watch(parts):
        streamer = parts.streamer
        blocks = streamer.blocks
        for i, block in enumerate(blocks):

            def record(module, args, i=i):
                on_device = [
                    j
                    for j, ps in enumerate(streamer.params)
                    if ps and ps[0].data_ptr() != streamer.host[ps[0]].data_ptr()
                ]
                seen.append((i, on_device))

            block.register_forward_pre_hook(record)  # after the streamer's: what the block runs with
        assert all(
            p.data_ptr() == streamer.host[p].data_ptr() for ps in streamer.params for p in ps
        )  # released at start
        assert not any(p.requires_grad for ps in streamer.params for p in ps) and streamer.host_bytes() > 0

    _, _, parts = _step("train.offload_blocks=true", watch=watch)
    assert [i for i, _ in seen] == [0, 1, 1, 0]  # forward, then the recomputation last to first
    assert all(len(on) <= 2 and i in on for i, on in seen)
    lora = [p for p in parts.transformer.parameters() if p.requires_grad]
    assert lora and all(p.grad is not None for p in lora)


def test_streamer_keeps_blocks_that_are_not_checkpointed():
    blocks = [torch.nn.Linear(4, 4).requires_grad_(False) for _ in range(3)]
    blocks[0]._radial_recompute = False
    first = [StorageWeakRef(b.weight.untyped_storage()) for b in blocks]
    ptr0 = blocks[0].weight.data_ptr()
    streamer = BlockStreamer(blocks, torch.device("cpu"))
    assert not streamer.streamed(0) and streamer.streamed(1)
    # the streamed blocks' first copies are freed (on CUDA: the device memory the build gives back)
    assert [ref.expired() for ref in first] == [False, True, True]
    x = torch.randn(2, 4)
    for block in blocks:
        x = block(x)
    assert blocks[0].weight.data_ptr() == ptr0  # never swapped for its host copy
    streamer.remove()
    assert all(b._forward_pre_hooks == {} for b in blocks)


def test_offload_blocks_needs_checkpointing_and_lora():
    with pytest.raises(ValueError, match="train.offload_blocks=true .* needs train.mode=lora"):
        validate(compose_config(["train.offload_blocks=true", "train.gradient_checkpointing=false"]))


def test_offload_keeps_frozen_weights_that_linear_layers_save_as_views():
    """Every nn.Linear whose input needs a gradient saves its weight as `weight.t()`, a view, not the Parameter:
    it is the parameter's memory all the same, so it stays on the device (offloading it would copy the frozen weights
    to the host every forward and back every backward, and hold them twice)."""
    offload = ActivationOffload(torch.device("cpu"), min_bytes=64)
    layer = torch.nn.Linear(32, 32).requires_grad_(False)
    x = torch.randn(2, 8, 32, requires_grad=True)
    with offload:
        y = torch.tanh(layer(x)).sum()  # saves weight.t() (the linear) and the tanh output (2 x 8 x 32 floats)
    assert [tuple(p.host.shape) for p in offload.packed] == [(2, 8, 32)]
    assert offload.offloaded_bytes == 2 * 8 * 32 * 4
    y.backward()
    x2 = x.detach().requires_grad_()
    torch.tanh(layer(x2)).sum().backward()
    assert torch.equal(x.grad, x2.grad)


def test_offload_refuses_a_saved_tensor_changed_in_place():
    """saved_tensors_hooks switch off autograd's check that a saved tensor was not modified in place; the offload
    makes it itself (on CUDA the host copy runs later on a side stream and could read the modified values)."""
    x = torch.randn(64, requires_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):  # autograd alone
        h = torch.tanh(x)  # saves its output
        h.mul_(2)
        h.sum().backward()
    offload = ActivationOffload(torch.device("cpu"), min_bytes=64)
    with offload:
        h = torch.tanh(x)
    h.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


def test_offload_prefetches_the_large_input_of_each_checkpointed_block():
    """A checkpointed block's node unpacks its inputs in the forward's order (hidden states first, then the text
    states that every block saves): the hidden states of the block before must already be on their way when the
    backward reaches it, not only the small tensor saved just before them."""
    offload = ActivationOffload(torch.device("cpu"), min_bytes=64)
    weight = torch.nn.Parameter(torch.randn(32, 32))
    text = torch.randn(2, 32)  # 256 bytes: offloaded, one host copy for all blocks

    def block(h, text):
        return torch.tanh(h @ weight + text.sum(0))

    h = torch.randn(64, 32, requires_grad=True)  # 8 KiB hidden states
    with offload:
        for _ in range(3):
            h = torch.utils.checkpoint.checkpoint(block, h, text, use_reentrant=False)
    assert [tuple(s.packed.host.shape) for s in offload.saves] == [(64, 32), (2, 32)] * 3
    h.sum().backward()
    assert weight.grad is not None and all(s.used for s in offload.saves)
    assert offload.prefetch_hits == len(offload.saves) - 1  # every unpack but the first was prefetched


def test_accelerate_leaves_the_streamed_model_where_it_is(tmp_path, monkeypatch):
    """Guards the trainer's device placement under train.offload_blocks: Accelerate's prepare would call
    `model.to(device)`, copying every streamed weight back to the device at once (more than the card holds where
    streaming is needed); the model is left where build_model put it (found by the 2026-12-08 pre-flight review)."""
    from accelerate import Accelerator

    from tests.trainer_helpers import tiny_overrides
    from train.trainer import Trainer

    seen = []
    real = Accelerator.prepare

    def prepare(self, *args, device_placement=None):
        seen.append((type(args[0]).__name__, device_placement))
        return real(self, *args, device_placement=device_placement)

    monkeypatch.setattr(Accelerator, "prepare", prepare)
    overrides = tiny_overrides(tmp_path / "out", tmp_path / "data", steps=1)
    trainer = Trainer(validate(compose_config([*overrides, "train.offload_blocks=true"])))
    assert trainer.parts.streamer is not None
    assert ("WanTransformer3DModel", [False, None, None]) in seen
    Trainer(validate(compose_config([*overrides, f"output_dir={tmp_path / 'plain'}"])))
    assert seen[-1] == ("WanTransformer3DModel", None)


def test_several_processes_keep_accelerates_placement():
    """DDP refuses parameters on two device types (and DeepSpeed custom placement): only one process skips it."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from train.weight_stream import device_placement

    streamer = object()
    for kind in (DistributedType.MULTI_GPU, DistributedType.DEEPSPEED, DistributedType.FSDP):
        assert device_placement(SimpleNamespace(distributed_type=kind), streamer, 3) is None
    assert device_placement(SimpleNamespace(distributed_type=DistributedType.NO), None, 3) is None
    assert device_placement(SimpleNamespace(distributed_type=DistributedType.NO), streamer, 2) == [False, None]
