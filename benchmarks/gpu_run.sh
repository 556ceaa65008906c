#!/usr/bin/env bash
# One device call: install the carried wheels, then run the named steps; logs and results land in $OUT.
#   bash benchmarks/gpu_run.sh models-tests "train-step wan1x wan2x wan4x" ...
# Steps: models-tests (tests/gpu/test_models_gpu.py), attention-tests (tests/gpu/test_attention_gpu.py), fa4-tests
# (tests/gpu/test_fa4_gpu.py), memory-tests (tests/gpu/test_offload_gpu.py), "pytest FILES..." (any test files), "attention-bench ARGS..." (benchmarks/attention.py ARGS, results in $OUT/attention),
# "train-step ARGS..." (benchmarks/train_step.py ARGS, results in $OUT/stepN for the N-th step), "train-step-sp K
# ARGS..." (the same under torchrun on K GPUs with --sp K, results in $OUT/spK-N), "generate-bench ARGS..."
# (benchmarks/generate.py ARGS, results in $OUT/generateN; Wan2.1-1.3B by default, `--family hunyuan [--hun-double N
# --hun-single M]` HunyuanVideo 13B at 720p 4x: benchmarks/results/memory.md item 6), "extension ARGS..."
# (benchmarks/extension.py ARGS: the length-extension experiment, its 4 record files in $OUT, work in /tmp/ext),
# "fa4-bwd-tile ARGS..."
# (benchmarks/fa4_bwd_tile.py ARGS: flash-attn-4's dense vs block-sparse backward tile, results in $OUT/fa4_tile),
# "saved-activations ARGS..." (benchmarks/saved_activations.py ARGS: what each block saves for backward, by dtype,
# eager and with --compile; results in $OUT/savedN), "mask-bench ARGS..." (benchmarks/mask.py ARGS: mask and plan
# construction on one CPU core, results in $OUT/maskN), "extension-bg TAG ARGS..." (benchmarks/extension.py ARGS
# detached with setsid, so it outlives the call: a run longer than one call's 10 minutes, or several runs sharing the
# GPU; record and log in /tmp/extbg/TAG), "extension-wait SECONDS" (waits until every detached run has ended or SECONDS
# passed, then tars /tmp/extbg into $OUT/extbg.tar.gz and each kept base into $OUT/base_TAG.tar; call it again, on
# the same warm machine, to keep waiting).
# At the end every JSON under $OUT is also bundled into $OUT/results_bundle.json (benchmarks/bundle_results.py), so
# the raw numbers come back even when the call returns only some of its files.
# Each step logs to $OUT/<step>-N.log. Wheels: .whl/ (diffusers, hydra-core, omegaconf, antlr4;
# the GPU image has torch, triton, accelerate, peft, transformers, safetensors).
# flash-attn-4 (optional) travels in two parts (../shared/gpu/fa4_wheels.sh), in two calls on one machine:
#   bash benchmarks/gpu_run.sh fa4-stage            # call 1, with .whl_fa4_1/: copies part 1 to /tmp/fa4_stage only
#   bash benchmarks/gpu_run.sh fa4-tests ...        # call 2, with .whl_fa4_2/: joins, checks, installs, then the steps
set -uo pipefail
if [ "${1:-}" = fa4-stage ]; then
  mkdir -p /tmp/fa4_stage && cp .whl_fa4_1/* /tmp/fa4_stage/ && ls -l /tmp/fa4_stage && exit 0
  echo "fa4-stage: copying .whl_fa4_1/* to /tmp/fa4_stage failed"; exit 1
fi
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
. "$(dirname "$0")/fa4_install.sh"
fa4_install | tee "$OUT/fa4_install.txt"
fa4_path=$(grep -q "^fa4: installed" "$OUT/fa4_install.txt" && echo /tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  ${WHEELS:-.whl}/diffusers-*.whl ${WHEELS:-.whl}/hydra_core-*.whl ${WHEELS:-.whl}/omegaconf-*.whl ${WHEELS:-.whl}/antlr4*.whl || exit 1
export PYTHONPATH=${fa4_path}/tmp/site:$PWD PYTHONUNBUFFERED=1
# flash-attn-4 JIT-compiles its kernels per process; its on-disk cache (opt-in) lets later steps and calls on the same
# machine reuse them.
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=${FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED:-1}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton, diffusers, peft, accelerate; print('torch', torch.__version__, 'triton', triton.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/card.txt"
cat "$OUT/fa4_install.txt" >> "$OUT/card.txt"
status=0
n=0
for step in "$@"; do
  set -- $step
  name=$1; shift
  n=$((n + 1))
  log="$OUT/${name//-/_}-$n.log"
  case $name in
    models-tests) python3 -m pytest -q -p no:cacheprovider tests/gpu/test_models_gpu.py >"$log" 2>&1 ;;
    attention-tests) python3 -m pytest -q -p no:cacheprovider tests/gpu/test_attention_gpu.py >"$log" 2>&1 ;;
    pytest) python3 -m pytest -q -p no:cacheprovider -rs "$@" >"$log" 2>&1 ;;
    memory-tests) python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_offload_gpu.py >"$log" 2>&1 ;;
    fa4-tests) python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_fa4_gpu.py >"$log" 2>&1 ;;
    attention-bench) python3 benchmarks/attention.py --out "$OUT/attention" "$@" >"$log" 2>&1 ;;
    train-step) python3 benchmarks/train_step.py --out "$OUT/step$n" "$@" >"$log" 2>&1 ;;
    train-step-sp) k=$1; shift
      torchrun --standalone --nproc_per_node "$k" benchmarks/train_step.py --sp "$k" --out "$OUT/sp$k-$n" "$@" \
        >"$log" 2>&1 ;;
    saved-activations) python3 benchmarks/saved_activations.py --out "$OUT/saved$n" "$@" >"$log" 2>&1 ;;
    generate-bench) python3 benchmarks/generate.py --out "$OUT/generate$n" "$@" >"$log" 2>&1 ;;
    mask-bench) python3 benchmarks/mask.py --out "$OUT/mask$n/mask.md" "$@" >"$log" 2>&1 ;;
    fa4-bwd-tile) python3 benchmarks/fa4_bwd_tile.py --out "$OUT/fa4_tile" "$@" >"$log" 2>&1 ;;
    extension) TQDM_DISABLE=1 python3 benchmarks/extension.py --out "$OUT" --work /tmp/ext --no-log-file "$@" >"$log" 2>&1 ;;
    extension-bg) tag=$1; shift  # detached: outlives this call on the same (warm) machine; extension-wait collects it
      # From a copy of the tree: the next call replaces this checkout, and a run whose cwd vanished fails (seen).
      mkdir -p "/tmp/extbg/$tag" && rm -rf "/tmp/extsrc/$tag" && mkdir -p /tmp/extsrc && cp -r . "/tmp/extsrc/$tag"
      (cd "/tmp/extsrc/$tag" && PYTHONPATH=${fa4_path}/tmp/site:$PWD TQDM_DISABLE=1 setsid nohup python3 \
        benchmarks/extension.py --out "/tmp/extbg/$tag" --work "/tmp/extwork/$tag" --no-log-file "$@" \
        >"/tmp/extbg/$tag/extension.log" 2>&1 </dev/null &)
      echo "started $tag from /tmp/extsrc/$tag: $*" >"$log" ;;
    extension-wait) secs=${1:-540}; t0=$SECONDS  # until every detached run ends or secs pass; records -> $OUT
      while pgrep -f "benchmarks/extension.py" >/dev/null && [ $((SECONDS - t0)) -lt "$secs" ]; do sleep 10; done
      { pgrep -af "benchmarks/extension.py" || echo "no extension run alive"; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
        for f in /tmp/extbg/*/extension.log; do echo "== $f"; grep "^\[" "$f" | tail -n 12; done; } >"$log" 2>&1
      # a kept base (14 MB of bf16 weights) comes back as its own tar (16 MiB a file, 8 files a call: two runs' bases
      # as six loose files would not all come back); untar it into a folder for --base
      tar czf "$OUT/extbg.tar.gz" --exclude="extbg/*/base" -C /tmp extbg
      for d in /tmp/extbg/*/base; do [ -d "$d" ] && tar cf "$OUT/base_$(basename "$(dirname "$d")").tar" -C "$d" .; done
      true ;;
    *) echo "unknown step $name" >"$log"; false ;;
  esac
  rc=$?
  echo "== $name $*: exit $rc"
  grep -v -e "^$" -e USDT "$log" 2>/dev/null | tail -n 25
  [ $rc = 0 ] || status=1
done
python3 benchmarks/bundle_results.py "$OUT" || status=1
exit $status
