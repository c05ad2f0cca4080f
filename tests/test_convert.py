"""Keras <-> colnn <-> FKB conversion, checked against Keras' own predictions.

Every layer class and activation the converter supports is saved by real Keras (Keras 3
``.keras`` and legacy ``.h5``; Keras 2 via tf_keras ``.h5``), read back by ``read_keras`` (which
never imports Keras) and evaluated by the numpy reference; the result must match
``model.predict_on_batch``. Tolerances: 1e-5 relative to the output scale for float32, 1e-12
for float64 models.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from harness import reference
from harness.convert import convert, detect_format, load_any, save_any
from harness.errors import ConversionError, HarnessError
from harness.fkb import is_fkb_file, read_fkb, write_fkb
from harness.keras_reader import read_keras
from harness.modelfile import Activation, LayerSpec, ModelSpec, read_model, write_model

from keras_models import (adapted_normalization, functional_chain, inputs, keras2, keras3,
                          paper_like, sequential)

# Keras' own deprecation chatter and its "legacy HDF5" save warning are not under test here.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5")]


@pytest.fixture(scope="module")
def k3() -> Any:
    """Keras 3 (imports TensorFlow once for the whole module)."""
    return keras3()


@pytest.fixture(scope="module")
def k2() -> Any:
    """Keras 2 (tf_keras)."""
    return keras2()


def assert_close(actual: np.ndarray, expected: np.ndarray, rel: float) -> None:
    """max |actual - expected| <= rel * max |expected| (relative to the output scale)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    err = float(np.max(np.abs(actual - expected)))
    assert err <= rel * scale, f"max abs error {err:.3e} > {rel:.0e} x scale {scale:.3e}"


def check_against_keras(model: Any, path: Path, rel: float, dtype: str = "float32",
                        n_rows: int = 16) -> ModelSpec:
    """Save ``model`` to ``path``, read it without Keras, compare forward() with Keras."""
    model.save(str(path))
    spec = read_keras(path)
    n_in = int(model.inputs[0].shape[-1])
    x = inputs(n_in, n_rows=n_rows, dtype=dtype)
    expected = np.asarray(model.predict_on_batch(x))
    got = reference.forward(spec, x.T).T
    assert spec.precision == dtype
    assert_close(got, expected, rel)
    return spec


# --------------------------------------------------------------------------------------------
# activations, as Dense activation strings and as Activation layers

K3_ACTIVATIONS = ["linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish",
                  "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "tanh", "softplus",
                  "softsign", "exponential", "mish", "softmax", "log_softmax"]
K2_ACTIVATIONS = ["linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish",
                  "sigmoid", "hard_sigmoid", "tanh", "softplus", "softsign", "exponential",
                  "mish", "softmax", "log_softmax"]


def _activation_model(k: Any, act: str) -> Any:
    L = k.layers
    return sequential(k, [L.Dense(5, activation=act, name="d_act"), L.Dense(3, name="d_lin"),
                          L.Activation(act, name="act")], seed=zlib.crc32(act.encode()))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("act", K3_ACTIVATIONS)
def test_keras3_activation(k3: Any, tmp_path: Path, act: str, suffix: str) -> None:
    spec = check_against_keras(_activation_model(k3, act), tmp_path / f"m{suffix}", 1e-5)
    assert [l.type for l in spec.layers] == ["dense", "dense", "activation"]
    assert spec.layers[0].attrs["activation"] == spec.layers[2].attrs["activation"]
    if act == "hard_sigmoid":
        assert spec.layers[2].attrs["activation"].params["slope"] == 1 / 6
    if act == "leaky_relu":
        assert spec.layers[2].attrs["activation"].params["negative_slope"] == 0.2


@pytest.mark.parametrize("act", K2_ACTIVATIONS)
def test_keras2_activation(k2: Any, tmp_path: Path, act: str) -> None:
    spec = check_against_keras(_activation_model(k2, act), tmp_path / "m.h5", 1e-5)
    if act == "hard_sigmoid":  # Keras 2's hard_sigmoid is clip(0.2 x + 0.5, 0, 1)
        assert spec.layers[2].attrs["activation"].params == {"slope": 0.2, "offset": 0.5}


# --------------------------------------------------------------------------------------------
# layer classes

def _layer_cases(k: Any) -> dict[str, Callable[[], list[Any]]]:
    L = k.layers
    cases: dict[str, Callable[[], list[Any]]] = {
        "dense_no_bias": lambda: [L.Dense(3, use_bias=False, activation="tanh")],
        "dropout": lambda: [L.Dense(5), L.Dropout(0.4), L.Dense(2)],
        "batchnorm": lambda: [L.Dense(5), L.BatchNormalization(epsilon=0.01)],
        "batchnorm_no_center": lambda: [L.BatchNormalization(center=False)],
        "batchnorm_no_scale": lambda: [L.BatchNormalization(scale=False)],
        "batchnorm_bare": lambda: [L.BatchNormalization(center=False, scale=False)],
        "relu": lambda: [L.Dense(6), L.ReLU()],
        "relu_slope": lambda: [L.Dense(6), L.ReLU(negative_slope=0.15)],
        "relu_max": lambda: [L.Dense(6), L.ReLU(max_value=0.4)],
        "relu_threshold": lambda: [L.Dense(6), L.ReLU(threshold=0.3)],
        "relu_all": lambda: [L.Dense(6), L.ReLU(max_value=0.8, negative_slope=0.1,
                                                threshold=0.2)],
        "leaky_relu": lambda: [L.Dense(6), L.LeakyReLU(0.3)],
        "elu": lambda: [L.Dense(6), L.ELU(alpha=0.7)],
        "softmax": lambda: [L.Dense(6), L.Softmax()],
        "nested_leaky": lambda: [L.Dense(6, activation=L.LeakyReLU(0.3))],
        "nested_relu": lambda: [L.Dense(6, activation=L.ReLU(max_value=0.5, threshold=0.1))],
        "nested_elu": lambda: [L.Dense(6, activation=L.ELU(alpha=1.3))],
        "normalization_adapted": lambda: [adapted_normalization(k, 4), L.Dense(2)],
        "normalization_config": lambda: [
            L.Normalization(mean=[0.5, -1.0, 2.0, 0.0], variance=[2.0, 0.5, 1e-20, 4.0]),
            L.Dense(2)],
        "normalization_invert": lambda: [L.Dense(3), L.Normalization(
            mean=[0.5, -1.0, 2.0], variance=[2.0, 0.5, 3.0], invert=True)],
        "normalization_scalar": lambda: [L.Normalization(mean=0.5, variance=2.0)],
    }
    return cases


LAYER_CASES = ["dense_no_bias", "dropout", "batchnorm", "batchnorm_no_center",
               "batchnorm_no_scale", "batchnorm_bare", "relu", "relu_slope", "relu_max",
               "relu_threshold", "relu_all", "leaky_relu", "elu", "softmax", "nested_leaky",
               "nested_relu", "nested_elu", "normalization_adapted", "normalization_config",
               "normalization_invert", "normalization_scalar"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("case", LAYER_CASES)
def test_keras3_layer(k3: Any, tmp_path: Path, case: str, suffix: str) -> None:
    layers = _layer_cases(k3)[case]()
    check_against_keras(sequential(k3, layers), tmp_path / f"m{suffix}", 1e-5)


@pytest.mark.parametrize("case", [c for c in LAYER_CASES if c != "normalization_scalar"])
def test_keras2_layer(k2: Any, tmp_path: Path, case: str) -> None:
    layers = _layer_cases(k2)[case]()
    check_against_keras(sequential(k2, layers), tmp_path / "m.h5", 1e-5)


def test_keras2_keras_zip_and_functional(k2: Any, tmp_path: Path) -> None:
    spec = check_against_keras(functional_chain(k2), tmp_path / "f.keras", 1e-5)
    assert [l.name for l in spec.layers] == ["hidden", "bn", "lrelu", "drop", "out"]
    check_against_keras(paper_like(k2), tmp_path / "p.keras", 1e-5)
    check_against_keras(functional_chain(k2), tmp_path / "f.h5", 1e-5)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_functional_and_paper_model(k3: Any, tmp_path: Path, suffix: str) -> None:
    spec = check_against_keras(functional_chain(k3), tmp_path / f"f{suffix}", 1e-5)
    assert [l.name for l in spec.layers] == ["hidden", "bn", "lrelu", "drop", "out"]
    assert [l.type for l in spec.layers] == ["dense", "batch_normalization", "activation",
                                             "dropout", "dense"]
    spec = check_against_keras(paper_like(k3), tmp_path / f"p{suffix}", 1e-5)
    assert spec.n_inputs == 5 and spec.n_outputs == 3
    assert spec.layers[2].attrs["activation"] == Activation.make("leaky_relu",
                                                                 negative_slope=0.3)
    assert ("keras_version", k3.__version__) in spec.meta


# --------------------------------------------------------------------------------------------
# float64 models: 1e-12

def _f64_layers(k: Any) -> list[Any]:
    L = k.layers
    d = "float64"
    return [
        L.Normalization(mean=[0.1, -0.2, 0.3, 0.7], variance=[0.3, 1.1, 2.1, 0.01], dtype=d),
        L.Dense(7, activation="leaky_relu" if k.__name__ == "keras" else "relu", dtype=d),
        L.BatchNormalization(epsilon=0.003, dtype=d),
        L.LeakyReLU(0.3, dtype=d),
        L.Dense(6, activation=L.ELU(alpha=0.7, dtype=d), dtype=d),
        L.ReLU(negative_slope=0.1, dtype=d),
        L.Dense(6, dtype=d),
        L.ReLU(max_value=0.9, negative_slope=0.2, threshold=0.1, dtype=d),
        L.Dense(5, activation="hard_sigmoid", dtype=d),
        L.Dense(5, activation="selu", dtype=d),
        L.Activation("mish", dtype=d),
        L.Dropout(0.2, dtype=d),
        L.Dense(4, activation="softmax", dtype=d),
    ]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_float64_matches_to_1e12(k3: Any, tmp_path: Path, suffix: str) -> None:
    model = sequential(k3, _f64_layers(k3), dtype="float64")
    spec = check_against_keras(model, tmp_path / f"m{suffix}", 1e-12, dtype="float64")
    assert spec.layers[1].tensors["kernel"].dtype == np.float64
    # Keras uses these slopes as float32 even in a float64 model; without the rounding the
    # reference would be off by ~1e-8 - this is what the 1e-12 tolerance guards.
    lrelu = spec.layers[3].attrs["activation"]
    assert lrelu.params["negative_slope"] == float(np.float32(0.3)) != 0.3
    unrounded = ModelSpec(spec.precision, spec.n_inputs, list(spec.layers), spec.meta)
    unrounded.layers[3] = LayerSpec("activation", "x", {
        "activation": Activation.make("leaky_relu", negative_slope=0.3)}, {})
    x = inputs(4, dtype="float64")
    diff = np.abs(reference.forward(unrounded, x.T) - reference.forward(spec, x.T)).max()
    assert diff > 1e-10


def test_keras2_float64_matches_to_1e12(k2: Any, tmp_path: Path) -> None:
    model = sequential(k2, _f64_layers(k2), dtype="float64")
    check_against_keras(model, tmp_path / "m.h5", 1e-12, dtype="float64")


def test_keras3_float64_functional(k3: Any, tmp_path: Path) -> None:
    check_against_keras(functional_chain(k3, dtype="float64"), tmp_path / "f.keras", 1e-12,
                        dtype="float64")


def test_keras3_float64_gelu_uses_float32_constant(k3: Any, tmp_path: Path) -> None:
    """TensorFlow's exact gelu multiplies by 1/sqrt(2) rounded to float32, also in float64
    models, so Keras is ~1e-8 away from the exact definition; documented, not mimicked."""
    model = sequential(k3, [k3.layers.Activation("gelu", dtype="float64")], dtype="float64")
    spec = check_against_keras(model, tmp_path / "g.keras", 1e-7, dtype="float64")
    assert spec.layers[0].attrs["activation"] == Activation.make("gelu", approximate=False)


def test_mixed_precision_model_is_float32(k3: Any, tmp_path: Path) -> None:
    L = k3.layers
    model = sequential(k3, [L.Dense(3, dtype="float64", activation=L.LeakyReLU(0.3))],
                       dtype="float64")
    model.save(tmp_path / "m.keras")
    spec = read_keras(tmp_path / "m.keras")
    assert spec.precision == "float32"
    assert any(key == "precision_note" for key, _ in spec.meta)


# --------------------------------------------------------------------------------------------
# refused models and files

def _unsupported_models(k: Any) -> dict[str, tuple[Callable[[], Any], str, str]]:
    """name -> (builder, layer name expected in the message, class expected)."""
    L = k.layers

    def lam() -> Any:
        return sequential(k, [L.Dense(3), L.Lambda(lambda t: t * 2.0, name="times_two")])

    def noise() -> Any:
        return sequential(k, [L.GaussianNoise(0.1, name="noise")])

    def reshape() -> Any:
        return sequential(k, [L.Reshape((4, 1), name="to3d"), L.Conv1D(2, 2, name="conv")])

    def bad_activation() -> Any:
        return sequential(k, [L.Dense(3, activation="celu", name="celu_dense")])

    def softmax_axis() -> Any:
        return sequential(k, [L.Softmax(axis=0, name="batch_softmax")])

    def add() -> Any:
        i = k.Input((4,))
        a = L.Dense(3, name="a")(i)
        b = L.Dense(3, name="b")(i)
        return k.Model(i, L.Add(name="sum")([a, b]))

    def concat() -> Any:
        i = k.Input((4,))
        a = L.Dense(3, name="a")(i)
        return k.Model(i, L.Concatenate(name="cat")([a, i]))

    def branch() -> Any:
        i = k.Input((4,))
        a = L.Dense(3, name="trunk")(i)
        b = L.Dense(2, name="head")(a)
        c = L.Dense(2, name="side")(a)
        return k.Model(i, [b, c])

    return {
        "lambda": (lam, "times_two", "Lambda"),
        "gaussian_noise": (noise, "noise", "GaussianNoise"),
        "reshape_conv": (reshape, "to3d", "Reshape"),
        "activation": (bad_activation, "celu_dense", "Dense"),
        "softmax_axis": (softmax_axis, "batch_softmax", "Softmax"),
        "add": (add, "sum", "Add"),
        "concatenate": (concat, "cat", "Concatenate"),
        "two_outputs": (branch, "", ""),
    }


UNSUPPORTED = ["lambda", "gaussian_noise", "reshape_conv", "activation", "softmax_axis", "add",
               "concatenate", "two_outputs"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_layers_are_refused(k3: Any, tmp_path: Path, case: str,
                                        suffix: str) -> None:
    build, layer_name, cls = _unsupported_models(k3)[case]
    path = tmp_path / f"m{suffix}"
    build().save(str(path))
    with pytest.raises(ConversionError) as info:
        read_keras(path)
    message = str(info.value)
    assert str(path) in message
    if layer_name:
        assert f"layer '{layer_name}' ({cls})" in message, message
    else:
        assert "2 outputs" in message


def test_keras2_unsupported_and_multi_input(k2: Any, tmp_path: Path) -> None:
    L = k2.layers
    a, b = k2.Input((2,), name="in_a"), k2.Input((2,), name="in_b")
    model = k2.Model([a, b], L.Dense(1, name="d")(L.Concatenate(name="cat")([a, b])))
    model.save(tmp_path / "two.h5")
    with pytest.raises(ConversionError, match="model has 2 inputs"):
        read_keras(tmp_path / "two.h5")
    sequential(k2, [L.Dense(3, name="pre"), L.PReLU(name="prelu")]).save(tmp_path / "p.h5")
    with pytest.raises(ConversionError, match=r"p\.h5: layer 'prelu' \(PReLU\)"):
        read_keras(tmp_path / "p.h5")


def test_broken_files_are_refused(k3: Any, tmp_path: Path) -> None:
    model = sequential(k3, [k3.layers.Dense(3)])
    model.save(tmp_path / "good.keras")
    model.save(tmp_path / "good.h5")
    model.save_weights(tmp_path / "only.weights.h5")
    good_zip = (tmp_path / "good.keras").read_bytes()
    good_h5 = (tmp_path / "good.h5").read_bytes()
    cases = {
        "missing.keras": None,
        "empty.keras": b"",
        "text.h5": b"colnn 1\n",
        "cut.keras": good_zip[: len(good_zip) // 2],
        "cut.h5": good_h5[: len(good_h5) // 2],
        "junk.keras": b"PK\x03\x04" + bytes(range(256)) * 4,
    }
    with zipfile.ZipFile(tmp_path / "noconfig.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    with zipfile.ZipFile(tmp_path / "badjson.keras", "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("model.weights.h5", b"")
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    for name in [*cases, "noconfig.keras", "badjson.keras", "only.weights.h5"]:
        with pytest.raises(ConversionError) as info:
            read_keras(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
        assert isinstance(info.value, HarnessError)


def test_hand_made_h5_and_weight_bomb(tmp_path: Path) -> None:
    """A legacy .h5 written with h5py alone is read; a kernel that stores nothing but claims
    10 GB (an unallocated compressed dataset) is refused before anything is allocated."""
    import h5py
    import json

    def make(path: Path, n: int, data: np.ndarray | None) -> None:
        config = {"class_name": "Sequential", "config": {"name": "hand", "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [None, n], "name": "in"}},
            {"class_name": "Dense", "config": {"name": "big", "units": n, "use_bias": False,
                                               "activation": "relu"}}]}}
        with h5py.File(path, "w") as f:
            f.attrs["model_config"] = json.dumps(config)
            f.attrs["keras_version"] = "3.15.1"
            group = f.create_group("model_weights").create_group("big")
            group.attrs["weight_names"] = ["hand/big/kernel"]
            if data is None:
                group.create_dataset("hand/big/kernel", shape=(n, n), dtype="f4",
                                     compression="gzip", chunks=(1000, 1000))
            else:
                group.create_dataset("hand/big/kernel", data=data)

    make(tmp_path / "small.h5", 2, np.array([[1.0, -2.0], [3.0, 4.0]], np.float32))
    spec = read_keras(tmp_path / "small.h5")
    np.testing.assert_array_equal(reference.forward(spec, np.array([[1.0], [1.0]])),
                                  [[4.0], [2.0]])
    make(tmp_path / "bomb.h5", 50_000, None)
    with pytest.raises(ConversionError, match=r"layer 'big' \(Dense\): kernel claims "
                                              r"10000000000 bytes"):
        read_keras(tmp_path / "bomb.h5")


# --------------------------------------------------------------------------------------------
# the way back: colnn -> Keras

def _spec_for_keras(precision: str) -> ModelSpec:
    dt = np.float32 if precision == "float32" else np.float64
    rng = np.random.default_rng(11)

    def arr(*shape: int, positive: bool = False) -> np.ndarray:
        a = rng.standard_normal(shape) * 0.7
        return (np.abs(a) + 0.2 if positive else a).astype(dt)

    def dense(name: str, n_in: int, units: int, act: Activation, bias: bool = True) -> LayerSpec:
        tensors = {"kernel": arr(n_in, units)}
        if bias:
            tensors["bias"] = arr(units)
        return LayerSpec("dense", name, {"units": units, "use_bias": bias, "activation": act},
                         tensors)

    def act(name: str, a: Activation) -> LayerSpec:
        return LayerSpec("activation", name, {"activation": a}, {})

    slope = 0.3 if precision == "float32" else float(np.float32(0.3))
    return ModelSpec(precision, 4, [
        LayerSpec("normalization", "norm", {"epsilon": 1e-7, "invert": False},
                  {"mean": arr(4), "variance": arr(4, positive=True)}),
        dense("d_leaky", 4, 6, Activation.make("leaky_relu", negative_slope=slope)),
        LayerSpec("batch_normalization", "bn", {"epsilon": 0.001, "momentum": 0.99,
                                                "center": True, "scale": False},
                  {"beta": arr(6), "moving_mean": arr(6),
                   "moving_variance": arr(6, positive=True)}),
        act("a_leaky", Activation.make("leaky_relu", negative_slope=slope)),
        dense("d_relu_params", 6, 6, Activation.make("relu", max_value=1.0, threshold=0.1,
                                                     negative_slope=0.05)),
        dense("d_elu", 6, 6, Activation.make("elu", alpha=0.5)),
        dense("d_elu1", 6, 6, Activation.make("elu")),
        act("a_relu", Activation.make("relu", max_value=2.0)),
        act("a_relu_plain", Activation.make("relu")),
        act("a_elu", Activation.make("elu", alpha=1.5)),
        dense("d_swish", 6, 5, Activation.make("swish"), bias=False),
        act("a_hs", Activation.make("hard_sigmoid")),
        LayerSpec("dropout", "drop", {"rate": 0.3}, {}),
        dense("d_mish", 5, 5, Activation.make("mish")),
        LayerSpec("normalization", "denorm", {"epsilon": 1e-7, "invert": True},
                  {"mean": arr(5), "variance": arr(5, positive=True)}),
        act("a_softmax", Activation.make("softmax")),
    ])


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_colnn_to_keras_and_back(k3: Any, tmp_path: Path, precision: str, suffix: str) -> None:
    spec = _spec_for_keras(precision)
    write_model(spec, tmp_path / "m.colnn")
    convert(tmp_path / "m.colnn", tmp_path / f"m{suffix}")
    model = k3.models.load_model(tmp_path / f"m{suffix}", compile=False)
    assert [l.name for l in model.layers] == [l.name for l in spec.layers]
    x = inputs(4, dtype=precision)
    got = np.asarray(model.predict_on_batch(x))
    assert_close(got, reference.forward(spec, x.T).T, 1e-12 if precision == "float64" else 1e-5)
    back = read_keras(tmp_path / f"m{suffix}")
    assert back.precision == precision
    assert [(l.type, l.name, l.attrs) for l in back.layers] == \
        [(l.type, l.name, l.attrs) for l in spec.layers]
    for a, b in zip(spec.layers, back.layers):
        for key in a.tensors:
            assert np.array_equal(a.tensors[key], b.tensors[key]), (a.name, key)


def test_keras_writer_refuses_what_keras3_cannot_express(tmp_path: Path) -> None:
    for act in (Activation.make("gelu", approximate=True),
                Activation.make("hard_sigmoid", slope=0.2)):
        spec = ModelSpec("float32", 2, [LayerSpec("activation", "a", {"activation": act}, {})])
        with pytest.raises(ConversionError, match="no exact Keras 3 equivalent"):
            save_any(spec, tmp_path / "m.keras")
    spec = ModelSpec("float32", 2, [LayerSpec("normalization", "n",
                                              {"epsilon": 1e-3, "invert": False},
                                              {"mean": np.zeros(2), "variance": np.ones(2)})])
    with pytest.raises(ConversionError, match="epsilon"):
        save_any(spec, tmp_path / "m.h5")
    with pytest.raises(ConversionError, match="suffix"):
        save_any(spec, tmp_path / "m.bin")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# FKB

FKB_TEXT = """7
input\t3
dense\t4
linear\t0
batchnormalization\t0
leakyrelu\t0.3
dense\t2
sigmoid\t0
0.001
0.1 -0.2 0.3 0.0
0.5 -0.5
1 2 3 4 5 6 7 8 9 10 11 12
-1 0.5 0.25 2 -0.5 1 0 1
0.1 0.2 0.3 0.4
1.5 0.5 2.0 1.0
0.0 1.0 -1.0 0.5
1.0 4.0 0.25 2.0
"""


def test_fkb_file_is_evaluated_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "m.txt"
    path.write_text(FKB_TEXT)
    assert is_fkb_file(path) and detect_format(path) == "fkb"
    spec = read_fkb(path)
    assert [l.type for l in spec.layers] == ["dense", "activation", "batch_normalization",
                                             "activation", "dense", "activation"]
    assert [l.name for l in spec.layers] == ["dense_1", "activation_2", "batch_normalization_3",
                                             "activation_4", "dense_5", "activation_6"]
    assert ("learning_rate", "0.001") in spec.meta
    x = np.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]], dtype=np.float32)
    # by hand: weights line is the kernel transposed and flattened
    k1 = np.arange(1, 13, dtype=np.float64).reshape(4, 3).T
    h = k1.T @ x + np.array([[0.1], [-0.2], [0.3], [0.0]])
    beta, gamma = np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.5, 0.5, 2.0, 1.0])
    mean, var = np.array([0.0, 1.0, -1.0, 0.5]), np.array([1.0, 4.0, 0.25, 2.0])
    h = gamma[:, None] * (h - mean[:, None]) / np.sqrt(var[:, None] + 0.001) + beta[:, None]
    h = np.where(h >= 0, h, 0.3 * h)  # leaky ReLU *after* batch normalization
    k2 = np.array([-1, 0.5, 0.25, 2, -0.5, 1, 0, 1], dtype=np.float64).reshape(2, 4).T
    y = 1 / (1 + np.exp(-(k2.T @ h + np.array([[0.5], [-0.5]]))))
    assert_close(reference.forward(spec, x), y, 1e-6)
    # same model through write_fkb and back
    write_fkb(spec, tmp_path / "again.fkb")
    again = read_fkb(tmp_path / "again.fkb")
    assert_close(reference.forward(again, x), y, 1e-6)
    lines = (tmp_path / "again.fkb").read_text().splitlines()
    assert lines[:8] == ["7", "input\t3", "dense\t4", "linear\t0", "batchnormalization\t0",
                         "leakyrelu\t0.3", "dense\t2", "sigmoid\t0"]


@pytest.mark.parametrize("mutate, line, message", [
    (lambda t: t.replace("7\n", "8\n", 1), 9, "layer line must be 'KIND VALUE'"),
    (lambda t: t.replace("7\n", "6\n", 1), 8, "expected the learning rate"),
    (lambda t: t.replace("sigmoid\t0", "mish\t0"), 8, "unknown layer or activation 'mish'"),
    (lambda t: t.replace("sigmoid\t0", "gaussian\t0"), 8, "unknown layer or activation"),
    (lambda t: t.replace("0.5 -0.5\n", "0.5\n"), 12, "expected 2 values from line 11"),
    (lambda t: t.replace("0.5 -0.5\n", "0.5 -0.5 7\n"), 11, "expected 2 values"),
    (lambda t: t.replace("-1 0.5 0.25 2", "-1 abc 0.25 2"), 13, "'abc' is not a finite"),
    (lambda t: t.replace("-1 0.5 0.25 2", "-1 nan 0.25 2"), 13, "'nan' is not a finite"),
    (lambda t: t + "1 2 3\n", 18, "unexpected content"),
    (lambda t: t.rsplit("1.0 4.0", 1)[0], 16, "unexpected end of file"),
    (lambda t: t.replace("input\t3", "dense\t3"), 2, "must be 'input N'"),
    (lambda t: t.replace("dense\t4", "dense\t-4"), 3, "dense units must be an integer"),
    (lambda t: t.replace("7\n", "x\n", 1), 1, "number of layer lines"),
])
def test_malformed_fkb_files(tmp_path: Path, mutate: Callable[[str], str], line: int,
                             message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(mutate(FKB_TEXT))
    with pytest.raises(ConversionError) as info:
        read_fkb(path)
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert message in str(info.value)


def test_write_fkb_refusals(tmp_path: Path) -> None:
    def one(layer: LayerSpec) -> ModelSpec:
        return ModelSpec("float32", 2, [layer])

    no_bias = one(LayerSpec("dense", "d", {"units": 2, "use_bias": False,
                                           "activation": Activation.make("relu")},
                            {"kernel": np.ones((2, 2))}))
    selu = one(LayerSpec("activation", "a", {"activation": Activation.make("selu")}, {}))
    relu_params = one(LayerSpec("activation", "a",
                                {"activation": Activation.make("relu", max_value=1.0)}, {}))
    norm = one(LayerSpec("normalization", "n", {"epsilon": 1e-7, "invert": False},
                         {"mean": np.zeros(2), "variance": np.ones(2)}))
    bn = one(LayerSpec("batch_normalization", "bn", {"epsilon": 1e-5, "momentum": 0.9,
                                                     "center": False, "scale": False},
                       {"moving_mean": np.zeros(2), "moving_variance": np.ones(2)}))
    for spec, message in [(no_bias, "always have a bias"), (selu, "no FKB equivalent"),
                          (relu_params, "no FKB equivalent"), (norm, "FKB has no normalization"),
                          (bn, "epsilon at 0.001")]:
        with pytest.raises(ConversionError, match=message):
            write_fkb(spec, tmp_path / "m.fkb")
    assert not (tmp_path / "m.fkb").exists()


def test_keras_to_fkb_to_colnn(k3: Any, tmp_path: Path) -> None:
    """The FKB path keeps the numbers: Keras -> FKB -> colnn -> reference equals Keras."""
    model = paper_like(k3)
    model.save(tmp_path / "p.h5")
    convert(tmp_path / "p.h5", tmp_path / "p.txt")
    assert detect_format(tmp_path / "p.txt") == "fkb"
    spec = convert(tmp_path / "p.txt", tmp_path / "p.colnn")
    assert detect_format(tmp_path / "p.colnn") == "colnn"
    x = inputs(5)
    assert_close(reference.forward(read_model(tmp_path / "p.colnn"), x.T).T,
                 model.predict_on_batch(x), 1e-5)
    # dense + "linear 0" pairs are folded back: the FKB text is stable under a round trip
    write_fkb(spec, tmp_path / "p2.txt")
    assert (tmp_path / "p2.txt").read_text() == (tmp_path / "p.txt").read_text()


def test_detect_and_load_any(k3: Any, tmp_path: Path) -> None:
    model = sequential(k3, [k3.layers.Dense(2, activation="tanh")])
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    convert(tmp_path / "m.keras", tmp_path / "m.colnn")
    convert(tmp_path / "m.colnn", tmp_path / "m.fkb")
    for name, fmt in [("m.keras", "keras"), ("m.h5", "h5"), ("m.colnn", "colnn"),
                      ("m.fkb", "fkb")]:
        assert detect_format(tmp_path / name) == fmt
        spec = load_any(tmp_path / name)
        assert spec.n_inputs == 4 and spec.n_outputs == 2
    # content decides, not the suffix
    (tmp_path / "misnamed.h5").write_bytes((tmp_path / "m.colnn").read_bytes())
    assert detect_format(tmp_path / "misnamed.h5") == "colnn"
    (tmp_path / "junk.bin").write_text("hello world\n")
    with pytest.raises(ConversionError, match=r"junk\.bin: unknown model format"):
        load_any(tmp_path / "junk.bin")
    with pytest.raises(ConversionError, match="cannot tell the output format"):
        convert(tmp_path / "m.colnn", tmp_path / "m.out")
    convert(tmp_path / "m.colnn", tmp_path / "explicit.out", dst_format="colnn")
    assert read_model(tmp_path / "explicit.out").n_outputs == 2
