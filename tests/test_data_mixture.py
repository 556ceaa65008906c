"""Several prepared datasets with repeats, and seeded caption dropout: exact under resume and loader workers."""

from collections import Counter

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from data import BucketBatchSampler, LatentDataset, collate
from data.shards import EMPTY_PROMPT_FILE
from tests.test_data_sampler import make_dataset
from tests.trainer_helpers import compose_config
from train.config import validate


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    make_dataset(a, buckets={(17, 32, 32): 4}, prefix="a")
    make_dataset(b, buckets={(17, 32, 32): 2, (33, 32, 32): 2}, prefix="b")
    return a, b


def test_repeats_weight_each_dataset_per_epoch(roots):
    ds = LatentDataset(list(roots), model="wan", repeats=[1, 3])
    sampler = BucketBatchSampler(ds, batch_size=2, seed=0)
    draws = Counter(ds.records[r.index]["key"][0] for batch in sampler for r in batch)
    assert draws == {"a": 4, "b": 12} and len(sampler) == 8
    assert ds.fingerprint != LatentDataset(list(roots), model="wan").fingerprint  # resume checks the repeats
    with pytest.raises(ValueError, match="repeats"):
        LatentDataset(list(roots), model="wan", repeats=[1])


def _texts(ds, sampler, workers=0):
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
    out = []
    for batch in loader:
        out += [(m["key"], m["caption_dropped"]) for m in batch["meta"]]
        dropped = torch.tensor([m["caption_dropped"] for m in batch["meta"]])
        kept = batch["prompt_embeds"][~dropped]
        assert (batch["prompt_embeds"][dropped][:, :3] == 7).all()  # the empty prompt's states, 3 tokens
        assert (batch["prompt_attention_mask"][dropped].sum(-1) == 3).all()
        assert not (kept == 7).all(-1).any()
        if len(out) >= 24:
            break
    return out


def test_caption_dropout_is_seeded_per_draw(roots, tmp_path):
    a, _ = roots
    save_file({"prompt_embeds": torch.full((3, 8), 7.0)}, str(a / EMPTY_PROMPT_FILE))
    try:
        ds = LatentDataset(a, model="wan", caption_dropout=0.5, seed=3)
        first = _texts(ds, BucketBatchSampler(ds, batch_size=2, seed=3))
        again = _texts(ds, BucketBatchSampler(ds, batch_size=2, seed=3), workers=2)
        assert first == again and 0 < sum(d for _, d in first) < len(first)
        # resumed mid-epoch: the same draws drop
        sampler = BucketBatchSampler(ds, batch_size=2, seed=3)
        it = iter(DataLoader(ds, batch_sampler=sampler, collate_fn=collate))
        batch = next(it)
        state = sampler.state_dict(after=batch)
        resumed = BucketBatchSampler(ds, batch_size=2, seed=3)
        resumed.load_state_dict(state)
        assert _texts(ds, resumed)[:10] == first[2:12]
        sample = ds[0]
        assert not sample["meta"]["caption_dropped"]  # plain indexing (validation) never drops
    finally:
        (a / EMPTY_PROMPT_FILE).unlink()
    zeros = LatentDataset(a, model="wan", caption_dropout=0.9, seed=0)  # older datasets: zero states
    assert zeros.empty_prompt["prompt_embeds"].shape == (1, 8) and not zeros.empty_prompt["prompt_embeds"].any()


@pytest.mark.parametrize(
    "override, match",
    [
        ("data.caption_dropout=1.0", "data.caption_dropout"),
        ("data.caption_dropout=-0.1", "data.caption_dropout"),
        ("data.datasets=[{root:/x,repeats:0}]", r"data.datasets\[0\].repeats"),
        ("data.datasets=[{repeats:2}]", r"data.datasets\[0\].root"),
    ],
)
def test_dataset_config_is_validated(override, match):
    with pytest.raises(ValueError, match=match):
        validate(compose_config(["data=latents", "data.root=/x", override]))


def test_dataset_config_replaces_data_root():
    cfg = validate(compose_config(["data=latents", "data.datasets=[{root:/data/a,repeats:3},{root:/data/b}]"]))
    assert [(d.root, d.repeats) for d in cfg.data.datasets] == [("/data/a", 3), ("/data/b", 1)]
