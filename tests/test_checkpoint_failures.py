"""Checkpoints that go wrong: damaged files on resume (fallback to an older good one, or a one-line error), fsync
before the rename, modes that follow the umask, and a disk that fills up during the write."""

import json
import os
import re
import shutil
import subprocess
import uuid
import warnings
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

import train.checkpoint as ckpt
from radial.errors import CheckpointError
from radial.lora import export_comfy
from train.checkpoint import CheckpointManager, list_checkpoints, resolve_resume, verify_checkpoint


class Blob:
    """A registered checkpoint object of a chosen size (to fill a small disk)."""

    def __init__(self, numel: int = 4) -> None:
        self.value = torch.arange(numel, dtype=torch.float32)

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def manager(root, blob=None):
    """A CheckpointManager over a CPU Accelerator with a small model and optimizer (Accelerate's real files)."""
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    model, optimizer = acc.prepare(model, optimizer)
    acc.register_for_checkpointing(blob or Blob())

    def save_lora(path):
        save_file({"lora_A": model.weight.detach().clone()}, str(path))

    def load_lora(path):
        load_file(str(path))

    return CheckpointManager(acc, root, keep_last=3, save_lora=save_lora, load_lora=load_lora)


def test_resume_latest_skips_damaged_newer_checkpoints(tmp_path):
    m = manager(tmp_path)
    good, lora_bad, optim_bad = (m.save(s) for s in (1, 2, 3))
    assert verify_checkpoint(good) is None and resolve_resume("latest", tmp_path) == optim_bad
    lora = lora_bad / ckpt.LORA_FILE
    lora.write_bytes(lora.read_bytes()[:-10])  # truncated
    optimizer = optim_bad / "optimizer.bin"
    optimizer.write_bytes(os.urandom(optimizer.stat().st_size))  # same size, random bytes
    with pytest.warns(UserWarning, match=r"skipped 2 newer checkpoint\(s\)") as caught:
        assert resolve_resume("latest", tmp_path) == good
    message = str(caught[0].message)
    assert f"{optimizer}: unreadable, corrupt or truncated" in message and str(lora) in message
    problems = [verify_checkpoint(optim_bad), verify_checkpoint(lora_bad)]  # the whole warning, newest first
    assert message == (
        f"train.resume=latest: skipped 2 newer checkpoint(s) that do not read back ({'; '.join(problems)}); "
        f"resuming from {good}"
    )
    # An explicit path to a damaged checkpoint: one error naming the file.
    with pytest.raises(CheckpointError, match=rf"train.resume=.*: {optimizer}: unreadable, corrupt or truncated"):
        resolve_resume(str(optim_bad), tmp_path)
    (good / "random_states_0.pkl").unlink()
    problems = [verify_checkpoint(p) for p in (optim_bad, lora_bad, good)]
    with pytest.raises(CheckpointError) as err:
        resolve_resume("latest", tmp_path)
    assert str(err.value) == (
        f"train.resume=latest: no checkpoint under {tmp_path} reads back ({'; '.join(problems)}); remove them or set "
        "train.resume= to start over"
    )
    assert problems[2].endswith("random_states_0.pkl: missing")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_resume("latest", tmp_path / "none") is None  # no checkpoints at all: a fresh start


def test_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    seen = []

    def record(folder):
        seen.append((folder.name, (folder / ckpt.DONE).is_file(), (tmp_path / "checkpoint-00000001").exists()))

    monkeypatch.setattr(ckpt, "fsync_tree", record)
    manager(tmp_path).save(1)
    assert seen == [(".tmp-checkpoint-00000001", True, False)]  # the whole folder, marker included, not yet renamed


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o007, 0o660)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        final = manager(tmp_path).save(1)
        lora = export_comfy({"a.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "lora" / "comfy.safetensors", {})
    finally:
        os.umask(old)
    files = [p for p in final.rglob("*") if p.is_file()] + [lora]
    assert ckpt.LORA_FILE in {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only: mounting needs it)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a handle left open must not keep it


def test_disk_full_names_the_file_and_keeps_earlier_checkpoints(small_disk):
    blob = Blob()
    m = manager(small_disk / "checkpoints", blob)
    first = m.save(1)
    blob.value = torch.zeros(512 * 1024)  # 2 MiB: more than the disk holds
    with pytest.raises(CheckpointError) as err:
        m.save(2)
    message = str(err.value)
    assert "checkpoint at step 2: no space left on device while writing " in message
    assert f"{small_disk}/checkpoints/.tmp-checkpoint-00000002/" in message
    assert "earlier checkpoints are kept: ['checkpoint-00000001']" in message
    assert list_checkpoints(small_disk / "checkpoints") == [first] and verify_checkpoint(first) is None
    assert not (small_disk / "checkpoints" / ".tmp-checkpoint-00000002").exists()  # the space is given back
    # the free space it states is the disk's, in MiB, after the partial checkpoint was removed (0-1 of 1 MiB)
    free = re.search(r"\((\d+) MiB free under (.+?)\); ", message)
    assert free and int(free[1]) == round(shutil.disk_usage(small_disk).free / 2**20) and free[2] == str(m.root)
    # a first checkpoint that does not fit: "none" kept
    fresh = manager(small_disk / "other", blob)
    with pytest.raises(CheckpointError, match=r"earlier checkpoints are kept: none$"):
        fresh.save(1)


def test_a_lora_written_for_other_targets_names_the_file(tmp_path):
    """Resuming a checkpoint whose LoRA covers modules this run's adapter lacks (other lora.projections, or a target
    the code no longer adapts): a one-line error naming the file, not PEFT's silent partial load."""
    from radial.errors import LoraFileError
    from radial.lora import attach_lora, load_lora_state_dict, lora_state_dict
    from radial.models import get_adapter

    adapter = get_adapter("wan")
    wide, narrow = adapter.build_tiny(), adapter.build_tiny()
    attach_lora(wide, rank=2, alpha=2, target_modules=adapter.lora_target_modules(text=True))
    attach_lora(narrow, rank=2, alpha=2, target_modules=adapter.lora_target_modules(text=False))
    path = tmp_path / ckpt.LORA_FILE
    save_file(lora_state_dict(wide), str(path))
    with pytest.raises(LoraFileError, match=rf"{path}: LoRA weights do not fit .* unexpected keys .*lora.projections"):
        load_lora_state_dict(narrow, load_file(str(path)), source=path)
    load_lora_state_dict(wide, load_file(str(path)), source=path)  # its own file loads


@pytest.mark.parametrize("suffix", [".pkl", ".pt", ".pth", ".bin"])
def test_every_torch_file_kind_is_read_back(tmp_path, suffix):
    """Guards which files verify_checkpoint unpickles (mutation testing: dropping a suffix from the list left a
    corrupt file of that kind unnoticed), and that its message names the error's type and text."""
    m = manager(tmp_path)
    good = m.save(1)
    extra = good / f"extra_state{suffix}"
    torch.save({"step": torch.tensor(1)}, extra)
    done = json.loads((good / ckpt.DONE).read_text())
    done["files"][extra.name] = extra.stat().st_size
    (good / ckpt.DONE).write_text(json.dumps(done))
    assert verify_checkpoint(good) is None  # a well-formed one reads back
    extra.write_bytes(b"\x00" * extra.stat().st_size)  # same size, not a torch file
    problem = verify_checkpoint(good)
    assert problem is not None and problem.startswith(f"{extra}: unreadable, corrupt or truncated (")
    kind, _, reason = problem[len(f"{extra}: unreadable, corrupt or truncated (") : -1].partition(": ")
    assert kind not in ("", "NoneType") and reason and reason != "None"
    with pytest.raises(Exception) as raised:  # the same read, for the whole reason: the error's text on one line
        ckpt._load_torch_file(extra)
    assert (kind, reason) == (type(raised.value).__name__, " ".join(str(raised.value).split())[:200])


def test_keep_last_one_keeps_only_the_newest(tmp_path):
    """Guards the smallest keep_last (mutation testing: `keep_last <= 1` refused it and no test noticed)."""
    m = manager(tmp_path)
    one = ckpt.CheckpointManager(m.accelerator, tmp_path, 1, save_lora=m._save_lora, load_lora=m._load_lora)
    for step in (1, 2):
        one.save(step)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"{ckpt.PREFIX}{2:08d}"]


def test_a_stale_temporary_folder_does_not_leak_into_the_checkpoint(tmp_path):
    """Guards the clean-up of an interrupted save's temporary folder (mutation testing: not removing it passed)."""
    m = manager(tmp_path)
    stale = tmp_path / f".tmp-{ckpt.PREFIX}{3:08d}"
    stale.mkdir(parents=True)
    (stale / "junk_from_a_killed_save.bin").write_bytes(b"junk")
    final = m.save(3)
    assert not (final / "junk_from_a_killed_save.bin").exists() and verify_checkpoint(final) is None


def test_a_legacy_format_pickle_with_python_objects_reads_back(tmp_path):
    """Guards the legacy (non-zip) path of reading torch files back: Accelerate's RNG states are Python / NumPy
    objects, so it must unpickle fully (mutation testing: weights_only=True there passed every test)."""
    import numpy as np

    m = manager(tmp_path)
    good = m.save(1)
    legacy = good / "legacy_states.pkl"
    torch.save({"numpy": np.random.get_state(), "python": [1, "a"]}, legacy, _use_new_zipfile_serialization=False)
    done = json.loads((good / ckpt.DONE).read_text())
    done["files"][legacy.name] = legacy.stat().st_size
    (good / ckpt.DONE).write_text(json.dumps(done))
    assert verify_checkpoint(good) is None


def _busy_rmtree(monkeypatch):
    """shutil.rmtree as on a file system where a folder cannot be removed (an NFS .nfs* file held open by another
    process): it raises unless told to ignore errors, and then leaves the folder."""
    calls = []

    def rmtree(path, ignore_errors=False, **kwargs):
        calls.append(Path(path).name)
        if not ignore_errors:
            raise OSError(16, "Device or resource busy", str(path))

    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    return calls


def test_a_checkpoint_that_cannot_be_pruned_does_not_fail_the_save(tmp_path, monkeypatch):
    """Guards the `ignore_errors` of pruning: an old checkpoint that cannot be removed stays, and training goes on."""
    m = manager(tmp_path)
    one = ckpt.CheckpointManager(m.accelerator, tmp_path, 1, save_lora=m._save_lora, load_lora=m._load_lora)
    first = one.save(1)
    calls = _busy_rmtree(monkeypatch)
    second = one.save(2)
    assert first.name in calls and verify_checkpoint(second) is None
    assert list_checkpoints(tmp_path) == [first, second]


def test_a_failed_write_whose_folder_cannot_be_removed_still_ends_in_one_line(tmp_path, monkeypatch):
    """Guards the `ignore_errors` of the clean-up after a failed write: the error stays the checkpoint's one line
    (naming the file), not the clean-up's."""
    m = manager(tmp_path)
    first = m.save(1)
    calls = _busy_rmtree(monkeypatch)

    def refused(output_dir, **kwargs):
        raise PermissionError(13, "Permission denied", f"{output_dir}/optimizer.bin")

    monkeypatch.setattr(m.accelerator, "save_state", refused)
    with pytest.raises(CheckpointError) as err:
        m.save(2)
    assert str(err.value).startswith(
        f"checkpoint at step 2: permission denied while writing {tmp_path}/.tmp-checkpoint-00000002/optimizer.bin ("
    )
    assert str(err.value).endswith("earlier checkpoints are kept: ['checkpoint-00000001']")
    assert calls.count(".tmp-checkpoint-00000002") == 2 and list_checkpoints(tmp_path) == [first]
    # the MiB free of this disk, give or take what other tests write meanwhile (a wrong unit is off by 2x or more)
    free = re.search(r"\((\d+) MiB free under ", str(err.value))
    assert free and abs(int(free[1]) - shutil.disk_usage(tmp_path).free / 2**20) <= 0.05 * int(free[1]) + 16


def test_deepspeed_arguments_reach_accelerate(tmp_path, monkeypatch):
    """Guards save_kwargs / load_kwargs (DeepSpeed's exclude_frozen_parameters, load_module_strict): handed to
    Accelerate's save_state / load_state with the folder."""
    m = manager(tmp_path)
    m._save_kwargs, m._load_kwargs = {"exclude_frozen_parameters": True}, {"load_module_strict": False}
    seen = {}
    real_save, real_load = m.accelerator.save_state, m.accelerator.load_state

    def save_state(output_dir, **kwargs):
        seen["save"] = kwargs
        return real_save(output_dir)

    def load_state(input_dir, **kwargs):
        seen["load"] = kwargs
        return real_load(input_dir)

    monkeypatch.setattr(m.accelerator, "save_state", save_state)
    monkeypatch.setattr(m.accelerator, "load_state", load_state)
    assert m.load(m.save(4)) == 4
    assert seen == {"save": {"exclude_frozen_parameters": True}, "load": {"load_module_strict": False}}


def test_torch_files_are_checked_on_the_cpu_and_memory_mapped(tmp_path, monkeypatch):
    """Guards how verify_checkpoint unpickles: onto the CPU (a checkpoint written on a GPU verifies on a machine
    without it) and memory-mapped (a many-GB optimizer state is not read whole); a legacy file, whole, on the CPU."""
    m = manager(tmp_path)
    good = m.save(1)
    seen = []
    real_load = torch.load

    def load(file, **kwargs):
        seen.append((Path(file).name, kwargs))
        return real_load(file, **kwargs)

    monkeypatch.setattr(ckpt.torch, "load", load)
    assert verify_checkpoint(good) is None
    assert seen and all(kw == {"map_location": "cpu", "weights_only": False, "mmap": True} for _, kw in seen)
    legacy = good / "legacy.pt"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    seen.clear()
    ckpt._load_torch_file(legacy)
    assert [kw for _, kw in seen] == [
        {"map_location": "cpu", "weights_only": False, "mmap": True},
        {"map_location": "cpu", "weights_only": False},
    ]
