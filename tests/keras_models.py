"""Small Keras models for the conversion tests (plain functions, not fixtures).

TensorFlow is imported only inside these functions, so importing this module is free. ``k`` is
the Keras module to build with: ``keras`` (Keras 3) or ``tf_keras`` (Keras 2); both have the
same layer API for what is used here.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LayerFactory = Callable[[Any, str], Sequence[Any]]


def keras3() -> Any:
    """The Keras 3 module."""
    import keras

    return keras


def keras2() -> Any:
    """The Keras 2 module (tf_keras)."""
    import tf_keras

    return tf_keras


def randomize(model: Any, seed: int = 0) -> Any:
    """Give every weight a non-trivial value, variances kept positive.

    Fresh Keras weights are zeros/ones, which would hide a swapped gamma/beta or mean/variance.
    Normalization layers cache their statistics, so they are refreshed (finalize_state).
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        paths = [getattr(w, "path", getattr(w, "name", "")) for w in layer.weights]
        new = []
        for value, path in zip(weights, paths):
            if not np.issubdtype(value.dtype, np.floating):
                new.append(value)
            elif "variance" in path:
                new.append(rng.uniform(0.3, 2.0, size=value.shape).astype(value.dtype))
            else:
                new.append((0.6 * rng.standard_normal(value.shape)).astype(value.dtype))
        layer.set_weights(new)
        if type(layer).__name__ == "Normalization" and hasattr(layer, "finalize_state"):
            layer.finalize_state()
    return model


def sequential(k: Any, layers: Sequence[Any], n_in: int = 4, dtype: str = "float32",
               seed: int = 0, name: str | None = None) -> Any:
    """A randomized Sequential model Input(n_in) -> layers."""
    model = k.Sequential([k.Input(shape=(n_in,), dtype=dtype), *layers], name=name)
    return randomize(model, seed)


def functional_chain(k: Any, dtype: str = "float32", seed: int = 1) -> Any:
    """A Functional chain Input -> Dense -> BN -> LeakyReLU -> Dropout -> Dense(softmax)."""
    L = k.layers
    inputs = k.Input(shape=(4,), dtype=dtype, name="x_in")
    h = L.Dense(6, name="hidden", dtype=dtype)(inputs)
    h = L.BatchNormalization(name="bn", dtype=dtype)(h)
    h = L.LeakyReLU(0.25, name="lrelu", dtype=dtype)(h)
    h = L.Dropout(0.1, name="drop", dtype=dtype)(h)
    out = L.Dense(3, activation="softmax", name="out", dtype=dtype)(h)
    return randomize(k.Model(inputs, out, name="chain"), seed)


def paper_like(k: Any, dtype: str = "float32", seed: int = 2) -> Any:
    """The SPCAM-paper block structure in miniature: [Dense, BN, LeakyReLU, Dropout] x 2."""
    L = k.layers
    layers: list[Any] = []
    for i in range(2):
        layers += [L.Dense(8, name=f"dense_{i}", dtype=dtype),
                   L.BatchNormalization(name=f"bn_{i}", dtype=dtype),
                   L.LeakyReLU(0.3, name=f"lrelu_{i}", dtype=dtype),
                   L.Dropout(0.1, name=f"drop_{i}", dtype=dtype)]
    layers.append(L.Dense(3, name="out", dtype=dtype))
    return sequential(k, layers, n_in=5, dtype=dtype, seed=seed, name="emu_seq")


def adapted_normalization(k: Any, n: int, dtype: str = "float32", invert: bool = False,
                          seed: int = 3) -> Any:
    """A Normalization layer whose statistics are variables (adapted on random data)."""
    rng = np.random.default_rng(seed)
    layer = k.layers.Normalization(axis=-1, invert=invert, dtype=dtype)
    layer.adapt((rng.standard_normal((64, n)) * rng.uniform(0.5, 3, n) + rng.normal(size=n))
                .astype(dtype))
    return layer


def inputs(n_in: int, n_rows: int = 16, seed: int = 7, scale: float = 1.5,
           dtype: str = "float32") -> np.ndarray:
    """Batch of inputs in Keras layout (rows, features), exactly representable in ``dtype``.

    Keras 2 predict() casts float64 numpy input to float32 before a float64 model sees it, so
    float64 tests feed float32-representable values to compare like with like.
    """
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((n_rows, n_in))
    return x.astype(np.float32).astype(dtype)
