"""SDXL UNet engine (written by `bench_gpu.py --arch sdxl` under --work) under ORT CUDA variants:
attention kernels (`sdpa_kernel` provider option) and a per-op-type profile of one step.

    python benchmarks/gpu_sdxl_variants.py --work /tmp/latentrt-bench --out OUTDIR
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from latentrt.runtime.ort_cuda import CudaComponent, provider_options


def feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "sample": rng.standard_normal((2, 4, 128, 128), np.float32),
        "timestep": np.full((2,), 500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 2048), np.float32),
        "text_embeds": rng.standard_normal((2, 1280), np.float32),
        "time_ids": np.array([[1024, 1024, 0, 0, 1024, 1024]] * 2, np.float32),
    }


def host_ms(fn, repeats=20, warmup=5) -> float:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(out))


def profile(engine: Path, x: dict, out: Path) -> dict:
    """ORT's own profiler on a plain (no CUDA graph) session: milliseconds per op type."""
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(out / "sdxl_profile")
    so.log_severity_level = 3
    s = ort.InferenceSession(
        str(engine), so, providers=[("CUDAExecutionProvider", provider_options())]
    )
    types = {i.name: np.float16 if "float16" in i.type else np.float32 for i in s.get_inputs()}
    x = {k: v.astype(types[k]) for k, v in x.items()}
    for _ in range(3):
        s.run(None, x)
    path = s.end_profiling()
    events = json.loads(Path(path).read_text())
    last = [e for e in events if e.get("name") == "model_run"][-1]  # warm: cuDNN search done
    lo, hi = last["ts"], last["ts"] + last["dur"]
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and lo <= e["ts"] <= hi:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3  # ms in the last run
    per_op["(model_run)"] = last["dur"] / 1e3
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/tmp/latentrt-bench")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = Path(a.out)
    engine = Path(a.work) / "sdxl_unet.ort-cuda.onnx"
    x = feeds()
    results = []
    for sdpa in ():
        try:
            c = CudaComponent("unet", engine, "fp16", cuda_graph=True, sdpa_kernel=sdpa)
            results.append({"sdpa_kernel": sdpa, "median_ms": host_ms(lambda c=c: c(**x))})
        except Exception as e:
            results.append({"sdpa_kernel": sdpa, "error": str(e)[:300]})
        print(json.dumps(results[-1]), flush=True)
    prof = profile(engine, x, out)
    print(json.dumps({"profile_ms_per_op_type": prof}), flush=True)
    (out / "sdxl_variants.json").write_text(json.dumps({"sdpa": results, "profile": prof}))


if __name__ == "__main__":
    main()
