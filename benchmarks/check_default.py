"""What the embedded default model draws: checker hit rates on ORT CPU and the PyTorch reference.

    python benchmarks/check_default.py [--seeds 10] [--guidance 3 7.5] [--samplers euler ...]

For each sampler: the share of (prompt, seed) images whose dominant foreground colour and shape
the checker confirms, over the test prompts (`tests/test_default_model.py`) on ORT CPU
(export_bundle -> Pipeline) and on `train.ReferenceSampler` (the reference modules, same
samplers, same noise), with the largest |ORT - PyTorch| pixel difference; then ORT over all ten
evaluation prompts of `export/train.py`, per sampler and per prompt. Prints markdown for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import numpy as np

from latentrt import Pipeline
from latentrt.demo import DEFAULT_MODEL
from latentrt.export import export_bundle, train
from latentrt.export.shape_checker import default_checker, parse_prompt

TEST_PROMPTS = (
    "a red circle",
    "an orange square on a blue background",
    "a yellow triangle",
    "a green star",
)
STEPS = 20
CHUNK = 8  # the bundle's largest batch


def _ort(pipe: Pipeline, jobs, sampler: str, guidance: float) -> np.ndarray:
    chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    return np.concatenate(
        [
            pipe.generate(
                [p for p, _ in c],
                width=64,
                height=64,
                steps=STEPS,
                guidance=guidance,
                sampler=sampler,
                latents=train.pipeline_noise([s for _, s in c], (1, 4, 16, 16)),
                seed=c[0][1],
                output="np",
            )  # fmt: skip
            for c in chunks
        ]
    )


def _reference(ref: train.ReferenceSampler, jobs, sampler: str, guidance: float) -> np.ndarray:
    chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    return np.concatenate(
        [
            ref.generate([p for p, _ in c], [s for _, s in c], sampler, STEPS, guidance)
            for c in chunks
        ]
    )


def _hits(images: np.ndarray, jobs) -> np.ndarray:
    verdicts = default_checker().classify_batch(images)
    return np.array([v.matches(*parse_prompt(p)) for (p, _), v in zip(jobs, verdicts, strict=True)])


def main() -> None:
    """Generate, judge and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0, 7.5])
    p.add_argument("--samplers", nargs="+", default=list(train.EVAL_SAMPLERS))
    args = p.parse_args()
    seeds = range(args.seeds)
    test_jobs = [(q, s) for q in TEST_PROMPTS for s in seeds]
    eval_jobs = [(q, s) for q in train.EVAL_PROMPTS for s in seeds]
    ref = train.ReferenceSampler(DEFAULT_MODEL, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline.load(export_bundle(DEFAULT_MODEL, Path(tmp) / "bundle"), "ort-cpu")
        print(f"date: {datetime.date.today().isoformat()}; {len(test_jobs)} images per cell\n")
        head = " | ".join(f"ORT g={g} | PyTorch g={g} | max abs g={g}" for g in args.guidance)
        print(f"| sampler | {head} |\n| --- |" + " ---: |" * (3 * len(args.guidance)))
        for sampler in args.samplers:
            cells = []
            for g in args.guidance:
                ort = _ort(pipe, test_jobs, sampler, g)
                torch_images = _reference(ref, test_jobs, sampler, g)
                cells += [
                    f"{_hits(ort, test_jobs).mean():.3f}",
                    f"{_hits(torch_images, test_jobs).mean():.3f}",
                    f"{np.abs(ort - torch_images).max():.1e}",
                ]
            print(f"| {sampler} | " + " | ".join(cells) + " |")
        g = args.guidance[0]
        per_prompt: dict[str, list[bool]] = {}
        print(f"\nAll evaluation prompts, {args.seeds} seeds, guidance {g}, ORT:")
        for sampler in args.samplers:
            hits = _hits(_ort(pipe, eval_jobs, sampler, g), eval_jobs)
            print(f"- {sampler}: {hits.mean():.3f}")
            for (q, _), hit in zip(eval_jobs, hits, strict=True):
                per_prompt.setdefault(q, []).append(bool(hit))
        for q, v in per_prompt.items():
            print(f"- {q!r}: {np.mean(v):.2f}")


if __name__ == "__main__":
    main()
