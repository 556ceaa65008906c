"""prepare -> dataset -> batches on generated video files; resume after an interruption; bad inputs."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import data.prepare as prep
from data import BucketBatchSampler, Expect, LatentDataset, ShardError, collate, load_encoders
from data.prepare import PrepareConfig, item_key, prepare
from data.sources import read_sources
from data.synthetic import make_synthetic_videos
from data.video import choose_bucket, plan_clips, probe, read_clips, to_pixels

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are per-op overhead: one thread is fastest, and spinning threads hurt on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """6 good videos (17/33/40 frames, square and wide, mp4/webm/mov) and 4 bad inputs, with captions."""
    d = tmp_path_factory.mktemp("videos")
    make_synthetic_videos(
        d, num=6, frames=[17, 33, 40], fps=16, sizes=[(64, 64), (64, 112)], formats=["mp4", "webm", "mov"]
    )
    bad = d / "videos" / "bad"
    bad.mkdir()
    (bad / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    (bad / "garbage.txt").write_text("noise")
    make_synthetic_videos(d / "tmp", num=2, frames=[40, 9], fps=16, sizes=[(64, 64)], formats=["mkv"])
    data = (d / "tmp" / "videos" / "synthetic_0000.mkv").read_bytes()
    (bad / "truncated.mkv").write_bytes(data[: len(data) // 3])
    (bad / "truncated.txt").write_text("a truncated file")
    shutil.copy(d / "tmp" / "videos" / "synthetic_0001.mkv", bad / "short.mkv")
    (bad / "short.txt").write_text("only nine frames")
    shutil.copy(d / "tmp" / "videos" / "synthetic_0000.mkv", bad / "uncaptioned.mkv")
    shutil.rmtree(d / "tmp")
    return d


def _cfg(videos, out, **kw):
    base = dict(
        model="wan",
        input=str(videos),
        out=str(out),
        tiny=True,
        lengths=[17, 33],
        fps=16,
        buckets=["64x64", "64x112"],
        items_per_shard=3,
        progress=False,
    )
    return PrepareConfig(**{**base, **kw})


GOOD = [f"videos/synthetic_{i:04d}.{ext}" for i, ext in enumerate(["mp4", "webm", "mov"] * 2)]
# 17-frame clips from every good video; 33-frame clips from the 33- and 40-frame ones.
EXPECTED = sorted([item_key(g, 17, 0) for g in GOOD] + [item_key(g, 33, 0) for i, g in enumerate(GOOD) if i % 3 != 0])


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "wan"
    summary = prepare(_cfg(videos, out))
    return out, summary


def test_prepare_writes_every_good_clip_and_reports_the_bad(prepared, videos):
    out, summary = prepared
    assert sorted(summary.written) == EXPECTED
    reasons = dict(summary.skipped)
    assert "unreadable video" in reasons["videos/bad/garbage.mp4"]
    assert "no caption (uncaptioned.txt is missing)" in reasons["videos/bad/uncaptioned.mkv"]
    assert "too few frames: 9 frames at 16 fps" in reasons["videos/bad/short.mkv:17f:c0"]
    assert "truncated" in reasons["videos/bad/truncated.mkv:17f:c0"]
    assert "a 33-frame clip at 16 fps needs" in reasons["videos/synthetic_0000.mp4:33f:c0"]
    report = json.loads((out / "prepare_report.json").read_text())
    assert len(report["written"]) == len(EXPECTED)
    assert "skipped videos/bad/garbage.mp4: " in summary.format()
    index = json.loads((out / "index.json").read_text())
    assert index["format_version"] == 1 and index["model"] == "wan" and index["num_items"] == len(EXPECTED)
    assert len(index["shards"]) == 4 and all(len(s["sha256"]) == 64 for s in index["shards"])
    assert index["header"]["latent_norm"]["convention"] == "wan"
    item = next(r for r in index["items"] if r["key"] == "videos/synthetic_0001.webm:33f:c0")
    assert item["caption"] == (videos / "videos" / "synthetic_0001.txt").read_text().strip()
    assert (item["frames"], item["fps"], item["height"], item["width"]) == (33, 16.0, 64, 112)
    assert item["source_size"] == [112, 64] and item["latent_shape"] == [16, 9, 8, 14]


def test_round_trip_to_batches(prepared, videos):
    out, _ = prepared
    ds = LatentDataset(out, model="wan", expect=Expect(latent_channels=16, text_dim=32, text_len=128), verify="full")
    assert len(ds) == len(EXPECTED)
    assert sorted(ds.buckets) == [(17, 64, 64), (17, 64, 112), (33, 64, 64), (33, 64, 112)]
    sampler = BucketBatchSampler(ds, batch_size=1, seed=0, shuffle=True)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    seen = []
    for batch in loader:
        b, c, f, h, w = batch["latents"].shape
        meta = batch["meta"][0]
        assert (b, c, f, h, w) == (1, 16, (meta["frames"] - 1) // 4 + 1, meta["height"] // 8, meta["width"] // 8)
        assert batch["latents"].dtype == torch.bfloat16
        assert batch["prompt_embeds"].shape == (1, 128, 32)
        n = int(batch["prompt_attention_mask"].sum())
        assert n == min(128, len(meta["caption"].encode()) + 1)  # tiny text length: 128 tokens
        assert batch["prompt_embeds"][0, n:].abs().sum() == 0 and batch["prompt_embeds"][0, :n].abs().sum() > 0
        assert "pooled_prompt_embeds" not in batch
        seen.append(meta["key"])
    assert sorted(seen) == EXPECTED
    # The stored latents are what the encoders give for that clip of that file.
    enc = load_encoders("wan", tiny=True)
    i = next(i for i, r in enumerate(ds.records) if r["key"] == "videos/synthetic_0002.mov:33f:c0")
    info = probe(videos / "videos" / "synthetic_0002.mov")
    bucket = choose_bucket(info.width, info.height, [(64, 64), (64, 112)])
    (clip,) = read_clips(info, plan_clips(info, 33, 16, 1), 33, 16, bucket)
    want = enc.encode_video(to_pixels(clip).unsqueeze(0))[0]
    got = ds[i]["latents"].float()
    assert torch.allclose(got, want, atol=0.02 * want.abs().max().item())
    text = enc.encode_text([ds.records[i]["caption"]])[0]["prompt_embeds"]
    assert torch.allclose(ds[i]["prompt_embeds"][: text.shape[0]].float(), text, rtol=0.01, atol=0.01)


@pytest.mark.parametrize("family,frames", [("hunyuan", 17), ("mochi", 19), ("wan22_ti2v", 17)])
def test_other_families(videos, tmp_path, family, frames):
    manifest = tmp_path / "two.jsonl"
    rows = [json.loads(line) for line in (videos / "manifest.jsonl").read_text().splitlines()][1:3]
    manifest.write_text("".join(json.dumps({**r, "path": str(videos / r["path"])}) + "\n" for r in rows))
    buckets = ["64x64"] if family == "wan22_ti2v" else ["64x64", "64x112"]
    summary = prepare(_cfg(manifest, tmp_path / "out", model=family, lengths=[frames], buckets=buckets))
    assert len(summary.written) == 2 and not summary.skipped
    ds = LatentDataset(tmp_path / "out", model=family)
    batch = collate([ds[0]])
    g = ds.geometry
    assert batch["latents"].shape[1] == g.latent_channels
    assert batch["latents"].shape[2] == (frames - 1) // g.temporal_factor + 1
    if family == "hunyuan":
        assert batch["pooled_prompt_embeds"].shape == (1, 16)
        assert ds.latent_norm["convention"] == "hunyuan"
    with pytest.raises(ShardError, match=f"prepared for model '{family}', expected model 'wan'"):
        LatentDataset(tmp_path / "out", model="wan")


def _tensors_by_key(ds):
    return {r["key"]: ds[i]["latents"] for i, r in enumerate(ds.records)}


def test_resume_after_an_interruption(videos, prepared, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    calls = {"n": 0}
    real = prep._encode_clip

    def interrupt_on_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "_encode_clip", interrupt_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        prepare(_cfg(videos, out, items_per_shard=3))
    monkeypatch.setattr(prep, "_encode_clip", real)
    # The 4 finished items were flushed (a full shard of 3, then 1); nothing is indexed yet.
    shards = sorted((out / "shards").glob("*.safetensors"))
    assert len(shards) == 2
    assert not (out / "index.json").exists()
    with pytest.raises(ShardError, match="no index.json .*prepare did not finish"):
        LatentDataset(out, model="wan")
    # A crash in the middle of a shard write leaves only a temporary file.
    (out / "shards" / "x-00009.safetensors.1234abcd.tmp").write_bytes(b"half a shard")

    summary = prepare(_cfg(videos, out, items_per_shard=3))
    assert len(summary.already_done) == 4
    assert sorted(summary.written + summary.already_done) == EXPECTED
    assert not list((out / "shards").glob("*.tmp"))
    resumed = _tensors_by_key(LatentDataset(out, model="wan"))
    fresh = _tensors_by_key(LatentDataset(prepared[0], model="wan"))
    assert resumed.keys() == fresh.keys()
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)
    # A third run has nothing to do.
    again = prepare(_cfg(videos, out, items_per_shard=3))
    assert again.written == [] and len(again.already_done) == len(EXPECTED)


def test_resume_refuses_other_settings(prepared, videos, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared[0], out)
    with pytest.raises(ValueError, match="other settings \\(model: 'wan' before, 'mochi' now"):
        prepare(_cfg(videos, out, model="mochi", lengths=[19]))
    with pytest.raises(ValueError, match="latent_dtype: 'bfloat16' before, 'float32' now"):
        prepare(_cfg(videos, out, latent_dtype="fp32"))
    (out / "prepare.json").unlink()  # without the settings file, the shard headers still protect the folder
    with pytest.raises(ValueError, match="written with other encoders or settings \\(differs in encoders"):
        prepare(_cfg(videos, out, seed=1))


def test_corrupt_shard_is_moved_aside_and_redone(prepared, videos, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared[0], out)
    victim = sorted((out / "shards").glob("*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    summary = prepare(_cfg(videos, out))
    assert len(summary.written) == 3 and len(summary.quarantined) == 1
    assert "not a readable safetensors file" in summary.quarantined[0][1]
    assert len(LatentDataset(out, model="wan")) == len(EXPECTED)


def test_limit_and_clips_per_video(videos, tmp_path):
    summary = prepare(_cfg(videos, tmp_path / "lim", lengths=[17], limit=2))
    assert len(summary.written) == 2
    summary = prepare(_cfg(videos, tmp_path / "multi", lengths=[17], clips_per_video=2, clip_mode="start"))
    keys = set(summary.written)
    assert item_key("videos/synthetic_0002.mov", 17, 1) in keys  # 40 frames: two 17-frame clips
    skipped = dict(summary.skipped)
    assert "holds only 1 non-overlapping 17-frame clips" in skipped["videos/synthetic_0000.mp4:17f:c1"]
    ds = LatentDataset(tmp_path / "multi", model="wan")
    starts = {r["clip"]: r["clip_start"] for r in ds.records if r["source"] == "videos/synthetic_0002.mov"}
    assert starts == {0: 0.0, 1: pytest.approx(17 / 16)}


def test_strict_fps_skips_slower_sources(videos, tmp_path):
    with pytest.raises(ValueError, match="prepare wrote no items .* 16 fps is below the target 30 fps"):
        prepare(_cfg(videos, tmp_path / "strict", lengths=[17], fps=30, strict_fps=True))
    summary = json.loads((tmp_path / "strict" / prep.REPORT_FILE).read_text())
    assert summary["written"] == [] and summary["index"] is None
    reasons = dict(summary["skipped"])
    assert "16 fps is below the target 30 fps" in reasons["videos/synthetic_0002.mov"]
    with pytest.raises(ShardError, match="no index.json"):
        LatentDataset(tmp_path / "strict", model="wan")


def test_manifests(videos, tmp_path):
    rows = [json.loads(line) for line in (videos / "manifest.jsonl").read_text().splitlines()]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        "\n".join(
            [
                json.dumps({"video": str(videos / rows[0]["path"]), "text": rows[0]["caption"]}),
                json.dumps({"video": str(videos / rows[1]["path"]), "text": ""}),
                json.dumps({"video": str(videos / rows[0]["path"]), "text": "again"}),
            ]
        )
    )
    sources = read_sources(jsonl)
    assert [s.problem for s in sources] == [None, "line 2: empty caption", "line 3: duplicate of line 1"]
    csv_path = videos / "manifest.csv"
    assert [s.caption for s in read_sources(csv_path)] == [r["caption"] for r in rows]
    assert read_sources(csv_path)[0].rel == rows[0]["path"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.mp4", "caption": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 2 is not valid JSON"):
        read_sources(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("file_path,words\na.mp4,hello\n")
    with pytest.raises(ValueError, match="no video path column"):
        read_sources(nocol)


def test_cli_and_early_errors(videos, tmp_path, capsys):
    out = tmp_path / "cli"
    summary = prep.main(
        ["--model", "wan", "--tiny", "--input", str(videos / "manifest.csv"), "--out", str(out), "--length", "17",
         "--fps", "16", "--buckets", "64x64,64x112", "--no-progress"]
    )  # fmt: skip
    assert len(summary.written) == 6
    assert "prepare: 6 items written" in capsys.readouterr().out
    cases = [
        (["--pretrained", str(tmp_path / "nowhere")], "pretrained_path=.*nowhere: no such folder"),
        (["--tiny", "--length", "20"], "frames must be k\\*4\\+1"),
        (["--tiny", "--buckets", "60x64"], "height and width must be positive multiples of 16"),
        (["--tiny", "--input", str(tmp_path / "missing")], "input .*missing: no such folder or manifest"),
    ]
    for args, match in cases:  # one line on stderr, exit status 2
        with pytest.raises(SystemExit) as exit_:
            prep.main(["--model", "wan", "--input", str(videos), "--out", "x", *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and re.fullmatch(f"error: .*{match}.*\\n", err), err


@pytest.mark.slow
def test_parallel_workers_match_one_process(videos, prepared, tmp_path):
    summary = prepare(_cfg(videos, tmp_path / "par", workers=2))
    assert sorted(summary.written) == EXPECTED
    par = _tensors_by_key(LatentDataset(tmp_path / "par", model="wan"))
    one = _tensors_by_key(LatentDataset(prepared[0], model="wan"))
    assert all(torch.equal(par[k], one[k]) for k in one)


@pytest.mark.slow
def test_killed_process_resumes(videos, prepared, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "data.prepare", "--model", "wan", "--tiny", "--input", str(videos), "--out",
           str(out), "--length", "17", "33", "--fps", "16", "--buckets", "64x64,64x112", "--items-per-shard", "1",
           "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("*.safetensors"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "shards").glob("*.safetensors")))
    assert done >= 2
    summary = prepare(_cfg(videos, out, items_per_shard=1))
    assert len(summary.already_done) >= 2
    resumed = _tensors_by_key(LatentDataset(out, model="wan", verify="full"))
    fresh = _tensors_by_key(LatentDataset(prepared[0], model="wan"))
    assert resumed.keys() == fresh.keys() and all(torch.equal(resumed[k], fresh[k]) for k in fresh)


@pytest.mark.slow
def test_distributed_launch_matches_one_process(videos, prepared, tmp_path):
    """`torchrun` / `accelerate launch` with 2 processes (gloo on CPU): rank 0 plans, each rank writes its share."""
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "data.prepare", "--model",
           "wan", "--tiny", "--input", str(videos), "--out", str(out), "--length", "17", "33", "--fps", "16",
           "--buckets", "64x64,64x112", "--items-per-shard", "3", "--no-progress"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"prepare: {len(EXPECTED)} items written" in proc.stdout
    ranks = {p.name.split("-")[1] for p in (out / "shards").glob("*.safetensors")}
    assert ranks == {"r000", "r001"}
    dist = _tensors_by_key(LatentDataset(out, model="wan", verify="full"))
    one = _tensors_by_key(LatentDataset(prepared[0], model="wan"))
    assert dist.keys() == one.keys() and all(torch.equal(dist[k], one[k]) for k in one)


def test_writing_nothing_is_an_error_naming_the_short_clips(videos, tmp_path, capsys):
    """Every clip too short for the requested length: exit non-zero, one line naming the videos and what fits."""
    manifest = tmp_path / "short.jsonl"
    lines = [json.dumps({"path": str(p), "caption": "x"}) for p in sorted((videos / "videos").glob("synthetic_*"))]
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exc:
        prep.main(["--model", "wan", "--tiny", "--input", str(manifest), "--out", str(tmp_path / "o"),
                   "--length", "4x", "--fps", "16", "--buckets", "64x64", "--no-progress"])  # fmt: skip
    message = capsys.readouterr().err.strip()  # the CLIs' one-line error: `error: ...` on stderr, exit 2
    assert exc.value.code == 2 and message.startswith("error: prepare wrote no items to") and "\n" not in message
    assert "too short for 321 frames" in message and "synthetic_0000" in message
    assert "use --length 17 (or shorter)" in message  # the shortest video has 17 frames at 16 fps
    assert not (tmp_path / "o" / "index.json").exists()


def test_every_flag_has_help():
    parser = prep.build_parser()
    missing = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert not missing
