"""A fuzz set of corrupt and mismatched datasets: each must fail at open with a clear error naming file and field."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch.utils.data import DataLoader

from data import Expect, LatentDataset, ShardError
from data.prepare import PrepareConfig, prepare
from data.shards import build_index
from data.shards import main as shards_main
from data.synthetic import make_synthetic_videos
from radial.errors import one_line


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny wan dataset: 3 items in 2 shards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz")
    make_synthetic_videos(root / "videos", num=3, frames=17, fps=16, sizes=[(32, 32)])
    cfg = PrepareConfig(
        model="wan", input=str(root / "videos"), out=str(root / "ds"), tiny=True, lengths=[17], fps=16,
        buckets=["32x32"], items_per_shard=2, progress=False,
    )  # fmt: skip
    prepare(cfg)
    torch.set_num_threads(saved)
    return root / "ds"


def _index(root):
    return json.loads((root / "index.json").read_text())


def _write_index(root, index):
    (root / "index.json").write_text(json.dumps(index))


def _shard(root, i=0):
    return root / _index(root)["shards"][i]["file"]


def _rewrite_shard(root, mutate, i=0, sync_index=True):
    """Rewrite shard i through mutate(metadata, tensors); with sync_index the index's bytes/sha256 follow, so
    that only the mutation is wrong."""
    path = _shard(root, i)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is not iterable)
    mutate(metadata, tensors)
    data = save(tensors, metadata=metadata)
    path.write_bytes(data)
    if sync_index:
        index = _index(root)
        index["shards"][i].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        _write_index(root, index)
    return path


def _edit_json(metadata, key, fn):
    value = json.loads(metadata[key])
    fn(value)
    metadata[key] = json.dumps(value)


def _edit_records(root, fn):
    """Change the item records both in shard 0 and in the index (a consistent but wrong dataset)."""

    def mutate(metadata, tensors):
        _edit_json(metadata, "items", lambda records: fn(records[0]))

    _rewrite_shard(root, mutate)
    index = _index(root)
    first = next(r for r in index["items"] if r["shard"] == 0)
    fn(first)
    _write_index(root, index)


def _first_key(root):
    return next(r for r in _index(root)["items"] if r["shard"] == 0)


# Each case: (mutation of a copy of the dataset, LatentDataset kwargs, regex the error must match).
def _no_index(root):
    (root / "index.json").unlink()


def _truncated_index(root):
    text = (root / "index.json").read_text()
    (root / "index.json").write_text(text[: len(text) // 2])


def _index_version(root):
    index = _index(root)
    index["format_version"] = 2
    _write_index(root, index)


def _index_format(root):
    index = _index(root)
    index["format"] = "webdataset"
    _write_index(root, index)


def _shard_missing(root):
    _shard(root, 1).unlink()


def _shard_truncated(root):
    path = _shard(root)
    path.write_bytes(path.read_bytes()[:-100])


def _shard_garbage(root):
    path = _shard(root)
    path.write_bytes(b"\xff" * path.stat().st_size)


def _latents_12_channels(root):
    def mutate(metadata, tensors):
        tensors["0/latents"] = tensors["0/latents"][:12].contiguous()

    _rewrite_shard(root, mutate)


def _latents_fp32(root):
    def mutate(metadata, tensors):
        tensors["0/latents"] = tensors["0/latents"].float()

    _rewrite_shard(root, mutate)


def _shard_other_model(root):
    def mutate(metadata, tensors):
        _edit_json(metadata, "header", lambda h: h.update(model="mochi"))

    _rewrite_shard(root, mutate)


def _shard_other_version(root):
    def mutate(metadata, tensors):
        metadata["format_version"] = "2"

    _rewrite_shard(root, mutate)


def _tensor_missing(root):
    def mutate(metadata, tensors):
        del tensors["0/prompt_embeds"]

    _rewrite_shard(root, mutate)


def _embeds_3d(root):
    def mutate(metadata, tensors):
        tensors["0/prompt_embeds"] = tensors["0/prompt_embeds"][None].contiguous()

    _rewrite_shard(root, mutate)


def _latent_shape_vs_frames(root):
    _edit_records(root, lambda r: r.update(latent_shape=[16, 9, 4, 4]))


def _frames_not_4k1(root):
    _edit_records(root, lambda r: r.update(frames=18))


def _text_len_too_long(root):
    _edit_records(root, lambda r: r["text_lens"].update(prompt_embeds=999))


def _duplicate_key(root):
    index = _index(root)
    index["items"].append(dict(index["items"][0]))
    _write_index(root, index)


def _no_items(root):
    index = _index(root)
    index["items"], index["num_items"], index["shards"] = [], 0, []
    _write_index(root, index)


def _shard_number_out_of_range(root):
    index = _index(root)
    index["items"][0]["shard"] = 7
    _write_index(root, index)


def _norm_wrong_length(root):
    index = _index(root)
    index["header"]["latent_norm"]["shift"] = [0.0] * 12
    _write_index(root, index)


def _bad_dtype_name(root):
    index = _index(root)
    index["header"]["latent_dtype"] = "int8"
    _write_index(root, index)


def _items_differ(root):
    def mutate(metadata, tensors):
        _edit_json(metadata, "items", lambda records: records[0].update(caption="something else"))

    _rewrite_shard(root, mutate)


def _items_not_json(root):
    def mutate(metadata, tensors):
        metadata["items"] = metadata["items"][:-5]

    _rewrite_shard(root, mutate)


def _flipped_byte(root):
    path = _shard(root)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))


def _nan_latents(root):
    def mutate(metadata, tensors):
        tensors["0/latents"][0, 0, 0, 0] = float("nan")

    _rewrite_shard(root, mutate)


def _header_text_dim(root):
    index = _index(root)
    index["header"]["text_fields"]["prompt_embeds"]["dim"] = 4096
    _write_index(root, index)


def _pooled_for_wan(root):
    index = _index(root)
    index["header"]["text_fields"]["pooled_prompt_embeds"] = {"name": "pooled_prompt_embeds", "dim": 16}
    _write_index(root, index)


def _unchanged(root):
    pass


SHARD = r"shard \S+\.safetensors"
INDEX = r"index \S+index\.json"
CASES = {
    "no index": (_no_index, {}, r"dataset \S+: no index\.json \(shards exist: prepare did not finish"),
    "truncated index": (_truncated_index, {}, INDEX + r": not valid JSON"),
    "index format version": (_index_version, {}, INDEX + r": format version 2, this code reads version 1"),
    "index format": (_index_format, {}, INDEX + r": format is 'webdataset', expected 'radial-latents'"),
    "index of another model": (_unchanged, {"model": "hunyuan"}, INDEX + r": prepared for model 'wan', expected model 'hunyuan'"),
    "shard missing": (_shard_missing, {}, SHARD + r": file is missing \(listed in \S+index\.json\)"),
    "shard truncated": (_shard_truncated, {}, SHARD + r": \d+ bytes, the index says \d+ \(truncated"),
    "shard garbage": (_shard_garbage, {}, SHARD + r": not a readable safetensors file, corrupt or truncated"),
    "latents 12 channels": (_latents_12_channels, {}, SHARD + r": item '\S+': latents have 12 channels, model wan expects 16"),
    "latents dtype": (_latents_fp32, {}, SHARD + r": item '\S+': latents: dtype F32, expected BF16 \(bfloat16\)"),
    "shard of another model": (_shard_other_model, {}, SHARD + r": prepared for model 'mochi', the index is for 'wan'"),
    "shard format version": (_shard_other_version, {}, SHARD + r": format version 2, this code reads version 1"),
    "tensor missing": (_tensor_missing, {}, SHARD + r": item '\S+': prompt_embeds: tensor '0/prompt_embeds' is missing"),
    "embeds 3-d": (_embeds_3d, {}, SHARD + r": item '\S+': prompt_embeds: shape \[1, \d+, 32\], expected \[\d+, 32\]"),
    "latent shape vs frames": (_latent_shape_vs_frames, {}, INDEX + r": item '\S+': latent_shape \[16, 9, 4, 4\] does not match 17 frames at 32x32 \(expected \[16, 5, 4, 4\]\)"),
    "frames not k*4+1": (_frames_not_4k1, {}, INDEX + r": item '\S+': frames: wan: frames must be k\*4\+1"),
    "text longer than max": (_text_len_too_long, {}, INDEX + r": item '\S+': text_lens\[prompt_embeds\] is 999, expected an integer in \[0, 128\]"),
    "duplicate item": (_duplicate_key, {}, INDEX + r": item '\S+' appears twice"),
    "no items": (_no_items, {}, r"dataset \S+: no items"),
    "no items of those frames": (_unchanged, {"frames": [161]}, r"dataset \S+: no items with frames in \[161\]"),
    "shard number": (_shard_number_out_of_range, {}, INDEX + r": item '\S+': shard number 7 is out of range"),
    "latent norm length": (_norm_wrong_length, {}, INDEX + r": latent_norm has 12 shift / 16 scale values, model wan has 16 channels"),
    "latent dtype name": (_bad_dtype_name, {}, INDEX + r": latent_dtype is 'int8', expected one of"),
    "shard items differ": (_items_differ, {}, SHARD + r": its items differ from those \S+index\.json lists for it"),
    "shard items not json": (_items_not_json, {}, SHARD + r": metadata 'items' is not valid JSON"),
    "flipped byte (full)": (_flipped_byte, {"verify": "full"}, SHARD + r": sha256 differs from the index"),
    "nan latents (full)": (_nan_latents, {"verify": "full"}, SHARD + r": item '\S+': latents: contains NaN or inf"),
    "header text dim vs shard": (_header_text_dim, {}, SHARD + r": header differs from the index in text_fields"),
    "pooled field on wan": (_pooled_for_wan, {}, INDEX + r": text fields are \['pooled_prompt_embeds', 'prompt_embeds'\], model wan needs \['prompt_embeds'\]"),
    "expect text dim": (_unchanged, {"expect": Expect(text_dim=4096)}, r"dataset \S+: prompt_embeds have dim 32, the transformer expects 4096"),
    "expect channels": (_unchanged, {"expect": {"latent_channels": 48}}, r"dataset \S+: latents have 16 channels, the transformer expects 48"),
    "expect pooled": (_unchanged, {"expect": Expect(pooled_dim=768)}, r"dataset \S+: model wan datasets have no pooled_prompt_embeds"),
    "expect frames": (_unchanged, {"expect": Expect(frames=(161,))}, r"dataset \S+: item '\S+' has 17 frames, expected one of \[161\]"),
    "expect dtype": (_unchanged, {"expect": Expect(latent_dtype="fp32")}, r"dataset \S+: latents are bfloat16, expected float32"),
    "expect norm": (_unchanged, {"expect": Expect(latent_norm="hunyuan")}, r"dataset \S+: latents are normalized by the 'wan' convention, expected 'hunyuan'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_dataset_fails_at_open_with_a_clear_error(dataset, tmp_path, case):
    mutate, kwargs, pattern = CASES[case]
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    mutate(root)
    kwargs = {"model": "wan", **kwargs}
    with pytest.raises(ShardError) as err:
        LatentDataset(root, **kwargs)
    assert re.search(pattern, str(err.value)), f"{case}: {err.value}"
    assert str(tmp_path) in str(err.value)  # names the file


def test_the_untouched_dataset_opens(dataset):
    ds = LatentDataset(dataset, model="wan", verify="full")
    assert len(ds) == 3


def test_flipped_byte_passes_header_verification_only(dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    _flipped_byte(root)
    assert len(LatentDataset(root, model="wan")) == 3  # shapes are fine; only checksums catch bit flips


def test_two_roots_must_agree(dataset, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    with pytest.raises(ShardError, match="appears in more than one of the datasets"):
        LatentDataset([dataset, other], model="wan")
    index = _index(other)
    for i in range(len(index["shards"])):
        _rewrite_shard(other, lambda m, t: _edit_json(m, "header", lambda h: h.update(latent_sample="sample")), i)
    index = _index(other)
    index["header"]["latent_sample"] = "sample"
    for r in index["items"]:
        r["key"] += "-other"
    _write_index(other, index)
    for i in range(len(index["shards"])):
        _rewrite_shard(
            other, lambda m, t: _edit_json(m, "items", lambda rs: [r.update(key=r["key"] + "-other") for r in rs]), i
        )
    with pytest.raises(ShardError, match=r"dataset \S+other: header differs from \S+ in latent_sample"):
        LatentDataset([dataset, other], model="wan")


def test_reindex_rebuilds_and_refuses_mixed_shards(dataset, tmp_path, capsys):
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    (root / "index.json").unlink()
    shards_main(["reindex", str(root)])
    assert "3 items in 2 shards" in capsys.readouterr().out
    shards_main(["check", str(root), "--full"])
    assert capsys.readouterr().out.strip().endswith("ok")

    def other_encoders(metadata, tensors):
        _edit_json(metadata, "header", lambda h: h["encoders"].update(source="/elsewhere"))

    _rewrite_shard(root, other_encoders, sync_index=False)
    with pytest.raises(ShardError, match=r"shard \S+: header differs from \S+ in encoders; one dataset folder"):
        build_index(root)
    with pytest.raises(SystemExit) as exit_:
        shards_main(["check", str(root)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert re.match(r"error: shard .*: (header differs from the index in encoders|\d+ bytes)", err)


def test_non_finite_values_fail_where_first_read_and_in_check(dataset, tmp_path, capsys):
    """NaN / inf pass the header checks; reading the item refuses them (naming shard and item), so does `check`."""
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)

    def poison(metadata, tensors):
        tensors["0/latents"][0, 0, 0, 0] = float("nan")
        tensors["1/prompt_embeds"][0, 0] = float("inf")

    _rewrite_shard(root, poison)
    records = json.loads(safe_open(str(_shard(root)), framework="pt").metadata()["items"])
    ds = LatentDataset(root, model="wan")
    index = {r["key"]: i for i, r in enumerate(ds.records)}
    for j, name in ((0, "latents"), (1, "prompt_embeds")):
        key = records[j]["key"]
        with pytest.raises(ShardError, match=rf"shard \S+: item {re.escape(repr(key))}: {name} contain NaN or inf"):
            ds[index[key]]
    # Through a loader worker the message arrives wrapped in the worker's traceback; the CLIs print its last line.
    loader = DataLoader(ds, sampler=[index[records[0]["key"]]], num_workers=1, collate_fn=lambda x: x)
    with pytest.raises(ShardError) as err:
        next(iter(loader))
    assert re.fullmatch(r"shard \S+: item '[^']+': latents contain NaN or inf .*", one_line(err.value))
    with pytest.raises(SystemExit) as exit_:
        shards_main(["check", str(root)])
    out = capsys.readouterr()
    assert exit_.value.code == 2 and "contain" not in out.out
    assert re.fullmatch(r"error: shard \S+: item '[^']+': latents: contains NaN or inf\n", out.err)
    shards_main(["check", str(root), "--quick"])  # headers and shapes only
    assert capsys.readouterr().out.strip().endswith("ok")


def test_unreadable_files_say_permission_denied(dataset, tmp_path, monkeypatch):
    """(Simulated: the tests run as root, which reads everything.)"""
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    real_open, real_read = open, Path.read_text

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(
        "builtins.open", lambda p, *a, **k: denied(p) if str(p).endswith(".safetensors") else real_open(p, *a, **k)
    )
    with pytest.raises(ShardError, match=r"shard \S+\.safetensors: permission denied"):
        LatentDataset(root, model="wan")
    monkeypatch.setattr("builtins.open", real_open)
    monkeypatch.setattr(
        Path, "read_text", lambda p, *a, **k: denied(p) if p.name == "index.json" else real_read(p, *a, **k)
    )
    with pytest.raises(ShardError, match=r"index \S+index.json: permission denied"):
        LatentDataset(root, model="wan")
