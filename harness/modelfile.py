"""The colnn text model file (format version 1): data model, strict reader, atomic writer.

The format is defined in ``docs/model-format.md``. This module is the single Python authority on
it: the Keras and FKB converters build a ``ModelSpec`` and hand it to ``write_model``; the
reference forward pass and the Keras writer consume a ``ModelSpec``. ``validate`` is shared by
the reader and the writer so that nothing is written that the reader (or the Fortran library)
would refuse.

Why so strict: a model file that is silently misread produces a running but wrong simulation.
Every problem therefore raises ``ModelFileError`` naming the file, the line and what is wrong,
and sizes are checked against the remaining file before anything is allocated.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence, Union

import numpy as np

from .atomic import atomic_write_chunks
from .errors import ModelFileError

__all__ = [
    "FORMAT_VERSION",
    "PRECISIONS",
    "ACTIVATION_PARAMS",
    "ACTIVATION_ALIASES",
    "LAYER_ATTRS",
    "LAYER_TENSORS",
    "Activation",
    "LayerSpec",
    "ModelSpec",
    "read_model",
    "write_model",
    "validate",
    "format_scalar",
    "atomic_write",
]

PathLike = Union[str, "os.PathLike[str]"]
ParamValue = Union[float, bool, None]

FORMAT_VERSION = 1
PRECISIONS = ("float32", "float64")
MAX_SIZE = 2**31 - 1

# Activation name -> {parameter: Keras 3 default}. The default's type fixes the parameter's
# kind: float, bool, or "float or none" (max_value, whose default is None).
ACTIVATION_PARAMS: dict[str, dict[str, ParamValue]] = {
    "linear": {},
    "relu": {"negative_slope": 0.0, "max_value": None, "threshold": 0.0},
    "relu6": {},
    "leaky_relu": {"negative_slope": 0.2},
    "elu": {"alpha": 1.0},
    "selu": {},
    "gelu": {"approximate": False},
    "swish": {},
    "sigmoid": {},
    # Keras 3 computes relu6(x + 3) / 6; slope 1/6 is that function (Keras 2 used 0.2).
    "hard_sigmoid": {"slope": 1.0 / 6.0, "offset": 0.5},
    "hard_silu": {},
    "tanh": {},
    "softplus": {},
    "softsign": {},
    "exponential": {},
    "mish": {},
    "softmax": {},
    "log_softmax": {},
}
_FLOAT_OR_NONE = {("relu", "max_value")}
ACTIVATION_ALIASES: dict[str, str] = {"silu": "swish", "hard_swish": "hard_silu"}

# Layer type -> {attribute: kind}; every block also has "name".
LAYER_ATTRS: dict[str, dict[str, str]] = {
    "dense": {"units": "size", "use_bias": "bool", "activation": "activation"},
    "dropout": {"rate": "float"},
    "batch_normalization": {"epsilon": "float", "momentum": "float", "center": "bool",
                            "scale": "bool"},
    "normalization": {"epsilon": "float", "invert": "bool"},
    "activation": {"activation": "activation"},
}
LAYER_TENSORS: dict[str, tuple[str, ...]] = {
    "dense": ("kernel", "bias"),
    "dropout": (),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "normalization": ("mean", "variance"),
    "activation": (),
}
_HEADER_KEYS = ("precision", "inputs", "outputs", "layers")
_KEY_RE = re.compile(r"[a-z0-9_]+\Z")
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
# Characters a line of tensor values may hold; rules out nan, inf, hex, '_' digit separators.
_VALUES_RE = re.compile(r"[0-9eE+\-. \t]*\Z")


@dataclass
class Activation:
    """An activation function with all of its parameters (canonical name, defaults filled in).

    Build one with ``Activation.make`` to resolve aliases and check the parameters.
    """

    name: str
    params: dict[str, ParamValue] = field(default_factory=dict)

    @classmethod
    def make(cls, name: str, **params: ParamValue) -> "Activation":
        """Canonical activation: alias resolved, unknown names/parameters refused, defaults set.

        Raises ``ValueError`` (callers turn it into a located ``ModelFileError`` or
        ``ConversionError``).
        """
        canonical = ACTIVATION_ALIASES.get(name, name)
        if canonical not in ACTIVATION_PARAMS:
            raise ValueError(f"unknown activation '{name}'")
        defaults = ACTIVATION_PARAMS[canonical]
        full: dict[str, ParamValue] = dict(defaults)
        for key, value in params.items():
            if key not in defaults:
                allowed = ", ".join(defaults) or "none"
                raise ValueError(
                    f"activation '{canonical}' has no parameter '{key}' (allowed: {allowed})")
            full[key] = _check_param(canonical, key, value)
        return cls(canonical, full)

    def to_text(self) -> str:
        """The value of an ``activation`` line: the name and every parameter, explicitly."""
        parts = [self.name]
        for key in ACTIVATION_PARAMS[self.name]:
            parts.append(f"{key}={format_scalar(self.params[key])}")
        return " ".join(parts)


def _check_param(act: str, key: str, value: ParamValue) -> ParamValue:
    """Type-check one activation parameter; returns it normalised (bool or finite float)."""
    default = ACTIVATION_PARAMS[act][key]
    if isinstance(default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"parameter {key} of '{act}' must be true or false, got {value!r}")
        return bool(value)
    if value is None:
        if (act, key) in _FLOAT_OR_NONE:
            return None
        raise ValueError(f"parameter {key} of '{act}' must be a number, got none")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating,
                                                                     np.integer)):
        raise ValueError(f"parameter {key} of '{act}' must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"parameter {key} of '{act}' must be finite, got {number}")
    return number


@dataclass
class LayerSpec:
    """One layer block: ``type`` (a key of LAYER_ATTRS), Keras ``name``, attributes, tensors.

    ``attrs`` holds typed values (int units, bool flags, float epsilon, ``Activation``);
    ``tensors`` holds numpy arrays in the Keras layout (kernel is (inputs, units)).
    """

    type: str
    name: str
    attrs: dict = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def n_outputs(self, n_inputs: int) -> int:
        """Features this layer produces from ``n_inputs`` features."""
        if self.type == "dense":
            return int(self.attrs["units"])
        return n_inputs


@dataclass
class ModelSpec:
    """A whole model: working precision, input features, layers in order, provenance."""

    precision: str
    n_inputs: int
    layers: list[LayerSpec] = field(default_factory=list)
    meta: list[tuple[str, str]] = field(default_factory=list)
    #: lines of the optional training block (optimizer state of a checkpoint), kept verbatim
    training: list[str] | None = None

    @property
    def n_outputs(self) -> int:
        """Output features, computed through the layers (the file's 'outputs' is checked)."""
        n = self.n_inputs
        for layer in self.layers:
            n = layer.n_outputs(n)
        return n

    @property
    def n_params(self) -> int:
        """Number of stored values (weights, biases, statistics) in all tensors."""
        return int(sum(np.asarray(t).size for layer in self.layers
                       for t in layer.tensors.values()))

    @property
    def dtype(self) -> type:
        """The numpy dtype of the declared precision."""
        return np.float32 if self.precision == "float32" else np.float64


# --------------------------------------------------------------------------------------------
# scalar formatting


def format_scalar(value: ParamValue | int | str) -> str:
    """Text of one attribute or parameter value.

    Floats use Python's shortest round-trip repr (float64), so that a parameter that was rounded
    to float32 on purpose (see keras_reader) is kept bit for bit; integral floats drop '.0'.
    """
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        text = repr(float(value))
        if text.endswith(".0"):
            text = text[:-2]
        return text
    return str(value)


# --------------------------------------------------------------------------------------------
# validation (shared by reader and writer)


class _Invalid(Exception):
    """A consistency problem in one layer; validate() adds the location."""


def _is_utf8(text: str) -> bool:
    """False for strings that cannot be written as UTF-8 (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeError:
        return False
    return True


def _check_tensor(layer: LayerSpec, tname: str, shape: tuple[int, ...]) -> None:
    if tname not in layer.tensors:
        raise _Invalid(f"tensor '{tname}' is missing")
    arr = layer.tensors[tname]
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        raise _Invalid(f"tensor '{tname}' must be a floating-point numpy array")
    if arr.shape != shape:
        raise _Invalid(f"tensor '{tname}' has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise _Invalid(f"tensor '{tname}' holds NaN or Inf values")


def _check_attr_kind(layer: LayerSpec, key: str, kind: str) -> None:
    if key not in layer.attrs:
        raise _Invalid(f"attribute '{key}' is missing")
    value = layer.attrs[key]
    if kind == "size":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not 1 <= int(value) <= MAX_SIZE:
            raise _Invalid(f"attribute '{key}' must be an integer in 1..{MAX_SIZE}, "
                           f"got {value!r}")
    elif kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise _Invalid(f"attribute '{key}' must be true or false, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating,
                                                             np.integer)) \
                or not math.isfinite(float(value)):
            raise _Invalid(f"attribute '{key}' must be a finite number, got {value!r}")
    elif kind == "activation":
        if not isinstance(value, Activation):
            raise _Invalid(f"attribute '{key}' must be an Activation, got {value!r}")
        try:
            Activation.make(value.name, **value.params)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        if value.name not in ACTIVATION_PARAMS:
            raise _Invalid(f"activation '{value.name}' is an alias; use Activation.make")
        if set(value.params) != set(ACTIVATION_PARAMS[value.name]):
            raise _Invalid(f"activation '{value.name}' must list exactly the parameters "
                           f"{sorted(ACTIVATION_PARAMS[value.name])}")


def _check_layer(layer: LayerSpec, n_in: int) -> int:
    """Check one layer against its input width; returns its output width."""
    if layer.type not in LAYER_ATTRS:
        raise _Invalid(f"unknown layer type '{layer.type}' "
                       f"(known: {', '.join(LAYER_ATTRS)})")
    if not isinstance(layer.name, str) or not layer.name or layer.name != layer.name.strip() \
            or any(c in layer.name for c in "\r\n") or not _is_utf8(layer.name):
        raise _Invalid(f"layer name {layer.name!r} must be non-empty, one line, "
                       "without leading or trailing blanks")
    kinds = LAYER_ATTRS[layer.type]
    for key in layer.attrs:
        if key not in kinds:
            raise _Invalid(f"unknown attribute '{key}' for a {layer.type} layer")
    for key, kind in kinds.items():
        _check_attr_kind(layer, key, kind)
    allowed = LAYER_TENSORS[layer.type]
    for tname in layer.tensors:
        if tname not in allowed:
            raise _Invalid(f"unknown tensor '{tname}' for a {layer.type} layer")
    expected: dict[str, tuple[int, ...]] = {}
    n_out = n_in
    attrs = layer.attrs
    if layer.type == "dense":
        n_out = int(attrs["units"])
        expected["kernel"] = (n_in, n_out)
        if attrs["use_bias"]:
            expected["bias"] = (n_out,)
    elif layer.type == "batch_normalization":
        if float(attrs["epsilon"]) < 0:
            raise _Invalid("epsilon must be >= 0")
        if attrs["scale"]:
            expected["gamma"] = (n_in,)
        if attrs["center"]:
            expected["beta"] = (n_in,)
        expected["moving_mean"] = (n_in,)
        expected["moving_variance"] = (n_in,)
    elif layer.type == "normalization":
        if float(attrs["epsilon"]) < 0:
            raise _Invalid("epsilon must be >= 0")
        expected["mean"] = (n_in,)
        expected["variance"] = (n_in,)
    elif layer.type == "dropout":
        if not 0.0 <= float(attrs["rate"]) < 1.0:
            raise _Invalid(f"rate must be in [0, 1), got {attrs['rate']}")
    for tname in layer.tensors:
        if tname not in expected:
            raise _Invalid(f"tensor '{tname}' is not expected with these attributes "
                           f"(use_bias/center/scale)")
    for tname, shape in expected.items():
        _check_tensor(layer, tname, shape)
    if layer.type == "normalization" and np.any(layer.tensors["variance"] < 0):
        raise _Invalid("tensor 'variance' holds negative values")
    if layer.type == "batch_normalization" and \
            np.any(layer.tensors["moving_variance"] + float(attrs["epsilon"]) <= 0):
        raise _Invalid("moving_variance + epsilon must be > 0")
    return n_out


def validate(spec: ModelSpec, source: str = "<model>",
             layer_lines: Sequence[int] | None = None,
             declared_outputs: tuple[int, int] | None = None) -> None:
    """Check that a spec is complete and consistent; raise ModelFileError otherwise.

    ``source`` names the file in messages; ``layer_lines`` (reader only) gives the line of each
    layer block so that errors point into the file; ``declared_outputs`` is (outputs, line) of
    the header line to check against the computed output width.
    """
    if spec.precision not in PRECISIONS:
        raise ModelFileError(f"{source}: precision must be float32 or float64, "
                             f"got {spec.precision!r}")
    if isinstance(spec.n_inputs, bool) or not isinstance(spec.n_inputs, (int, np.integer)) \
            or not 1 <= spec.n_inputs <= MAX_SIZE:
        raise ModelFileError(f"{source}: inputs must be an integer in 1..{MAX_SIZE}, "
                             f"got {spec.n_inputs!r}")
    if not spec.layers:
        raise ModelFileError(f"{source}: a model needs at least one layer")
    for key, value in spec.meta:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ModelFileError(f"{source}: meta key {key!r} must be lower-case [a-z0-9_]")
        if not isinstance(value, str) or any(c in value for c in "\r\n") \
                or not _is_utf8(value):
            raise ModelFileError(f"{source}: meta value {value!r} must be one line of text")
    seen: dict[str, int] = {}
    n = int(spec.n_inputs)
    for index, layer in enumerate(spec.layers):
        where = (f"{source}:{layer_lines[index]}" if layer_lines is not None
                 else f"{source}: layer {index + 1}")
        try:
            n = _check_layer(layer, n)
        except _Invalid as exc:
            raise ModelFileError(f"{where}: {layer.type} layer '{layer.name}': {exc}") from None
        if layer.name in seen:
            raise ModelFileError(f"{where}: layer name '{layer.name}' is used twice "
                                 f"(also layer {seen[layer.name] + 1})")
        seen[layer.name] = index
    if declared_outputs is not None and declared_outputs[0] != n:
        raise ModelFileError(f"{source}:{declared_outputs[1]}: outputs {declared_outputs[0]} "
                             f"does not match the layers, which produce {n} features")


# --------------------------------------------------------------------------------------------
# writer


def atomic_write(path: PathLike, chunks: Iterable[str]) -> None:
    """Write text to ``path`` through a temporary file in the same directory + os.replace.

    A reader (or a running simulation) never sees a half-written model, and a failed write
    leaves an existing file untouched.
    """
    atomic_write_chunks(path, chunks)


def _format_rows(arr: np.ndarray) -> Iterator[str]:
    """Lines of values; str() of a numpy float32/float64 scalar is its shortest round-trip repr."""
    if arr.ndim == 1:
        yield " ".join(map(str, arr)) + "\n"
    else:
        for row in arr:
            yield " ".join(map(str, row)) + "\n"


def _model_chunks(spec: ModelSpec) -> Iterator[str]:
    dtype = spec.dtype
    yield f"colnn {FORMAT_VERSION}\n"
    yield f"precision {spec.precision}\n"
    yield f"inputs {spec.n_inputs}\n"
    yield f"outputs {spec.n_outputs}\n"
    yield f"layers {len(spec.layers)}\n"
    for key, value in spec.meta:
        yield f"meta {key} {value}".rstrip() + "\n"
    for layer in spec.layers:
        yield f"\nlayer {layer.type}\n"
        yield f"name {layer.name}\n"
        for key in LAYER_ATTRS[layer.type]:
            value = layer.attrs[key]
            text = value.to_text() if isinstance(value, Activation) else format_scalar(value)
            yield f"{key} {text}\n"
        for tname in LAYER_TENSORS[layer.type]:
            if tname not in layer.tensors:
                continue
            arr = np.asarray(layer.tensors[tname]).astype(dtype, copy=False)
            yield f"tensor {tname} {' '.join(str(d) for d in arr.shape)}\n"
            yield from _format_rows(arr)
        yield "end\n"
    if spec.training is not None:
        yield "\ntraining\n"
        for line in spec.training:
            yield line + "\n"
        yield "end\n"


def write_model(spec: ModelSpec, path: PathLike) -> None:
    """Write ``spec`` as a colnn text model file (format version 1), atomically.

    Tensors are converted to the declared precision and written with the shortest decimal that
    round-trips in it, so a float32 or float64 model is reproduced bit for bit by read_model.
    """
    validate(spec, source=str(path))
    dtype = spec.dtype
    for index, layer in enumerate(spec.layers):
        for tname, arr in layer.tensors.items():
            if not np.all(np.isfinite(np.asarray(arr).astype(dtype))):
                raise ModelFileError(f"{path}: layer {index + 1} '{layer.name}': tensor "
                                     f"'{tname}' overflows {spec.precision}")
    try:
        atomic_write(path, _model_chunks(spec))
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot write: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------------------------
# reader


class _Source:
    """The significant lines of a file (no blanks, no comments) with their line numbers.

    Keeps, for each position, how many characters follow, so that a tensor's claimed size can be
    checked against what the rest of the file could possibly hold before allocating.
    """

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines: list[tuple[int, str]] = []
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            self.lines.append((number, line))
        self.total_lines = text.count("\n") + (0 if text.endswith("\n") else 1)
        remaining = [0] * (len(self.lines) + 1)
        for i in range(len(self.lines) - 1, -1, -1):
            remaining[i] = remaining[i + 1] + len(self.lines[i][1]) + 1
        self.remaining_chars = remaining
        self.pos = 0

    def error(self, lineno: int, message: str) -> ModelFileError:
        return ModelFileError(f"{self.path}:{lineno}: {message}")

    def at_end(self) -> bool:
        return self.pos >= len(self.lines)

    def peek(self) -> tuple[int, str]:
        return self.lines[self.pos]

    def next(self, expecting: str) -> tuple[int, str]:
        if self.at_end():
            raise self.error(self.total_lines, f"unexpected end of file, expected {expecting}")
        item = self.lines[self.pos]
        self.pos += 1
        return item

    def lines_left(self) -> int:
        return len(self.lines) - self.pos

    def chars_left(self) -> int:
        return self.remaining_chars[self.pos]


def _split_key(line: str) -> tuple[str, str]:
    parts = line.split(None, 1)
    return parts[0], (parts[1].strip() if len(parts) > 1 else "")


def _parse_size(src: _Source, lineno: int, what: str, text: str) -> int:
    if not _INT_RE.match(text):
        raise src.error(lineno, f"{what} must be an integer, got '{text}'")
    value = int(text)
    if not 1 <= value <= MAX_SIZE:
        raise src.error(lineno, f"{what} must be in 1..{MAX_SIZE}, got {value}")
    return value


def _parse_bool(src: _Source, lineno: int, what: str, text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise src.error(lineno, f"{what} must be true or false, got '{text}'")


def _parse_float(src: _Source, lineno: int, what: str, text: str) -> float:
    if not text or not _VALUES_RE.match(text) or " " in text or "\t" in text:
        raise src.error(lineno, f"{what} must be a finite decimal number, got '{text}'")
    try:
        value = float(text)
    except ValueError:
        raise src.error(lineno, f"{what} must be a finite decimal number, got '{text}'") from None
    if not math.isfinite(value):
        raise src.error(lineno, f"{what} is out of range: '{text}'")
    return value


def _parse_activation(src: _Source, lineno: int, text: str) -> Activation:
    tokens = text.split()
    if not tokens:
        raise src.error(lineno, "activation needs a name")
    name = ACTIVATION_ALIASES.get(tokens[0], tokens[0])
    if name not in ACTIVATION_PARAMS:
        raise src.error(lineno, f"unknown activation '{tokens[0]}' "
                        f"(known: {', '.join(ACTIVATION_PARAMS)})")
    defaults = ACTIVATION_PARAMS[name]
    params: dict[str, ParamValue] = {}
    for token in tokens[1:]:
        key, eq, value = token.partition("=")
        if not eq or not key or not value:
            raise src.error(lineno, f"activation parameter '{token}' must be KEY=VALUE")
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise src.error(lineno, f"activation '{name}' has no parameter '{key}' "
                            f"(allowed: {allowed})")
        if key in params:
            raise src.error(lineno, f"activation parameter '{key}' given twice")
        if isinstance(defaults[key], bool):
            params[key] = _parse_bool(src, lineno, key, value)
        elif value == "none" and (name, key) in _FLOAT_OR_NONE:
            params[key] = None
        else:
            params[key] = _parse_float(src, lineno, key, value)
    try:
        return Activation.make(name, **params)
    except ValueError as exc:
        raise src.error(lineno, str(exc)) from None


def _parse_values(src: _Source, lineno: int, text: str, count: int, dtype: type,
                  tname: str) -> np.ndarray:
    """One line of exactly ``count`` finite values, parsed in the declared precision."""
    if not _VALUES_RE.match(text):
        bad = next((tok for tok in text.split() if not _VALUES_RE.match(tok)), text)
        raise src.error(lineno, f"tensor '{tname}': '{bad}' is not a finite decimal number")
    tokens = text.split()
    if len(tokens) != count:
        raise src.error(lineno, f"tensor '{tname}': expected {count} values on this line, "
                        f"found {len(tokens)}")
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        bad = text
        for tok in tokens:
            try:
                float(tok)
            except ValueError:
                bad = tok
                break
        raise src.error(lineno, f"tensor '{tname}': '{bad}' is not a decimal number") from None
    if dtype is not np.float64:
        with np.errstate(over="ignore"):
            values = values.astype(dtype)
    if not np.all(np.isfinite(values)):
        index = int(np.argmin(np.isfinite(values)))
        raise src.error(lineno, f"tensor '{tname}': value '{tokens[index]}' is out of range "
                        f"for {np.dtype(dtype).name}")
    return values


def _parse_tensor(src: _Source, lineno: int, text: str, dtype: type,
                  layer: LayerSpec) -> None:
    tokens = text.split()
    if len(tokens) not in (2, 3):
        raise src.error(lineno, "expected 'tensor NAME D1 [D2]'")
    tname = tokens[0]
    if tname not in LAYER_TENSORS[layer.type]:
        allowed = ", ".join(LAYER_TENSORS[layer.type]) or "none"
        raise src.error(lineno, f"unknown tensor '{tname}' for a {layer.type} layer "
                        f"(allowed: {allowed})")
    if tname in layer.tensors:
        raise src.error(lineno, f"tensor '{tname}' given twice")
    dims = [_parse_size(src, lineno, f"dimension {i + 1} of tensor '{tname}'", tok)
            for i, tok in enumerate(tokens[1:])]
    rows = dims[0] if len(dims) == 2 else 1
    per_row = dims[-1]
    # Each value needs at least one character and a separator: refuse claims the remaining
    # file cannot hold before allocating anything.
    if rows > src.lines_left() or rows * per_row > (src.chars_left() + 1) // 2:
        raise src.error(lineno, f"tensor '{tname}' claims {rows * per_row} values in {rows} "
                        f"line(s), more than the rest of the file holds")
    data = np.empty((rows, per_row), dtype=dtype)
    for r in range(rows):
        row_line, row_text = src.next(f"values of tensor '{tname}'")
        data[r] = _parse_values(src, row_line, row_text, per_row, dtype, tname)
    layer.tensors[tname] = data if len(dims) == 2 else data[0].copy()


def _parse_block(src: _Source, lineno: int, ltype: str, dtype: type) -> LayerSpec:
    if ltype not in LAYER_ATTRS:
        raise src.error(lineno, f"unknown layer type '{ltype}' (known: {', '.join(LAYER_ATTRS)})")
    kinds = LAYER_ATTRS[ltype]
    layer = LayerSpec(type=ltype, name="")
    name_seen = False
    while True:
        line_no, line = src.next(f"'end' of the {ltype} block opened on line {lineno}")
        key, value = _split_key(line)
        if key == "end":
            if value:
                raise src.error(line_no, "'end' takes no value")
            break
        if key == "layer":
            raise src.error(line_no, f"new layer block before 'end' of the {ltype} block "
                            f"opened on line {lineno}")
        if key == "tensor":
            _parse_tensor(src, line_no, value, dtype, layer)
            continue
        if key == "name":
            if name_seen:
                raise src.error(line_no, "attribute 'name' given twice")
            if not value:
                raise src.error(line_no, "attribute 'name' needs a value")
            layer.name = value
            name_seen = True
            continue
        if key not in kinds:
            allowed = ", ".join(["name", *kinds])
            raise src.error(line_no, f"unknown attribute '{key}' for a {ltype} layer "
                            f"(allowed: {allowed}, tensor)")
        if key in layer.attrs:
            raise src.error(line_no, f"attribute '{key}' given twice")
        kind = kinds[key]
        if kind == "size":
            layer.attrs[key] = _parse_size(src, line_no, key, value)
        elif kind == "bool":
            layer.attrs[key] = _parse_bool(src, line_no, key, value)
        elif kind == "float":
            layer.attrs[key] = _parse_float(src, line_no, key, value)
        else:
            layer.attrs[key] = _parse_activation(src, line_no, value)
    missing = ([] if name_seen else ["name"]) + [k for k in kinds if k not in layer.attrs]
    if missing:
        raise src.error(lineno, f"{ltype} block lacks attribute(s): {', '.join(missing)}")
    return layer


def read_model(path: PathLike) -> ModelSpec:
    """Read and fully check a colnn text model file (format version 1).

    Tensors come back in the declared precision (float32 or float64 arrays).
    """
    name = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ModelFileError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ModelFileError(f"{name}:{line}: not UTF-8 text (not a colnn model file?)") from None
    text = text.replace("\r\n", "\n")
    first = text.split("\n", 1)[0].split()
    if not first or first[0] != "colnn":
        raise ModelFileError(f"{name}:1: not a colnn model file (line 1 must be "
                             f"'colnn {FORMAT_VERSION}')")
    if len(first) != 2 or not _INT_RE.match(first[1]):
        raise ModelFileError(f"{name}:1: line 1 must be 'colnn VERSION' with an integer version")
    if int(first[1]) != FORMAT_VERSION:
        raise ModelFileError(f"{name}:1: unsupported format version {int(first[1])} "
                             f"(this reader knows version {FORMAT_VERSION})")
    src = _Source(name, text)
    src.next("'colnn 1'")
    header: dict[str, tuple[int, str]] = {}
    meta: list[tuple[str, str]] = []
    while not src.at_end():
        lineno, line = src.peek()
        key, value = _split_key(line)
        if key == "layer":
            break
        src.pos += 1
        if key == "meta":
            mkey, mvalue = _split_key(value)
            if not mkey or not _KEY_RE.match(mkey):
                raise src.error(lineno, f"meta key '{mkey}' must be lower-case [a-z0-9_]")
            meta.append((mkey, mvalue))
            continue
        if key not in _HEADER_KEYS:
            raise src.error(lineno, f"unknown header key '{key}' "
                            f"(known: {', '.join(_HEADER_KEYS)}, meta, layer)")
        if key in header:
            raise src.error(lineno, f"header key '{key}' given twice "
                            f"(first on line {header[key][0]})")
        header[key] = (lineno, value)
    for key in _HEADER_KEYS:
        if key not in header:
            where = src.peek()[0] if not src.at_end() else src.total_lines
            raise src.error(where, f"header key '{key}' is missing before the first layer")
    p_line, precision = header["precision"]
    if precision not in PRECISIONS:
        raise src.error(p_line, f"precision must be float32 or float64, got '{precision}'")
    dtype = np.float32 if precision == "float32" else np.float64
    n_inputs = _parse_size(src, header["inputs"][0], "inputs", header["inputs"][1])
    n_outputs = _parse_size(src, header["outputs"][0], "outputs", header["outputs"][1])
    n_layers = _parse_size(src, header["layers"][0], "layers", header["layers"][1])
    if n_layers > src.lines_left():
        raise src.error(header["layers"][0], f"layers {n_layers} is more than the rest of the "
                        "file can hold")
    layers: list[LayerSpec] = []
    layer_lines: list[int] = []
    for index in range(n_layers):
        if src.at_end():
            raise src.error(src.total_lines, f"unexpected end of file: header announces "
                            f"{n_layers} layers, found {index}")
        lineno, line = src.next("'layer TYPE'")
        key, value = _split_key(line)
        if key != "layer":
            raise src.error(lineno, f"expected 'layer TYPE', got '{key}'")
        if not value or len(value.split()) != 1:
            raise src.error(lineno, "expected 'layer TYPE' with one type word")
        layers.append(_parse_block(src, lineno, value, dtype))
        layer_lines.append(lineno)
    training: list[str] | None = None
    if not src.at_end() and src.peek()[1].strip() == "training":
        # a checkpoint's optimizer state: read by the Fortran library, kept verbatim here
        t_line = src.next("'training'")[0]
        training = []
        while True:
            if src.at_end():
                raise src.error(t_line, "training block without 'end'")
            lineno, line = src.next("training block")
            if line.strip() == "end":
                break
            training.append(line.strip())
    if not src.at_end():
        lineno, line = src.peek()
        raise src.error(lineno, f"unexpected content after the {n_layers} announced layers: "
                        f"'{line[:40]}'")
    spec = ModelSpec(precision=precision, n_inputs=n_inputs, layers=layers, meta=meta,
                     training=training)
    validate(spec, source=name, layer_lines=layer_lines,
             declared_outputs=(n_outputs, header["outputs"][0]))
    return spec
