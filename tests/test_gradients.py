"""Backward pass of every layer type and activation, through the C binding, against TensorFlow's
GradientTape on small random models in training mode (batch-norm batch statistics):
relative error <= 1e-4 in the single build, <= 1e-10 in the double build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.keras_reader import read_keras
from harness.modelfile import write_model
from harness.native import ColnnError, NativeModel

ACTIVATIONS = ["linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "swish",
               "sigmoid", "hard_sigmoid", "hard_silu", "tanh", "softplus", "softsign",
               "exponential", "mish", "softmax", "log_softmax"]


def keras_model(act: str, dtype: str, seed: int):
    import keras
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    n_in = 5
    norm = keras.layers.Normalization(mean=rng.standard_normal(n_in).tolist(),
                                      variance=(0.5 + rng.uniform(0, 1, n_in)).tolist(),
                                      dtype=dtype)
    layers = [keras.Input(shape=(n_in,), dtype=dtype), norm,
              keras.layers.Dense(7, activation=act, dtype=dtype),
              keras.layers.BatchNormalization(dtype=dtype, center=True, scale=True),
              keras.layers.Dense(6, use_bias=False, dtype=dtype),
              keras.layers.Activation(act, dtype=dtype),
              keras.layers.LeakyReLU(negative_slope=0.3, dtype=dtype),
              keras.layers.ReLU(max_value=3.0, threshold=0.2, negative_slope=0.1, dtype=dtype),
              keras.layers.ELU(alpha=0.7, dtype=dtype),
              keras.layers.Dense(3, dtype=dtype)]
    model = keras.Sequential(layers)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([(1 + 0.3 * rng.standard_normal(g.shape)).astype(dtype),
                               (0.2 * rng.standard_normal(b.shape)).astype(dtype), m, v])
    return model


def keras_gradients(model, x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=True)
        loss = tf.reduce_sum(y * tf.constant(r))
    grads = tape.gradient(loss, model.trainable_variables + [xt])
    flat = np.concatenate([np.asarray(g).ravel() for g in grads[:-1]])
    return flat, np.asarray(grads[-1])


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradients_match_gradient_tape(tmp_path: Path, act: str, precision: str) -> None:
    seed = ACTIVATIONS.index(act)
    model = keras_model(act, precision, seed)
    model.save(tmp_path / "m.keras")
    spec = read_keras(tmp_path / "m.keras")
    write_model(spec, tmp_path / "m.colnn")
    rng = np.random.default_rng(100 + seed)
    x = (0.8 * rng.standard_normal((24, 5))).astype(precision)
    r = rng.standard_normal((24, 3)).astype(precision)
    params_before = None
    with NativeModel(tmp_path / "m.colnn", precision="double" if precision == "float64" else "single") as m:
        params_before = m.get_params()
        y = m.forward_train(x)
        dx = m.backward(r)
        g = m.get_grads()
        assert np.array_equal(m.get_params(), params_before)   # gradients only, no update
    g_keras, dx_keras = keras_gradients(model, x, r)
    y_keras = np.asarray(model(x, training=True))
    tol = 1e-4 if precision == "float32" else 1e-10
    if precision == "float64" and act == "gelu":
        tol = 1e-7   # TensorFlow's float64 gelu uses 1/sqrt(2) rounded to float32
    print(f"GRADERR {act} {precision} forward {rel(y, y_keras):.1e} params {rel(g, g_keras):.1e} inputs {rel(dx, dx_keras):.1e}")
    assert g.shape == g_keras.shape
    assert rel(y, y_keras) <= tol, f"forward {rel(y, y_keras):.2e}"
    assert rel(g, g_keras) <= tol, f"parameter gradients {rel(g, g_keras):.2e}"
    assert rel(dx, dx_keras) <= tol, f"input gradients {rel(dx, dx_keras):.2e}"


def test_params_round_trip_and_keras_order(tmp_path: Path) -> None:
    model = keras_model("tanh", "float32", 0)
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    keras_flat = np.concatenate([np.asarray(v).ravel() for v in model.trainable_variables])
    with NativeModel(tmp_path / "m.colnn") as m:
        p = m.get_params()
        assert np.array_equal(p, keras_flat)
        x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
        y0 = m.predict(x)
        m.set_params(p * 2)
        assert np.array_equal(m.get_params(), p * 2)
        assert not np.allclose(m.predict(x), y0)
        with pytest.raises(Exception):
            m.set_params(p[:-1])
        bad = p.copy()
        bad[3] = np.nan
        with pytest.raises(ColnnError):
            m.set_params(bad)
        assert np.array_equal(m.get_params(), p * 2)          # unchanged by the refused call


def test_dropout_training_mask_is_consistent(tmp_path: Path) -> None:
    """Training-mode dropout: inverted scaling, about `rate` dropped, backward uses the mask."""
    from harness.modelfile import Activation, LayerSpec, ModelSpec
    n = 50
    spec = ModelSpec("float32", n, [
        LayerSpec("dropout", "drop", {"rate": 0.25}, {}),
        LayerSpec("dense", "id", {"units": n, "use_bias": False,
                                  "activation": Activation.make("linear")},
                  {"kernel": np.eye(n, dtype=np.float32)})])
    write_model(spec, tmp_path / "d.colnn")
    x = np.ones((400, n), np.float32)
    with NativeModel(tmp_path / "d.colnn") as m:
        y = m.forward_train(x)
        assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
        assert abs(np.mean(y == 0) - 0.25) < 0.02
        dx = m.backward(np.ones_like(y))
        assert np.array_equal(dx, y)                            # same mask, same scaling
        y2 = m.forward_train(x)
        assert not np.array_equal(y, y2)                        # a new mask each call
        assert np.array_equal(m.predict(x), x)                  # inference: identity


def test_backward_bad_calls(tmp_path: Path) -> None:
    model = keras_model("relu", "float32", 1)
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    with NativeModel(tmp_path / "m.colnn") as m:
        with pytest.raises(ColnnError, match="no forward_train"):
            m.backward(np.ones((4, 3)))
        m.forward_train(np.ones((4, 5)))
        with pytest.raises(ColnnError, match=r"dy must be \(3, 4\)"):
            m.backward(np.ones((5, 3)))
        x = np.ones((4, 5))
        x[1, 2] = np.nan
        with pytest.raises(ColnnError, match="NaN"):
            m.forward_train(x)
