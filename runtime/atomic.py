"""Directories replaced whole: bundles and engine folders are built aside, then renamed in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_file(tmp: str | Path, dest: Path) -> None:
    """Rename a finished temp file to `dest` with the permissions a plain open() would give."""
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
    os.replace(tmp, dest)


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished directory `tmp` to `dest`; an existing `dest` is swapped out, then removed.

    Both renames are atomic on one filesystem, so readers see the old or the new directory,
    never a half-written one. `tmp` gets the mode a plain mkdir would give (mkdtemp makes 0700).
    """
    os.chmod(tmp, 0o777 & ~_umask())
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, dest)
