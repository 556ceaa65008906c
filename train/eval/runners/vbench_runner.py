"""Runs inside VBench's Python environment (stdlib + vbench only): `python vbench_runner.py REQUEST RESULT`.

REQUEST (written by train.eval.vbench.VBenchHook): {"videos": [{"path", "prompt", "name"}], "settings":
{"dimensions", "cache_dir", "device"}, "out_dir"}. RESULT: {"status", "scores", "per_video", "message"}.
Exit code 3 with status "skipped" when vbench cannot be imported here.
"""

import json
import os
import sys
from pathlib import Path

from runner_result import SKIP, finish


def main(request_path, result_path):
    request = json.loads(Path(request_path).read_text())
    settings, out_dir = request["settings"], Path(request["out_dir"])
    if settings.get("cache_dir"):
        os.environ["VBENCH_CACHE_DIR"] = settings["cache_dir"]  # read by vbench.utils at import
    try:
        import torch
        from vbench import VBench
    except Exception as e:  # noqa: BLE001 - any import failure means VBench is unusable here
        finish(
            result_path, SKIP, "skipped",
            message=f"vbench is not importable with {sys.executable} ({type(e).__name__}: {e}); "
            "pip install vbench in that environment",
        )  # fmt: skip
    # VBench scores every file of a folder: stage links to exactly our videos, with unique names.
    stage = out_dir / "videos"
    stage.mkdir(parents=True, exist_ok=True)
    for old in stage.iterdir():
        old.unlink()
    prompts, names = {}, {}
    for i, video in enumerate(request["videos"]):
        link = f"{i:04d}_{video['name']}.mp4"
        os.symlink(video["path"], stage / link)
        prompts[link] = video["prompt"]
        names[os.path.abspath(stage / link)] = video["name"]
    device = settings.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    import vbench

    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
    bench = VBench(device, full_info, str(out_dir / "vbench_results"))
    bench.evaluate(
        videos_path=str(stage), name="radial", prompt_list=prompts, dimension_list=settings["dimensions"],
        local=True, mode="custom_input",
    )  # fmt: skip
    raw = json.loads((out_dir / "vbench_results" / "radial_eval_results.json").read_text())
    scores, per_video = {}, {}
    for dim, (mean, videos) in raw.items():
        scores[dim] = float(mean)
        for entry in videos:
            name = names.get(os.path.abspath(entry["video_path"]), entry["video_path"])
            value = entry["video_results"]
            if isinstance(value, (int, float)):
                per_video.setdefault(name, {})[dim] = float(value)
    finish(result_path, 0, "ok", scores=scores, per_video=per_video, device=device)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
