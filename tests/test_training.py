"""Training in the Fortran library through the C binding: Keras-exact optimizer updates (50 steps
of the same minibatches from the same weights), losses, bad input (weights unchanged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.keras_reader import read_keras
from harness.modelfile import write_model
from harness.native import ColnnError, NativeModel

# Hyperparameters are exact in float32: even for float64 variables Keras holds the learning rate
# in a float32 variable and casts momentum and beta_1/beta_2 through float32 tensors
# (ops.cast(0.9, "float64") == 0.8999999761581421), so 0.9 would be rounded on its side only.
OPTIMIZERS = [
    ("sgd learning_rate=0.0625", dict(cls="SGD", learning_rate=0.0625)),
    ("sgd learning_rate=0.015625 momentum=0.875",
     dict(cls="SGD", learning_rate=0.015625, momentum=0.875)),
    ("sgd learning_rate=0.015625 momentum=0.75 nesterov=true",
     dict(cls="SGD", learning_rate=0.015625, momentum=0.75, nesterov=True)),
    ("rmsprop learning_rate=0.0029296875", dict(cls="RMSprop", learning_rate=0.0029296875)),
    ("rmsprop learning_rate=0.001953125 rho=0.8 momentum=0.5 centered=true",
     dict(cls="RMSprop", learning_rate=0.001953125, rho=0.8, momentum=0.5, centered=True)),
    ("adam learning_rate=0.0048828125 beta_1=0.875 beta_2=0.998046875",
     dict(cls="Adam", learning_rate=0.0048828125, beta_1=0.875, beta_2=0.998046875)),
    ("adam learning_rate=0.00390625 beta_1=0.75 beta_2=0.9921875 epsilon=1e-6 amsgrad=true",
     dict(cls="Adam", learning_rate=0.00390625, beta_1=0.75, beta_2=0.9921875, epsilon=1e-6,
          amsgrad=True)),
]


def small_model(dtype: str, seed: int = 0, n_out: int = 3):
    import keras
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(shape=(6,), dtype=dtype),
        keras.layers.Dense(16, activation="tanh", dtype=dtype),
        keras.layers.BatchNormalization(dtype=dtype),
        keras.layers.Dense(12, dtype=dtype),
        keras.layers.LeakyReLU(negative_slope=0.2, dtype=dtype),
        keras.layers.Dense(n_out, dtype=dtype),
    ])


def batches(dtype: str, n: int = 50, size: int = 32):
    rng = np.random.default_rng(42)
    w = rng.standard_normal((6, 3))
    for _ in range(n):
        x = rng.standard_normal((size, 6))
        yield x.astype(dtype), (np.sin(x @ w) + 0.1 * x[:, :3]).astype(dtype)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("spec,kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_steps_match_keras(tmp_path: Path, spec: str, kw: dict, precision: str) -> None:
    import keras
    model = small_model(precision)
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    kw = dict(kw)
    opt = getattr(keras.optimizers, kw.pop("cls"))(**kw)
    # a Keras loss computes in the global floatx (float32) unless told otherwise
    model.compile(optimizer=opt, loss=keras.losses.MeanSquaredError(dtype=precision),
                  jit_compile=False)
    lib = "double" if precision == "float64" else "single"
    with NativeModel(tmp_path / "m.colnn", precision=lib) as m:
        m.configure_training(spec, "mse")
        for x, t in batches(precision):
            loss_f = m.train_step(x, t)
            loss_k = float(model.train_on_batch(x, t))
        p = m.get_params()
    pk = np.concatenate([np.asarray(v).ravel() for v in model.trainable_variables])
    err = np.abs(p - pk).max() / np.abs(pk).max()
    print(f"OPTERR {spec} {precision} {err:.1e} final loss {loss_f:.4g} keras {loss_k:.4g}")
    tol = 1e-5 if precision == "float32" else 1e-10
    assert err <= tol, f"{spec}: weights differ by {err:.2e} relative after 50 steps"


def test_training_reduces_the_loss_and_round_trips_to_keras(tmp_path: Path) -> None:
    import keras
    model = small_model("float32", seed=3)
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    with NativeModel(tmp_path / "m.colnn") as m:
        m.configure_training("adam learning_rate=0.01", "mse")
        losses = [m.train_step(x, t) for x, t in batches("float32", n=200)]
        m.save(tmp_path / "trained.colnn")
        x = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
        y = m.predict(x)
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:5])
    from harness.convert import convert
    convert(tmp_path / "trained.colnn", tmp_path / "trained.keras")
    back = keras.models.load_model(tmp_path / "trained.keras", compile=False)
    assert np.allclose(back.predict_on_batch(x), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["mae", "huber delta=0.5", "gaussian_nll"])
def test_other_losses_train(tmp_path: Path, loss: str) -> None:
    gaussian = loss == "gaussian_nll"
    model = small_model("float32", seed=5, n_out=6 if gaussian else 3)   # (mean, log var) pairs
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    with NativeModel(tmp_path / "m.colnn") as m:
        m.configure_training("adam learning_rate=0.01", loss)
        losses = [m.train_step(x, t) for x, t in batches("float32", n=150)]
    assert np.mean(losses[-20:]) < np.mean(losses[:5])


def test_bad_training_input_leaves_weights_unchanged(tmp_path: Path) -> None:
    model = small_model("float32")
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    x, t = next(batches("float32"))
    with NativeModel(tmp_path / "m.colnn") as m:
        with pytest.raises(Exception, match="configure_training first"):
            m.train_step(x, t)
        with pytest.raises(ColnnError, match="learning_rate"):
            m.configure_training("adam learning_rate=0", "mse")
        with pytest.raises(ColnnError, match="learning_rate"):
            m.configure_training("sgd learning_rate=-1", "mse")
        with pytest.raises(ColnnError, match="unknown optimizer"):
            m.configure_training("adagrad", "mse")
        with pytest.raises(ColnnError, match="unknown loss"):
            m.configure_training("adam", "poisson")
        m.configure_training("adam", "mse")
        p0 = m.get_params()
        y0 = m.predict(x)                                  # uses the batch-norm moving statistics
        with pytest.raises(Exception, match="targets"):
            m.train_step(x, t[:, :2])
        with pytest.raises(Exception, match="inputs"):
            m.train_step(x[:, :4], t)
        bad = x.copy()
        bad[3, 1] = np.nan
        with pytest.raises(ColnnError, match="train_step 1: NaN or Inf") as e:
            m.train_step(bad, t)
        assert e.value.status == 4
        huge = t * 1e30
        with pytest.raises(ColnnError, match="not finite; weights unchanged"):
            m.train_step(x, huge)
        assert np.array_equal(m.get_params(), p0)
        assert np.array_equal(m.predict(x), y0)            # moving statistics put back too
        m.train_step(x, t)                                 # still usable
        assert not np.array_equal(m.get_params(), p0)


def test_gaussian_nll_needs_output_pairs(tmp_path: Path) -> None:
    model = small_model("float32", n_out=3)
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    x, t = next(batches("float32"))
    with NativeModel(tmp_path / "m.colnn") as m:
        m.configure_training("adam", "gaussian_nll")
        with pytest.raises(Exception):
            m.train_step(x, t[:, :1])


def regression_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    w = np.random.default_rng(99).standard_normal((6, 3))
    return x, (np.tanh(x @ w) + 0.3 * np.sin(2 * x[:, :3])).astype(np.float32)


@pytest.mark.parametrize("shuffle", [False, True])
def test_training_from_scratch_matches_keras_validation_loss(tmp_path: Path,
                                                             shuffle: bool) -> None:
    """Same initial weights and settings; Keras fit vs Fortran epochs: validation MSE within
    10% (identical batches without shuffling; each its own permutation with shuffling)."""
    import keras
    x, t = regression_data(2048, 0)
    xv, tv = regression_data(512, 1)
    model = small_model("float32", seed=7)
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.003), loss="mse",
                  jit_compile=False)
    model.fit(x, t, batch_size=32, epochs=6, shuffle=shuffle, verbose=0)
    val_keras = float(model.evaluate(xv, tv, verbose=0, batch_size=512))
    with NativeModel(tmp_path / "m.colnn") as m:
        m.configure_training("adam learning_rate=0.003", "mse")
        for epoch in range(6):
            m.train_epoch(x, t, batch_size=32, seed=11 if shuffle else 0, epoch=epoch)
        val_fortran = m.evaluate(xv, tv)
    print(f"VALLOSS shuffle={shuffle} keras {val_keras:.5f} fortran {val_fortran:.5f}")
    assert abs(val_fortran - val_keras) <= 0.1 * val_keras


@pytest.mark.parametrize("optimizer", ["adam learning_rate=0.004 amsgrad=true",
                                       "rmsprop momentum=0.5 centered=true",
                                       "sgd learning_rate=0.02 momentum=0.9 nesterov=true"])
def test_checkpoint_resumes_training_exactly(tmp_path: Path, optimizer: str) -> None:
    """20 steps, checkpoint (model + optimizer state), reload, 30 more steps == 50 steps at once;
    the checkpoint still reads in Python and converts to Keras."""
    model = small_model("float32", seed=2)
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    data = list(batches("float32", n=50))
    with NativeModel(tmp_path / "m.colnn") as m:
        m.configure_training(optimizer, "huber delta=0.5")
        for x, t in data:
            m.train_step(x, t)
        straight = m.get_params()
    with NativeModel(tmp_path / "m.colnn") as m:
        m.configure_training(optimizer, "huber delta=0.5")
        for x, t in data[:20]:
            m.train_step(x, t)
        m.save_checkpoint(tmp_path / "ckpt.colnn")
    with NativeModel(tmp_path / "ckpt.colnn") as resumed:
        for x, t in data[20:]:
            resumed.train_step(x, t)                 # no configure: restored from the file
        assert np.array_equal(resumed.get_params(), straight)
    from harness.convert import convert
    from harness.modelfile import read_model
    spec = read_model(tmp_path / "ckpt.colnn")
    assert spec.training is not None and spec.training[0].startswith("optimizer ")
    write_model(spec, tmp_path / "copy.colnn")
    with NativeModel(tmp_path / "copy.colnn") as copy:
        assert copy._n_targets == 3
    convert(tmp_path / "ckpt.colnn", tmp_path / "ckpt.keras")


@pytest.mark.parametrize("loss,keras_loss", [
    ("categorical_crossentropy", "CategoricalCrossentropy"),
    ("mae", "MeanAbsoluteError"),
    ("huber delta=0.5", "Huber"),
])
def test_other_losses_match_keras(tmp_path: Path, loss: str, keras_loss: str) -> None:
    """20 SGD steps with each loss from the same weights: the same weights as Keras."""
    import keras
    keras.utils.set_random_seed(4)
    classify = loss == "categorical_crossentropy"
    model = keras.Sequential([
        keras.Input(shape=(6,)),
        keras.layers.Dense(10, activation="tanh"),
        keras.layers.Dense(3, activation="softmax" if classify else "linear"),
    ])
    model.save(tmp_path / "m.keras")
    write_model(read_keras(tmp_path / "m.keras"), tmp_path / "m.colnn")
    kloss = getattr(keras.losses, keras_loss)(**({"delta": 0.5} if keras_loss == "Huber" else {}))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0625), loss=kloss,
                  jit_compile=False)
    data = list(batches("float32", n=20))
    if classify:
        data = [(x, np.eye(3, dtype=np.float32)[np.argmax(t, axis=1)]) for x, t in data]
    with NativeModel(tmp_path / "m.colnn") as m:
        m.configure_training("sgd learning_rate=0.0625", loss)
        for x, t in data:
            lf = m.train_step(x, t)
            lk = float(model.train_on_batch(x, t))
        p = m.get_params()
    pk = np.concatenate([np.asarray(v).ravel() for v in model.trainable_variables])
    err = np.abs(p - pk).max() / np.abs(pk).max()
    print(f"LOSSERR {loss} {err:.1e} loss {lf:.5g} keras {lk:.5g}")
    assert err <= 1e-5
    assert abs(lf - lk) <= 1e-4 * abs(lk) + 1e-6


def test_softmax_cross_entropy_learns_from_saturated_start(tmp_path: Path) -> None:
    """The combined softmax + cross-entropy gradient (p - t) keeps learning where the
    probabilities of the true class underflow (through 1/p they would be clipped to zero)."""
    from harness.modelfile import Activation, LayerSpec, ModelSpec
    rng = np.random.default_rng(0)
    kernel = (15 * rng.standard_normal((6, 3))).astype(np.float32)
    spec = ModelSpec("float32", 6, [
        LayerSpec("dense", "logits", {"units": 3, "use_bias": False,
                                      "activation": Activation.make("linear")}, {"kernel": kernel}),
        LayerSpec("activation", "softmax", {"activation": Activation.make("softmax")}, {})])
    write_model(spec, tmp_path / "s.colnn")
    x = rng.standard_normal((64, 6)).astype(np.float32)
    logits = x @ kernel
    t = np.eye(3, dtype=np.float32)[np.argmin(logits, axis=1)]     # the least likely class
    with NativeModel(tmp_path / "s.colnn") as m:
        m.configure_training("sgd learning_rate=0.5", "categorical_crossentropy")
        losses = [m.train_step(x, t) for _ in range(100)]
        assert np.all(np.isfinite(m.get_params()))
    assert losses[-1] < 0.5 * losses[0]
