#!/usr/bin/env bash
# onnxruntime-gpu for the GPU machine, in parts small enough to travel beside this tree.
#
#   here:    bash benchmarks/ort_gpu_stage.sh split     (after ../shared/tools/stage-ort-gpu.sh)
#   device:  one `run` per part with it in carry:  mkdir -p ~/stage && cp .device/ortgpu.part.NN ~/stage/
#   device:  bash benchmarks/ort_gpu_stage.sh install   (carry the last part, .device/ortgpu.name
#            and .device/ortgpu.md5; joins ~/stage, installs to ~/ortgpu)
#
# The shared tool's 48 MB parts no longer fit one 64 MiB transfer next to the ~20 MB tree
# (the embedded default model), and its installer names the joined file ort.whl, which pip
# rejects; this re-splits into 40 MB parts and installs under the wheel's own name.
set -euo pipefail
case "${1:-}" in
  split)
    whl=$(ls .device/dl/onnxruntime_gpu-*.whl)
    rm -f .device/ortgpu.part.*
    split -b 40M -d "$whl" .device/ortgpu.part.
    basename "$whl" > .device/ortgpu.name
    md5sum "$whl" | cut -d' ' -f1 > .device/ortgpu.md5
    ls .device/ortgpu.part.* ;;
  install)
    name=$(cat .device/ortgpu.name)
    cp .device/ortgpu.part.* ~/stage/ 2>/dev/null || true
    cat ~/stage/ortgpu.part.* > ~/stage/"$name"
    echo "$(cat .device/ortgpu.md5)  $HOME/stage/$name" | md5sum -c -
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target ~/ortgpu ~/stage/"$name"
    PYTHONPATH=~/ortgpu python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" ;;
  *) echo "usage: $0 split|install" >&2; exit 2 ;;
esac
