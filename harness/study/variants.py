"""Variants of a study configuration: the same TOML with some dotted keys replaced.

`harness compare --config C --variant NAME:KEY=VALUE;...` and scripts/study_variants.py both
start from a study file and change a few keys (``host.inputs="local"``,
``host.stencil_halfwidth=2``); this module parses such settings, applies them to the parsed
TOML and writes the result back as a TOML document, so that the variant's study directory keeps
the configuration it was run with (``study.toml``).
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .config import StudyError, read_study_toml

__all__ = ["Setting", "Variant", "parse_setting", "parse_variant", "apply_settings",
           "toml_text", "read_study_toml", "VARIANT_NAME"]

#: a variant's name is its study directory's name and its study's name
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Setting:
    """One dotted key (``host.stencil_halfwidth``) and the value it takes."""

    key: str
    value: Any

    def text(self) -> str:
        return f"{self.key}={_value_text(self.value)}"


@dataclass
class Variant:
    """A named variant of a study configuration: its settings, applied in order."""

    name: str
    settings: list[Setting] = field(default_factory=list)

    def describe(self) -> str:
        return "; ".join(s.text() for s in self.settings) or "the configuration as it is"


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_setting(text: str, strict: bool = False) -> Setting:
    """``KEY=VALUE``: VALUE is a TOML value (``2``, ``true``, ``[1e-4, 1e-2]``, ``"local"``);
    unless ``strict``, a VALUE that is not TOML is taken as a string (``host.inputs=local``)."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise StudyError(f"{text!r}: expected KEY=VALUE (a dotted key such as "
                         "host.stencil_halfwidth=2)")
    if not all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in key.split(".")):
        raise StudyError(f"{text!r}: {key!r} is not a dotted key (parts of letters, digits, "
                         "_ and -, joined by dots)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if strict or not raw or any(c in raw for c in "[]{}\"'="):
            raise StudyError(f"{text!r}: {raw!r} is not a TOML value ({exc}); strings need "
                             "double quotes") from None
        value = raw
    return Setting(key, value)


def parse_variant(text: str) -> Variant:
    """``NAME:KEY=VALUE[;KEY=VALUE...]``, or ``NAME`` alone (the configuration unchanged)."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not VARIANT_NAME.fullmatch(name):
        raise StudyError(f"{text!r}: a variant is NAME:KEY=VALUE[;KEY=VALUE...] with NAME of "
                         "letters, digits, '.', '_' and '-' (it names the study directory)")
    settings = [parse_setting(part) for part in rest.split(";") if part.strip()] if sep else []
    return Variant(name, settings)


def apply_settings(table: dict[str, Any], settings: list[Setting]) -> dict[str, Any]:
    """A deep copy of ``table`` with each setting's dotted key set (tables made as needed)."""
    out = copy.deepcopy(table)
    for s in settings:
        node = out
        *parents, last = s.key.split(".")
        for i, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise StudyError(f"{s.text()}: {'.'.join(parents[:i + 1])} is a value, not a "
                                 "table")
        node[last] = s.value
    return out


def toml_text(table: dict[str, Any], prefix: str = "") -> str:
    """A TOML document of nested tables of scalars and lists (what a study config holds)."""
    lines = [f"{_key(k)} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    text = "\n".join(lines) + "\n"
    for key, sub in table.items():
        if isinstance(sub, dict):
            name = f"{prefix}.{_key(key)}" if prefix else _key(key)
            text += f"\n[{name}]\n" + toml_text(sub, name)
    return text


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
