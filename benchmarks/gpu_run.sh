#!/usr/bin/env bash
# GPU run for the ort-cuda backend: gpu tests, then the benchmarks of BENCHMARKS.md (ORT CUDA section).
# Usage (repository root, on the GPU machine, onnxruntime-gpu installed to ~/ortgpu by
# benchmarks/ort_gpu_stage.sh install): bash benchmarks/gpu_run.sh tests|sd15|sd15-memory|sd15-compile|sdxl|sdxl-profile [more stages]
# Logs and results.jsonl go to $OUT (default /tmp/latentrt_gpu_out).
set -uo pipefail
OUT=${OUT:-/tmp/latentrt_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$HOME/ortgpu${PYTHONPATH:+:$PYTHONPATH}
source benchmarks/gpu_env.sh
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__)"
} 2>&1 | tee -a "$OUT/env.txt"
for stage in "$@"; do
  case "$stage" in
    tests) timeout 300 python3 -P -m pytest --import-mode=append -q -m gpu tests/test_ort_cuda.py -rfE -x 2>&1 | tee "$OUT/pytest_gpu.txt" ;;
    sd15) timeout 520 python3 -P benchmarks/bench_gpu.py --arch sd15 --no-compile ${SD15_FLAGS:-} --out "$OUT" 2>&1 | tee "$OUT/bench_sd15.txt" ;;
    sd15-compile) timeout 520 python3 -P benchmarks/bench_gpu.py --arch sd15-compile --out "$OUT" 2>&1 | tee "$OUT/bench_sd15_compile.txt" ;;
    sd15-memory) timeout 520 python3 -P benchmarks/bench_gpu.py --arch sd15-memory --out "$OUT" 2>&1 | tee "$OUT/bench_sd15_memory.txt" ;;
    sdxl-profile) timeout 520 python3 -P benchmarks/bench_gpu.py --arch sdxl-profile --out "$OUT" 2>&1 | tee "$OUT/bench_sdxl_profile.txt" ;;
    sdxl) timeout 520 python3 -P benchmarks/bench_gpu.py --arch sdxl ${SDXL_FLAGS:-} --out "$OUT" 2>&1 | tee "$OUT/bench_sdxl.txt" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
