#!/usr/bin/env bash
# GPU run for the plugin kernels: environment, nvcc resource report, gpu tests, benchmarks.
# Usage (repository root, on the GPU machine): bash benchmarks/gpu_plugins.sh [--quick]
# SKIP_NCU=1 skips the Nsight Compute pass, SKIP_PTXAS=1 the resource report; NCU_KERNELS
# picks the kernels ncu captures (a regex), NCU_OPTS adds ncu options, NCU_BENCH_ARGS replaces
# the profiled benchmark's arguments (--profile), PYTEST_K the GPU tests (pytest -k) and PYTEST_FILES
# their files, BENCH_TIMEOUT the benchmark's time limit in seconds (240), BENCH_MODES several
# benchmark modes in turn.
# Logs go to $OUT (default /tmp/latentrt_plugins_out).
set -uo pipefail
OUT=${OUT:-/tmp/latentrt_plugins_out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
ROOT=$(pwd)
# Import the repo as the `latentrt` namespace without installing it (folders map to subpackages).
PKG=$(mktemp -d)
mkdir -p "$PKG/latentrt"
cp -r "$ROOT"/latentrt/. "$PKG/latentrt/"
for sub in samplers runtime graphs plugins export; do ln -s "$ROOT/$sub" "$PKG/latentrt/$sub"; done
export PYTHONPATH=$PKG${PYTHONPATH:+:$PYTHONPATH}

{
  date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
  nvcc --version | tail -2
  python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"
} 2>&1 | tee "$OUT/env.txt"

[ -n "${SKIP_PTXAS:-}" ] || for f in groupnorm_silu conv3d; do
  nvcc -arch=sm_90a -DLATENTRT_SM90A -std=c++17 -O3 -Xptxas -v -c plugins/cuda/$f.cu -o /tmp/$f.o 2>&1 \
    | grep -E "Compiling entry|Used|spill" | grep -v " 0 bytes spill" >> "$OUT/ptxas.txt"
done

timeout 280 python3 -P -m pytest --import-mode=append -q -m gpu ${PYTEST_FILES:-tests/test_plugins_cuda.py} \
  ${PYTEST_K:+-k "$PYTEST_K"} -rfE 2>&1 | tee "$OUT/pytest_gpu.txt"
# BENCH_MODES="--a;--b --only X" runs the benchmark once per mode (each under BENCH_TIMEOUT).
if [ -n "${BENCH_MODES:-}" ]; then
  IFS=';' read -ra modes <<< "$BENCH_MODES"
  for m in "${modes[@]}"; do
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-240}" python3 -P benchmarks/bench_plugins.py $m 2>&1 | tee -a "$OUT/bench.txt"
  done
else
  timeout "${BENCH_TIMEOUT:-240}" python3 -P benchmarks/bench_plugins.py "$@" 2>&1 | tee "$OUT/bench.txt"
fi

# One launch of each hot kernel under Nsight Compute, when it is installed.
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ] && [ -z "${SKIP_NCU:-}" ]; then
  # shellcheck disable=SC2086
  timeout 120 "$NCU" -k "regex:${NCU_KERNELS:-latentrt_(gn_silu|conv3d_igemm|conv3d_wgmma|conv3d_tma)}" -c 8 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis ${NCU_OPTS:-} \
    python3 -P benchmarks/bench_plugins.py ${NCU_BENCH_ARGS:---profile} > "$OUT/ncu.txt" 2>&1
  grep -E "latentrt_|Duration|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Stall|DRAM Throughput" "$OUT/ncu.txt" | head -60
fi
