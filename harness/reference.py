"""Plain numpy forward pass of a ModelSpec: the third implementation next to Keras and Fortran.

It follows ``docs/model-format.md`` literally and is written for clarity, not speed, so that a
disagreement between Keras and the Fortran library can be attributed to one of them. Inputs are
laid out like the Fortran library's: ``x`` has shape ``(n_inputs, n_columns)``, features first.
Everything is computed in the spec's precision (float32 or float64).
"""

from __future__ import annotations

import math

import numpy as np

from .modelfile import Activation, LayerSpec, ModelSpec

__all__ = ["forward", "apply_activation", "apply_layer"]

_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772
_erf = np.frompyfunc(math.erf, 1, 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so that exp never overflows.
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1 + ex)
    return out


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(x.dtype.type(0), x)


def _hard_sigmoid(x: np.ndarray, slope: float, offset: float) -> np.ndarray:
    t = x.dtype.type
    return np.clip(t(slope) * x + t(offset), t(0), t(1))


def apply_activation(act: Activation, x: np.ndarray) -> np.ndarray:
    """Apply one activation to ``x`` (features, columns) in x's dtype.

    softmax and log_softmax work over the features of each column (axis 0).
    """
    t = x.dtype.type
    p = act.params
    name = act.name
    if name == "linear":
        return x
    if name == "relu":
        slope, max_value, threshold = p["negative_slope"], p["max_value"], p["threshold"]
        # Keras keeps x where x > threshold and uses slope * (x - threshold) at and below it.
        above = x > t(threshold)
        kept = x if max_value is None else np.minimum(x, t(max_value))
        return np.where(above, kept, t(slope) * (x - t(threshold)))
    if name == "relu6":
        return np.clip(x, t(0), t(6))
    if name == "leaky_relu":
        return np.where(x >= 0, x, t(p["negative_slope"]) * x)
    if name == "elu":
        return np.where(x > 0, x, t(p["alpha"]) * np.expm1(np.minimum(x, t(0))))
    if name == "selu":
        return t(_SELU_SCALE) * np.where(x > 0, x, t(_SELU_ALPHA) * np.expm1(np.minimum(x, t(0))))
    if name == "gelu":
        if p["approximate"]:
            inner = t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x ** 3)
            return t(0.5) * x * (t(1) + np.tanh(inner))
        erf = _erf(x.astype(np.float64) / math.sqrt(2)).astype(np.float64)
        return (0.5 * x.astype(np.float64) * (1 + erf)).astype(x.dtype)
    if name == "swish":
        return x * _sigmoid(x)
    if name == "sigmoid":
        return _sigmoid(x)
    if name == "hard_sigmoid":
        return _hard_sigmoid(x, p["slope"], p["offset"])
    if name == "hard_silu":
        return x * _hard_sigmoid(x, 1.0 / 6.0, 0.5)
    if name == "tanh":
        return np.tanh(x)
    if name == "softplus":
        return _softplus(x)
    if name == "softsign":
        return x / (t(1) + np.abs(x))
    if name == "exponential":
        return np.exp(x)
    if name == "mish":
        return x * np.tanh(_softplus(x))
    if name == "softmax":
        e = np.exp(x - x.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)
    if name == "log_softmax":
        shifted = x - x.max(axis=0, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))
    raise ValueError(f"unknown activation '{name}'")


def apply_layer(layer: LayerSpec, x: np.ndarray) -> np.ndarray:
    """Apply one layer to ``x`` (features, columns) in x's dtype."""
    dt = x.dtype
    a = layer.attrs
    ts = {k: np.asarray(v).astype(dt)[:, None] if np.ndim(v) == 1 else np.asarray(v).astype(dt)
          for k, v in layer.tensors.items()}
    if layer.type == "dense":
        y = ts["kernel"].T @ x
        if a["use_bias"]:
            y = y + ts["bias"]
        return apply_activation(a["activation"], y)
    if layer.type == "dropout":
        return x
    if layer.type == "batch_normalization":
        eps = dt.type(a["epsilon"])
        y = (x - ts["moving_mean"]) / np.sqrt(ts["moving_variance"] + eps)
        if a["scale"]:
            y = ts["gamma"] * y
        if a["center"]:
            y = y + ts["beta"]
        return y
    if layer.type == "normalization":
        scale = np.maximum(np.sqrt(ts["variance"]), dt.type(a["epsilon"]))
        if a["invert"]:
            return ts["mean"] + x * scale
        return (x - ts["mean"]) / scale
    if layer.type == "activation":
        return apply_activation(a["activation"], x)
    raise ValueError(f"unknown layer type '{layer.type}'")


def forward(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """Evaluate the model on ``x`` of shape (n_inputs, n_columns); returns (n_outputs, n_columns).

    A 1-D ``x`` is taken as a single column. The result has the spec's precision.
    """
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != spec.n_inputs:
        raise ValueError(f"input must have shape ({spec.n_inputs}, n_columns), got {arr.shape}")
    y = arr.astype(spec.dtype)
    with np.errstate(over="ignore", under="ignore"):
        for layer in spec.layers:
            y = apply_layer(layer, y)
    return y
