"""The main job until the full study lands: make data, train a small Keras MLP, convert it,
run it through the Fortran library, verify it against Keras, and convert it back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "make_column_data"]


def make_column_data(n: int, n_in: int = 16, n_out: int = 8, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A toy 'column physics' map: smooth profiles in, a nonlinear tendency profile out."""
    rng = np.random.default_rng(seed)
    z = np.linspace(0.0, 1.0, n_in)
    amp = rng.normal(1.0, 0.3, (n, 1))
    shift = rng.uniform(-0.3, 0.3, (n, 1))
    x = amp * np.exp(-((z[None, :] - 0.5 - shift) ** 2) / 0.05) + 0.05 * rng.standard_normal((n, n_in))
    w = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
    y = np.tanh(x @ w) + 0.5 * (x @ w) ** 2 * np.sign(shift)
    return x.astype(np.float32), y.astype(np.float32)


def run_demo(workdir: Path, seed: int = 0, columns: int = 4096, epochs: int = 8) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .convert import convert
    from .native import NativeModel
    from .verify import verify, keras_predict

    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/5] making training data (seed {seed})", flush=True)
    x, y = make_column_data(20000, seed=seed)

    print(f"[2/5] training a Keras MLP ({epochs} epochs)", flush=True)
    import keras
    keras.utils.set_random_seed(seed)
    norm = keras.layers.Normalization(name="normalize_inputs")
    norm.adapt(x)
    model = keras.Sequential([
        keras.Input(shape=(x.shape[1],)),
        norm,
        keras.layers.Dense(64, name="dense_1"),
        keras.layers.BatchNormalization(name="bn_1"),
        keras.layers.LeakyReLU(negative_slope=0.3, name="leaky_1"),
        keras.layers.Dropout(0.1, name="dropout_1"),
        keras.layers.Dense(64, activation="tanh", name="dense_2"),
        keras.layers.Dense(y.shape[1], name="output"),
    ], name="demo_mlp")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    hist = model.fit(x, y, epochs=epochs, batch_size=256, validation_split=0.2, verbose=0)
    print(f"      validation MSE {hist.history['val_loss'][-1]:.4g}", flush=True)
    keras_file = workdir / "demo.keras"
    model.save(keras_file)

    print("[3/5] harness convert demo.keras -> demo.colnn", flush=True)
    model_file = workdir / "demo.colnn"
    spec = convert(keras_file, model_file)
    print(f"      {len(spec.layers)} layers, {spec.n_params} parameters", flush=True)

    print(f"[4/5] Fortran library vs Keras on {columns} random columns", flush=True)
    result = verify(keras_file, model_file, columns=columns, seed=seed)
    print(result.report(), flush=True)

    print("[5/5] back to Keras: demo.colnn -> roundtrip.keras", flush=True)
    back = workdir / "roundtrip.keras"
    convert(model_file, back)
    xs = x[:512]
    with NativeModel(model_file) as native:
        y_native = native.predict(xs)
    y_back = keras_predict(back, xs)
    back_err = float(np.abs(y_back - y_native).max() / np.abs(y_native).max())
    print(f"      round-trip Keras vs Fortran: relative error {back_err:.2e}", flush=True)
    ok = result.passed and back_err <= 1e-5
    print(f"demo {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s; files in {workdir}")
    return 0 if ok else 1
