"""Batches for LatentDataset: BucketBatchSampler (one shape per batch, deterministic, split across data-parallel
ranks, exact resume), the data-parallel rank of a sequence-parallel group, and collate."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from data.dataset import LatentDataset, SampleRef
from radial.errors import DataError


def collate(samples: Sequence[dict]) -> dict:
    """Stack samples of one bucket: tensors gain a batch dim; "meta" is a list of dicts; "cursor" (from
    BucketBatchSampler) says which batch of which epoch this is, for `sampler.state_dict(after=batch)`."""
    if not samples:
        raise ValueError("collate: empty batch")
    batch: dict[str, Any] = {}
    for key, value in samples[0].items():
        if not isinstance(value, torch.Tensor):
            continue
        shapes = {tuple(s[key].shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(
                f"collate: {key} shapes differ within the batch {sorted(shapes)}; batch with BucketBatchSampler"
            )
        batch[key] = torch.stack([s[key] for s in samples])
    batch["meta"] = [s["meta"] for s in samples]
    cursors = [s.get("cursor") for s in samples]
    if cursors[0] is not None:
        batch["cursor"] = dict(cursors[0])
    return batch


def data_parallel_rank(rank: int, world_size: int, sp_degree: int = 1) -> tuple[int, int]:
    """(dp_rank, dp_world) for a global rank when consecutive groups of `sp_degree` ranks share one sample."""
    if sp_degree < 1 or world_size % sp_degree:
        raise ValueError(f"world size {world_size} is not a multiple of the sequence-parallel degree {sp_degree}")
    return rank // sp_degree, world_size // sp_degree


class BucketBatchSampler(Sampler):
    """Batches of one bucket (one shape), deterministic per (seed, epoch), split across data-parallel ranks.

    Each epoch: items of every bucket are shuffled, cut into global batches of batch_size * world_size, and the
    global batches of all buckets are shuffled together; rank r takes slice r of every global batch, so all ranks
    step through the same bucket at the same time and have the same number of batches. Ranks of one
    sequence-parallel group pass the same `rank` (see `data_parallel_rank`) and so receive the same samples.
    drop_last=True drops each bucket's incomplete remainder (different items every epoch); False fills it up with
    items of the same bucket, repeated.

    Iterating continues from the saved position; at the end of an epoch the next starts. Yields lists of
    `SampleRef`, which LatentDataset accepts as indices.
    """

    def __init__(
        self,
        dataset: LatentDataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.buckets = {k: list(v) for k, v in sorted(dataset.buckets.items())}
        self.fingerprint = dataset.fingerprint
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, int(seed), rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.global_batch_size = batch_size * world_size
        self.epoch, self.position = 0, 0
        gbs = self.global_batch_size
        if drop_last:
            small = {k: len(v) for k, v in self.buckets.items() if len(v) < gbs}
            if len(small) == len(self.buckets):
                raise DataError(
                    f"no bucket holds a full global batch of {gbs} (batch_size {batch_size} x {world_size} ranks); "
                    f"bucket sizes {small}; lower batch_size, or set drop_last=False (the trainer: data.drop_last=false) to "
                    "fill batches up with repeated items"
                )
            if small:
                warnings.warn(
                    f"buckets with fewer items than one global batch ({gbs}) are never sampled: {small}",
                    stacklevel=2,
                )
        self._num_batches = sum(len(v) // gbs if drop_last else math.ceil(len(v) / gbs) for v in self.buckets.values())

    def __len__(self) -> int:
        """Batches per epoch (each rank gets this many)."""
        return self._num_batches

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches (dataset indices), identical on every rank."""
        rng = np.random.default_rng([self.seed, epoch])
        gbs, batches = self.global_batch_size, []
        for items in self.buckets.values():
            idx = np.asarray(items, dtype=np.int64)
            if self.shuffle:
                idx = rng.permutation(idx)
            full = len(idx) // gbs
            batches += [idx[i * gbs : (i + 1) * gbs] for i in range(full)]
            rest = len(idx) - full * gbs
            if rest and not self.drop_last:
                batches.append(np.resize(np.concatenate([idx[full * gbs :], idx]), gbs))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (no-op if it is already the current epoch, e.g. after a resume)."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def __iter__(self) -> Iterator[list[SampleRef]]:
        epoch, batches = self.epoch, self.global_batches(self.epoch)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for b in range(self.position, len(batches)):
            self.position = b + 1
            yield [SampleRef(int(i), epoch, b) for i in batches[b][lo:hi]]
        self.epoch, self.position = epoch + 1, 0

    def state_dict(self, after: dict | None = None) -> dict:
        """The position to resume from. Without `after`: after the last batch this sampler handed out (exact
        when the DataLoader has no workers). With `after=batch` (a collated batch, or its "cursor"): right after
        that batch, exact whatever the DataLoader prefetched."""
        epoch, position = self.epoch, self.position
        if after is not None:
            cursor = after.get("cursor", after) if isinstance(after, dict) else None
            if not isinstance(cursor, dict) or "epoch" not in cursor or "batch" not in cursor:
                raise ValueError("state_dict(after=...): pass a batch from this sampler (it has a 'cursor')")
            epoch, position = int(cursor["epoch"]), int(cursor["batch"]) + 1
        if position >= self._num_batches:
            epoch, position = epoch + 1, 0
        return {
            "version": 1,
            "epoch": epoch,
            "position": position,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly. The seed, the global batch size (batch_size x world_size: the number of ranks may
        change if it stays the same), shuffle, drop_last and the dataset must be those of the saved run."""
        if state.get("version") != 1:
            raise ValueError(f"sampler state version {state.get('version')!r}, this code reads version 1")
        checks = {
            "fingerprint": (state.get("fingerprint"), self.fingerprint, "the dataset (items or order) changed"),
            "seed": (state.get("seed"), self.seed, "a different seed gives a different order"),
            "global_batch_size": (
                state.get("global_batch_size"),
                self.global_batch_size,
                "batch_size x world_size must stay the same to resume exactly",
            ),
            "shuffle": (state.get("shuffle"), self.shuffle, ""),
            "drop_last": (state.get("drop_last"), self.drop_last, ""),
        }
        for name, (saved, now, why) in checks.items():
            if saved != now:
                raise ValueError(f"sampler state: {name} was {saved!r}, now {now!r}" + (f" ({why})" if why else ""))
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
