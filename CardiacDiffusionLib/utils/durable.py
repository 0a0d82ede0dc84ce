"""Whole-or-nothing, durable file writes: a temporary file beside the target, flushed to the disk, renamed onto it,
then the folder's entry flushed. An interruption or a power loss leaves the old file or the new one, never an
empty or partial one (a rename alone may reach the disk before the data)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s data to the disk."""
    fd = os.open(path, os.O_RDWR)  # writable: Windows' fsync (_commit) refuses a read-only descriptor
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to the disk; skipped where the system cannot open a folder
    (Windows) or refuses to fsync one."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL on file systems without directory fsync
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: str | Path, path: str | Path) -> None:
    """Rename the whole file ``tmp`` onto ``path``: its data flushed before the rename, the folder's entry after."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def write_durably(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all (``.partial_NAME`` beside it, flushed, then renamed)."""
    path = Path(path)
    partial = path.with_name(f".partial_{path.name}")
    try:
        partial.write_bytes(data)
        replace_durably(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
