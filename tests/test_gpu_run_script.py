"""benchmarks/gpu_run.sh and its flash-attn-4 install block: valid bash, and the install finds, joins, checks and
installs its files (a dry run with fake wheel parts and a fake python3 that records its arguments)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
W = "nvidia_cutlass_dsl_libs_cu12-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None, reason="bash")


def test_scripts_parse():
    for name in ("gpu_run.sh", "fa4_install.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / name)], check=True)


def _setup(tmp_path: Path, checksum_ok: bool = True, stage: bool = True) -> dict:
    work, stage_dir, bin_dir = tmp_path / "repo", tmp_path / "stage", tmp_path / "bin"
    parts = work / ".whl_fa4_2"
    for d in (parts, stage_dir, bin_dir):
        d.mkdir(parents=True)
    one, two = b"first half of the compiler wheel;", b"second half"
    if stage:
        (stage_dir / f"{W}.part1").write_bytes(one)
    (parts / f"{W}.part2").write_bytes(two)
    digest = hashlib.sha256(one + two if checksum_ok else b"other").hexdigest()
    (parts / "SHA256").write_text(f"{digest}  {W}\n")
    (parts / "flash_attn_4-4.0.0b36-py3-none-any.whl").write_bytes(b"w")
    record = tmp_path / "python3.log"
    python = bin_dir / "python3"
    python.write_text(f'#!/usr/bin/env bash\necho "$@" >> {record}\n[ "$1" = -c ] && echo 4.0.0b36\nexit 0\n')
    python.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FA4_STAGE=str(stage_dir),
               SITE=str(tmp_path / "site"), FA4_JOINED=str(tmp_path / "joined"))  # fmt: skip
    return {"work": work, "env": env, "record": record, "joined": tmp_path / "joined" / W}


def _install(setup: dict) -> str:
    script = f'. {ROOT / "benchmarks" / "fa4_install.sh"} && fa4_install && echo "PYTHONPATH=$PYTHONPATH"'
    done = subprocess.run(["bash", "-c", script], cwd=setup["work"], env=setup["env"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_install_joins_checks_and_installs(tmp_path):
    s = _setup(tmp_path)
    out = _install(s)
    assert "fa4: installed 4.0.0b36" in out
    assert s["joined"].read_bytes() == b"first half of the compiler wheel;second half"
    pip = [line for line in s["record"].read_text().splitlines() if line.startswith("-m pip install")][0]
    assert f"--target {tmp_path / 'site'}" in pip and str(s["joined"]) in pip and "flash_attn_4-4.0.0b36" in pip
    assert f"{tmp_path / 'site'}/nvidia_cutlass_dsl/dsl_packages" in out.split("PYTHONPATH=")[1]


def test_install_refuses_a_bad_checksum_or_a_missing_part(tmp_path):
    out = _install(_setup(tmp_path / "a", checksum_ok=False))
    assert "fa4: not installed (sha256" in out
    out = _install(_setup(tmp_path / "b", stage=False))
    assert "fa4: not installed" in out and "fa4-stage" in out
    s = _setup(tmp_path / "c")
    shutil.rmtree(s["work"] / ".whl_fa4_2")
    assert "fa4: not installed (no .whl_fa4_2/" in _install(s)
