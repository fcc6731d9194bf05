"""Tokens per second of latentrt's CLIPTokenizer vs transformers' CLIPTokenizer on the test corpus.

Usage: python benchmarks/bench_tokenizer.py [--repeats 7]
Prints a markdown table (median of the repeats) for BENCHMARKS.md. transformers 5 has a
single CLIPTokenizer, backed by the Rust `tokenizers` library; there is no pure-Python one to time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentrt.runtime.prompt import tokenize_prompt  # noqa: E402
from latentrt.runtime.tokenizer import CLIPTokenizer  # noqa: E402
from tests.prompt_corpus import build_corpus  # noqa: E402
from tests.tokenizer_reference import write_clip_vocab_files  # noqa: E402


def _median_seconds(fn: Callable[[], object], repeats: int, before: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    """Time each tokenizer over the corpus and print one markdown row per case."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import transformers
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    corpus = build_corpus()
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_clip_vocab_files(Path(tmp))
        hf = HFCLIPTokenizer(str(vocab), str(merges))
    ours = CLIPTokenizer.from_bpe_gz()
    n_tokens = sum(len(ours.encode(p)) for p in corpus)
    assert n_tokens == sum(len(hf.encode(p, add_special_tokens=False)) for p in corpus)

    def nothing() -> None:
        return None

    cases = [
        (
            "latentrt encode, cold word cache",
            lambda: [ours.encode(p) for p in corpus],
            ours.clear_cache,
        ),
        ("latentrt encode, warm word cache", lambda: [ours.encode(p) for p in corpus], nothing),
        ("latentrt (batch, 77) ids, warm", lambda: ours(corpus), nothing),
        (
            "latentrt prompt windows (weights, BREAK), warm",
            lambda: [tokenize_prompt(p, ours) for p in corpus],
            nothing,
        ),
        (
            "transformers encode, one call per prompt",
            lambda: [hf.encode(p, add_special_tokens=False) for p in corpus],
            nothing,
        ),
        (
            "tokenizers (Rust) encode_batch under transformers, no Python wrapper",
            lambda: hf.backend_tokenizer.encode_batch(corpus, add_special_tokens=False),
            nothing,
        ),
        (
            "transformers batch call, (batch, 77)",
            lambda: hf(corpus, padding="max_length", truncation=True, max_length=77),
            nothing,
        ),
    ]
    t0 = time.perf_counter()
    fresh = CLIPTokenizer.from_bpe_gz()
    fresh.encode("warm up the Unicode tables")
    load_ours = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_clip_vocab_files(Path(tmp))
        t0 = time.perf_counter()
        HFCLIPTokenizer(str(vocab), str(merges)).encode("warm up")
        load_hf = time.perf_counter() - t0
    print(f"date: {datetime.date.today().isoformat()}")
    print(
        f"machine: {_cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
        f"Python {platform.python_version()}, transformers {transformers.__version__}"
    )
    print(f"command: python benchmarks/bench_tokenizer.py --repeats {args.repeats}")
    print(f"corpus: {len(corpus)} prompts, {n_tokens} content tokens")
    print(f"load + first encode: latentrt {load_ours:.3f} s, transformers {load_hf:.3f} s\n")
    print("| case | median s | tokens/s |")
    print("| --- | ---: | ---: |")
    for name, fn, before in cases:
        fn()
        sec = _median_seconds(fn, args.repeats, before)
        print(f"| {name} | {sec:.4f} | {n_tokens / sec:,.0f} |")


if __name__ == "__main__":
    main()
