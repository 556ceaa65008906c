#!/usr/bin/env bash
# One device call: install the carried wheels, then run the named steps; logs and results land in $OUT.
#   bash benchmarks/gpu_run.sh models-tests "train-step wan1x wan2x wan4x" ...
# Steps: models-tests (tests/gpu/test_models_gpu.py), attention-tests (tests/gpu/test_attention_gpu.py),
# "train-step ARGS..." (benchmarks/train_step.py ARGS, results in $OUT/step1), "train-step-sp K ARGS..." (the same
# under torchrun on K GPUs with --sp K, results in $OUT/spK-N for the N-th such step). Wheels: .whl/ (diffusers, hydra-core, omegaconf, antlr4; the
# GPU image has torch, triton, accelerate, peft, transformers, safetensors).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  ${WHEELS:-.whl}/diffusers-*.whl ${WHEELS:-.whl}/hydra_core-*.whl ${WHEELS:-.whl}/omegaconf-*.whl ${WHEELS:-.whl}/antlr4*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton, diffusers, peft, accelerate; print('torch', torch.__version__, 'triton', triton.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/card.txt"
status=0
n=0
for step in "$@"; do
  set -- $step
  name=$1; shift
  case $name in
    models-tests) python3 -m pytest -q -p no:cacheprovider tests/gpu/test_models_gpu.py >"$OUT/models_tests.log" 2>&1 ;;
    attention-tests) python3 -m pytest -q -p no:cacheprovider tests/gpu/test_attention_gpu.py >"$OUT/attention_tests.log" 2>&1 ;;
    train-step) python3 benchmarks/train_step.py --out "$OUT/step1" "$@" >"$OUT/train_step.log" 2>&1 ;;
    train-step-sp) k=$1; shift; n=$((n + 1))
      torchrun --standalone --nproc_per_node "$k" benchmarks/train_step.py --sp "$k" --out "$OUT/sp$k-$n" "$@" \
        >"$OUT/train_step_sp$k-$n.log" 2>&1 ;;
    *) echo "unknown step $name" >"$OUT/error.log"; false ;;
  esac
  rc=$?
  echo "== $name $*: exit $rc"
  tail -n 25 "$OUT"/*"${name%%-*}"*.log 2>/dev/null | grep -v -e "^$" -e USDT | tail -n 25
  [ $rc = 0 ] || status=1
done
exit $status
