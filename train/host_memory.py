"""Page-locked host memory of the exact size asked for: the host side of weight streaming (train/weight_stream.py)
and activation offload (train/offload.py).

Why not `torch.empty(..., pin_memory=True)` / `Tensor.pin_memory()`: torch's CachingHostAllocator rounds every
pinned request up to a power of two (its `pinned_max_round_threshold` is unlimited by default) and keeps the rounded
block. For Wan2.1-14B that turns the 28.1 GB of block weights into 43.0 GB of pinned memory (a 141.6 MB feed-forward
matrix takes 256 MiB) and each 1.29 GB hidden state at 126k tokens into 2 GiB: together 134 GB, past a 128 GB host
(measured: the 14B step with both savers was killed by the OOM killer before its first step).
Here the memory is an anonymous mapping of the exact size (page aligned, returned to the system when freed), page-locked
in place with cudaHostRegister: torch sees it as pinned (`is_pinned()`), so copies from and to it are asynchronous
DMA. Without CUDA (the CPU tests) it is the same mapping, not page-locked.
"""

from __future__ import annotations

import mmap
import weakref
from collections import defaultdict

import torch

#: offsets of the tensors laid out in one buffer are multiples of this (DMA-friendly, any dtype's alignment)
ALIGN = 256


def _unregister(address: int) -> None:
    try:
        torch.cuda.synchronize()  # no copy from or to the range may still be in flight
        torch.cuda.cudart().cudaHostUnregister(address)
    except Exception:  # interpreter exit: CUDA may already be torn down, and the process frees the memory anyway
        pass


class HostBuffer:
    """`nbytes` of host memory as a uint8 tensor (`data`), page-locked when `pin`; unregistered when this object
    goes (views of `data` stay valid then: the memory lives as long as any of them, merely pageable)."""

    def __init__(self, nbytes: int, pin: bool) -> None:
        self.nbytes = nbytes
        self.pinned = False
        if nbytes == 0:
            self.data = torch.empty(0, dtype=torch.uint8)
            return
        # The tensor keeps the mapping alive (torch.frombuffer holds a reference to it). A shared mapping (mmap's
        # default): a forked data-loader worker shares its pages instead of copying the page-locked ones on write.
        self.data = torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.uint8)
        if pin:
            address = self.data.data_ptr()
            status = int(torch.cuda.cudart().cudaHostRegister(address, nbytes, 0))
            if status != 0:
                raise RuntimeError(
                    f"cudaHostRegister of {nbytes / 2**30:.2f} GiB of host memory failed (CUDA error {status}): "
                    "the host is out of page-lockable memory (see `ulimit -l`)"
                )
            self.pinned = True
            # a finaliser, not __del__: it runs before `data` is dropped, so the range is never freed while registered
            weakref.finalize(self, _unregister, address)

    def view(self, offset: int, like: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor of `like`'s shape and dtype at byte `offset` of this buffer."""
        nbytes = like.numel() * like.element_size()
        return self.data[offset : offset + nbytes].view(like.dtype).view(like.shape)


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def pack_to_host(tensors: list[torch.Tensor], pin: bool) -> tuple[HostBuffer, list[torch.Tensor]]:
    """Copy `tensors` into one exact-size host buffer (each at an ALIGN offset); the buffer and the host views."""
    buffer = HostBuffer(sum(aligned(t.numel() * t.element_size()) for t in tensors), pin)
    views, offset = [], 0
    for t in tensors:
        view = buffer.view(offset, t)
        view.copy_(t)
        views.append(view)
        offset += aligned(t.numel() * t.element_size())
    return buffer, views


class HostPool:
    """Exact-size host buffers reused by size: take() one, and it comes back to the pool when `owner` is collected.

    Reuse is safe for copies issued on one CUDA stream (stream order puts a reused buffer's next copy after the
    previous ones)."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.free: dict[int, list[HostBuffer]] = defaultdict(list)
        self.allocated_bytes = 0  # every buffer this pool made (the host memory it holds)

    def take(self, nbytes: int, owner: object) -> HostBuffer:
        """A buffer of exactly `nbytes`, returned to the pool once `owner` is garbage."""
        spare = self.free[nbytes]
        if spare:
            buffer = spare.pop()
        else:
            buffer = HostBuffer(nbytes, self.pin)
            self.allocated_bytes += nbytes
        weakref.finalize(owner, spare.append, buffer)
        return buffer
