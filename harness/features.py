"""Which variable, level and unit sits at each input and output position of a network.

Recorded in the model file as ``meta`` lines, one per feature, in order:
``meta input_feature I NAME LEVEL UNITS`` and ``meta output_feature I NAME LEVEL UNITS``
(I from 1; NAME, LEVEL and UNITS one token each: ``-`` for no level, ``1`` for a dimensionless
quantity). The coupler checks a host's declared variables against them at init; ``harness
info`` prints them. They come from a CSV file with the header ``name,level,units`` and one row
per feature (``harness convert --inputs-meta FILE --outputs-meta FILE``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import ConversionError
from .modelfile import ModelSpec

__all__ = ["Feature", "read_feature_csv", "with_features", "features_of"]

_TOKEN = re.compile(r"[^\s]+\Z")
_KEYS = {"input": "input_feature", "output": "output_feature"}


@dataclass(frozen=True)
class Feature:
    name: str
    level: str
    units: str

    def text(self) -> str:
        return f"{self.name} {self.level} {self.units}"


def read_feature_csv(path: Path | str) -> list[Feature]:
    """The features of a CSV file (header name,level,units; one row per feature, in order)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") \
            from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip().lower() for c in rows[0]] != ["name", "level", "units"]:
        raise ConversionError(f"{path}:1: the header must be 'name,level,units'")
    features = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise ConversionError(f"{path}:{lineno}: expected name,level,units, got {row}")
        values = [c.strip() or "-" for c in row]
        for what, value in zip(("name", "level", "units"), values):
            if not _TOKEN.match(value):
                raise ConversionError(f"{path}:{lineno}: {what} {value!r} must be one token "
                                      "without blanks (use - for no level, 1 for no units)")
        features.append(Feature(*values))
    if not features:
        raise ConversionError(f"{path}: no features after the header")
    return features


def with_features(spec: ModelSpec, inputs: list[Feature] | None,
                  outputs: list[Feature] | None, source: str = "") -> ModelSpec:
    """``spec`` with its feature meta lines replaced by these (a list must match the count)."""
    meta = list(spec.meta)
    for side, features, count in (("input", inputs, spec.n_inputs),
                                  ("output", outputs, spec.n_outputs)):
        if features is None:
            continue
        if len(features) != count:
            raise ConversionError(f"{source}: {len(features)} {side} features described, the "
                                  f"model has {count}")
        meta = [(k, v) for k, v in meta if k != _KEYS[side]]
        meta += [(_KEYS[side], f"{i} {f.text()}") for i, f in enumerate(features, start=1)]
    return replace(spec, meta=meta)


def features_of(spec: ModelSpec, side: str) -> list[Feature]:
    """The recorded features of one side ('input' or 'output'), in order; [] when none."""
    found: dict[int, Feature] = {}
    for key, value in spec.meta:
        if key != _KEYS[side]:
            continue
        parts = value.split()
        if len(parts) != 4 or not parts[0].isdigit():
            raise ConversionError(f"meta {key} {value!r}: expected 'I NAME LEVEL UNITS'")
        found[int(parts[0])] = Feature(*parts[1:])
    return [found[i] for i in sorted(found)]
