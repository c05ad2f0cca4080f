"""The text model format of the Fortran-Keras Bridge (FKB): strict reader and writer.

Layout (see docs/model-format.md): line 1 the number N of layer lines; N lines ``KIND VALUE``
(the first is ``input N``); the learning rate; one bias vector per dense layer; one weight
vector per dense layer (the Keras kernel transposed and flattened, i.e. the kernel in
column-major order); four vectors per batch normalization layer (beta, gamma, moving_mean,
moving_variance; FKB fixes epsilon = 0.001).

Unlike FKB itself, every line is a layer *in file order*: an activation line is an activation
layer at that place (so a batch normalization between a dense layer and its leaky ReLU is
evaluated in between), an unknown name is an error (FKB silently used a sigmoid), and every
count is checked with a message naming the file and line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from .errors import ConversionError, ModelFileError
from .modelfile import Activation, LayerSpec, ModelSpec, atomic_write, validate

__all__ = ["read_fkb", "write_fkb", "is_fkb_file", "FKB_ACTIVATIONS", "FKB_EPSILON"]

PathLike = Union[str, "os.PathLike[str]"]

FKB_EPSILON = 0.001
# FKB activation line names -> colnn activation names. The value of the line is the slope of
# leakyrelu and the alpha of elu; FKB writes 0 for the others and ignores it. selu and swish
# are read (the colnn Fortran reader accepts them too) but never written: FKB's own Fortran
# does not know them and would silently use a sigmoid.
FKB_ACTIVATIONS: dict[str, str] = {
    "linear": "linear", "relu": "relu", "leakyrelu": "leaky_relu", "elu": "elu",
    "tanh": "tanh", "sigmoid": "sigmoid", "softmax": "softmax", "softplus": "softplus",
    "exponential": "exponential", "selu": "selu", "swish": "swish",
}
_TO_FKB = {v: k for k, v in FKB_ACTIVATIONS.items() if k not in ("selu", "swish")}
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eEdD][+-]?[0-9]+)?\Z")
_MAX_SIZE = 2**31 - 1


class _Lines:
    """Non-blank lines with their numbers; FKB files have no comments."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.items = [(n, line.strip()) for n, line in enumerate(text.split("\n"), start=1)
                      if line.strip()]
        self.last_line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        self.pos = 0

    def error(self, lineno: int, message: str) -> ConversionError:
        return ConversionError(f"{self.path}:{lineno}: {message}")

    def next(self, expecting: str) -> tuple[int, str]:
        if self.pos >= len(self.items):
            raise self.error(self.last_line, f"unexpected end of file, expected {expecting}")
        item = self.items[self.pos]
        self.pos += 1
        return item


def _number(lines: _Lines, lineno: int, token: str, what: str) -> float:
    if not _NUMBER_RE.match(token):
        raise lines.error(lineno, f"{what}: '{token}' is not a finite decimal number")
    value = float(token.replace("d", "e").replace("D", "e"))  # Fortran D exponents
    if not np.isfinite(value):
        raise lines.error(lineno, f"{what}: '{token}' is out of range")
    return value


def _size(lines: _Lines, lineno: int, token: str, what: str) -> int:
    if not _INT_RE.match(token) or not 1 <= int(token) <= _MAX_SIZE:
        raise lines.error(lineno, f"{what} must be an integer in 1..{_MAX_SIZE}, got '{token}'")
    return int(token)


def _layer_size(lines: _Lines, lineno: int, token: str, what: str) -> int:
    """A size on a layer line. FKB keeps layer sizes in a real array and its Fortran ``save``
    writes them list-directed (``5.00000000``), so a real with an integral value is that size."""
    if _INT_RE.match(token):
        return _size(lines, lineno, token, what)
    if _NUMBER_RE.match(token):
        value = float(token.replace("d", "e").replace("D", "e"))
        if value.is_integer() and 1 <= value <= _MAX_SIZE:
            return int(value)
    raise lines.error(lineno, f"{what} must be a whole number in 1..{_MAX_SIZE} (written as an "
                      f"integer, or as FKB writes it, a real such as 5.00000000), got '{token}'")


def _vector(lines: _Lines, count: int, what: str, dtype: type) -> np.ndarray:
    """``count`` values starting on a new line (they may continue over several lines, as a
    Fortran list-directed read allows) and ending exactly at the end of a line. ``R*C`` is R
    copies of C, as Intel's list-directed output writes repeated values; a null value (``R*``)
    would leave a parameter unset and is refused."""
    first_line = lines.items[lines.pos][0] if lines.pos < len(lines.items) else lines.last_line
    values: list[float] = []
    while len(values) < count:
        lineno, text = lines.next(f"{count} values of {what} (from line {first_line})")
        on_line: list[float] = []
        for token in text.split():
            repeat, star, value = token.partition("*")
            if not star:
                on_line.append(_number(lines, lineno, token, what))
                continue
            if not _INT_RE.match(repeat) or int(repeat) < 1 or not value:
                raise lines.error(lineno, f"{what}: '{token}' is not a repeat count R*C with "
                                  "R >= 1 and a number C")
            if len(values) + len(on_line) + int(repeat) > count:
                break
            if not _NUMBER_RE.match(value):
                raise lines.error(lineno, f"{what}: '{token}' is not R copies of a finite "
                                  "decimal number")
            on_line.extend([_number(lines, lineno, value, what)] * int(repeat))
        found = len(values) + _count_values(text)
        if found > count:
            raise lines.error(lineno, f"{what}: expected {count} values from line {first_line}, "
                              f"found {found} by the end of this line")
        values.extend(on_line)
    arr = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        out = arr.astype(dtype)
    if not np.all(np.isfinite(out)):
        raise lines.error(first_line, f"{what}: a value is out of range for "
                          f"{np.dtype(dtype).name}")
    return out


def _count_values(text: str) -> int:
    """Values on a line, a valid repeat R*C counting R."""
    total = 0
    for token in text.split():
        repeat, star, _ = token.partition("*")
        total += int(repeat) if star and _INT_RE.match(repeat) else 1
    return total


def read_fkb(path: PathLike, precision: str = "float32") -> ModelSpec:
    """Read an FKB text model file; each layer line becomes one layer, in file order.

    FKB files do not declare a precision: values are parsed as ``precision`` (FKB itself works
    in single precision).
    """
    name = str(path)
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be float32 or float64, got {precision!r}")
    dtype = np.float32 if precision == "float32" else np.float64
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConversionError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise ConversionError(f"{name}: not a text file (not an FKB model file)") from None
    lines = _Lines(name, text)
    lineno, first = lines.next("the number of layer lines")
    tokens = first.split()
    if len(tokens) != 1:
        raise lines.error(lineno, f"line 1 must hold only the number of layer lines, got "
                          f"'{first[:40]}'")
    n_lines = _size(lines, lineno, tokens[0], "the number of layer lines")
    if n_lines > len(lines.items) - lines.pos:
        raise lines.error(lineno, f"announces {n_lines} layer lines; the file is shorter")
    entries: list[tuple[int, str, str]] = []
    for index in range(n_lines):
        lineno, text_line = lines.next(f"layer line {index + 1} of {n_lines}")
        parts = text_line.split()
        if len(parts) != 2:
            raise lines.error(lineno, f"layer line must be 'KIND VALUE', got '{text_line[:40]}' "
                              f"(the header announced {n_lines} layer lines)")
        entries.append((lineno, parts[0].lower(), parts[1]))
    lr_line, lr_text = lines.next("the learning rate")
    lr_tokens = lr_text.split()
    if len(lr_tokens) != 1:
        raise lines.error(lr_line, f"expected the learning rate (one number) after the "
                          f"{n_lines} layer lines, got '{lr_text[:40]}'")
    _number(lines, lr_line, lr_tokens[0], "learning rate")

    first_line, kind, value = entries[0]
    if kind != "input":
        raise lines.error(first_line, f"the first layer line must be 'input N', got '{kind}'")
    n_inputs = _layer_size(lines, first_line, value, "input size")
    layers: list[LayerSpec] = []
    dense: list[tuple[LayerSpec, int, int]] = []  # layer, inputs, line
    batchnorm: list[tuple[LayerSpec, int]] = []
    n = n_inputs

    def next_name(base: str) -> str:
        # TYPE_K with K the position of the layer line after 'input' - the names the Fortran
        # library's FKB reader gives, so both sides agree.
        return f"{base}_{len(layers) + 1}"

    for lineno, kind, value in entries[1:]:
        if kind == "input":
            raise lines.error(lineno, "'input' may only be the first layer line")
        if kind == "dense":
            units = _layer_size(lines, lineno, value, "dense units")
            layer = LayerSpec("dense", next_name("dense"),
                              {"units": units, "use_bias": True,
                               "activation": Activation.make("linear")}, {})
            dense.append((layer, n, lineno))
            n = units
        elif kind == "dropout":
            rate = _number(lines, lineno, value, "dropout rate")
            if not 0.0 <= rate < 1.0:
                raise lines.error(lineno, f"dropout rate must be in [0, 1), got {value}")
            layer = LayerSpec("dropout", next_name("dropout"), {"rate": rate}, {})
        elif kind == "batchnormalization":
            _number(lines, lineno, value, "batchnormalization value")
            layer = LayerSpec("batch_normalization", next_name("batch_normalization"),
                              {"epsilon": FKB_EPSILON, "momentum": 0.99, "center": True,
                               "scale": True}, {})
            batchnorm.append((layer, n))
        elif kind in FKB_ACTIVATIONS:
            number = _number(lines, lineno, value, f"{kind} parameter")
            act_name = FKB_ACTIVATIONS[kind]
            if act_name == "leaky_relu":
                act = Activation.make("leaky_relu", negative_slope=number)
            elif act_name == "elu":
                act = Activation.make("elu", alpha=number)
            else:
                act = Activation.make(act_name)  # FKB writes 0 and ignores the value
            layer = LayerSpec("activation", next_name("activation"), {"activation": act}, {})
        else:
            raise lines.error(lineno, f"unknown layer or activation '{kind}' (known: input, "
                              f"dense, dropout, batchnormalization, "
                              f"{', '.join(FKB_ACTIVATIONS)})")
        layers.append(layer)
    if not layers:
        raise lines.error(first_line, "the file has no layers after 'input'")
    if dense and lines.pos >= len(lines.items):
        # FKB's own reader fills such a file with random weights (to train in Fortran); running
        # it as a model would evaluate weights nobody trained
        raise ConversionError(
            f"{name}: the FKB file has no weights: it ends after the learning rate (an "
            "architecture-only file, for which FKB draws random weights to train in Fortran); "
            "a model to run needs its biases and weights")
    for layer, n_in, _ in dense:
        layer.tensors["bias"] = _vector(lines, layer.attrs["units"],
                                        f"biases of {layer.name}", dtype)
    for layer, n_in, _ in dense:
        units = layer.attrs["units"]
        flat = _vector(lines, n_in * units, f"weights of {layer.name} ({n_in} x {units})", dtype)
        layer.tensors["kernel"] = np.ascontiguousarray(flat.reshape(units, n_in).T)
    for layer, width in batchnorm:
        for tname in ("beta", "gamma", "moving_mean", "moving_variance"):
            layer.tensors[tname] = _vector(lines, width, f"{tname} of {layer.name}", dtype)
    if lines.pos < len(lines.items):
        lineno, extra = lines.items[lines.pos]
        raise lines.error(lineno, f"unexpected content after the last parameter vector: "
                          f"'{extra[:40]}'")
    spec = ModelSpec(precision=precision, n_inputs=n_inputs, layers=layers,
                     meta=[("source", Path(name).name), ("source_format", "fkb"),
                           ("learning_rate", lr_tokens[0])])
    try:
        validate(spec, source=name)
    except ModelFileError as exc:
        raise ConversionError(str(exc)) from None
    return spec


# ---------------------------------------------------------------------------------------------
# writer


def _fkb_activation(act: Activation, where: str) -> str:
    """The FKB activation line for ``act``; refuses what FKB cannot express."""
    fkb_name = _TO_FKB.get(act.name)
    p = act.params
    if fkb_name is None or (act.name == "relu" and (p["negative_slope"] != 0.0
                                                     or p["max_value"] is not None
                                                     or p["threshold"] != 0.0)):
        raise ConversionError(f"{where}: activation '{act.to_text()}' has no FKB equivalent "
                              f"(FKB knows {', '.join(_TO_FKB.values())}; relu without "
                              "parameters)")
    value: float = 0.0
    if act.name == "leaky_relu":
        value = float(p["negative_slope"])
    elif act.name == "elu":
        value = float(p["alpha"])
    return f"{fkb_name}\t{_scalar(value)}"


def _scalar(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _row(values: np.ndarray) -> str:
    return "\t".join(map(str, values)) + "\n"


def write_fkb(spec: ModelSpec, path: PathLike) -> None:
    """Write ``spec`` as an FKB text file (tab-separated, as FKB's own converter writes).

    Every dense layer is followed by exactly one activation line, as FKB expects: its own
    activation, or - for a linear dense layer followed by an activation layer - that layer's.
    Refused with ConversionError: dense layers without bias (FKB always has one), activations
    FKB lacks, batch normalization with epsilon other than 0.001, normalization layers.
    """
    try:
        validate(spec, source=str(path))
    except ModelFileError as exc:
        raise ConversionError(str(exc)) from None
    dtype = spec.dtype
    layer_lines: list[str] = [f"input\t{spec.n_inputs}"]
    biases: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    bn_vectors: list[np.ndarray] = []
    layers = spec.layers
    index = 0
    while index < len(layers):
        layer = layers[index]
        where = f"{path}: layer {index + 1} '{layer.name}' ({layer.type})"
        a = layer.attrs
        if layer.type == "dense":
            if not a["use_bias"]:
                raise ConversionError(f"{where}: FKB dense layers always have a bias; this "
                                      "layer has none")
            layer_lines.append(f"dense\t{a['units']}")
            act: Activation = a["activation"]
            nxt = layers[index + 1] if index + 1 < len(layers) else None
            if act.name == "linear" and nxt is not None and nxt.type == "activation":
                index += 1
                layer_lines.append(_fkb_activation(
                    nxt.attrs["activation"],
                    f"{path}: layer {index + 1} '{nxt.name}' (activation)"))
            else:
                layer_lines.append(_fkb_activation(act, where))
            biases.append(np.asarray(layer.tensors["bias"]).astype(dtype))
            weights.append(np.asarray(layer.tensors["kernel"]).astype(dtype).T.reshape(-1))
        elif layer.type == "activation":
            layer_lines.append(_fkb_activation(a["activation"], where))
        elif layer.type == "dropout":
            layer_lines.append(f"dropout\t{_scalar(a['rate'])}")
        elif layer.type == "batch_normalization":
            eps = float(a["epsilon"])
            if eps not in (FKB_EPSILON, float(np.float32(FKB_EPSILON))):
                raise ConversionError(f"{where}: FKB fixes the batch normalization epsilon at "
                                      f"0.001; this layer has {eps}")
            t = {k: np.asarray(v).astype(dtype) for k, v in layer.tensors.items()}
            width = t["moving_mean"].shape[0]
            # Missing beta/gamma (center/scale off) are exactly beta = 0, gamma = 1.
            bn_vectors += [t.get("beta", np.zeros(width, dtype)),
                           t.get("gamma", np.ones(width, dtype)),
                           t["moving_mean"], t["moving_variance"]]
            layer_lines.append("batchnormalization\t0")
        else:
            raise ConversionError(f"{where}: FKB has no {layer.type} layer")
        index += 1
    learning_rate = next((v for k, v in spec.meta if k == "learning_rate"), "0.001")
    if not _NUMBER_RE.match(learning_rate.strip()):
        learning_rate = "0.001"  # FKB needs a number on this line; colnn ignores it

    def chunks() -> Iterator[str]:
        yield f"{len(layer_lines)}\n"
        for line in layer_lines:
            yield line + "\n"
        yield f"{learning_rate}\n"
        for vector in (*biases, *weights, *bn_vectors):
            yield _row(vector)

    try:
        atomic_write(path, chunks())
    except OSError as exc:
        raise ConversionError(f"{path}: cannot write: {exc.strerror or exc}") from None


def is_fkb_file(path: PathLike) -> bool:
    """True when the file looks like an FKB text model: its first non-blank token is an integer.

    colnn files start with the word 'colnn'; Keras files are binary (zip or HDF5).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    if b"\0" in head:
        return False
    text = head.decode("utf-8", errors="replace")
    tokens = text.split(None, 1)
    return bool(tokens) and bool(_INT_RE.match(tokens[0]))
