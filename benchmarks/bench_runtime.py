"""ORT CPU vs PyTorch CPU eager on the same weights, and the runtime's host overhead per step.

    python benchmarks/bench_runtime.py [--sizes tiny medium] [--repeats 20]

For each size it writes an SD 1.x-layout checkpoint with seeded weights, exports it, then times
(median of `repeats`) each component on ORT CPU and the PyTorch reference, and a whole
generation whose time minus its components' time is the numpy runtime's own overhead.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from latentrt import Pipeline
from latentrt.export import export_bundle
from latentrt.export import onnx as onnx_export
from latentrt.export.tiny import build_models, write_diffusers_folder

PIXELS = {"tiny": 64, "medium": 256}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench_size(size: str, repeats: int, steps: int) -> list[tuple[str, float, float]]:
    te, unet, vae = build_models(size, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = write_diffusers_folder(Path(tmp) / "src", te, unet, vae)
        pipe = Pipeline.load(export_bundle(src, Path(tmp) / "bundle"))
        px = PIXELS[size]
        rng = np.random.default_rng(0)
        ids = np.full((2, 77), 49407, np.int64)
        ids[:, 0] = 49406
        lat = rng.standard_normal((2, 4, px // 8, px // 8)).astype(np.float32)
        ctx = rng.standard_normal((2, 77, te.config.hidden_size)).astype(np.float32)
        t = np.array([500.0, 500.0], np.float32)
        cases = {
            "text_encoder": (
                lambda: pipe.components["text_encoder"](input_ids=ids),
                onnx_export.TextEncoderGraph(te),
                (torch.from_numpy(ids),),
            ),
            "unet step (batch 2)": (
                lambda: pipe.components["unet"](sample=lat, timestep=t, encoder_hidden_states=ctx),
                onnx_export.UNetGraph(unet),
                (torch.from_numpy(lat), torch.from_numpy(t), torch.from_numpy(ctx)),
            ),
            "vae decode": (
                lambda: pipe.components["vae_decoder"](latent=lat[:1]),
                onnx_export.VAEDecoderGraph(vae),
                (torch.from_numpy(lat[:1]),),
            ),
        }
        component_ms = {}
        for name, (ort_fn, ref, args) in cases.items():
            with torch.no_grad():
                torch_ms = median_ms(lambda ref=ref, args=args: ref(*args), repeats)
            component_ms[name] = median_ms(ort_fn, repeats)
            rows.append((f"{size}: {name}", component_ms[name], torch_ms))
        # Host overhead: wall time of a generation minus the time spent inside the graphs,
        # both measured in the same runs (robust to load from other processes).
        inside = [0.0]

        def timed(fn):
            def call(**kw):
                t0 = time.perf_counter()
                out = fn(**kw)
                inside[0] += time.perf_counter() - t0
                return out

            return call

        pipe.components = {k: timed(v) for k, v in pipe.components.items()}
        totals, overheads = [], []
        for _ in range(max(3, repeats // 4)):
            inside[0] = 0.0
            t0 = time.perf_counter()
            pipe.generate("a red circle", width=px, height=px, steps=steps, seed=0, output="np")
            total = time.perf_counter() - t0
            totals.append(1000 * total)
            overheads.append(1000 * (total - inside[0]) / steps)
        overhead = statistics.median(overheads)
        step_ms = component_ms["unet step (batch 2)"]
        rows.append((f"{size}: generation, {steps} steps", statistics.median(totals), float("nan")))
        share = 100 * overhead / step_ms
        rows.append(
            (f"{size}: host overhead per step ({share:.1f}% of a step)", overhead, float("nan"))
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", nargs="+", default=["tiny", "medium"], choices=list(PIXELS))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    print("| case | ORT CPU ms | PyTorch eager ms | ratio |\n|---|---|---|---|")
    for size in args.sizes:
        for name, ort_ms, torch_ms in bench_size(size, args.repeats, args.steps):
            ratio = f"{ort_ms / torch_ms:.2f}" if torch_ms == torch_ms else ""
            torch_col = f"{torch_ms:.2f}" if torch_ms == torch_ms else ""
            print(f"| {name} | {ort_ms:.2f} | {torch_col} | {ratio} |")


if __name__ == "__main__":
    main()
