"""Evaluation hooks: a small plugin interface run at the end of training or alone on a folder of videos.

    eval.hooks=[flicker,vbench,videoreward]         # the trainer (through train.eval.validation.run_end_hooks)
    python -m train.eval hooks outputs/run/validation/final --hooks vbench videoreward \\
        --set vbench.python=/envs/vbench/bin/python vbench.cache_dir=/models/vbench
    run_hooks(["vbench"], "videos/", "eval_out/", {"vbench": {"python": "/envs/vbench/bin/python"}})

A hook is a class with a `name`, built from its settings (`eval.hook_settings.<name>`, a dict), with
`run(videos, out_dir) -> HookResult`. Register one with `@register_hook`, or name any importable class
"package.module:Class" in eval.hooks. `run_hooks` never raises: an unknown name, a missing package or weights, a
timeout or a crash gives a HookResult with status "skipped" or "failed" and a message that says what to fix;
the trainer goes on.

Built in: `flicker` (in process, weight-free, VBench's temporal_flickering formula), `vbench` (VBench custom-input
mode) and `videoreward` (VideoAlign's VideoReward), the last two as subprocesses of their own Python environments
with local weights (train/eval/vbench.py, train/eval/reward.py; scripts in train/eval/runners/).

Videos: every .mp4 in the folder (not recursive); the prompt of NAME.mp4 comes from NAME.json (the generator's
sidecar, key "prompt"), else a prompts.json {file name: prompt} in the folder, else the file name.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from train.records import json_safe

STATUSES = ("ok", "skipped", "failed")
SKIP_EXIT_CODE = 3  # a runner script exits with this (and a result file) when its tool or weights are missing
_REGISTRY: dict[str, type[EvalHook]] = {}


@dataclass
class VideoItem:
    path: Path
    prompt: str
    name: str
    sidecar: dict = field(default_factory=dict)


@dataclass
class HookResult:
    """What a hook reports: status ok / skipped / failed, scores {metric: number}, per-video scores, a message."""

    name: str
    status: str
    scores: dict[str, float] = field(default_factory=dict)
    per_video: dict[str, dict[str, float]] = field(default_factory=dict)
    message: str = ""
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"hook status must be one of {STATUSES}, got {self.status!r}")

    def as_dict(self) -> dict:
        return asdict(self)


class HookSkipped(Exception):
    """Raised inside a hook when it cannot run here (package, interpreter or weights missing): status skipped."""


class EvalHook:
    """Base class: subclasses set `name`, `defaults` (the settings they accept) and implement `run`."""

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"eval.hook_settings.{self.name}: unknown settings {unknown}; known: {sorted(self.defaults)}"
            )
        self.settings = {**self.defaults, **settings}

    def run(self, videos: list[VideoItem], out_dir: Path) -> HookResult:
        raise NotImplementedError


def register_hook(cls: type[EvalHook]) -> type[EvalHook]:
    """Class decorator: make a hook available by its `name` in eval.hooks."""
    if not getattr(cls, "name", None):
        raise ValueError(f"{cls.__name__} needs a class attribute `name`")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    for module in ("train.eval.vbench", "train.eval.reward"):
        importlib.import_module(module)


def available_hooks() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def resolve_hook(name: str) -> type[EvalHook]:
    """A registered name, or "package.module:Class" (imported on demand)."""
    _load_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, EvalHook)):
            raise ValueError(f"{name} is not an EvalHook subclass")
        return cls
    raise ValueError(f"unknown eval hook {name!r}; known: {sorted(_REGISTRY)} (or 'package.module:Class')")


def collect_videos(folder: str | Path) -> list[VideoItem]:
    """The .mp4 files of a folder with their prompts (sidecar NAME.json, prompts.json, or the file name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of videos")
    mapping: dict[str, str] = {}
    if (folder / "prompts.json").is_file():
        mapping = json.loads((folder / "prompts.json").read_text())
    items = []
    for path in sorted(folder.glob("*.mp4")):
        sidecar: dict = {}
        side = path.with_suffix(".json")
        if side.is_file():
            try:
                sidecar = json.loads(side.read_text())
            except ValueError:
                sidecar = {}
        prompt = sidecar.get("prompt") or mapping.get(path.name) or path.stem
        items.append(VideoItem(path.resolve(), str(prompt), path.stem, sidecar))
    return items


def run_hooks(
    names: Sequence[str],
    videos: str | Path | Sequence[VideoItem],
    out_dir: str | Path,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run each hook on the videos; never raises. Writes out_dir/hooks.json; returns {name: HookResult dict}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    results: dict[str, dict] = {}
    try:
        items = list(videos) if not isinstance(videos, (str, Path)) else collect_videos(videos)
    except Exception as e:  # noqa: BLE001 - a bad folder fails every hook, not the caller
        items, error = [], f"{type(e).__name__}: {e}"
    else:
        error = None if items else f"no .mp4 videos in {videos}"
    for name in names:
        started = time.perf_counter()
        try:
            if error is not None:
                result = HookResult(name, "skipped", message=error)
            else:
                cls = resolve_hook(name)
                hook = cls(**dict(settings.get(name) or {}))
                hook_dir = out_dir / name.replace(":", "_")
                hook_dir.mkdir(parents=True, exist_ok=True)
                result = hook.run(items, hook_dir)
        except HookSkipped as e:
            result = HookResult(name, "skipped", message=str(e))
        except Exception as e:  # noqa: BLE001 - a hook must never take the trainer down
            tb = traceback.format_exc(limit=3)
            result = HookResult(name, "failed", message=f"{type(e).__name__}: {e}\n{tb}")
        result.seconds = time.perf_counter() - started
        results[name] = result.as_dict()
        note = f": {result.message.splitlines()[0]}" if result.message else ""
        log(f"eval hook {name}: {result.status} ({result.seconds:.1f} s){note}")
    (out_dir / "hooks.json").write_text(json.dumps(json_safe(results), indent=1, default=str))
    return results


def flat_scores(results: Mapping[str, Mapping]) -> dict[str, float]:
    """{"eval/<hook>/<metric>": value} of the hooks that ran, for trackers."""
    out = {}
    for name, r in results.items():
        if r.get("status") == "ok":
            for metric, value in r.get("scores", {}).items():
                out[f"eval/{name}/{metric}"] = float(value)
    return out


# -- subprocess hooks -------------------------------------------------------------------------------------------
RUNNERS = Path(__file__).resolve().parent / "runners"


class SubprocessHook(EvalHook):
    """A hook that runs `runner` (a script in train/eval/runners) with another environment's interpreter.

    Protocol: the hook writes request.json ({"videos": [{"path", "prompt", "name"}], "settings": {...}}); the
    runner reads it, runs the tool and writes result.json ({"status", "scores", "per_video", "message"}); exit
    code SKIP_EXIT_CODE means the tool or its weights are missing there. stdout/stderr go to runner.log.
    Settings every such hook accepts: python (the interpreter of the tool's environment, required), timeout_s,
    env (extra environment variables), pythonpath (extra import paths), cwd.
    """

    runner: ClassVar[str]
    common_defaults: ClassVar[dict[str, Any]] = {
        "python": None,
        "timeout_s": 3600,
        "env": {},
        "pythonpath": [],
        "cwd": None,
    }
    tool: ClassVar[str] = "the tool"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.defaults = {**SubprocessHook.common_defaults, **getattr(cls, "defaults", {})}

    def python(self) -> str:
        py = self.settings["python"]
        if not py:
            raise HookSkipped(
                f"{self.tool} runs in its own Python environment: set eval.hook_settings.{self.name}.python "
                f"to that environment's interpreter (e.g. /envs/{self.name}/bin/python)"
            )
        resolved = Path(str(py)).expanduser()
        if not resolved.exists():
            import shutil

            found = shutil.which(str(py))
            if found is None:
                raise HookSkipped(f"eval.hook_settings.{self.name}.python={py}: no such interpreter")
            resolved = Path(found)
        return str(resolved)

    def preflight(self) -> dict[str, Any]:
        """Checks before starting the subprocess (weights present ...); returns runner settings. Raise HookSkipped."""
        return {}

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (self.settings["env"] or {}).items()})
        paths = [str(Path(p).expanduser()) for p in self.settings["pythonpath"] or []]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("HF_HUB_OFFLINE", "1")  # local weights only: fail fast instead of trying to download
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(self, videos: list[VideoItem], out_dir: Path) -> HookResult:
        python = self.python()
        runner_settings = self.preflight()
        request = {
            "videos": [{"path": str(v.path), "prompt": v.prompt, "name": v.name} for v in videos],
            "settings": runner_settings,
            "out_dir": str(out_dir),
        }
        req_path, res_path, log_path = out_dir / "request.json", out_dir / "result.json", out_dir / "runner.log"
        req_path.write_text(json.dumps(request, indent=1))
        res_path.unlink(missing_ok=True)
        cmd = [python, str(RUNNERS / self.runner), str(req_path), str(res_path)]
        files = {"request": str(req_path), "result": str(res_path), "log": str(log_path)}
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            try:
                proc = subprocess.run(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    cwd=self.settings["cwd"] or str(out_dir),
                    timeout=float(self.settings["timeout_s"]),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return HookResult(
                    self.name,
                    "failed",
                    message=f"{self.tool} did not finish in {self.settings['timeout_s']} s "
                    f"(eval.hook_settings.{self.name}.timeout_s); log: {log_path}",
                    files=files,
                )
        result = _read_result(res_path)
        if proc.returncode == SKIP_EXIT_CODE:
            raise HookSkipped(result.get("message") or f"{self.tool} is not available (see {log_path})")
        if proc.returncode != 0 or result.get("status") != "ok":
            tail = _tail(log_path)
            msg = result.get("message") or f"{self.tool} exited with code {proc.returncode}"
            return HookResult(self.name, "failed", message=f"{msg}; log {log_path}:\n{tail}", files=files)
        return self.parse(result, files)

    def parse(self, result: dict, files: dict[str, str]) -> HookResult:
        scores = _numbers(result.get("scores", {}), "scores")
        per_video = {str(k): _numbers(v, f"per_video.{k}") for k, v in (result.get("per_video") or {}).items()}
        if not scores:
            return HookResult(
                self.name, "failed", message=f"{self.tool} returned no scores ({files['result']})", files=files
            )
        return HookResult(self.name, "ok", scores, per_video, result.get("message", ""), files=files)


def _read_result(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {"status": "failed", "message": f"{path} is not valid JSON"}
    return data if isinstance(data, dict) else {"status": "failed", "message": f"{path}: expected a JSON object"}


def _numbers(d: Any, where: str) -> dict[str, float]:
    if not isinstance(d, Mapping):
        raise ValueError(f"runner result {where}: expected an object of numbers, got {type(d).__name__}")
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"runner result {where}.{k}: expected a number, got {v!r}")
        out[str(k)] = float(v)
    return out


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the weight-free in-process hook ------------------------------------------------------------------------------
@register_hook
class FlickerHook(EvalHook):
    """Temporal flicker of every video (VBench's temporal_flickering formula), in process, no weights."""

    name = "flicker"
    defaults: ClassVar[dict[str, Any]] = {}

    def run(self, videos: list[VideoItem], out_dir: Path) -> HookResult:
        from train.eval.metrics import load_frames, temporal_flicker

        per_video = {}
        for v in videos:
            per_video[v.name] = {"temporal_flickering": temporal_flicker(load_frames(v.path))["score"]}
        mean = sum(p["temporal_flickering"] for p in per_video.values()) / len(per_video)
        (out_dir / "flicker.json").write_text(json.dumps(per_video, indent=1))
        return HookResult(
            self.name, "ok", {"temporal_flickering": mean}, per_video, files={"json": str(out_dir / "flicker.json")}
        )


def main_python() -> str:
    """This interpreter (tests and same-environment tools)."""
    return sys.executable
