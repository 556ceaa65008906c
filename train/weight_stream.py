"""Weight streaming, model.offload_blocks: the frozen weights of the checkpointed transformer blocks live in (pinned)
host memory and are copied to the device one block ahead of use, host-to-device only (the base never changes in
LoRA training), so the device holds the LoRA parameters, their optimizer state and a window of blocks.

Why not diffusers' group offloading (`apply_group_offloading(..., offload_type="block_level")`, read in diffusers
0.42 hooks/group_offloading.py): it is written for inference and breaks training three ways.
- It moves every parameter of a block, the trainable LoRA weights included: without a stream `offload_` moves them
  to the CPU (AdamW then steps parameters on the CPU with gradients on the device); with a stream it restores each
  parameter from the pinned copy taken when the hooks were applied, which throws the optimizer's updates away.
- It offloads a block right after its forward. A block that is not checkpointed still needs its weights in its
  backward (autograd saved the weight Parameters themselves, whose `.data` the offload swaps for the CPU copy).
- Its prefetch follows the forward's order: under checkpointing the backward recomputes blocks last to first, so
  each recomputation prefetches the block after it, which was already done and is never offloaded again during
  that backward: every block ends up on the device at once.
Here only frozen parameters move; a block is released when the next block in the direction of travel starts
(forward: the next one; backward, whose recomputation runs the blocks last to first: the previous one), by which
time every backward node that needed its weights has run (the next block's gradient needs all of them); blocks
that are not checkpointed stay on the device (their backward uses the weights autograd kept). It composes with
model.storage_dtype: the host copy is the fp8 storage; diffusers' layerwise casting upcasts inside each layer.

Host memory: each block's frozen weights go to one exact-size page-locked buffer (train/host_memory.py; torch's
pinned allocator would round each weight up to a power of two: 43 GB instead of 28 GB for Wan2.1-14B), one block
at a time, the block's first copy released before the next block is copied: building the streamer needs one copy
of the streamed weights in their storage dtype on the host plus at most one block besides it, wherever they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from radial.checkpointing import RECOMPUTE_ATTR
from train.host_memory import HostBuffer, pack_to_host


def _in_backward() -> bool:
    """Whether the autograd engine is running a backward on this thread (checkpointing's recomputation does)."""
    return torch._C._current_graph_task_id() != -1


class BlockStreamer:
    """Streams the frozen weights of `blocks` (see the module docstring); `window` blocks are prefetched ahead."""

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device, window: int = 1) -> None:
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.window = window
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.params = [[p for p in b.parameters() if not p.requires_grad] for b in self.blocks]
        self.host: dict[nn.Parameter, torch.Tensor] = {}  # each frozen weight's view into its block's buffer
        self.buffers: list[HostBuffer] = []
        self.pending: dict[int, torch.cuda.Event | None] = {}  # blocks copied (or being copied) to the device
        for i, ps in enumerate(self.params):  # block by block: at most one block has two copies at a time
            buffer, views = pack_to_host([p.data for p in ps], pin=self.cuda)
            self.buffers.append(buffer)
            self.host.update(zip(ps, views, strict=True))
            self._release(i)
        self.copies = 0  # host -> device block copies so far (tests, benchmarks)
        self.handles = []
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(self._before_hook(i)))

    def streamed(self, i: int) -> bool:
        """Block i is streamed while it is checkpointed (a block that keeps its activations keeps its weights)."""
        return getattr(self.blocks[i], RECOMPUTE_ATTR, True)

    def host_bytes(self) -> int:
        """The host memory the streamer holds: its blocks' buffers (the weights, each at an aligned offset)."""
        return sum(b.nbytes for b in self.buffers)

    def _on_host(self, i: int) -> bool:
        return all(p.data.data_ptr() == self.host[p].data_ptr() for p in self.params[i])

    def _release(self, i: int) -> None:
        if not self.streamed(i):
            return
        for p in self.params[i]:
            if p.data.data_ptr() != self.host[p].data_ptr():
                p.data = self.host[p]
        self.pending.pop(i, None)

    def _load(self, i: int) -> None:
        """Start copying block i to the device (on the side stream on CUDA), unless it is there already."""
        if i in self.pending or not 0 <= i < len(self.blocks):
            return
        if self.params[i] and not self._on_host(i):  # e.g. after Accelerate's model.to(device)
            self.pending[i] = None
            return
        self.copies += 1
        if not self.cuda:
            for p in self.params[i]:
                p.data = self.host[p].to(self.device, copy=True)
            self.pending[i] = None
            return
        with torch.cuda.stream(self.stream):
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            for p in self.params[i]:
                p.data = self.host[p].to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.pending[i] = done

    def _wait(self, i: int) -> None:
        done = self.pending.get(i)
        if done is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for p in self.params[i]:
            p.data.record_stream(current)  # freed on release only once the compute stream is past its kernels
        self.pending[i] = None

    def _before_hook(self, i: int):
        @torch.compiler.disable  # moves storage between devices: outside any compiled graph (train.compile)
        def hook(module, args):
            # Runs inside the checkpointed region: the copies must not be seen (and replayed or cached) by
            # selective checkpointing's dispatch mode, nor recorded by autograd.
            with _disable_current_modes(), torch.no_grad():
                self._before(i)

        return hook

    def _before(self, i: int) -> None:
        step = -1 if _in_backward() else 1
        ahead = {i + step * k for k in range(1, self.window + 1)}
        for j in range(len(self.blocks)):  # done ones, and anything else on the device (Accelerate's model.to)
            if j != i and j not in ahead:
                self._release(j)
        self._load(i)
        self._wait(i)
        for j in sorted(ahead):
            self._load(j)

    def remove(self) -> None:
        """Take the hooks off and bring every block back to the device."""
        for handle in self.handles:
            handle.remove()
        for ps in self.params:
            for p in ps:
                p.data = self.host[p].to(self.device, copy=True)
        self.host.clear()
        self.buffers.clear()


def device_placement(accelerator, streamer: BlockStreamer | None, count: int) -> list[bool | None] | None:
    """Accelerate's `prepare(model, *others, device_placement=...)` for a model whose block weights stream, in one
    process: the model is not moved (its `.to(device)` would copy every streamed weight back to the device at once,
    more than the card holds where streaming is needed); the `count - 1` other objects as Accelerate decides.
    None (Accelerate places everything): no streamer, or several processes. DistributedDataParallel refuses a module
    whose parameters are on two device types and broadcasts them all when it wraps, DeepSpeed and Megatron-LM refuse
    custom placement: there the model is placed whole and the first forward releases the streamed blocks."""
    from accelerate.utils import DistributedType

    if streamer is None or accelerator.distributed_type != DistributedType.NO:
        return None
    return [False] + [None] * (count - 1)
