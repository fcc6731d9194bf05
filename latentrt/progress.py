"""Progress reporting that draws a bar on a terminal and stays quiet without one."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: int | None = None, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.total = total
        self.done = 0
        self.start = time.perf_counter()

    def step(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        if self.total:
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:.1f}s"
        else:
            text = f"\r{self.label} {self.done} {elapsed:.1f}s"
        self.stream.write(text)
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"\r\033[K{self.label}: {text}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
