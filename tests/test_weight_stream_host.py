"""Host memory of weight streaming (train/weight_stream.py, train/host_memory.py), on the CPU: building the streamer
keeps one copy of the streamed weights in their storage dtype on the host (plus at most one block while it moves),
in exact-size buffers, and leaves none of the weights' first copies behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from train.host_memory import ALIGN, HostPool, pack_to_host

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh process, so that ru_maxrss (the process's peak resident memory) starts below the build. The blocks
# are built on the CPU, as weights loaded from a file are; the "device" is meta, which takes no memory, so the host
# holds what a CUDA run holds there: the streamer's copy (and, during the build, what has not moved yet).
# MALLOC_MMAP_THRESHOLD_ (below) makes glibc return every freed weight to the system, as freeing device memory would.
_BUILD = """
import json, resource, sys, torch
from torch import nn
from train.weight_stream import BlockStreamer

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10

blocks, width = [], 1024
for _ in range(8):  # 8 blocks of 4 bf16 matrices 1024 x 3072: 24 MiB a block, 192 MiB in all
    shapes = [(width, 3 * width), (3 * width, width)] * 2
    layers = [nn.Linear(*shape, bias=False, dtype=torch.bfloat16) for shape in shapes]
    blocks.append(nn.Sequential(*layers).requires_grad_(False))
weights = sum(p.numel() * p.element_size() for b in blocks for p in b.parameters()) / 2**20
before, rss_before = peak_mb(), rss_mb()
streamer = BlockStreamer(blocks, torch.device("meta"))
on_host = all(p.data_ptr() == streamer.host[p].data_ptr() for ps in streamer.params for p in ps)
print(json.dumps({"weights": weights, "block": weights / len(blocks), "build_peak": peak_mb() - before,
                  "kept": rss_mb() - rss_before, "host_bytes": streamer.host_bytes() / 2**20, "on_host": on_host}))
"""


def test_streamer_build_holds_one_copy_of_the_weights_on_the_host():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
    done = subprocess.run([sys.executable, "-c", _BUILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads(done.stdout.strip().splitlines()[-1])
    assert m["on_host"] and m["weights"] == 8 * 24  # every weight now lives in the streamer's buffers
    # exact-size buffers: the weights and nothing more (each matrix's size is a multiple of ALIGN already)
    assert m["host_bytes"] == m["weights"], m
    # The build's peak rose by at most one block beyond the weights' first place (measured with this fix: about
    # one block; before it, every host copy was made before any weight moved: a whole second copy, 192 MiB).
    assert m["build_peak"] < 1.5 * m["block"] + 8, m
    # the first copies are gone: the process holds the same as before the build, give or take a block
    assert abs(m["kept"]) < m["block"], m


def test_packed_views_are_exact_and_aligned():
    tensors = [torch.randn(3, 5), torch.arange(7, dtype=torch.int16), torch.ones(2, 2, dtype=torch.bfloat16)]
    buffer, views = pack_to_host(tensors, pin=False)
    assert buffer.nbytes == 3 * ALIGN  # each tensor below ALIGN bytes starts at the next multiple of ALIGN
    base = buffer.data.data_ptr()
    for t, v in zip(tensors, views, strict=True):
        assert torch.equal(t, v) and v.dtype == t.dtype and v.is_contiguous()
        assert (v.data_ptr() - base) % ALIGN == 0 and base <= v.data_ptr() < base + buffer.nbytes


def test_pool_reuses_a_buffer_once_its_owner_is_gone():
    class Owner:
        pass

    pool = HostPool(pin=False)
    first_owner = Owner()
    first = pool.take(1000, first_owner)
    assert pool.take(1000, Owner()) is not first  # taken: a second one is made (its owner, gone, returns it)
    del first_owner
    again = [pool.take(1000, Owner()) for _ in range(2)]
    assert first in again and pool.allocated_bytes == 2000 and first.nbytes == 1000
