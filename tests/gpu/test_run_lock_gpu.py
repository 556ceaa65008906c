"""GPU (2 CUDA devices): the run lock's verdict travels over NCCL as over gloo: under a 2-process launch rank 0 holds
the folder and rank 1 is not refused; with another process holding it, both ranks raise the same refusal.

    python -m pytest tests/gpu/test_run_lock_gpu.py -v

Runs this file as the worker under `torchrun --standalone` (each rank writes its verdict to a JSON file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
HOLD = "import sys, time; from radial.run_lock import lock_folder; l = lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(300)"


def _launch(folder: Path, results: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([*cmd, str(folder), str(results)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_lock_verdict_over_nccl(tmp_path):
    folder = tmp_path / "out"
    first = _launch(folder, tmp_path / "a")
    assert [r["verdict"] for r in first] == ["held", "held"] and first[0]["backend"] == "nccl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = _launch(folder, tmp_path / "b")
    finally:
        holder.kill()
        holder.wait()
    for r in second:
        assert r["verdict"].startswith(f"refused: output_dir {folder} is in use by a live run (host ")
        assert f"pid {holder.pid}," in r["verdict"]


def _worker(folder: str, results: str) -> None:
    import torch.distributed as dist

    from radial.run_lock import FolderInUseError, lock_for_launch

    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    try:
        lock = lock_for_launch(folder)
        verdict = "held"
    except FolderInUseError as e:
        lock, verdict = None, f"refused: {e}"
    Path(results).mkdir(parents=True, exist_ok=True)
    record = {"verdict": verdict, "backend": dist.get_backend()}
    (Path(results) / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    dist.barrier()
    if lock is not None:
        lock.release()
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
