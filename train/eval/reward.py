"""The `videoreward` hook: VideoAlign's VideoReward (github.com/KwaiVGI/VideoAlign), a Qwen2-VL reward model
scoring visual quality (VQ), motion quality (MQ) and text alignment (TA), in its own environment.

Setup, once (VideoAlign is a repository, not a package):
    git clone https://github.com/KwaiVGI/VideoAlign /opt/VideoAlign      # and its environment.yaml
    checkpoint: huggingface.co/KwaiVGI/VideoReward -> /models/VideoReward (model_config.json + weights)
    base model: Qwen/Qwen2-VL-2B-Instruct -> /models/Qwen2-VL-2B-Instruct (the checkpoint config names the hub id;
                `base_model` points it at the local copy; the subprocess runs with HF_HUB_OFFLINE=1)
    eval.hooks=[videoreward] +eval.hook_settings.videoreward.python=/envs/videoalign/bin/python \\
        +eval.hook_settings.videoreward.repo=/opt/VideoAlign +eval.hook_settings.videoreward.checkpoint=/models/VideoReward

Settings: python, repo, checkpoint (required), base_model, device (default cuda), dtype (bfloat16), batch_size (2),
use_norm (true: the checkpoint's normalisation), num_frames / fps (the checkpoint's defaults when null).
Scores: mean VQ, MQ, TA, Overall (= VQ + MQ + TA), and per video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from train.eval.hooks import HookSkipped, SubprocessHook, register_hook


@register_hook
class VideoRewardHook(SubprocessHook):
    name = "videoreward"
    tool = "VideoReward (VideoAlign)"
    runner = "videoreward_runner.py"
    defaults: ClassVar[dict[str, Any]] = {
        "repo": None,
        "checkpoint": None,
        "base_model": None,
        "device": "cuda",
        "dtype": "bfloat16",
        "batch_size": 2,
        "use_norm": True,
        "num_frames": None,
        "fps": None,
    }

    def preflight(self) -> dict[str, Any]:
        s = self.settings
        key = "eval.hook_settings.videoreward"
        if not s["repo"]:
            raise HookSkipped(f"{key}.repo is not set: a checkout of github.com/KwaiVGI/VideoAlign (has inference.py)")
        repo = Path(str(s["repo"])).expanduser()
        if not (repo / "inference.py").is_file():
            raise HookSkipped(f"{key}.repo={repo}: no inference.py there (expected a VideoAlign checkout)")
        if not s["checkpoint"]:
            raise HookSkipped(f"{key}.checkpoint is not set: the local KwaiVGI/VideoReward folder")
        ckpt = Path(str(s["checkpoint"])).expanduser()
        if not (ckpt / "model_config.json").is_file():
            raise HookSkipped(f"{key}.checkpoint={ckpt}: no model_config.json (download KwaiVGI/VideoReward there)")
        base = s["base_model"]
        if base is not None and not Path(str(base)).expanduser().is_dir():
            raise HookSkipped(f"{key}.base_model={base}: no such folder (a local Qwen2-VL-2B-Instruct)")
        if s["num_frames"] is not None and s["fps"] is not None:
            raise ValueError(f"{key}: set num_frames or fps, not both")
        return {
            "repo": str(repo),
            "checkpoint": str(ckpt),
            "base_model": None if base is None else str(Path(str(base)).expanduser()),
            "device": s["device"],
            "dtype": s["dtype"],
            "batch_size": int(s["batch_size"]),
            "use_norm": bool(s["use_norm"]),
            "num_frames": s["num_frames"],
            "fps": s["fps"],
        }
