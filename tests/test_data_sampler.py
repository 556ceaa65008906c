"""BucketBatchSampler: one shape per batch, deterministic, split across ranks, SP groups, exact resume."""

import pickle
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from data import BucketBatchSampler, LatentDataset, collate, data_parallel_rank
from data.encoders.base import TextField
from data.latents import make_latent_norm
from data.shards import ShardWriter, build_index

BUCKETS = {(17, 32, 32): 11, (33, 32, 32): 7, (17, 32, 64): 5}


def make_dataset(root, buckets=BUCKETS, items_per_shard=4, prefix="item"):
    """A wan-shaped dataset written straight through the shard writer (no videos, no encoders: fast)."""
    text = TextField("prompt_embeds", 8, 16, "prompt_attention_mask")
    header = {
        "model": "wan",
        "latent_channels": 16,
        "temporal_factor": 4,
        "spatial_factor": 8,
        "latent_dtype": "float32",
        "text_dtype": "float32",
        "latent_norm": make_latent_norm("wan", [0.0] * 16, [1.0] * 16),
        "text_fields": {"prompt_embeds": text.to_json()},
        "encoders": {"family": "wan", "source": "test"},
        "latent_sample": "mode",
    }
    writer = ShardWriter(root, header, items_per_shard, prefix="t")
    n = 0
    for (frames, h, w), count in buckets.items():
        for _ in range(count):
            shape = [16, (frames - 1) // 4 + 1, h // 8, w // 8]
            record = {
                "key": f"{prefix}{n:03d}",
                "source": f"v{n}.mp4",
                "caption": f"caption {n}",
                "clip": 0,
                "frames": frames,
                "fps": 16.0,
                "height": h,
                "width": w,
                "latent_shape": shape,
                "text_lens": {"prompt_embeds": 1 + n % 16},
            }
            tensors = {"latents": torch.full(shape, float(n)), "prompt_embeds": torch.full((1 + n % 16, 8), float(n))}
            writer.add(record, tensors)
            n += 1
    writer.flush()
    build_index(root)
    return LatentDataset(root, model="wan")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("sampler"))


def ids(batch):
    return [r.index for r in batch]


def test_batches_have_one_bucket_and_cover_the_epoch(ds):
    s = BucketBatchSampler(ds, batch_size=2, seed=0)
    epoch = list(s)
    assert len(epoch) == len(s) == 5 + 3 + 2  # floor(11/2) + floor(7/2) + floor(5/2)
    for batch in epoch:
        assert len({ds.bucket_of(i) for i in ids(batch)}) == 1
    used = [i for b in epoch for i in ids(b)]
    assert len(set(used)) == len(used) == 20  # 3 remainders dropped
    assert {ds.bucket_of(i) for i in used} == set(BUCKETS)


def test_deterministic_per_seed_and_epoch(ds):
    a, b = BucketBatchSampler(ds, 2, seed=1), BucketBatchSampler(ds, 2, seed=1)
    e0a, e0b = [ids(x) for x in a], [ids(x) for x in b]
    assert e0a == e0b
    e1a = [ids(x) for x in a]  # the next iteration is the next epoch
    assert e1a != e0a and a.epoch == 2
    assert [ids(x) for x in BucketBatchSampler(ds, 2, seed=2)] != e0a
    unshuffled = BucketBatchSampler(ds, 2, seed=5, shuffle=False)
    assert ids(next(iter(unshuffled))) == [0, 1]


@pytest.mark.filterwarnings("ignore:buckets with fewer items")
def test_ranks_split_global_batches_and_sp_groups_share(ds):
    world = 3
    per_rank = [[ids(b) for b in BucketBatchSampler(ds, 2, seed=3, rank=r, world_size=world)] for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == 1 + 1 + 0  # 11//6, 7//6, 5//6
    for step in zip(*per_rank, strict=True):
        flat = [i for batch in step for i in batch]
        assert len(set(flat)) == len(flat)  # disjoint across ranks
        assert len({ds.bucket_of(i) for i in flat}) == 1  # every rank steps through the same bucket
    # 6 GPUs with sequence parallelism 2: ranks (0,1), (2,3), (4,5) get the same samples.
    got = []
    for rank in range(6):
        dp_rank, dp_world = data_parallel_rank(rank, 6, sp_degree=2)
        got.append([ids(b) for b in BucketBatchSampler(ds, 2, seed=3, rank=dp_rank, world_size=dp_world)])
    assert got[0] == got[1] and got[2] == got[3] and got[4] == got[5] and got[0] != got[2]
    with pytest.raises(ValueError, match="world size 6 is not a multiple of the sequence-parallel degree 4"):
        data_parallel_rank(0, 6, 4)


def _run(sampler, n):
    out, it = [], None
    while len(out) < n:
        if it is None:
            it = iter(sampler)
        try:
            out.append(ids(next(it)))
        except StopIteration:
            it = None
    return out


def test_exact_resume_mid_epoch_and_across_epochs(ds):
    reference = _run(BucketBatchSampler(ds, 2, seed=7), 25)  # 2.5 epochs
    for cut in (0, 4, 9, 10, 13):
        s = BucketBatchSampler(ds, 2, seed=7)
        first = _run(s, cut)
        state = s.state_dict()
        resumed = BucketBatchSampler(ds, 2, seed=7)
        resumed.load_state_dict(state)
        assert first + _run(resumed, 25 - cut) == reference, cut


def test_exact_resume_with_a_prefetching_dataloader(ds):
    def loader(sampler):
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2, prefetch_factor=2)

    reference = [[m["index"] for m in b["meta"]] for b in loader(BucketBatchSampler(ds, 2, seed=4))]
    s = BucketBatchSampler(ds, 2, seed=4)
    consumed = []
    for batch in loader(s):
        consumed.append([m["index"] for m in batch["meta"]])
        if len(consumed) == 4:
            state = s.state_dict(after=batch)  # the loader has prefetched further; the cursor knows where we are
            break
    assert s.state_dict()["position"] > 4  # the naive state is ahead
    resumed = BucketBatchSampler(ds, 2, seed=4)
    resumed.load_state_dict(state)
    rest = [[m["index"] for m in b["meta"]] for b in loader(resumed)]
    assert consumed + rest == reference


def test_resume_with_another_world_size_but_the_same_global_batch(ds):
    full = [ids(b) for b in BucketBatchSampler(ds, 4, seed=9)]
    parts = [[ids(b) for b in BucketBatchSampler(ds, 2, seed=9, rank=r, world_size=2)] for r in range(2)]
    assert [a + b for a, b in zip(parts[0], parts[1], strict=True)] == full
    s = BucketBatchSampler(ds, 4, seed=9)
    _run(s, 3)
    state = s.state_dict()
    halves = []
    for r in range(2):
        t = BucketBatchSampler(ds, 2, seed=9, rank=r, world_size=2)
        t.load_state_dict(state)
        halves.append([ids(b) for b in t])
    assert [a + b for a, b in zip(*halves, strict=True)] == full[3:]


def test_load_state_dict_refuses_mismatches(ds, tmp_path):
    state = BucketBatchSampler(ds, 2, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed was 1, now 2"):
        BucketBatchSampler(ds, 2, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch_size was 2, now 4 \\(batch_size x world_size"):
        BucketBatchSampler(ds, 2, seed=1, world_size=2).load_state_dict(state)
    other = make_dataset(tmp_path / "other", {(17, 32, 32): 12})
    with pytest.raises(ValueError, match="fingerprint .*the dataset \\(items or order\\) changed"):
        BucketBatchSampler(other, 2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="pass a batch from this sampler"):
        BucketBatchSampler(ds, 2).state_dict(after={"latents": None})


def test_drop_last_false_fills_remainders_from_the_same_bucket(ds):
    s = BucketBatchSampler(ds, 4, seed=0, drop_last=False)
    epoch = [ids(b) for b in s]
    assert len(epoch) == len(s) == 3 + 2 + 2
    assert set(i for b in epoch for i in b) == set(range(len(ds)))
    for b in epoch:
        assert len(b) == 4 and len({ds.bucket_of(i) for i in b}) == 1


def test_small_buckets_warn_or_fail(ds):
    with pytest.warns(UserWarning, match="never sampled: \\{\\(17, 32, 64\\): 5\\}"):
        BucketBatchSampler(ds, 6)
    with pytest.raises(ValueError, match="no bucket holds a full global batch of 24"):
        BucketBatchSampler(ds, 12, world_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BucketBatchSampler(ds, 12, world_size=2, drop_last=False)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        BucketBatchSampler(ds, 1, rank=2, world_size=2)


def test_items_and_collate(ds):
    item = ds[3]
    assert item["latents"].shape == (16, 5, 4, 4) and float(item["latents"][0, 0, 0, 0]) == 3.0
    assert item["prompt_embeds"].shape == (16, 8) and int(item["prompt_attention_mask"].sum()) == 4
    assert item["prompt_embeds"][4:].abs().sum() == 0 and item["meta"]["caption"] == "caption 3"
    batch = collate([ds[0], ds[1]])
    assert batch["latents"].shape == (2, 16, 5, 4, 4) and "cursor" not in batch
    with pytest.raises(ValueError, match="latents shapes differ within the batch"):
        collate([ds[0], ds[len(ds) - 1]])
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a copy without open file handles
    assert torch.equal(clone[5]["latents"], ds[5]["latents"])
