"""Format detection and conversion between Keras (.keras, .h5), colnn and FKB model files.

Every conversion goes through a ModelSpec: a reader for the source format, ``validate``, a
writer for the destination. Formats are told apart by content (zip magic, HDF5 magic, first
word), never by trusting the suffix of the source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .errors import ConversionError
from .fkb import is_fkb_file, read_fkb, write_fkb
from .keras_reader import (HDF5_MAGIC, READ_TIMEOUT_S, ZIP_MAGIC, read_keras,
                           read_keras_isolated)
from .modelfile import ModelSpec, read_model, write_model

__all__ = ["FORMATS", "detect_format", "format_for_suffix", "load_any", "save_any", "convert"]

PathLike = Union[str, "os.PathLike[str]"]

FORMATS = ("keras", "h5", "colnn", "fkb")
_SUFFIXES = {".colnn": "colnn", ".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".fkb": "fkb",
             ".txt": "fkb"}


def detect_format(path: PathLike) -> str:
    """'keras', 'h5', 'colnn' or 'fkb', from the file's content."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise ConversionError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(ZIP_MAGIC):
        return "keras"
    if head.startswith(HDF5_MAGIC):
        return "h5"
    words = head.decode("utf-8", errors="replace").split(None, 1)
    if words and words[0] == "colnn":
        return "colnn"
    if is_fkb_file(path):
        return "fkb"
    raise ConversionError(f"{name}: unknown model format (not a .keras zip, an HDF5 file, a "
                          "colnn model file or an FKB text file)")


def format_for_suffix(path: PathLike) -> str:
    """The destination format a file name asks for (.colnn, .keras, .h5/.hdf5, .fkb/.txt)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConversionError(f"{path}: cannot tell the output format from the suffix "
                              f"'{suffix}' (use .colnn, .keras, .h5, .fkb or .txt, or give "
                              "the format explicitly)")
    return _SUFFIXES[suffix]


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    return fmt


def load_any(path: PathLike, fmt: Optional[str] = None,
             read_timeout: Optional[float] = READ_TIMEOUT_S,
             fkb_precision: str = "float32") -> ModelSpec:
    """Read a model in any supported format (detected from the content unless ``fmt``).

    Keras files are read in a child process limited to ``read_timeout`` seconds (libhdf5 can
    hang or crash on a damaged file); ``None`` reads in this process (for callers that isolate
    the read themselves, like the fuzzer). FKB files do not say their precision: their values
    are read as ``fkb_precision`` (FKB's default build is single, its REAL64 build double)."""
    fmt = _check_format(fmt) if fmt is not None else detect_format(path)
    if fmt in ("keras", "h5"):
        return read_keras(path) if read_timeout is None else \
            read_keras_isolated(path, read_timeout)
    if fmt == "colnn":
        return read_model(path)
    return read_fkb(path, precision=fkb_precision)


def save_any(spec: ModelSpec, path: PathLike, fmt: Optional[str] = None) -> None:
    """Write ``spec`` in the format ``fmt`` or, when None, the one the suffix of ``path`` names."""
    fmt = _check_format(fmt) if fmt is not None else format_for_suffix(path)
    if fmt == "colnn":
        write_model(spec, path)
    elif fmt == "fkb":
        write_fkb(spec, path)
    else:
        suffix = Path(path).suffix.lower()
        wanted = (".keras",) if fmt == "keras" else (".h5", ".hdf5")
        if suffix not in wanted:
            raise ConversionError(f"{path}: Keras decides the container by the suffix; a "
                                  f"'{fmt}' file must end in {' or '.join(wanted)}")
        from .keras_writer import write_keras  # imports Keras only when needed

        write_keras(spec, path)


def convert(src: PathLike, dst: PathLike, src_format: Optional[str] = None,
            dst_format: Optional[str] = None,
            read_timeout: Optional[float] = READ_TIMEOUT_S,
            fkb_precision: str = "float32") -> ModelSpec:
    """Convert ``src`` into ``dst``; returns the ModelSpec that was written."""
    spec = load_any(src, src_format, read_timeout, fkb_precision)
    save_any(spec, dst, dst_format)
    return spec
