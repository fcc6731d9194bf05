#!/usr/bin/env bash
# GPU run for the embedded default model (issue 10): the documented training command from
# scratch, its checker evaluation, and a copy of the written weights under $OUT/model.
# Usage (repository root, on the GPU machine): OUT=... bash benchmarks/gpu_train.sh
set -uo pipefail
OUT=${OUT:-/tmp/latentrt_train_out}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__)"
} 2>&1 | tee "$OUT/env.txt"
/usr/bin/time -v python3 -P -m latentrt.export.train --out "$OUT/model" --device cuda \
  --eval --eval-guidance 3 7.5 2>&1 | tee "$OUT/train.txt"
