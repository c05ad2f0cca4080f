"""FKB model files as FKB's own Fortran `save` writes them (list-directed output: sizes as
padded reals such as ``5.00000000``, names padded to 100 characters), made in the test by a
gfortran program that follows that layout (tests/fkb/fkb_style_save.F90), in FKB's single and
REAL64 builds. The Fortran library and ``harness convert --from fkb`` must read them as the same
network; an architecture-only file (no weights) is refused by both."""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness import reference
from harness.cli import main
from harness.errors import ConversionError
from harness.fkb import read_fkb
from harness.modelfile import read_model
from harness.native import ColnnError, NativeModel

HERE = Path(__file__).resolve().parent
N_IN = 5
# (name, value) layer lines as FKB names them; a dense line is followed by its activation
LAYER_LINES = [("input", N_IN), ("dense", 8), ("leakyrelu", 0.3), ("batchnormalization", 0),
               ("dropout", 0.1), ("dense", 6), ("elu", 1.0), ("dense", 3), ("linear", 0)]


@pytest.fixture(scope="module", params=["real32", "real64"])
def fkb_writer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[str, Path]:
    """The FKB-layout writer compiled for FKB's default (real32) or REAL64 build."""
    out = tmp_path_factory.mktemp("fkbwriter") / f"fkb_save_{request.param}"
    flags = ["-DREAL64"] if request.param == "real64" else []
    subprocess.run(["gfortran", "-cpp", *flags, str(HERE / "fkb" / "fkb_style_save.F90"),
                    "-o", str(out)], check=True, capture_output=True, text=True)
    return request.param, out


def _parameters(seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    width, k = N_IN, 0
    for name, value in LAYER_LINES[1:]:
        k += 1
        if name == "dense":
            params[f"kernel_{k}"] = rng.normal(0, 0.5, (width, int(value)))
            params[f"bias_{k}"] = rng.normal(0, 0.1, int(value))
            width = int(value)
        elif name == "batchnormalization":
            params[f"beta_{k}"] = rng.normal(0, 0.1, width)
            params[f"gamma_{k}"] = rng.uniform(0.5, 1.5, width)
            params[f"mean_{k}"] = rng.normal(0, 0.3, width)
            params[f"variance_{k}"] = rng.uniform(0.5, 2.0, width)
    return params


def write_fkb_like_fkb(writer: Path, out: Path, params: dict[str, np.ndarray],
                       architecture_only: bool = False) -> None:
    """Hand the parameters to the gfortran writer, which writes them as FKB's `save` does."""
    rows = [str(len(LAYER_LINES))] + [f"{name} {value!r}" for name, value in LAYER_LINES]
    rows.append("0.001")
    k = 0
    for name, _ in LAYER_LINES[1:]:
        k += 1
        if name == "dense":
            rows += [" ".join(map(repr, params[f"kernel_{k}"].ravel().tolist())),
                     " ".join(map(repr, params[f"bias_{k}"].tolist()))]
        elif name == "batchnormalization":
            rows += [" ".join(map(repr, params[f"{v}_{k}"].tolist()))
                     for v in ("beta", "gamma", "mean", "variance")]
    src = out.with_suffix(".params")
    src.write_text("\n".join(rows) + "\n")
    args = [str(writer), str(src), str(out)] + (["architecture-only"] if architecture_only else [])
    subprocess.run(args, check=True, capture_output=True, text=True)


def numpy_forward(params: dict[str, np.ndarray], x: np.ndarray, dtype: type) -> np.ndarray:
    """The network by hand, in file order, with the parameters as the writer rounded them."""
    h = x.astype(np.float64)
    k = 0
    p = {key: v.astype(dtype).astype(np.float64) for key, v in params.items()}
    for name, value in LAYER_LINES[1:]:
        k += 1
        if name == "dense":
            h = p[f"kernel_{k}"].T @ h + p[f"bias_{k}"][:, None]
        elif name == "leakyrelu":
            h = np.where(h >= 0, h, float(np.asarray(value, dtype)) * h)
        elif name == "elu":
            h = np.where(h > 0, h, np.expm1(np.minimum(h, 0)))
        elif name == "batchnormalization":
            h = (p[f"gamma_{k}"][:, None] * (h - p[f"mean_{k}"][:, None])
                 / np.sqrt(p[f"variance_{k}"][:, None] + 0.001) + p[f"beta_{k}"][:, None])
    return h


def test_fkb_saved_file_is_read_by_library_and_harness(fkb_writer: tuple[str, Path],
                                                        tmp_path: Path, lib_single: Path,
                                                        lib_double: Path) -> None:
    kind, writer = fkb_writer
    dtype = np.float32 if kind == "real32" else np.float64
    precision = "float32" if kind == "real32" else "float64"
    params = _parameters()
    path = tmp_path / "net.txt"
    write_fkb_like_fkb(writer, path, params)
    lines = path.read_text().splitlines()
    # the layout that broke the reader: padded names, sizes as list-directed reals
    assert lines[0].strip() == str(len(LAYER_LINES))
    assert lines[1].split()[0] == "input" and len(lines[1]) > 100
    assert lines[1].split()[1] == ("5.00000000" if kind == "real32" else "5.0000000000000000")

    # the harness, through the command line
    out = tmp_path / "net.colnn"
    assert main(["convert", str(path), "-o", str(out), "--from", "fkb",
                 "--fkb-precision", precision]) == 0
    spec = read_model(out)
    assert spec.precision == precision and spec.n_inputs == N_IN and spec.n_outputs == 3
    assert [layer.type for layer in spec.layers] == [
        "dense", "activation", "batch_normalization", "dropout", "dense", "activation",
        "dense", "activation"]
    k1 = params["kernel_1"].astype(dtype)
    np.testing.assert_array_equal(spec.layers[0].tensors["kernel"], k1)
    np.testing.assert_array_equal(spec.layers[2].tensors["moving_variance"],
                                  params["variance_3"].astype(dtype))

    # the Fortran library reads the FKB file itself; saved as colnn it is the same network
    library = lib_single if kind == "real32" else lib_double
    x = np.random.default_rng(1).normal(0, 1, (N_IN, 17))
    expected = numpy_forward(params, x, dtype)
    with NativeModel(path, library=library) as native:
        assert [layer[0] for layer in native.layers()] == [
            "dense", "activation", "batch_normalization", "dropout", "dense", "activation",
            "dense", "activation"]
        y_native = native.predict(x.T.astype(dtype)).T
        native.save(tmp_path / "from_library.colnn")
    from_library = read_model(tmp_path / "from_library.colnn")
    for a, b in zip(spec.layers, from_library.layers):
        assert a.type == b.type
        for name, tensor in a.tensors.items():
            np.testing.assert_array_equal(np.asarray(b.tensors[name], dtype), tensor,
                                          err_msg=f"{a.name}.{name}")
    y_harness = reference.forward(spec, x.astype(dtype))
    tol = 1e-5 if kind == "real32" else 1e-12
    scale = np.abs(expected).max()
    assert np.abs(y_native - expected).max() <= tol * scale
    assert np.abs(y_harness - expected).max() <= tol * scale


def test_architecture_only_fkb_file_is_refused(fkb_writer: tuple[str, Path], tmp_path: Path,
                                               lib_single: Path) -> None:
    """FKB initializes such a file's weights itself for training; it is never run as a model."""
    _, writer = fkb_writer
    path = tmp_path / "arch.txt"
    write_fkb_like_fkb(writer, path, _parameters(), architecture_only=True)
    assert len(path.read_text().splitlines()) == len(LAYER_LINES) + 2
    with pytest.raises(ConversionError, match=r"arch\.txt: the FKB file has no weights"):
        read_fkb(path)
    with pytest.raises(ColnnError, match=r"arch\.txt: the FKB file has no weights"):
        NativeModel(path, library=lib_single)
    assert main(["convert", str(path), "-o", str(tmp_path / "a.colnn"), "--from", "fkb"]) == 2  # an input error
    assert not (tmp_path / "a.colnn").exists()


SMALL = textwrap.dedent("""\
    3
    input {n_in}
    dense {units}
    relu 0.0
    0.001
    0.5 -0.5
    1 2 3 4
    """)


@pytest.mark.parametrize("n_in, units", [
    ("2.", "2.0"), ("2.00000000", "2.0000000000000000"), ("2.0E+00", "0.2E1"), ("+2.0", "2D0"),
    ("2", "2.00000000e0")])
def test_sizes_written_as_integral_reals(tmp_path: Path, lib_single: Path, n_in: str,
                                         units: str) -> None:
    path = tmp_path / "m.txt"
    path.write_text(SMALL.format(n_in=n_in, units=units))
    spec = read_fkb(path)
    assert spec.n_inputs == 2 and spec.layers[0].attrs["units"] == 2
    with NativeModel(path, library=lib_single) as native:
        y = native.predict(np.array([[1.0, 1.0]], dtype=np.float32)).T
    np.testing.assert_allclose(y[:, 0], [1 + 2 + 0.5, 3 + 4 - 0.5])


@pytest.mark.parametrize("n_in, units, line, token", [
    ("2.5", "2", 2, "2.5"), ("2", "2.000001", 3, "2.000001"), ("0.0", "2", 2, "0.0"),
    ("2", "-2.0", 3, "-2.0"), ("2", "3e9", 3, "3e9"), ("2", "2.0x", 3, "2.0x"),
    ("2", "inf", 3, "inf"), ("nan", "2", 2, "nan")])
def test_sizes_that_are_not_whole_numbers_are_refused(tmp_path: Path, lib_single: Path,
                                                      n_in: str, units: str, line: int,
                                                      token: str) -> None:
    path = tmp_path / "m.txt"
    path.write_text(SMALL.format(n_in=n_in, units=units))
    with pytest.raises(ConversionError) as info:
        read_fkb(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and f"'{token}'" in str(info.value)
    with pytest.raises(ColnnError) as native:
        NativeModel(path, library=lib_single)
    assert f"{path}:{line}" in str(native.value) and f"'{token}'" in str(native.value)


def test_vectors_wrapped_over_several_lines(fkb_writer: tuple[str, Path], tmp_path: Path,
                                            lib_single: Path, lib_double: Path) -> None:
    """Compilers that wrap long list-directed records (Intel's at 80 columns) write a vector over
    several lines; FKB's list-directed reader takes that, and so do both readers here."""
    kind, writer = fkb_writer
    path = tmp_path / "net.txt"
    params = _parameters(seed=5)
    write_fkb_like_fkb(writer, path, params)
    lines = path.read_text().splitlines()
    head, body = lines[:len(LAYER_LINES) + 2], lines[len(LAYER_LINES) + 2:]
    wrapped = tmp_path / "wrapped.txt"
    wrapped.write_text("\n".join(head + [w for row in body
                                         for w in textwrap.wrap(row, 80)]) + "\n")
    assert len(wrapped.read_text().splitlines()) > len(lines)
    precision = "float32" if kind == "real32" else "float64"
    library = lib_single if kind == "real32" else lib_double
    a, b = read_fkb(path, precision), read_fkb(wrapped, precision)
    for la, lb in zip(a.layers, b.layers):
        for name in la.tensors:
            np.testing.assert_array_equal(la.tensors[name], lb.tensors[name])
    x = np.random.default_rng(2).normal(0, 1, (N_IN, 9)).astype(a.dtype)
    with NativeModel(path, library=library) as m1, NativeModel(wrapped, library=library) as m2:
        np.testing.assert_array_equal(m1.predict(x.T), m2.predict(x.T))
    # a vector one value short runs into the next one: an error naming where it started
    short = body[0].split()[:-1]
    bad = tmp_path / "short.txt"
    bad.write_text("\n".join(head + [" ".join(short)] + body[1:]) + "\n")
    first = len(head) + 1
    with pytest.raises(ConversionError, match=f"expected 8 values from line {first}"):
        read_fkb(bad, precision)
    with pytest.raises(ColnnError, match=f"expected 8 values from line {first}"):
        NativeModel(bad, library=library)


def _intel_style(row: str) -> list[str]:
    """A list-directed record as Intel's compilers lay it out: runs of equal values as R*C,
    lines wrapped at 80 columns."""
    tokens = row.split()
    out: list[str] = []
    i = 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j] == tokens[i]:
            j += 1
        out.append(tokens[i] if j - i == 1 else f"{j - i}*{tokens[i]}")
        i = j
    return textwrap.wrap(" ".join(out), 80)


def test_repeat_counts_as_intel_writes_them(fkb_writer: tuple[str, Path], tmp_path: Path,
                                            lib_single: Path, lib_double: Path) -> None:
    """FKB starts biases at zero: Intel's list-directed output writes them as `8*0.0000000E+00`.
    Both readers expand R*C to the same network as the plain file; a null value (R*) or a bad
    count is an error."""
    kind, writer = fkb_writer
    params = _parameters(seed=6)
    params["bias_1"][:] = 0.0
    params["kernel_5"][:, :2] = 0.25
    path = tmp_path / "net.txt"
    write_fkb_like_fkb(writer, path, params)
    lines = path.read_text().splitlines()
    head, body = lines[:len(LAYER_LINES) + 2], lines[len(LAYER_LINES) + 2:]
    intel = tmp_path / "intel.txt"
    intel.write_text("\n".join(head + [w for row in body for w in _intel_style(row)]) + "\n")
    text = intel.read_text()
    assert "8*" in text and "*0.250" in text
    precision = "float32" if kind == "real32" else "float64"
    library = lib_single if kind == "real32" else lib_double
    a, b = read_fkb(path, precision), read_fkb(intel, precision)
    for la, lb in zip(a.layers, b.layers):
        for name in la.tensors:
            np.testing.assert_array_equal(la.tensors[name], lb.tensors[name])
    x = np.random.default_rng(3).normal(0, 1, (9, N_IN)).astype(a.dtype)
    with NativeModel(path, library=library) as m1, NativeModel(intel, library=library) as m2:
        np.testing.assert_array_equal(m1.predict(x), m2.predict(x))
    first_bias_line = len(head) + 1
    for bad, message in [("8*", "is not a repeat count"), ("0*1.0 8*0.0", "is not a repeat count"),
                         ("9*0.0", f"expected 8 values from line {first_bias_line}, found 9"),
                         ("7*0.0 1*x", "1*x")]:
        broken = tmp_path / "broken.txt"
        broken.write_text("\n".join(head + [bad] + [w for row in body[1:]
                                                    for w in _intel_style(row)]) + "\n")
        with pytest.raises(ConversionError, match=re.escape(message)):
            read_fkb(broken, precision)
        with pytest.raises(ColnnError, match=re.escape(message)):
            NativeModel(broken, library=library)
