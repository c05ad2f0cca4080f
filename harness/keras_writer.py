"""Write a ModelSpec as a Keras 3 model file (``.keras``, or legacy ``.h5``) - the way back.

Each colnn layer becomes exactly one Keras layer, with the Keras name kept, so that a model
converted to colnn and back has the same layer list. An activation block maps to the Keras
class that carries its parameters (LeakyReLU, ReLU, ELU, Softmax, else Activation). A Dense
activation is written as a Keras string where that string means exactly the same function, and
otherwise as a nested activation layer object (e.g. LeakyReLU(0.3)); a function Keras 3 cannot
express (Keras 2's hard_sigmoid, approximate gelu) is refused rather than approximated.

Keras is imported lazily: reading and writing colnn files must not pay for TensorFlow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import ConversionError, ModelFileError
from .modelfile import Activation, LayerSpec, ModelSpec, validate

__all__ = ["write_keras", "build_keras_model", "keras_activation_string"]

PathLike = Union[str, "os.PathLike[str]"]

_KERAS_EPSILON = 1e-7
_PLAIN = {
    "linear": "linear", "relu6": "relu6", "selu": "selu", "swish": "silu",
    "sigmoid": "sigmoid", "hard_silu": "hard_silu", "tanh": "tanh", "softplus": "softplus",
    "softsign": "softsign", "exponential": "exponential", "mish": "mish",
    "softmax": "softmax", "log_softmax": "log_softmax",
}


def keras_activation_string(act: Activation, precision: str) -> str | None:
    """The Keras 3 activation string that computes exactly ``act``, or None if there is none."""
    p = act.params
    if act.name in _PLAIN:
        return _PLAIN[act.name]
    if act.name == "relu" and p["negative_slope"] == 0.0 and p["max_value"] is None \
            and p["threshold"] == 0.0:
        return "relu"
    if act.name == "elu" and p["alpha"] == 1.0:
        return "elu"
    if act.name == "gelu" and not p["approximate"]:
        return "gelu"
    if act.name == "hard_sigmoid" and p["slope"] == 1.0 / 6.0 and p["offset"] == 0.5:
        return "hard_sigmoid"
    if act.name == "leaky_relu":
        # Keras' 'leaky_relu' string means slope 0.2, which float64 models use as float32.
        default = 0.2 if precision == "float32" else float(np.float32(0.2))
        if p["negative_slope"] in (0.2, default):
            return "leaky_relu"
    return None


def _activation_layer(keras: Any, act: Activation, name: str | None, dtype: str,
                      where: str) -> Any:
    """A Keras layer object computing ``act`` (for activation blocks and nested activations)."""
    p = act.params
    layers = keras.layers
    if act.name == "leaky_relu":
        return layers.LeakyReLU(negative_slope=p["negative_slope"], name=name, dtype=dtype)
    if act.name == "relu" and (p["negative_slope"] != 0.0 or p["max_value"] is not None
                               or p["threshold"] != 0.0):
        if p["negative_slope"] < 0 or p["threshold"] < 0 or \
                (p["max_value"] is not None and p["max_value"] < 0):
            raise ConversionError(f"{where}: Keras' ReLU layer refuses negative parameters "
                                  f"({act.to_text()})")
        return layers.ReLU(negative_slope=p["negative_slope"], max_value=p["max_value"],
                           threshold=p["threshold"], name=name, dtype=dtype)
    if act.name == "elu":
        return layers.ELU(alpha=p["alpha"], name=name, dtype=dtype)
    if act.name == "softmax":
        return layers.Softmax(axis=-1, name=name, dtype=dtype)
    text = keras_activation_string(act, dtype)
    if text is None:
        raise ConversionError(f"{where}: activation '{act.to_text()}' has no exact Keras 3 "
                              "equivalent")
    return layers.Activation(text, name=name, dtype=dtype)


def _build_layer(keras: Any, layer: LayerSpec, dtype: str, where: str) -> tuple[Any, list]:
    """The Keras layer for one colnn layer and the weights to set once it is built."""
    layers = keras.layers
    a = layer.attrs
    t = {k: np.asarray(v, dtype=dtype) for k, v in layer.tensors.items()}
    if layer.type == "dense":
        act: Activation = a["activation"]
        text = keras_activation_string(act, dtype)
        activation: Any = text if text is not None else _activation_layer(
            keras, act, f"{layer.name}_activation", dtype, where)
        keras_layer = layers.Dense(int(a["units"]), activation=activation,
                                   use_bias=bool(a["use_bias"]), name=layer.name, dtype=dtype)
        weights = [t["kernel"], t["bias"]] if a["use_bias"] else [t["kernel"]]
        return keras_layer, weights
    if layer.type == "dropout":
        return layers.Dropout(float(a["rate"]), name=layer.name, dtype=dtype), []
    if layer.type == "batch_normalization":
        keras_layer = layers.BatchNormalization(
            axis=-1, epsilon=float(a["epsilon"]), momentum=float(a["momentum"]),
            center=bool(a["center"]), scale=bool(a["scale"]), name=layer.name, dtype=dtype)
        weights = ([t["gamma"]] if a["scale"] else []) + ([t["beta"]] if a["center"] else []) \
            + [t["moving_mean"], t["moving_variance"]]
        return keras_layer, weights
    if layer.type == "normalization":
        if float(a["epsilon"]) != _KERAS_EPSILON:
            raise ConversionError(f"{where}: Keras' Normalization uses epsilon "
                                  f"{_KERAS_EPSILON}; this layer has {a['epsilon']}")
        # Mean and variance go in as variables, not config lists: Keras 3 turns config lists
        # into float32 tensors, which would round a float64 model's statistics.
        keras_layer = layers.Normalization(axis=-1, invert=bool(a["invert"]), name=layer.name,
                                           dtype=dtype)
        return keras_layer, [t["mean"], t["variance"], np.asarray(0, dtype=np.int64)]
    if layer.type == "activation":
        return _activation_layer(keras, a["activation"], layer.name, dtype, where), []
    raise ConversionError(f"{where}: layer type '{layer.type}' has no Keras equivalent")


def build_keras_model(spec: ModelSpec) -> Any:
    """A built keras.Sequential model computing ``spec`` (weights set, not compiled)."""
    import keras  # lazily: TensorFlow is only needed on the way back to Keras

    dtype = spec.precision
    built: list[tuple[Any, list]] = []
    for index, layer in enumerate(spec.layers):
        where = f"layer {index + 1} '{layer.name}' ({layer.type})"
        built.append(_build_layer(keras, layer, dtype, where))
    model = keras.Sequential([keras.Input(shape=(spec.n_inputs,), dtype=dtype),
                              *(k for k, _ in built)])
    for (keras_layer, weights), layer in zip(built, spec.layers):
        if weights:
            keras_layer.set_weights(weights)
        if layer.type == "normalization":
            keras_layer.finalize_state()  # recompute the cached mean/variance tensors
    return model


def write_keras(spec: ModelSpec, path: PathLike) -> None:
    """Save ``spec`` as a Keras 3 model: ``.keras`` (zip) or legacy ``.h5``/``.hdf5``, by suffix.

    The file is written next to its destination under a temporary name and then renamed, so an
    existing file is replaced only by a complete one.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise ConversionError(f"{path}: a Keras model file must end in .keras or .h5")
    try:
        validate(spec, source=str(path))
    except ModelFileError as exc:
        raise ConversionError(str(exc)) from None
    try:
        model = build_keras_model(spec)
    except ConversionError as exc:
        raise ConversionError(f"{path}: {exc}") from None
    except ValueError as exc:  # Keras refuses a name or a parameter
        raise ConversionError(f"{path}: Keras refused the model: {exc}") from None
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=directory)
    except OSError as exc:
        raise ConversionError(f"{path}: cannot write: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(tmp_name)  # Keras wants to create the file itself
    try:
        model.save(tmp_name)
        os.replace(tmp_name, target)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(exc, (OSError, ValueError)):
            raise ConversionError(f"{path}: cannot save the Keras model: {exc}") from None
        raise
