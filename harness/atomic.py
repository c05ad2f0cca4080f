"""Files written whole or not at all: a temporary file beside the target, renamed onto it.

A reader (a collect running at the same time, a coupled run loading a model) sees the old file
or the new one, never part of one, and a failed write leaves the old file as it was.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Union

__all__ = ["atomic_path", "atomic_write_chunks", "atomic_write_text"]

PathLike = Union[str, "os.PathLike[str]"]


@contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name; renamed onto
    ``path`` when the block ends without an error, removed in every case otherwise."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_chunks(path: PathLike, chunks: Iterable[str]) -> None:
    """Text (UTF-8, '\\n' line ends) to ``path``, synced to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_chunks(path, (text,))
