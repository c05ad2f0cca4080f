"""The colnn text model file: exact round trips, and a located error for every malformed input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from harness import reference
from harness.errors import HarnessError, ModelFileError
from harness.modelfile import (ACTIVATION_PARAMS, Activation, LayerSpec, ModelSpec, read_model,
                               validate, write_model)


def _nasty(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Values that stress a decimal round trip: random bit patterns, subnormals, -0, extremes."""
    n = int(np.prod(shape))
    if dtype is np.float32:
        bits = rng.integers(0, 2**32, size=4 * n, dtype=np.uint64).astype(np.uint32)
        vals = bits.view(np.float32)
        info = np.finfo(np.float32)
    else:
        bits = rng.integers(0, 2**63, size=4 * n, dtype=np.uint64)
        bits |= rng.integers(0, 2, size=4 * n, dtype=np.uint64) << np.uint64(63)
        vals = bits.view(np.float64)
        info = np.finfo(np.float64)
    vals = vals[np.isfinite(vals)][:n].copy()
    special = np.array([0.0, -0.0, info.tiny, info.smallest_subnormal, -info.max, info.max,
                        info.eps, 1 / 3, 0.1], dtype=dtype)
    vals[: min(len(special), n)] = special[: min(len(special), n)]
    return vals.reshape(shape)


def full_spec(precision: str, seed: int = 0) -> ModelSpec:
    """A spec with every layer type and every activation (with non-default parameters)."""
    dt = np.float32 if precision == "float32" else np.float64
    rng = np.random.default_rng(seed)
    layers = [
        LayerSpec("normalization", "norm", {"epsilon": 1e-7, "invert": False},
                  {"mean": _nasty(rng, (3,), dt), "variance": np.abs(_nasty(rng, (3,), dt))}),
        LayerSpec("dense", "d0", {"units": 4, "use_bias": True, "activation": Activation.make(
            "leaky_relu", negative_slope=0.30000001192092896)},
                  {"kernel": _nasty(rng, (3, 4), dt), "bias": _nasty(rng, (4,), dt)}),
        LayerSpec("batch_normalization", "bn", {"epsilon": 0.001, "momentum": 0.99,
                                                "center": False, "scale": True},
                  {"gamma": _nasty(rng, (4,), dt), "moving_mean": _nasty(rng, (4,), dt),
                   "moving_variance": np.abs(_nasty(rng, (4,), dt))}),
        LayerSpec("dropout", "drop", {"rate": 0.25}, {}),
        LayerSpec("dense", "d1", {"units": 2, "use_bias": False,
                                  "activation": Activation.make("relu", max_value=6.5,
                                                                threshold=0.1)},
                  {"kernel": _nasty(rng, (4, 2), dt)}),
    ]
    for i, (name, params) in enumerate(ACTIVATION_PARAMS.items()):
        act = Activation.make(name)
        if name == "elu":
            act = Activation.make("elu", alpha=0.7)
        if name == "gelu":
            act = Activation.make("gelu", approximate=True)
        if name == "hard_sigmoid":
            act = Activation.make("hard_sigmoid", slope=0.2, offset=0.5)
        layers.append(LayerSpec("activation", f"act_{i}", {"activation": act}, {}))
    layers.append(LayerSpec("normalization", "denorm", {"epsilon": 1e-7, "invert": True},
                            {"mean": _nasty(rng, (2,), dt),
                             "variance": np.abs(_nasty(rng, (2,), dt))}))
    return ModelSpec(precision, 3, layers, [("source", "test"), ("note", "two words  here")])


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_round_trip_is_bit_exact(tmp_path: Path, precision: str) -> None:
    spec = full_spec(precision)
    path = tmp_path / "m.colnn"
    write_model(spec, path)
    back = read_model(path)
    assert back.precision == precision
    assert back.n_inputs == 3 and back.n_outputs == 2 == spec.n_outputs
    assert back.meta == spec.meta
    assert [(l.type, l.name, l.attrs) for l in back.layers] == \
        [(l.type, l.name, l.attrs) for l in spec.layers]
    for a, b in zip(spec.layers, back.layers):
        assert a.tensors.keys() == b.tensors.keys()
        for key in a.tensors:
            assert b.tensors[key].dtype == spec.dtype
            assert b.tensors[key].shape == a.tensors[key].shape
            # bit patterns, so -0.0 and subnormals count too
            uint = np.uint32 if precision == "float32" else np.uint64
            assert np.array_equal(b.tensors[key].view(uint), a.tensors[key].view(uint)), key
    # writing what was read gives the same bytes
    again = tmp_path / "again.colnn"
    write_model(back, again)
    assert again.read_bytes() == path.read_bytes()


def test_float64_values_survive_float32_cast_when_declared(tmp_path: Path) -> None:
    # A float64 array in a float32 spec is written in float32: the declared precision rules.
    spec = ModelSpec("float32", 1, [LayerSpec("dense", "d", {
        "units": 1, "use_bias": False, "activation": Activation.make("linear")},
        {"kernel": np.array([[0.1]])})])
    write_model(spec, tmp_path / "m.colnn")
    assert "\n0.1\n" in (tmp_path / "m.colnn").read_text()
    back = read_model(tmp_path / "m.colnn")
    assert back.layers[0].tensors["kernel"].dtype == np.float32
    assert back.layers[0].tensors["kernel"][0, 0] == np.float32(0.1)


def test_activation_parameters_are_written_explicitly(tmp_path: Path) -> None:
    spec = ModelSpec("float32", 2, [
        LayerSpec("activation", "a", {"activation": Activation.make("relu")}, {}),
        LayerSpec("activation", "b", {"activation": Activation.make("hard_swish")}, {}),
        LayerSpec("activation", "c", {"activation": Activation.make("gelu")}, {}),
    ])
    write_model(spec, tmp_path / "m.colnn")
    text = (tmp_path / "m.colnn").read_text()
    assert "activation relu negative_slope=0 max_value=none threshold=0\n" in text
    assert "activation hard_silu\n" in text
    assert "activation gelu approximate=false\n" in text


def test_omitted_activation_parameters_take_keras3_defaults(tmp_path: Path) -> None:
    path = tmp_path / "m.colnn"
    path.write_text(HEADER.format(layers=2, outputs=2) + "layer activation\nname a\n"
                    "activation leaky_relu\nend\nlayer activation\nname b\n"
                    "activation hard_sigmoid offset=0.25\nend\n")
    spec = read_model(path)
    assert spec.layers[0].attrs["activation"].params == {"negative_slope": 0.2}
    assert spec.layers[1].attrs["activation"].params == {"slope": 1 / 6, "offset": 0.25}


def test_counts() -> None:
    spec = full_spec("float32")
    assert spec.n_params == 3 + 3 + 12 + 4 + 4 + 4 + 4 + 8 + 2 + 2
    assert spec.n_outputs == 2


def test_write_is_atomic_and_refuses_invalid_specs(tmp_path: Path) -> None:
    path = tmp_path / "m.colnn"
    good = full_spec("float64")
    write_model(good, path)
    before = path.read_bytes()
    bad = full_spec("float64")
    bad.layers[1].tensors["kernel"] = np.zeros((5, 4))  # inputs are 3
    with pytest.raises(ModelFileError, match=r"m\.colnn: layer 2: dense layer 'd0': tensor "
                                             r"'kernel' has shape \(5, 4\), expected \(3, 4\)"):
        write_model(bad, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.colnn"]  # no temporary file left behind
    with pytest.raises(ModelFileError, match="cannot write"):
        write_model(good, tmp_path / "missing_dir" / "m.colnn")


@pytest.mark.parametrize("mutate, message", [
    (lambda s: setattr(s, "precision", "float16"), "precision must be float32 or float64"),
    (lambda s: s.layers[0].tensors.__setitem__("mean", np.array([1.0, np.nan, 0.0])),
     "NaN or Inf"),
    (lambda s: s.layers[1].attrs.__setitem__("units", 5), "expected (3, 5)"),
    (lambda s: s.layers[1].attrs.__setitem__("activation", Activation("swishy", {})),
     "unknown activation 'swishy'"),
    (lambda s: s.layers[2].tensors.__setitem__("beta", np.zeros(4, np.float32)),
     "tensor 'beta' is not expected"),
    (lambda s: s.layers[3].attrs.__setitem__("rate", 1.5), "rate must be in [0, 1)"),
    (lambda s: setattr(s.layers[3], "name", "d0"), "layer name 'd0' is used twice"),
    (lambda s: setattr(s.layers[3], "type", "conv2d"), "unknown layer type 'conv2d'"),
    (lambda s: s.layers[3].attrs.__setitem__("seed", 1), "unknown attribute 'seed'"),
    (lambda s: s.meta.append(("Bad Key", "x")), "meta key"),
])
def test_validate_refuses_inconsistent_specs(mutate, message: str) -> None:
    spec = full_spec("float32")
    mutate(spec)
    with pytest.raises(ModelFileError) as info:
        validate(spec, source="spec.colnn")
    assert message in str(info.value)
    assert "spec.colnn" in str(info.value)


# --------------------------------------------------------------------------------------------
# malformed files: every case names the file and the line

HEADER = "colnn 1\nprecision float32\ninputs 2\noutputs {outputs}\nlayers {layers}\n"
GOOD = (HEADER.format(layers=2, outputs=3) +
        "# comment\n\n"
        "layer dense\n"                        # line 8
        "name d\n"
        "units 3\n"
        "use_bias true\n"
        "activation relu\n"
        "tensor kernel 2 3\n"                  # line 13
        "1 2 3\n"
        "4 5 6\n"
        "tensor bias 3\n"
        "0.5 -0.5 0\n"                         # line 17
        "end\n"
        "layer activation\n"                   # line 19
        "name a\n"
        "activation softmax\n"
        "end\n")


def _replace_line(text: str, lineno: int, new: str | None) -> str:
    lines = text.split("\n")
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    return "\n".join(lines)


MALFORMED = [
    # (id, text, line, substring)
    ("empty", "", 1, "not a colnn model file"),
    ("not colnn", "hello 1\n", 1, "not a colnn model file"),
    ("wrong version", GOOD.replace("colnn 1", "colnn 2"), 1, "unsupported format version 2"),
    ("bad version", GOOD.replace("colnn 1", "colnn one"), 1, "integer version"),
    # the Fortran reader once took any case (found by tests/fuzz_model_reader.py, seed 12)
    ("boolean case", GOOD.replace("use_bias true", "use_bias trUe"), 11, "true or false"),
    ("truncated in tensor", GOOD[: GOOD.index("4 5 6")], 13,
     "more than the rest of the file holds"),
    ("truncated in row", GOOD.replace("4 5 6", "4.000001 5.000001 6.000001")[
        : GOOD.index("4 5 6") + 17], 15,
     "expected 3 values on this line, found 2"),
    ("truncated after tensor", GOOD[: GOOD.index("0.5 -0.5")], 16,
     "more than the rest of the file holds"),
    ("truncated before end", GOOD[: GOOD.rindex("end")], 21, "unexpected end of file"),
    ("too many layers", GOOD.replace("layers 2", "layers 99"), 5,
     "more than the rest of the file can hold"),
    ("missing block", GOOD.replace("layers 2", "layers 3"), 22,
     "header announces 3 layers, found 2"),
    ("missing block at eof", GOOD.replace("layers 2", "layers 3") + "\n" * 40, 62,
     "header announces 3 layers, found 2"),
    ("extra content", GOOD + "layer dropout\n", 23, "unexpected content after"),
    ("negative inputs", GOOD.replace("inputs 2", "inputs -2"), 3, "inputs must be in 1.."),
    ("zero units", _replace_line(GOOD, 10, "units 0"), 10, "units must be in 1.."),
    ("huge units", _replace_line(GOOD, 10, "units 99999999999"), 10, "units must be in 1.."),
    ("float units", _replace_line(GOOD, 10, "units 3.0"), 10, "units must be an integer"),
    ("huge tensor", _replace_line(GOOD, 13, "tensor kernel 2 2147483647"), 13,
     "more than the rest of the file holds"),
    ("too many rows", _replace_line(GOOD, 13, "tensor kernel 200 3"), 13,
     "more than the rest of the file holds"),
    ("negative dim", _replace_line(GOOD, 13, "tensor kernel -2 3"), 13, "must be in 1.."),
    ("3-d tensor", _replace_line(GOOD, 13, "tensor kernel 2 3 1"), 13,
     "expected 'tensor NAME D1 [D2]'"),
    ("short row", _replace_line(GOOD, 14, "1 2"), 14, "expected 3 values on this line, found 2"),
    ("long row", _replace_line(GOOD, 14, "1 2 3 4"), 14, "expected 3 values on this line, "
                                                         "found 4"),
    ("shape vs units", _replace_line(_replace_line(GOOD, 13, "tensor kernel 2 2"), 16,
                                     "tensor bias 3"), 14, "expected 2 values"),
    ("kernel shape mismatch", _replace_line(_replace_line(_replace_line(
        GOOD, 13, "tensor kernel 2 2"), 14, "1 2"), 15, "4 5"), 8,
     "tensor 'kernel' has shape (2, 2), expected (2, 3)"),
    ("word value", _replace_line(GOOD, 14, "1 two 3"), 14, "'two' is not a finite decimal"),
    ("nan", _replace_line(GOOD, 14, "1 nan 3"), 14, "'nan' is not a finite decimal"),
    ("inf", _replace_line(GOOD, 14, "1 -inf 3"), 14, "'-inf' is not a finite decimal"),
    ("overflow64", _replace_line(GOOD, 14, "1 1e999 3"), 14, "out of range"),
    ("overflow32", _replace_line(GOOD, 14, "1 1e39 3"), 14, "out of range for float32"),
    ("two dots", _replace_line(GOOD, 14, "1 2..5 3"), 14, "'2..5' is not a decimal number"),
    ("underscore", _replace_line(GOOD, 14, "1 1_0 3"), 14, "'1_0' is not a finite decimal"),
    ("unknown layer", _replace_line(GOOD, 19, "layer conv2d"), 19, "unknown layer type 'conv2d'"),
    ("unknown activation", _replace_line(GOOD, 21, "activation swishy"), 21,
     "unknown activation 'swishy'"),
    ("unknown act param", _replace_line(GOOD, 12, "activation relu alpha=0.1"), 12,
     "activation 'relu' has no parameter 'alpha'"),
    ("act param no value", _replace_line(GOOD, 12, "activation relu threshold"), 12,
     "must be KEY=VALUE"),
    ("act param nan", _replace_line(GOOD, 12, "activation relu threshold=nan"), 12,
     "threshold must be a finite decimal number"),
    ("act param twice", _replace_line(GOOD, 12, "activation relu threshold=1 threshold=2"), 12,
     "given twice"),
    ("bool param", _replace_line(GOOD, 12, "activation gelu approximate=1"), 12,
     "approximate must be true or false"),
    ("unknown attribute", _replace_line(GOOD, 11, "use_bias true\nkernel_size 3"), 12,
     "unknown attribute 'kernel_size'"),
    ("duplicate attribute", _replace_line(GOOD, 11, "use_bias true\nunits 3"), 12,
     "attribute 'units' given twice"),
    ("bad bool", _replace_line(GOOD, 11, "use_bias yes"), 11, "use_bias must be true or false"),
    ("unknown tensor", _replace_line(GOOD, 16, "tensor gamma 3"), 16, "unknown tensor 'gamma'"),
    ("duplicate tensor", _replace_line(GOOD, 16, "tensor kernel 2 3\n1 2 3\n4 5 6\ntensor bias 3"),
     16, "tensor 'kernel' given twice"),
    ("bias without use_bias", _replace_line(GOOD, 11, "use_bias false"), 8,
     "tensor 'bias' is not expected"),
    ("missing tensor", _replace_line(_replace_line(GOOD, 17, None), 16, None), 8,
     "tensor 'bias' is missing"),
    ("missing attribute", _replace_line(GOOD, 12, None), 8, "lacks attribute(s): activation"),
    ("missing name", _replace_line(GOOD, 9, None), 8, "lacks attribute(s): name"),
    ("missing end", _replace_line(GOOD, 18, None), 18, "new layer block before 'end'"),
    ("unknown header key", GOOD.replace("layers 2", "layers 2\nbatch 4"), 6,
     "unknown header key 'batch'"),
    ("duplicate header", GOOD.replace("inputs 2", "inputs 2\ninputs 2"), 4,
     "header key 'inputs' given twice"),
    ("missing header", GOOD.replace("outputs 3\n", ""), 7, "header key 'outputs' is missing"),
    ("bad precision", GOOD.replace("float32", "float16"), 2,
     "precision must be float32 or float64"),
    ("outputs mismatch", GOOD.replace("outputs 3", "outputs 4"), 4,
     "outputs 4 does not match the layers, which produce 3"),
    ("layer keyword wrong", _replace_line(GOOD, 19, "block activation"), 19,
     "expected 'layer TYPE'"),
    ("duplicate names", _replace_line(GOOD, 20, "name d"), 19, "layer name 'd' is used twice"),
    ("meta bad key", GOOD.replace("layers 2", "layers 2\nmeta Source x"), 6, "meta key"),
    ("negative variance",
     GOOD.replace("layers 2", "layers 3").replace("outputs 3", "outputs 3") +
     "layer normalization\nname n\nepsilon 1e-7\ninvert false\ntensor mean 3\n0 0 0\n"
     "tensor variance 3\n1 -1 1\nend\n", 23, "variance' holds negative values"),
]


@pytest.mark.parametrize("text, line, substring", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_refused_with_file_and_line(tmp_path: Path, text: str, line: int,
                                                      substring: str) -> None:
    path = tmp_path / "bad.colnn"
    path.write_text(text)
    with pytest.raises(ModelFileError) as info:
        read_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert substring in message, message
    assert isinstance(info.value, HarnessError)


def test_good_file_reads_and_evaluates(tmp_path: Path) -> None:
    path = tmp_path / "good.colnn"
    path.write_text(GOOD)
    spec = read_model(path)
    x = np.array([[1.0, -1.0], [0.5, 2.0]], dtype=np.float32)  # two columns
    h = np.maximum(np.array([[1, 4], [2, 5], [3, 6]], np.float32) @ x
                   + np.array([[0.5], [-0.5], [0.0]], np.float32), 0)
    expected = np.exp(h - h.max(axis=0)) / np.exp(h - h.max(axis=0)).sum(axis=0)
    np.testing.assert_allclose(reference.forward(spec, x), expected, rtol=1e-6)


def test_missing_file_and_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"nope\.colnn: cannot read"):
        read_model(tmp_path / "nope.colnn")
    (tmp_path / "bin.colnn").write_bytes(b"colnn 1\n\xff\xfe\x00")
    with pytest.raises(ModelFileError, match=r"bin\.colnn:2: not UTF-8"):
        read_model(tmp_path / "bin.colnn")


def test_crlf_line_endings_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "crlf.colnn"
    path.write_bytes(GOOD.replace("\n", "\r\n").encode())
    assert read_model(path).n_outputs == 3


# --------------------------------------------------------------------------------------------
# reference implementation: spot values computed by hand (independent of Keras)

def _act(name: str, x: list[float], dtype: type = np.float64, **params) -> np.ndarray:
    spec = ModelSpec("float64" if dtype is np.float64 else "float32", len(x), [
        LayerSpec("activation", "a", {"activation": Activation.make(name, **params)}, {})])
    return reference.forward(spec, np.array(x, dtype=dtype)[:, None])[:, 0]


def test_reference_activation_values() -> None:
    x = [-3.0, -0.5, 0.0, 0.2, 0.5, 2.0, 7.0]
    np.testing.assert_allclose(
        _act("relu", x, negative_slope=0.1, max_value=5.0, threshold=0.3),
        [0.1 * -3.3, 0.1 * -0.8, 0.1 * -0.3, 0.1 * -0.1, 0.5, 2.0, 5.0])
    np.testing.assert_allclose(_act("relu6", x), [0, 0, 0, 0.2, 0.5, 2, 6])
    np.testing.assert_allclose(_act("leaky_relu", x), [-0.6, -0.1, 0, 0.2, 0.5, 2, 7])
    np.testing.assert_allclose(_act("elu", x, alpha=2.0)[:2], 2 * np.expm1([-3.0, -0.5]))
    np.testing.assert_allclose(_act("hard_sigmoid", x), np.clip(np.array(x) / 6 + 0.5, 0, 1))
    np.testing.assert_allclose(_act("hard_sigmoid", x, slope=0.2),
                               [0, 0.4, 0.5, 0.54, 0.6, 0.9, 1])
    np.testing.assert_allclose(_act("hard_silu", [-4.0, 1.0, 4.0]), [0, 1 * 4 / 6, 4])
    np.testing.assert_allclose(_act("gelu", [1.0]), [0.8413447460685429])
    np.testing.assert_allclose(_act("gelu", [1.0], approximate=True), [0.8411919906082768])
    np.testing.assert_allclose(_act("selu", [-1.0, 1.0]),
                               [1.0507009873554805 * 1.6732632423543772 * np.expm1(-1),
                                1.0507009873554805])
    np.testing.assert_allclose(_act("softplus", [-800.0, 0.0, 800.0]), [0, np.log(2), 800])
    np.testing.assert_allclose(_act("sigmoid", [-800.0, 0.0, 800.0]), [0, 0.5, 1])
    np.testing.assert_allclose(_act("softsign", [-3.0, 1.0]), [-0.75, 0.5])
    np.testing.assert_allclose(_act("mish", [1.0]), [np.tanh(np.log1p(np.e))])
    np.testing.assert_allclose(_act("swish", [1.0]), [1 / (1 + np.exp(-1))])
    np.testing.assert_allclose(_act("log_softmax", [1.0, 2.0]),
                               np.log(np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()))
    np.testing.assert_allclose(_act("softmax", [1000.0, 1000.0]), [0.5, 0.5])
    assert _act("tanh", [0.5], np.float32).dtype == np.float32


def test_reference_layers_by_hand() -> None:
    bn = LayerSpec("batch_normalization", "bn", {"epsilon": 0.5, "momentum": 0.9, "center": True,
                                                 "scale": True},
                   {"gamma": np.array([2.0]), "beta": np.array([1.0]),
                    "moving_mean": np.array([3.0]), "moving_variance": np.array([3.5])})
    norm = LayerSpec("normalization", "n", {"epsilon": 1e-7, "invert": False},
                     {"mean": np.array([1.0]), "variance": np.array([0.0])})
    inv = LayerSpec("normalization", "i", {"epsilon": 1e-7, "invert": True},
                    {"mean": np.array([1.0]), "variance": np.array([4.0])})
    x = np.array([[5.0]])
    assert reference.forward(ModelSpec("float64", 1, [bn]), x)[0, 0] == 2.0 * 2 / 2 + 1
    assert reference.forward(ModelSpec("float64", 1, [norm]), x)[0, 0] == 4 / 1e-7
    assert reference.forward(ModelSpec("float64", 1, [inv]), x)[0, 0] == 1 + 5 * 2
    with pytest.raises(ValueError, match="input must have shape"):
        reference.forward(ModelSpec("float64", 1, [inv]), np.zeros((2, 3)))
