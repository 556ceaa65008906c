#!/bin/bash
# The trainer under plain torchrun (no `accelerate launch`): Accelerate reads the distributed environment torchrun sets.
#
#   launch/torchrun.sh model=wan model.path=/models/Wan2.1-T2V-1.3B-Diffusers data.root=/data/latents
#   NPROC=4 launch/torchrun.sh parallel=sp2 ...                           # 2 Ulysses groups of 2 GPUs
#   DEEPSPEED_CONFIG=launch/zero2.json launch/torchrun.sh ...             # DeepSpeed ZeRO-2 (or zero3.json)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 launch/torchrun.sh ...         # on each node, NODE_RANK=0..NNODES-1
#
# On a machine without GPUs (tests): ACCELERATE_USE_CPU=1 NPROC=2 launch/torchrun.sh model=tiny_wan
#
# torchrun runs inside train.launcher (PYTHON, default `python`: the environment torch is installed in), so that a
# stop signal (SIGTERM / SIGUSR1 to the process group, SLURM preemption) that every rank answered with a saved
# checkpoint ends with status 0 instead of torch elastic's SignalException traceback and status 1. The workers stop
# by themselves (checkpoint, then exit; at most RADIAL_ORPHAN_EXIT_S = 120 s) if torchrun is killed (train.parent_watch).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${NPROC:-}" ]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  [ "${NPROC:-0}" -gt 0 ] || NPROC=1
fi
if [ -n "${DEEPSPEED_CONFIG:-}" ]; then
  export ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_CONFIG_FILE="$DEEPSPEED_CONFIG"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} TOKENIZERS_PARALLELISM=false

exec "${PYTHON:-python}" -m train.launcher torchrun \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$NPROC" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  train/lora.py "$@"
