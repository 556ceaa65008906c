"""Resumable checkpoints through Accelerate's save_state, written atomically, the last K kept.

Accelerate saves optimizer, scheduler, RNG states of every process and our registered objects (train state,
sampler position); a save hook replaces the transformer's full weights by its LoRA weights, so a checkpoint of a
14B model stays the size of its adapter.
"""

from __future__ import annotations

import errno
import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError

from radial.errors import CheckpointError, MissingPathError
from radial.files import fsync_dir, fsync_tree, share_like_umask

PREFIX = "checkpoint-"
DONE = "checkpoint.json"
LORA_FILE = "lora_adapter.safetensors"
FULL_FILE = "transformer.safetensors"  # train.mode=full: every weight


class TrainState:
    """The step counter and loss history, checkpointed with the rest (Accelerate's register_for_checkpointing)."""

    def __init__(self) -> None:
        self.step = 0
        self.losses: list[tuple[int, float]] = []
        self.skipped = 0  # steps skipped for a non-finite loss

    def state_dict(self) -> dict:
        return {"step": self.step, "losses": list(self.losses), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.losses = [tuple(x) for x in state["losses"]]
        self.skipped = int(state.get("skipped", sum(1 for _, v in self.losses if v != v)))  # older: NaN losses


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root (those with their marker file), oldest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / DONE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with a checkpoint (None when it reads back): its marker, every file it recorded at the recorded
    size, and every tensor file readable (safetensors opened and read, torch pickles loaded)."""
    from safetensors import safe_open

    path = Path(path)
    marker = path / DONE
    try:
        done = json.loads(marker.read_text())
        int(done["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{marker}: unreadable ({type(e).__name__}: {e})"
    for name, size in (done.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            return f"{file}: missing"
        if file.stat().st_size != size:
            return f"{file}: {file.stat().st_size} bytes, {size} when it was written (truncated or overwritten)"
    # Structure, not every byte (a full-weight checkpoint can be tens of GB): safetensors checks at open that its
    # header parses and covers the file exactly; torch's zip files are unpickled with their storages memory-mapped.
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != DONE):
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 - safe_open has no items()
                        f.get_slice(key).get_shape()
            elif file.suffix in (".bin", ".pkl", ".pt", ".pth"):
                _load_torch_file(file)
        except Exception as e:  # any failure to read back means the checkpoint cannot be resumed from
            reason = " ".join(str(e).split())[:200]
            return f"{file}: unreadable, corrupt or truncated ({type(e).__name__}: {reason})"
    return None


def _load_torch_file(file: Path) -> None:
    """Unpickle one of our own torch files as Accelerate loads it (weights_only=False), storages memory-mapped."""
    try:
        torch.load(file, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # not a zip file: a legacy torch.save format, read whole
            raise
        torch.load(file, map_location="cpu", weights_only=False)


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """`train.resume`: empty -> None; `latest` -> the newest checkpoint that reads back (older ones are tried in turn,
    with a warning naming what was wrong; None if there are none); else that path, which must read back."""
    if resume in (None, "", "none", "null"):
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        problems = []
        for path in reversed(found):
            problem = verify_checkpoint(path)
            if problem is None:
                if problems:
                    warnings.warn(
                        f"train.resume=latest: skipped {len(problems)} newer checkpoint(s) that do not read back "
                        f"({'; '.join(problems)}); resuming from {path}",
                        stacklevel=2,
                    )
                return path
            problems.append(problem)
        if problems:
            raise CheckpointError(
                f"train.resume=latest: no checkpoint under {root} reads back ({'; '.join(problems)}); remove them "
                "or set train.resume= to start over"
            )
        return None
    path = Path(resume)
    if not (path / DONE).is_file():
        raise MissingPathError(
            f"train.resume={resume!r}: not a complete checkpoint directory (expected {path / DONE}); "
            f"complete ones under {root}: {[p.name for p in list_checkpoints(root)]}"
        )
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"train.resume={resume!r}: {problem}")
    return path


#: a write that failed with less than this free is taken for a full disk (torch.save's C++ writer reports ENOSPC as
#: "iostream error" or "unexpected pos", without errno)
LOW_SPACE_BYTES = 64 * 2**20


def _disk_full(error: BaseException, folder: Path) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(marker in str(error) for marker in ("No space left", "StorageFull", "Disk quota")):
        return True
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


def _newest_file(folder: Path) -> Path | None:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None


class CheckpointManager:
    """Save and load training state under `root` with an accelerator; the model weights are the trainable ones
    (`weights_file`: the LoRA, or the whole transformer in train.mode=full), written by `save_lora`."""

    def __init__(
        self,
        accelerator,
        root: str | Path,
        keep_last: int,
        save_lora: Callable[[Path], None],
        load_lora: Callable[[Path], None],
        save_kwargs: dict | None = None,
        load_kwargs: dict | None = None,
        weights_file: str = LORA_FILE,
    ) -> None:
        """`save_kwargs` / `load_kwargs` go to Accelerate's save_state / load_state (DeepSpeed's save_checkpoint /
        load_checkpoint: exclude_frozen_parameters, load_module_strict)."""
        if keep_last < 1:
            raise ValueError(f"train.keep_last must be >= 1, got {keep_last}")
        self.accelerator = accelerator
        self.root = Path(root)
        self.keep_last = keep_last
        self._save_lora, self._load_lora = save_lora, load_lora
        self.weights_file = weights_file
        self._save_kwargs, self._load_kwargs = dict(save_kwargs or {}), dict(load_kwargs or {})
        accelerator.register_save_state_pre_hook(self._on_save)
        accelerator.register_load_state_pre_hook(self._on_load)

    def _on_save(self, models: list, weights: list, output_dir: str) -> None:
        # Replace full model weights by the adapter: Accelerate saves whatever remains in `weights`.
        if self.accelerator.is_main_process:
            self._save_lora(Path(output_dir) / self.weights_file)
        while weights:
            weights.pop()

    def _on_load(self, models: list, input_dir: str) -> None:
        self._load_lora(Path(input_dir) / self.weights_file)
        while models:
            models.pop()

    def save(self, step: int) -> Path:
        """Write checkpoint-<step> atomically (temporary directory, then rename) and prune old ones."""
        acc = self.accelerator
        final = self.root / f"{PREFIX}{step:08d}"
        tmp = self.root / f".tmp-{PREFIX}{step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp), **self._save_kwargs)
            acc.wait_for_everyone()
            if acc.is_main_process:
                files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
                done = {"step": step, "time": time.time(), "torch": torch.__version__, "files": files}
                (tmp / DONE).write_text(json.dumps(done))
                for p in tmp.rglob("*"):
                    share_like_umask(p)  # safetensors writes 0600
                fsync_tree(tmp)  # the data is on disk before the rename makes the checkpoint count as complete
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
                fsync_dir(self.root)
        except (OSError, RuntimeError, SafetensorError) as e:
            if not (isinstance(e, PermissionError) or _disk_full(e, self.root)):
                raise
            file = getattr(e, "filename", None) or _newest_file(tmp) or tmp
            shutil.rmtree(tmp, ignore_errors=True)  # frees the space; the complete checkpoints stay
            kept = [p.name for p in list_checkpoints(self.root)]
            what = "permission denied" if isinstance(e, PermissionError) else "no space left on device"
            free = shutil.disk_usage(self.root).free / 2**20 if self.root.is_dir() else float("nan")
            raise CheckpointError(
                f"checkpoint at step {step}: {what} while writing {file} ({free:.0f} MiB free under {self.root}); "
                f"earlier checkpoints are kept: {kept or 'none'}"
            ) from e
        if acc.is_main_process:
            for old in list_checkpoints(self.root)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load(self, path: Path) -> int:
        """Restore everything saved by `save`; returns the checkpoint's step."""
        self.accelerator.load_state(str(path), **self._load_kwargs)
        return int(json.loads((path / DONE).read_text())["step"])
