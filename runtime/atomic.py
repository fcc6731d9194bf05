"""Directories replaced whole: bundles and engine folders are built aside, then renamed in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished directory `tmp` to `dest`; an existing `dest` is swapped out, then removed.

    Both renames are atomic on one filesystem, so readers see the old or the new directory,
    never a half-written one.
    """
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, dest)
