"""Runs inside VideoAlign's Python environment: `python videoreward_runner.py REQUEST RESULT`.

REQUEST (written by train.eval.reward.VideoRewardHook): {"videos": [{"path", "prompt", "name"}], "settings":
{"repo", "checkpoint", "base_model", "device", "dtype", "batch_size", "use_norm", "num_frames", "fps"}}.
RESULT: {"status", "scores": mean VQ/MQ/TA/Overall, "per_video", "message"}; exit code 3 when VideoAlign or torch
cannot be imported here.
"""

import json
import os
import sys
from pathlib import Path

from runner_result import SKIP, finish


def main(request_path, result_path):
    request = json.loads(Path(request_path).read_text())
    s = request["settings"]
    repo = s["repo"]
    sys.path.insert(0, repo)
    os.chdir(repo)  # VideoAlign imports its modules (data, utils, ...) from the checkout
    try:
        import inference
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means VideoAlign is unusable here
        finish(
            result_path, SKIP, "skipped",
            message=f"VideoAlign's inference.py is not importable with {sys.executable} from {repo} "
            f"({type(e).__name__}: {e}); install its environment (environment.yaml)",
        )  # fmt: skip
    if s.get("base_model"):
        load = inference.load_configs_from_json

        def with_local_base(path):
            data, a, model, lora, infer = load(path)
            model["model_name_or_path"] = s["base_model"]
            return data, a, model, lora, infer

        inference.load_configs_from_json = with_local_base
    dtype = getattr(torch, s.get("dtype") or "bfloat16")
    model = inference.VideoVLMRewardInference(s["checkpoint"], device=s.get("device") or "cuda", dtype=dtype)
    videos = request["videos"]
    per_video = {}
    step = max(1, int(s.get("batch_size") or 1))
    with torch.no_grad():
        for i in range(0, len(videos), step):
            batch = videos[i : i + step]
            rewards = model.reward(
                [v["path"] for v in batch], [v["prompt"] for v in batch],
                fps=s.get("fps"), num_frames=s.get("num_frames"), use_norm=bool(s.get("use_norm", True)),
            )  # fmt: skip
            for j, v in enumerate(batch):
                per_video[v["name"]] = {k: float(rewards[j][k]) for k in ("VQ", "MQ", "TA", "Overall")}
    keys = ("VQ", "MQ", "TA", "Overall")
    scores = {k: sum(p[k] for p in per_video.values()) / len(per_video) for k in keys}
    finish(result_path, 0, "ok", scores=scores, per_video=per_video)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
