"""Host time per sampler step on a 4x128x128 float32 latent with a trivial denoiser.

The denoiser is one scalar multiply, so the figures are the samplers' own numpy overhead (what
they add on top of every UNet evaluation). Median over runs, printed as a Markdown table.

    python benchmarks/bench_samplers.py [--steps 20] [--runs 5] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time

import numpy as np

from latentrt.samplers import (
    SAMPLERS,
    alphas_cumprod_for,
    get_sigmas,
    sample,
    sigmas_from_alphas_cumprod,
)

SHAPE = (1, 4, 128, 128)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


class _Counting:
    """Trivial denoiser (x0 = x / (1 + sigma^2)) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x, sigma, with_uncond=False):
        self.calls += 1
        d = x * np.float32(1.0 / (1.0 + sigma * sigma))
        return (d, d * np.float32(0.9)) if with_uncond else d


def bench(name: str, sigmas: np.ndarray, x: np.ndarray, runs: int) -> tuple[int, int, float]:
    """(steps, denoiser calls, median seconds per step) of one sampler."""
    times = []
    steps = calls = 0
    for run in range(runs + 1):
        den = _Counting()
        infos: list[dict] = []
        t0 = time.perf_counter()
        sample(name, den, x, sigmas, seed=run, callback=infos.append)
        elapsed = time.perf_counter() - t0
        steps, calls = len(infos), den.calls
        if run:  # the first run warms caches and is not counted
            times.append(elapsed / steps)
    return steps, calls, statistics.median(times)


def baseline(x: np.ndarray, runs: int) -> float:
    """Median seconds of one trivial denoiser call, for reference."""
    den = _Counting()
    times = []
    for _ in range(runs * 20):
        t0 = time.perf_counter()
        den(x, 3.0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()

    model_sigmas = sigmas_from_alphas_cumprod(
        alphas_cumprod_for("scaled_linear", 0.00085, 0.012, 1000)
    )
    sigmas = get_sigmas("karras", args.steps, model_sigmas)
    x = (np.random.default_rng(0).standard_normal(SHAPE) * sigmas[0]).astype(np.float32)
    lines = [
        f"latent {SHAPE} float32, {args.steps} karras steps, median of {args.runs} runs, "
        f"CPU: {_cpu_model()}, numpy {np.__version__}",
        "",
        "| sampler | steps | denoiser calls | host ms / step | host ms / denoiser call |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in SAMPLERS:
        steps, calls, per_step = bench(name, sigmas, x, args.runs)
        per_call = per_step * steps / calls
        lines.append(
            f"| {name} | {steps} | {calls} | {per_step * 1e3:.2f} | {per_call * 1e3:.2f} |"
        )
    lines.append("")
    lines.append(f"trivial denoiser call itself: {baseline(x, args.runs) * 1e3:.3f} ms")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
