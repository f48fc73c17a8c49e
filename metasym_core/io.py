"""Atomic file output: write to a temp file in the same folder, then rename.

A crash (or Ctrl-C) mid-write leaves the previous file untouched and no partial
file behind, which is what every writer in MetaSym relies on.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from metasym_core.errors import MetaSymError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` if the block succeeds."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise MetaSymError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise MetaSymError(f"output folder is not writable: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, sparse in a log file (no flood)."""
    import sys

    return 0.1 if sys.stderr.isatty() else 15.0
