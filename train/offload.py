"""Activation offload, train.offload_activations: the tensors autograd keeps between forward and backward go to
(pinned) host memory during the forward and come back, one ahead, during the backward.

Built on `torch.autograd.graph.saved_tensors_hooks`, which sees every saved tensor, including the inputs that
non-reentrant gradient checkpointing keeps per block (torch.utils.checkpoint saves them as saved tensors, so outer
hooks apply). Why not `torch.autograd.graph.save_on_cpu(pin_memory=True)` as is:
- it copies device -> host on the compute stream, so every copy delays the kernels queued behind it; here the copy
  runs on a side stream that waits only for the tensor's producer;
- it moves every saved tensor, parameters included (the frozen weights would cross PCIe every step and double in
  host memory); here parameters (and their views: the transposed weight each linear layer saves) and small tensors
  stay where they are;
- it copies back only when the backward asks, on the critical path; here each unpack also starts the copies of the
  tensors saved before it, as many bytes as it hands out (the backward's next needs, saved tensors being used in
  about reverse order, node by node).
Host memory: each offloaded tensor is copied into an exact-size page-locked buffer from a pool reused step after step
(train/host_memory.py: torch's pinned allocator rounds each request up to a power of two, 2 GiB for a 1.29 GB
Wan2.1-14B hidden state at 126k tokens), and a tensor saved again within one forward (the rotary tables and text
states that every checkpointed block saves as its inputs) is copied once.
Not covered: the attention outputs that selective checkpointing keeps (train.save_attention) live in
torch.utils.checkpoint's own cache, not in saved tensors; they stay on the device (the memory planner counts them).
On a CPU the "host" is the CPU too: packing copies (the CPU tests exercise the same pack / unpack / prefetch logic).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from train.host_memory import HostPool

#: saved tensors smaller than this stay on the device (scales, LSEs, indices: copying costs more than they free)
MIN_BYTES = 1 << 20


@dataclass
class _Packed:
    """One offloaded tensor: its host copy, where it came from, and (once prefetched) its copy back."""

    device: torch.device
    source: weakref.ref = field(repr=False)  # the device tensor, to recognise it when it is saved again
    version: int = 0  # its version counter then: an in-place change since makes it another tensor
    host: torch.Tensor | None = None
    ready: torch.cuda.Event | None = None  # the device -> host copy is complete
    back: torch.Tensor | None = None  # prefetched device copy, handed out once
    back_ready: torch.cuda.Event | None = None
    used: bool = False


@dataclass
class _Save:
    """One save of a tensor, as autograd holds it: the (shared) host copy and the save's place in the forward's order
    of saves, by which the backward prefetches."""

    packed: _Packed
    position: int
    used: bool = False


class ActivationOffload(torch.autograd.graph.saved_tensors_hooks):
    """saved_tensors_hooks that keep large activations of `device` in host memory (pinned on CUDA), copied on a side
    stream and prefetched during the backward; re-entered for every forward (a fresh set of packed tensors)."""

    def __init__(self, device: torch.device, min_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        self.min_bytes = MIN_BYTES if min_bytes is None else min_bytes
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.pool = HostPool(pin=self.cuda)
        self.packed: list[_Packed] = []  # the host copies, one per tensor
        self.saves: list[_Save] = []
        self.by_id: dict[int, _Packed] = {}  # id(device tensor) -> its packed copy, this forward
        self.offloaded_bytes = 0
        self.prefetch_hits = 0
        super().__init__(self._pack, self._unpack)

    def __enter__(self):
        self.packed, self.saves, self.by_id, self.offloaded_bytes, self.prefetch_hits = [], [], {}, 0, 0
        return super().__enter__()

    def _pack(self, tensor: torch.Tensor):
        if (
            # a parameter, or a view of one: every nn.Linear saves `weight.t()`, the parameter's own memory
            isinstance(tensor, nn.Parameter)
            or isinstance(tensor._base, nn.Parameter)
            or tensor.device.type != self.device.type
            or tensor.layout != torch.strided
            or tensor.numel() * tensor.element_size() < self.min_bytes
        ):
            return tensor
        seen = self.by_id.get(id(tensor))
        if seen is not None and seen.source() is tensor and seen.version == tensor._version:
            return self._saved(seen)  # saved again (every block's checkpoint saves the rotary tables): one host copy
        item = _Packed(tensor.device, weakref.ref(tensor), tensor._version)
        # the buffer returns to the pool when the item goes (the autograd graph that holds it is freed)
        item.host = self._to_host(tensor, self.pool.take(tensor.numel() * tensor.element_size(), item).view(0, tensor))
        self.by_id[id(tensor)] = item
        if self.cuda:
            item.ready = torch.cuda.Event()
            item.ready.record(self.stream)
        self.packed.append(item)
        self.offloaded_bytes += tensor.numel() * tensor.element_size()
        return self._saved(item)

    def _saved(self, item: _Packed) -> _Save:
        self.saves.append(_Save(item, len(self.saves)))
        return self.saves[-1]

    def _to_host(self, tensor: torch.Tensor, host: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return host.copy_(tensor)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(tensor, non_blocking=True)
        tensor.record_stream(self.stream)  # not reused by the allocator before the copy has read it
        return host

    def _to_device(self, item: _Packed) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        if not self.cuda:
            return item.host.to(item.device, copy=True), None
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(item.ready)
            back = item.host.to(item.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        return back, done

    def _unpack(self, save):
        if not isinstance(save, _Save):
            return save
        item = save.packed
        source = item.source()
        # autograd's own check is off under saved_tensors_hooks; on CUDA the host copy, made later on the side stream,
        # could have read the values written in place
        if source is not None and source._version != item.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace operation: "
                f"a {tuple(source.shape)} {source.dtype} tensor offloaded at version {item.version} is now at version "
                f"{source._version} (train.offload_activations)"
            )
        if item.back is not None:
            tensor, done = item.back, item.back_ready
            item.back = item.back_ready = None
            self.prefetch_hits += 1
        else:
            tensor, done = self._to_device(item)
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            tensor.record_stream(current)
        item.used = save.used = True
        self._prefetch_before(save.position, tensor.numel() * tensor.element_size())
        return tensor

    def _prefetch_before(self, position: int, nbytes: int) -> None:
        """Start copying back the latest saves before `position` that the backward has not used yet, until `nbytes`
        (the tensor just handed out) are on their way. Not just the one save before: a node unpacks its saved tensors
        in the forward's order (a checkpointed block: its hidden states, then the text states and tables every block
        saves), so the save just before a block's hidden states is a small one of the block before, whose hidden
        states come next."""
        ahead = 0
        for i in range(position - 1, -1, -1):
            save = self.saves[i]
            if save.used:
                continue
            if save.packed.back is None:
                save.packed.back, save.packed.back_ready = self._to_device(save.packed)
            ahead += save.packed.host.numel() * save.packed.host.element_size()
            if ahead >= nbytes:
                return


def enable_activation_offload(module: nn.Module, device: torch.device) -> ActivationOffload:
    """Run `module`'s forward under an ActivationOffload (its saved tensors offloaded); returns it (its counters)."""
    offload = ActivationOffload(device)
    forward = module.forward

    @functools.wraps(forward)
    def offloaded_forward(*args, **kwargs):
        with offload:
            return forward(*args, **kwargs)

    module.forward = offloaded_forward
    return offload
