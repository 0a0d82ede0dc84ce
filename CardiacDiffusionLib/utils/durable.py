"""Whole-or-nothing, durable file writes: a temporary file beside the target, flushed to the disk, renamed onto it,
then the folder's entry flushed. An interruption or a power loss leaves the old file or the new one, never an
empty or partial one (a rename alone may reach the disk before the data)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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


@contextmanager
def replacing(path: str | Path, partial: str | Path | None = None) -> Iterator[Path]:
    """The temporary file to write (default ``.partial_NAME`` beside ``path``): renamed onto ``path`` durably when
    the block ends without an error, removed either way (a failed write leaves the old file and no partial one)."""
    path = Path(path)
    partial = Path(partial) if partial is not None else path.with_name(f".partial_{path.name}")
    try:
        yield partial
        replace_durably(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_durably(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all (:func:`replacing`)."""
    with replacing(path) as partial:
        partial.write_bytes(data)
    return Path(path)
