"""Checkpoint save / load / prune / verify on a small Accelerate setup (seconds, no trainer): what a checkpoint
holds, which ones count, which one `train.resume` picks, and every way it says what is wrong."""

import errno
import json
import os
import re

import pytest
import torch

import train.checkpoint as ckpt
from radial.errors import CheckpointError, MissingPathError
from tests.test_checkpoint_failures import Blob, manager
from train.checkpoint import TrainState, list_checkpoints, resolve_resume, verify_checkpoint


def test_train_state_round_trips_and_reads_older_states():
    """Guards TrainState's checkpointed fields: step, losses (as tuples) and skipped steps; a state written before
    `skipped` existed counts its NaN losses."""
    s = TrainState()
    # 2 skipped, 1 NaN loss: with gradient accumulation a skipped step can log the mean of its finite micro-batches
    s.step, s.losses, s.skipped = 7, [(1, 0.5), (2, float("nan")), (3, 0.25)], 2
    back = TrainState()
    back.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert back.step == 7 and back.skipped == 2 and back.losses[0] == (1, 0.5) and isinstance(back.losses[0], tuple)
    old = TrainState()
    old.load_state_dict({"step": "3", "losses": [[1, 0.5], [2, float("nan")], [3, float("nan")]]})
    assert old.step == 3 and old.skipped == 2
    fresh = TrainState()
    assert (fresh.step, fresh.losses, fresh.skipped) == (0, [], 0)


def test_save_writes_a_complete_checkpoint_and_load_restores_it(tmp_path):
    """Guards the saved content (weights file via save_lora, registered objects, marker with step, torch version
    and every file's size), the name checkpoint-<8-digit step>, no temporary folder left, and load's step."""
    blob = Blob()
    m = manager(tmp_path, blob)
    final = m.save(12)
    assert final == tmp_path / "checkpoint-00000012" and final.is_dir()
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    done = json.loads((final / ckpt.DONE).read_text())
    assert done["step"] == 12 and done["torch"] == torch.__version__ and done["time"] > 0
    files = {
        str(p.relative_to(final)): p.stat().st_size for p in final.rglob("*") if p.is_file() and p.name != ckpt.DONE
    }
    assert done["files"] == files and ckpt.LORA_FILE in files and "optimizer.bin" in files
    assert verify_checkpoint(final) is None
    blob.value = torch.zeros(4)
    assert m.load(final) == 12
    assert torch.equal(blob.value, torch.arange(4, dtype=torch.float32))  # the registered object came back


def test_weights_file_name_and_load_hook(tmp_path):
    """Guards `weights_file` (train.mode=full writes transformer.safetensors) and that load hands that file to
    load_lora, with Accelerate's own model loading skipped."""
    saved, loaded = [], []
    m = manager(tmp_path)
    m.weights_file = ckpt.FULL_FILE
    m._save_lora = lambda path: (saved.append(path), path.write_bytes(b"x"))
    m._load_lora = loaded.append
    final = m.save(1)
    assert saved[0].name == ckpt.FULL_FILE and (final / ckpt.FULL_FILE).is_file()
    m.load(final)
    assert loaded == [final / ckpt.FULL_FILE]


def test_keep_last_prunes_the_oldest_and_a_step_saved_again_is_replaced(tmp_path):
    """Guards pruning (the newest keep_last stay, by step number, not by name) and saving a step twice."""
    m = manager(tmp_path)  # keep_last=3
    for step in (8, 9, 10, 11):
        m.save(step)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"checkpoint-{s:08d}" for s in (9, 10, 11)]
    m.save(11)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"checkpoint-{s:08d}" for s in (9, 10, 11)]
    with pytest.raises(ValueError, match="train.keep_last must be >= 1, got 0"):
        ckpt.CheckpointManager(m.accelerator, tmp_path, 0, save_lora=print, load_lora=print)


def test_list_checkpoints_counts_only_complete_ones_in_step_order(tmp_path):
    """Guards what counts as a checkpoint: a checkpoint-N folder with its marker; sorted by N as a number."""
    assert list_checkpoints(tmp_path / "missing") == []
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-00000002"):
        (tmp_path / name).mkdir()
        (tmp_path / name / ckpt.DONE).write_text("{}")
    (tmp_path / "checkpoint-11").mkdir()  # no marker: interrupted
    (tmp_path / "other-12").mkdir()
    (tmp_path / "other-12" / ckpt.DONE).write_text("{}")
    (tmp_path / "checkpoint-13").write_text("a file")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002", "checkpoint-9", "checkpoint-10"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / ckpt.DONE).write_text("not json"), r"checkpoint.json: unreadable \(JSONDecodeError"),
        (lambda p: (p / ckpt.DONE).write_text('{"files": {}}'), r"checkpoint.json: unreadable \(KeyError"),
        (lambda p: (p / "optimizer.bin").unlink(), r"optimizer.bin: missing$"),
        (lambda p: (p / "optimizer.bin").write_bytes(b"x"), r"optimizer.bin: 1 bytes, \d+ when it was written \(truncated"),
    ],
)  # fmt: skip
def test_verify_names_what_is_wrong(tmp_path, damage, message):
    """Guards each check of verify_checkpoint and its message."""
    final = manager(tmp_path).save(1)
    damage(final)
    problem = verify_checkpoint(final)
    assert problem is not None and problem.startswith(str(final)), problem
    assert re.search(message, problem), problem


def test_verify_reads_unrecorded_tensor_files_too(tmp_path):
    """Guards the structural read of every tensor file, also ones the marker does not list (a marker of an older
    version had no sizes): a corrupt safetensors or torch file is named."""
    final = manager(tmp_path).save(1)
    done = json.loads((final / ckpt.DONE).read_text())
    (final / ckpt.DONE).write_text(json.dumps({"step": done["step"]}))
    assert verify_checkpoint(final) is None
    (final / ckpt.LORA_FILE).write_bytes(b"\x00" * 16)
    assert f"{final / ckpt.LORA_FILE}: unreadable, corrupt or truncated" in verify_checkpoint(final)
    final = manager(tmp_path / "b").save(1)
    (final / ckpt.DONE).write_text(json.dumps({"step": 1}))
    (final / "optimizer.bin").write_bytes(b"not a torch file")
    assert f"{final / 'optimizer.bin'}: unreadable, corrupt or truncated" in verify_checkpoint(final)


def test_legacy_torch_files_are_read_whole(tmp_path):
    """A torch file in the legacy (non-zip) format cannot be memory-mapped: read without mmap instead of refused."""
    path = tmp_path / "old.bin"
    torch.save({"a": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    ckpt._load_torch_file(path)


@pytest.mark.parametrize("value", [None, "", "none", "null"])
def test_resume_unset_is_a_fresh_start(tmp_path, value):
    manager(tmp_path).save(1)
    assert resolve_resume(value, tmp_path) is None


def test_resume_path_must_be_a_complete_checkpoint(tmp_path):
    """Guards the explicit-path branch: a folder without marker is named with the complete ones, a good one is
    returned as given."""
    final = manager(tmp_path).save(3)
    assert resolve_resume(str(final), tmp_path) == final
    with pytest.raises(MissingPathError, match=r"not a complete checkpoint directory .*\['checkpoint-00000003'\]"):
        resolve_resume(str(tmp_path / "checkpoint-00000004"), tmp_path)


def test_disk_full_is_told_from_other_write_errors(tmp_path, monkeypatch):
    """Guards _disk_full: ENOSPC / EDQUOT, torch's and safetensors' messages, or little space left."""
    assert ckpt._disk_full(OSError(errno.ENOSPC, "x"), tmp_path)
    assert ckpt._disk_full(OSError(errno.EDQUOT, "x"), tmp_path)
    assert ckpt._disk_full(RuntimeError("No space left on device"), tmp_path)
    assert ckpt._disk_full(RuntimeError("... StorageFull ..."), tmp_path)
    assert ckpt._disk_full(OSError("Disk quota exceeded"), tmp_path)  # no errno: the message decides
    assert not ckpt._disk_full(RuntimeError("unexpected pos"), tmp_path)  # plenty of space here

    class Usage:
        free = ckpt.LOW_SPACE_BYTES - 1

    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda _: Usage)
    assert ckpt._disk_full(RuntimeError("unexpected pos"), tmp_path)
    Usage.free = ckpt.LOW_SPACE_BYTES
    assert not ckpt._disk_full(RuntimeError("unexpected pos"), tmp_path)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda _: (_ for _ in ()).throw(OSError("gone")))
    assert not ckpt._disk_full(RuntimeError("unexpected pos"), tmp_path)


def test_permission_denied_is_one_error_and_other_errors_pass_through(tmp_path, monkeypatch):
    """Guards the save's error handling: a PermissionError becomes a CheckpointError naming the step and the kept
    checkpoints (the temporary folder removed); an error that is neither that nor a full disk propagates."""
    m = manager(tmp_path)
    first = m.save(1)
    real = m.accelerator.save_state

    def denied(path, **kwargs):
        real(path, **kwargs)
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.bin"))

    monkeypatch.setattr(m.accelerator, "save_state", denied)
    with pytest.raises(CheckpointError, match=r"checkpoint at step 2: permission denied while writing .*x.bin .*MiB "
                       r"free under .*earlier checkpoints are kept: \['checkpoint-00000001'\]$"):  # fmt: skip
        m.save(2)
    assert list_checkpoints(tmp_path) == [first] and not (tmp_path / ".tmp-checkpoint-00000002").exists()
    monkeypatch.setattr(m.accelerator, "save_state", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="^bug$"):
        m.save(3)


def test_newest_file_is_the_last_written(tmp_path):
    """The file a failed write names when the error has none: the most recently modified one."""
    assert ckpt._newest_file(tmp_path / "none") is None
    (tmp_path / "z").write_text("z")  # named last, written first: the name must not decide
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_text("a")
    os.utime(tmp_path / "z", ns=(1, 10**18))
    os.utime(tmp_path / "sub" / "a", ns=(1, 2 * 10**18))
    assert ckpt._newest_file(tmp_path) == tmp_path / "sub" / "a"
