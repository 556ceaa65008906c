"""Synthetic videos and the video layer: real files, frame sampling, buckets, crops, bad input."""

import math

import av
import numpy as np
import pytest

from data.synthetic import caption, make_scene, make_synthetic_videos, render, write_video
from data.video import (
    VideoError,
    check_buckets,
    choose_bucket,
    clip_frames,
    cover_size,
    default_buckets,
    parse_bucket,
    plan_clips,
    probe,
    read_clips,
    to_pixels,
)
from radial.geometry import geometry


def _decode_all(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_synthetic_writes_real_videos_with_captions(tmp_path):
    rows = make_synthetic_videos(
        tmp_path, num=3, frames=[17, 25], fps=16, sizes=[(64, 64), (48, 80)], formats=["mp4", "webm", "mov"]
    )
    assert [r["path"].rsplit(".", 1)[1] for r in rows] == ["mp4", "webm", "mov"]
    for row in rows:
        path = tmp_path / row["path"]
        frames = _decode_all(path)
        assert frames.shape == (row["frames"], row["height"], row["width"], 3)
        assert path.with_suffix(".txt").read_text().strip() == row["caption"]
        info = probe(path)
        assert (info.width, info.height) == (row["width"], row["height"])
        assert info.fps == pytest.approx(16)
        assert info.duration == pytest.approx(row["frames"] / 16, abs=0.01)
    assert (tmp_path / "manifest.jsonl").read_text().count("\n") == 3
    assert (tmp_path / "manifest.csv").read_text().splitlines()[0] == "path,caption"


def test_synthetic_is_deterministic_and_moves(tmp_path):
    rng = np.random.default_rng([7, 0])
    scene = make_scene(rng, 64, 64)
    a = np.stack(list(render(scene, 9, 64, 64, seed=3)))
    b = np.stack(list(render(make_scene(np.random.default_rng([7, 0]), 64, 64), 9, 64, 64, seed=3)))
    assert np.array_equal(a, b)
    assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 1  # things move
    text = caption(scene)
    assert text.endswith(".") and any(s.kind in text for s in scene.shapes)


def test_synthetic_cli(tmp_path):
    from data.synthetic import main

    main(["--out", str(tmp_path), "--num", "2", "--frames", "9", "--size", "32x48", "--format", "webm"])
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [
        "synthetic_0000.txt",
        "synthetic_0000.webm",
        "synthetic_0001.txt",
        "synthetic_0001.webm",
    ]


def test_frame_sampling_picks_the_nearest_source_frames(tmp_path):
    # A video whose frame i shows brightness 8*i: sampling is checkable through the pixel values.
    n, fps = 30, 30
    frames = [np.full((32, 32, 3), 8 * i, np.uint8) for i in range(n)]
    path = write_video(tmp_path / "ramp.mp4", iter(frames), fps, 32, 32)
    info = probe(path)
    (same,) = read_clips(info, [0.0], 25, 30, (32, 32))  # same rate: frames 0..24
    assert np.allclose(same.mean(axis=(1, 2, 3)), 8 * np.arange(25), atol=3)
    (half,) = read_clips(info, [0.0], 13, 15, (32, 32))  # half the rate: every second frame
    assert np.allclose(half.mean(axis=(1, 2, 3)), 16 * np.arange(13), atol=3)
    (shifted,) = read_clips(info, [0.5], 9, 30, (32, 32))  # starting at 0.5 s = frame 15
    assert np.allclose(shifted.mean(axis=(1, 2, 3)), 8 * np.arange(15, 24), atol=3)
    # Upsampling repeats source frames.
    (up,) = read_clips(info, [0.0], 9, 60, (32, 32))
    assert np.allclose(up.mean(axis=(1, 2, 3)), 8 * np.array([0, 0, 1, 1, 2, 2, 3, 3, 4]) + 0, atol=5)


def test_resize_and_center_crop(tmp_path):
    # Left third red, middle green, right third blue, 48x144: a 32x32 bucket keeps the center (green).
    img = np.zeros((48, 144, 3), np.uint8)
    img[:, :48, 0] = 255
    img[:, 48:96, 1] = 255
    img[:, 96:, 2] = 255
    path = write_video(tmp_path / "bars.mp4", iter([img] * 5), 10, 48, 144)
    (clip,) = read_clips(probe(path), [0.0], 5, 10, (32, 32))
    assert clip.shape == (5, 32, 32, 3)
    mean = clip[:, :, 4:28].reshape(-1, 3).mean(0)
    assert mean[1] > 200 and mean[0] < 40 and mean[2] < 40
    (wide,) = read_clips(probe(path), [0.0], 5, 10, (32, 96))
    assert wide[0, :, 4, 0].mean() > 200 and wide[0, :, -4, 2].mean() > 200  # full width kept


def test_rotation_metadata_is_applied(tmp_path):
    """probe and read_clips apply the container's display rotation. Whether this FFmpeg build writes and reads the
    rotation back is asked of PyAV directly, never of the code under test: broken rotation handling fails here
    instead of turning into a skip."""
    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(90)  # display: rotate 90 degrees counterclockwise
        img = np.zeros((32, 64, 3), np.uint8)
        img[:12, :12] = 255  # a white mark at the stored top-left
        for _ in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(str(path)) as c:
        stored = next(c.decode(video=0)).rotation  # PyAV: degrees, as the frame's display-matrix side data says
    if not stored:
        pytest.skip("this FFmpeg build does not round-trip display rotation (PyAV reads none back)")
    info = probe(path)
    assert info.rotation == round(stored / 90) * 90 % 360 == 90
    assert (info.width, info.height) == (32, 64)  # displayed portrait
    (clip,) = read_clips(info, [0.0], 5, 10, (64, 32))
    assert clip.shape == (5, 64, 32, 3)
    # Counterclockwise: the stored top-left corner is displayed bottom-left.
    assert clip[0, -8:, :8].mean() > 200 and clip[0, :8, :8].mean() < 50


def test_lengths_buckets_and_plans():
    wan, hy, mochi = geometry("wan"), geometry("hunyuan"), geometry("mochi")
    assert [clip_frames(wan, m) for m in ("1x", "2x", "4x")] == [81, 161, 321]
    assert clip_frames(hy, "2x") == 257 and clip_frames(mochi, "4x") == 649
    assert clip_frames(wan, 33) == 33
    with pytest.raises(ValueError, match="k\\*4\\+1"):
        clip_frames(wan, 32)
    with pytest.raises(ValueError, match="1x, 2x, 4x"):
        clip_frames(wan, "twice")
    assert parse_bucket("480x832") == (480, 832)
    with pytest.raises(ValueError, match="multiples of 16"):
        check_buckets(wan, [(100, 64)])
    assert (480, 832) in default_buckets(wan) and (832, 480) in default_buckets(wan)
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in default_buckets(geometry("wan22_ti2v")))
    buckets = [(64, 64), (64, 112), (112, 64)]
    assert choose_bucket(1920, 1080, buckets) == (64, 112)
    assert choose_bucket(1080, 1920, buckets) == (112, 64)
    assert choose_bucket(500, 480, buckets) == (64, 64)
    assert cover_size(1920, 1080, (64, 64)) == (114, 64)


def test_plan_clips():
    from data.video import VideoInfo

    info = VideoInfo("v.mp4", 64, 64, 16.0, 100 / 16, 0, "h264")  # 100 frames
    assert plan_clips(info, 33, 16, 1) == [33 / 16]  # centered, on a source frame
    starts = plan_clips(info, 33, 16, 3, "start")
    assert starts == [0.0, 33 / 16, 66 / 16]
    spread = plan_clips(info, 33, 16, 5)  # only 3 non-overlapping clips fit
    assert len(spread) == 3 and all(b - a >= 33 / 16 - 1e-9 for a, b in zip(spread, spread[1:], strict=False))
    assert spread[-1] + 32 / 16 <= 99 / 16 + 1e-9
    with pytest.raises(VideoError, match="too few frames: 100 frames"):
        plan_clips(info, 101, 16, 1)
    assert plan_clips(info, 97, 16, 1) == [pytest.approx(1 / 16)]


def test_bad_files_give_video_errors(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoError, match="garbage.mp4: unreadable video"):
        probe(garbage)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4: empty file"):
        probe(empty)
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "missing.mp4")
    # Truncated: the header promises 40 frames, the data stops early.
    make_synthetic_videos(tmp_path / "t", num=1, frames=40, fps=16, sizes=[(64, 64)], formats=["mkv"])
    src = tmp_path / "t" / "videos" / "synthetic_0000.mkv"
    data = src.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError, match="cut.mkv: (truncated|decoding failed|too few frames|unreadable)"):
        info = probe(cut)
        read_clips(info, plan_clips(info, 33, 16, 1), 33, 16, (64, 64))


def test_duration_from_packets_when_headers_lack_it(tmp_path):
    from data.video import _demux_duration

    make_synthetic_videos(tmp_path, num=2, frames=[25, 40], fps=16, sizes=[(32, 32)], formats=["webm", "mp4"])
    for name in ("synthetic_0000.webm", "synthetic_0001.mp4"):
        path = tmp_path / "videos" / name
        duration, fps = _demux_duration(path, 0.0)
        assert duration == pytest.approx(probe(path).duration, abs=0.01) and fps == pytest.approx(16, rel=0.01)


def test_to_pixels_range():
    x = to_pixels(np.array([[[[0, 255, 127]]]], np.uint8))
    assert x.shape == (3, 1, 1, 1)
    assert x.min() == -1 and x.max() == 1 and math.isclose(float(x[2]), 127 / 127.5 - 1, rel_tol=1e-6)
