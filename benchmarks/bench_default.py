"""Generation time of the embedded default model on ORT CPU: one 64x64 image, 20 steps.

    python benchmarks/bench_default.py [--repeats 10] [--sampler euler] [--guidance 3]

Exports the shipped `latentrt/default_model` through the normal path (once, into a temporary
directory), then times whole `Pipeline.generate` calls (median of `repeats`, after one warm-up)
and the components of one generation: the text encoder (prompt and negative prompt), one UNet
call on the CFG batch of 2, and the VAE decoder. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

from latentrt import Pipeline
from latentrt.demo import DEFAULT_MODEL
from latentrt.export import export_bundle

PROMPT = "a red circle on a blue background"


def median_ms(fn, repeats: int) -> tuple[float, float, float]:
    """(median, min, max) wall time of `fn` in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), min(times), max(times)


def main() -> None:
    """Run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--guidance", type=float, default=3.0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline.load(export_bundle(DEFAULT_MODEL, Path(tmp) / "bundle"), "ort-cpu")
        seeds = iter(range(10**6))

        def generate():
            pipe.generate(
                PROMPT,
                width=64,
                height=64,
                steps=args.steps,
                guidance=args.guidance,
                sampler=args.sampler,
                seed=next(seeds),
                output="np",
            )

        rng = np.random.default_rng(0)
        ctx = pipe.prompt_encoder.encode([PROMPT, ""])
        lat = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
        t = np.array([500.0, 500.0], np.float32)
        rows = [
            (f"generate 64x64, {args.steps} steps, {args.sampler}, CFG", generate),
            ("text encoder (prompt + negative)", lambda: pipe.prompt_encoder.encode([PROMPT, ""])),
            (
                "unet call (batch 2)",
                lambda: pipe.components["unet"](sample=lat, timestep=t, encoder_hidden_states=ctx),
            ),
            ("vae decoder (1 image)", lambda: pipe.decode(lat[:1])),
        ]
        results = [(name, *median_ms(fn, args.repeats)) for name, fn in rows]

    print(f"date: {datetime.date.today().isoformat()}")
    print(
        f"machine: {platform.machine()} {platform.processor() or platform.platform()}, "
        f"{os.cpu_count()} CPUs; onnxruntime {onnxruntime.__version__}"
    )
    print("\n| what | median ms | min ms | max ms |\n| --- | ---: | ---: | ---: |")
    for name, med, lo, hi in results:
        print(f"| {name} | {med:.1f} | {lo:.1f} | {hi:.1f} |")


if __name__ == "__main__":
    main()
