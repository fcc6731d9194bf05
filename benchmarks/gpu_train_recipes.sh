#!/usr/bin/env bash
# Several training recipes side by side on one GPU (issue 10): how a recipe's checker score
# varies across seeds, before it is run on the CPU. Each argument is one run, NAME:RECIPE-FLAGS,
# e.g. `p08s1:--seed 1 --p-size 0.8`; every run trains, evaluates at guidance 3 and writes
# $OUT/NAME.txt (log) and $OUT/NAME.json (training.json, with the evaluation).
# Usage (repository root, on the GPU machine): OUT=... bash benchmarks/gpu_train_recipes.sh RUN...
set -uo pipefail
OUT=${OUT:-/tmp/latentrt_train_out}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/env.txt"
for run in "$@"; do
  name=${run%%:*}
  read -r -a flags <<< "${run#*:}"
  python3 -P -m latentrt.export.train --out "/tmp/recipes/$name" --device cuda --workers 3 \
    --eval --eval-guidance 3 "${flags[@]}" > "$OUT/$name.txt" 2>&1 &
done
wait
for run in "$@"; do
  name=${run%%:*}
  cp "/tmp/recipes/$name/training.json" "$OUT/$name.json" 2>/dev/null
  echo "== $name: ${run#*:}"; grep -E "wrote|eval guidance|per prompt|checker on" "$OUT/$name.txt"
done
