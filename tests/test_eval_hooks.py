"""Evaluation hooks: registry and plugins, never raising, and the VBench / VideoReward subprocesses (fake tools).

The fakes stand in for the real tools inside the subprocess: a `vbench` package with VBench's class interface and
output file, and a VideoAlign checkout whose inference.py has VideoVLMRewardInference. The runner scripts, the
request/result protocol, timeouts, crashes and missing packages are exercised for real. With
RADIAL_TEST_VBENCH_PYTHON=/path/to/python of an environment where `pip install vbench` worked, the real VBench's
weight-free temporal_flickering dimension is checked against our in-process flicker hook.
"""

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from radial.generation import write_mp4
from train.eval.__main__ import main as eval_main
from train.eval.hooks import (
    EvalHook,
    HookResult,
    HookSkipped,
    available_hooks,
    collect_videos,
    flat_scores,
    register_hook,
    run_hooks,
)
from train.eval.metrics import load_frames, temporal_flicker

FAKE_VBENCH = """
import json, os, time


class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.device, self.output_path = device, output_path
        os.makedirs(output_path, exist_ok=True)

    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False, read_frame=False,
                 mode="vbench_standard", **kwargs):
        assert mode == "custom_input" and local is True, (mode, local)
        files = sorted(os.listdir(videos_path))
        assert sorted(prompt_list) == files, (prompt_list, files)
        behaviour = os.environ.get("FAKE_VBENCH", "ok")
        if behaviour == "crash":
            raise RuntimeError("fake VBench crashed")
        if behaviour == "hang":
            time.sleep(60)
        results = {}
        for d in dimension_list:
            per = [{"video_path": os.path.join(videos_path, f), "video_results": 0.5 + 0.1 * i}
                   for i, f in enumerate(files)]
            results[d] = [sum(p["video_results"] for p in per) / len(per), per]
        with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as f:
            json.dump(results, f)
        with open(os.path.join(self.output_path, "fake_call.json"), "w") as f:
            json.dump({"prompts": prompt_list, "dims": dimension_list, "cache": os.environ["VBENCH_CACHE_DIR"],
                       "device": self.device}, f)
"""

FAKE_VIDEOALIGN = """
import json, os


def load_configs_from_json(path):
    with open(path) as f:
        cfg = json.load(f)
    return cfg["data_config"], None, cfg["model_config"], {}, None


class VideoVLMRewardInference:
    def __init__(self, load_from_pretrained, load_from_pretrained_step=-1, device="cuda", dtype=None):
        _, _, model_config, _, _ = load_configs_from_json(os.path.join(load_from_pretrained, "model_config.json"))
        self.base = model_config["model_name_or_path"]
        self.device = device

    def reward(self, video_paths, prompts, fps=None, num_frames=None, max_pixels=None, use_norm=True):
        assert all(os.path.isfile(p) for p in video_paths)
        mq = 2.0 if self.base.endswith("local_qwen") else 1.0
        return [{"VQ": len(p) / 10, "MQ": mq, "TA": -1.0, "Overall": len(p) / 10 + mq - 1.0} for p in prompts]
"""


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three small mp4s: one with a generator sidecar, one named in prompts.json, one with neither."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        frames = np.clip(rng.normal(128, 10 + 20 * i, (6, 32, 32, 3)), 0, 255).astype(np.uint8)
        write_mp4(root / f"{name}.mp4", frames, fps=8)
    (root / "alpha.json").write_text(json.dumps({"prompt": "a red fox", "seed": 0}))
    (root / "prompts.json").write_text(json.dumps({"beta.mp4": "a blue whale"}))
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def fake_vbench(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_vbench_env")
    (root / "vbench").mkdir()
    (root / "vbench" / "__init__.py").write_text(FAKE_VBENCH)
    return root


@pytest.fixture(scope="module")
def fake_videoalign(tmp_path_factory):
    root = tmp_path_factory.mktemp("videoalign")
    (root / "repo").mkdir()
    (root / "repo" / "inference.py").write_text(FAKE_VIDEOALIGN)
    (root / "ckpt").mkdir()
    config = {"data_config": {"fps": 2}, "model_config": {"model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct"}}
    (root / "ckpt" / "model_config.json").write_text(json.dumps(config))
    (root / "local_qwen").mkdir()
    return root


def _vbench(fake, cache, **extra):
    return {"vbench": {"python": sys.executable, "pythonpath": [str(fake)], "cache_dir": str(cache), **extra}}


# -- the interface ---------------------------------------------------------------------------------------------------
class ExplodingHook(EvalHook):
    name = "exploding"

    def run(self, videos, out_dir):
        raise RuntimeError("boom")


class CountingHook(EvalHook):
    name = "counting"
    defaults = {"factor": 1.0}

    def run(self, videos, out_dir):
        return HookResult(self.name, "ok", {"videos": len(videos) * self.settings["factor"]})


def test_collect_videos_reads_prompts(videos):
    items = collect_videos(videos)
    assert [(v.name, v.prompt) for v in items] == [("alpha", "a red fox"), ("beta", "a blue whale"), ("gamma", "gamma")]
    assert items[0].sidecar["seed"] == 0 and items[0].path.is_absolute()


def test_registry_plugins_and_failures_never_raise(videos, tmp_path):
    assert {"flicker", "vbench", "videoreward"} <= set(available_hooks())
    register_hook(ExplodingHook)
    names = ["flicker", "exploding", "nonexistent", "tests.test_eval_hooks:CountingHook", "os:path"]
    settings = {"tests.test_eval_hooks:CountingHook": {"factor": 2.0}}
    lines = []
    results = run_hooks(names, videos, tmp_path, settings, log=lines.append)
    assert results["flicker"]["status"] == "ok"
    assert results["exploding"]["status"] == "failed" and "RuntimeError: boom" in results["exploding"]["message"]
    assert results["nonexistent"]["status"] == "failed" and "known:" in results["nonexistent"]["message"]
    assert results["tests.test_eval_hooks:CountingHook"]["scores"] == {"videos": 6.0}
    assert results["os:path"]["status"] == "failed"
    assert json.loads((tmp_path / "hooks.json").read_text()).keys() == results.keys()
    assert len(lines) == 5 and lines[1].startswith("eval hook exploding: failed")
    bad = run_hooks(["counting_typo"], videos, tmp_path, {})
    assert bad["counting_typo"]["status"] == "failed"
    unknown_setting = run_hooks(["flicker"], videos, tmp_path, {"flicker": {"colour": 1}})
    assert "unknown settings ['colour']" in unknown_setting["flicker"]["message"]
    empty = run_hooks(["flicker"], tmp_path / "nothing_here", tmp_path / "e", {})
    assert empty["flicker"]["status"] == "skipped" and "no such folder" in empty["flicker"]["message"]
    assert flat_scores(results) == {
        "eval/flicker/temporal_flickering": results["flicker"]["scores"]["temporal_flickering"],
        "eval/tests.test_eval_hooks:CountingHook/videos": 6.0,
    }


def test_flicker_hook_is_vbench_formula(videos, tmp_path):
    r = run_hooks(["flicker"], videos, tmp_path, {})["flicker"]
    want = temporal_flicker(load_frames(videos / "beta.mp4"))["score"]
    assert r["per_video"]["beta"]["temporal_flickering"] == pytest.approx(want)
    assert r["scores"]["temporal_flickering"] == pytest.approx(
        np.mean([v["temporal_flickering"] for v in r["per_video"].values()])
    )


# -- VBench ------------------------------------------------------------------------------------------------------------
def test_vbench_skips_with_a_clear_message(videos, tmp_path, fake_vbench):
    r = run_hooks(["vbench"], videos, tmp_path / "a", {})["vbench"]
    assert r["status"] == "skipped" and "eval.hook_settings.vbench.python" in r["message"]
    r = run_hooks(["vbench"], videos, tmp_path / "b", {"vbench": {"python": str(tmp_path / "no_python")}})["vbench"]
    assert r["status"] == "skipped" and "no such interpreter" in r["message"]
    # Without the package in that environment the runner reports it and exits with the skip code.
    missing = tmp_path / "shadow" / "vbench"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ImportError('No module named decord')\n")
    settings = {"python": sys.executable, "pythonpath": [str(missing.parent)], "dimensions": ["temporal_flickering"]}
    r = run_hooks(["vbench"], videos, tmp_path / "c", {"vbench": settings})["vbench"]
    assert r["status"] == "skipped" and "vbench is not importable" in r["message"] and "decord" in r["message"]
    # Weights missing for every asked dimension: skipped before starting anything.
    dims = {"dimensions": ["subject_consistency", "imaging_quality"]}
    r = run_hooks(["vbench"], videos, tmp_path / "d", _vbench(fake_vbench, tmp_path / "cache", **dims))["vbench"]
    assert r["status"] == "skipped" and "dino_vitbase16_pretrain.pth" in r["message"] and "musiq" in r["message"]
    r = run_hooks(["vbench"], videos, tmp_path / "e", _vbench(fake_vbench, tmp_path, dimensions=["color"]))["vbench"]
    assert r["status"] == "failed" and "not available in VBench's custom-input mode" in r["message"]


def test_vbench_runs_the_dimensions_it_has_weights_for(videos, tmp_path, fake_vbench):
    cache = tmp_path / "cache"
    (cache / "pyiqa_model").mkdir(parents=True)
    (cache / "pyiqa_model" / "musiq_spaq_ckpt-358bb6af.pth").write_bytes(b"weights")
    dims = ["temporal_flickering", "imaging_quality", "subject_consistency"]
    r = run_hooks(["vbench"], videos, tmp_path / "out", _vbench(fake_vbench, cache, dimensions=dims, device="cpu"))[
        "vbench"
    ]
    assert r["status"] == "ok", r["message"]
    assert r["scores"] == {"temporal_flickering": pytest.approx(0.6), "imaging_quality": pytest.approx(0.6)}
    assert r["per_video"]["gamma"]["imaging_quality"] == pytest.approx(0.7)
    assert "subject_consistency" in r["message"]
    call = json.loads((tmp_path / "out" / "vbench" / "vbench_results" / "fake_call.json").read_text())
    assert call["dims"] == ["temporal_flickering", "imaging_quality"] and call["cache"] == str(cache)
    assert sorted(call["prompts"].values()) == ["a blue whale", "a red fox", "gamma"] and call["device"] == "cpu"
    assert Path(r["files"]["log"]).is_file()


def test_vbench_crash_and_timeout_fail_without_raising(videos, tmp_path, fake_vbench):
    crash = _vbench(fake_vbench, tmp_path, dimensions=["temporal_flickering"], env={"FAKE_VBENCH": "crash"})
    r = run_hooks(["vbench"], videos, tmp_path / "crash", crash)["vbench"]
    assert r["status"] == "failed" and "fake VBench crashed" in r["message"]
    hang = _vbench(fake_vbench, tmp_path, dimensions=["temporal_flickering"], env={"FAKE_VBENCH": "hang"}, timeout_s=3)
    r = run_hooks(["vbench"], videos, tmp_path / "hang", hang)["vbench"]
    assert r["status"] == "failed" and "did not finish in 3 s" in r["message"]


@pytest.mark.skipif(
    not os.environ.get("RADIAL_TEST_VBENCH_PYTHON"), reason="set RADIAL_TEST_VBENCH_PYTHON to a vbench env"
)
def test_real_vbench_temporal_flickering_equals_the_flicker_hook(videos, tmp_path):
    settings = {"vbench": {"python": os.environ["RADIAL_TEST_VBENCH_PYTHON"], "cache_dir": str(tmp_path / "cache")}}
    settings["vbench"]["dimensions"] = ["temporal_flickering"]
    r = run_hooks(["vbench", "flicker"], videos, tmp_path, settings)
    assert r["vbench"]["status"] == "ok", r["vbench"]["message"]
    for name, scores in r["flicker"]["per_video"].items():
        assert r["vbench"]["per_video"][name]["temporal_flickering"] == pytest.approx(
            scores["temporal_flickering"], abs=1e-4
        )


# -- VideoReward -------------------------------------------------------------------------------------------------------
def test_videoreward_through_a_fake_videoalign(videos, tmp_path, fake_videoalign):
    base = {
        "python": sys.executable,
        "repo": str(fake_videoalign / "repo"),
        "checkpoint": str(fake_videoalign / "ckpt"),
    }
    r = run_hooks(["videoreward"], videos, tmp_path / "a", {"videoreward": {**base, "device": "cpu"}})["videoreward"]
    assert r["status"] == "ok", r["message"]
    assert r["per_video"]["alpha"] == {"VQ": 0.9, "MQ": 1.0, "TA": -1.0, "Overall": pytest.approx(0.9)}
    assert r["scores"]["VQ"] == pytest.approx((0.9 + 1.2 + 0.5) / 3)
    local = {**base, "base_model": str(fake_videoalign / "local_qwen"), "batch_size": 1}
    r = run_hooks(["videoreward"], videos, tmp_path / "b", {"videoreward": local})["videoreward"]
    assert r["scores"]["MQ"] == 2.0  # the checkpoint's hub id was pointed at the local base model


def test_videoreward_skips_without_repo_or_weights(videos, tmp_path, fake_videoalign):
    py = {"python": sys.executable}
    cases = [
        ({}, "repo is not set"),
        ({"repo": str(tmp_path)}, "no inference.py"),
        ({"repo": str(fake_videoalign / "repo")}, "checkpoint is not set"),
        ({"repo": str(fake_videoalign / "repo"), "checkpoint": str(tmp_path)}, "no model_config.json"),
    ]
    for extra, message in cases:
        r = run_hooks(["videoreward"], videos, tmp_path / "x", {"videoreward": {**py, **extra}})["videoreward"]
        assert r["status"] == "skipped" and message in r["message"], (extra, r["message"])
    repo_without_torch_imports = tmp_path / "broken"
    repo_without_torch_imports.mkdir()
    (repo_without_torch_imports / "inference.py").write_text("import videoalign_dependency_that_is_missing\n")
    settings = {**py, "repo": str(repo_without_torch_imports), "checkpoint": str(fake_videoalign / "ckpt")}
    r = run_hooks(["videoreward"], videos, tmp_path / "y", {"videoreward": settings})["videoreward"]
    assert r["status"] == "skipped" and "not importable" in r["message"]


# -- CLI ---------------------------------------------------------------------------------------------------------------
def test_hooks_cli(videos, tmp_path, fake_vbench):
    settings = tmp_path / "hooks.yaml"
    settings.write_text(
        textwrap.dedent(
            f"""
            vbench:
              python: {sys.executable}
              pythonpath: [{fake_vbench}]
              cache_dir: {tmp_path}
            """
        )
    )
    results = eval_main(
        ["hooks", str(videos), "--hooks", "flicker", "vbench", "--settings", str(settings),
         "--set", 'vbench.dimensions=["temporal_flickering"]', "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert results["vbench"]["status"] == "ok" and results["flicker"]["status"] == "ok"
    assert (tmp_path / "out" / "hooks.json").is_file()
    listing = eval_main(["list"])
    assert listing["vbench"]["cache_dir"] == "~/.cache/vbench" and "python" in listing["videoreward"]


def test_hook_skipped_exception_is_a_skip(videos, tmp_path):
    class NeedsWeights(EvalHook):
        name = "needs_weights"

        def run(self, videos, out_dir):
            raise HookSkipped("weights not found at /models/x")

    register_hook(NeedsWeights)
    r = run_hooks(["needs_weights"], videos, tmp_path, {})["needs_weights"]
    assert r["status"] == "skipped" and r["message"] == "weights not found at /models/x"
