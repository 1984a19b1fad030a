#!/usr/bin/env bash
# The one-shot GPU check: environment, the sandbox probe, CUDA in a child forked by the warm process,
# one tiny_lm trial on NCCL without and with the sandbox, gpt2_small's harness loop against a plain
# PyTorch bf16 loop (tokens/s and MFU), the RL loop, and a whole `evolve run` with a GPU per worker.
# At most about 7 minutes. Steps and their outputs: benchmarks/gpu/ (checks.py, run.sh).
#
#   here, once:            bash benchmarks/gpu_check.sh prepare   (builds .device/: run.sh, checks.py, wheels)
#   here, on the CPU:      bash benchmarks/gpu_check.sh dry       (the plumbing, tiny budgets, ~2 minutes)
#   on a GPU machine:      bash .device/run.sh                     (carry .device; results in $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-prepare}" in
  prepare) bash benchmarks/gpu/prepare.sh ;;
  dry) [ -d .device ] || bash benchmarks/gpu/prepare.sh
       PY=.venv/bin/python SKIP_INSTALL=1 CPU_DRYRUN=1 bash .device/run.sh ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [prepare|dry]"; exit 2 ;;
esac
