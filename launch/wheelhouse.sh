#!/bin/bash
# An offline wheelhouse of Radial LoRA and all its dependencies, for clusters without internet access.
#
#   launch/wheelhouse.sh wheelhouse/                                    # for this machine's Python and platform
#   PYTHON_VERSION=3.12 PLATFORM="manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64" \
#       launch/wheelhouse.sh wheelhouse/                                # for another target interpreter / platform
#   SKIP_TORCH=1 launch/wheelhouse.sh wheelhouse/   # keep the cluster's torch, triton and CUDA libraries (much smaller)
#   EXTRAS=triton DEEPSPEED_SPEC=deepspeed==0.19.8 launch/wheelhouse.sh wheelhouse/
#   DRY_RUN=1 launch/wheelhouse.sh wheelhouse/      # print the commands only
#   RESOLVE_ONLY=1 launch/wheelhouse.sh wheelhouse/ # steps 1-3: the wheels to download, in requirements.txt
#
# On the cluster (same Python version as the target):
#   pip install --no-index --find-links wheelhouse/ "radial-lora[triton]"     # or, in a checkout: -e ".[triton]"
#
# Steps: (1) this project as a wheel; (2) DeepSpeed, published on PyPI as an sdist only, built into a pure-Python
# wheel with DS_BUILD_OPS=0 (no compiled ops: ZeRO with a torch optimizer needs none; others JIT-compile where used);
# and the sdist-only dependencies in SDIST_ONLY; (3) the dependency closure resolved by pip for the target (binary wheels only; the wheels of steps 1-2 are found
# through --find-links), written to OUT/requirements.txt; (4) those wheels downloaded, without re-resolving.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-wheelhouse}" && cd "${1:-wheelhouse}" && pwd)
PY=${PYTHON:-python3}
DEEPSPEED_SPEC=${DEEPSPEED_SPEC:-deepspeed}
# Dependencies published only as sdists (pure Python): built into wheels in step 2, like DeepSpeed.
SDIST_ONLY=${SDIST_ONLY:-antlr4-python3-runtime==4.9.3}
VERSION=$(awk -F'"' '/^version *=/ { print $2; exit }' "$ROOT/pyproject.toml")
REQUIREMENT="radial-lora${EXTRAS:+[$EXTRAS]}==$VERSION"

TARGET=()
if [ -n "${PYTHON_VERSION:-}" ]; then TARGET+=(--python-version "$PYTHON_VERSION" --implementation cp); fi
for platform in ${PLATFORM:-}; do TARGET+=(--platform "$platform"); done

run() {
  echo "+ $*"
  if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}

export DS_BUILD_OPS=0
run "$PY" -m pip wheel --no-deps --wheel-dir "$OUT" "$ROOT"
run "$PY" -m pip wheel --no-deps --wheel-dir "$OUT" "$DEEPSPEED_SPEC"
for spec in $SDIST_ONLY; do run "$PY" -m pip wheel --no-deps --wheel-dir "$OUT" "$spec"; done

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
run "$PY" -m pip install --dry-run --ignore-installed --quiet --only-binary=:all: --find-links "$OUT" \
  ${TARGET[@]+"${TARGET[@]}"} --target "$SCRATCH/target" --report "$OUT/resolve.json" "$REQUIREMENT" "$DEEPSPEED_SPEC"
if [ -n "${DRY_RUN:-}" ]; then exit 0; fi

SKIP_TORCH=${SKIP_TORCH:-} "$PY" - "$OUT" <<'PYTHON'
import json
import os
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
report = json.loads((out / "resolve.json").read_text())
skip_torch = bool(os.environ.get("SKIP_TORCH"))
local = {p.name.split("-")[0].replace("_", "-").lower() for p in out.glob("*.whl")}  # built in steps 1-2
lines = []
for item in report["install"]:
    meta = item["metadata"]
    name = re.sub(r"[-_.]+", "-", meta["name"]).lower()
    if name in local:
        continue
    if skip_torch and (name in ("torch", "triton") or name.startswith("nvidia-") or name == "cuda-bindings"):
        continue
    lines.append(f"{name}=={meta['version']}")
(out / "requirements.txt").write_text("\n".join(sorted(lines)) + "\n")
print(f"{len(lines)} wheels to download (requirements.txt)")
PYTHON

if [ -n "${RESOLVE_ONLY:-}" ]; then exit 0; fi
run "$PY" -m pip download --no-deps --only-binary=:all: ${TARGET[@]+"${TARGET[@]}"} --dest "$OUT" -r "$OUT/requirements.txt"
echo "wheelhouse: $OUT ($(ls "$OUT"/*.whl | wc -l) wheels); install with:"
echo "  pip install --no-index --find-links $OUT \"$REQUIREMENT\""
