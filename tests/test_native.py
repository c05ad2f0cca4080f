"""The Fortran library through its C binding (the path a C/C++ host takes), against the numpy
reference implementation, for every layer type and activation, in both precisions."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model
from harness.native import ColnnError, NativeModel
from harness import reference

ACTIVATIONS = [
    ("linear", {}), ("relu", {}), ("relu", {"negative_slope": 0.1, "max_value": 1.5, "threshold": 0.2}),
    ("relu6", {}), ("leaky_relu", {"negative_slope": 0.3}), ("elu", {"alpha": 0.7}), ("selu", {}),
    ("gelu", {"approximate": False}), ("gelu", {"approximate": True}), ("swish", {}),
    ("sigmoid", {}), ("hard_sigmoid", {}), ("hard_sigmoid", {"slope": 0.2, "offset": 0.5}),
    ("hard_silu", {}), ("tanh", {}), ("softplus", {}), ("softsign", {}), ("exponential", {}),
    ("mish", {}), ("softmax", {}), ("log_softmax", {}),
]


def random_model(rng: np.random.Generator, precision: str, act: Activation, n_in: int = 7,
                 width: int = 11, n_out: int = 5, dense_act: Activation | None = None
                 ) -> ModelSpec:
    dt = np.float32 if precision == "float32" else np.float64

    def arr(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(dt)

    layers = [
        LayerSpec("normalization", "norm", {"epsilon": 1e-7, "invert": False},
                  {"mean": arr(n_in), "variance": np.abs(arr(n_in)) + dt(0.1)}),
        LayerSpec("dense", "d1", {"units": width, "use_bias": True,
                                  "activation": dense_act or act},
                  {"kernel": arr(n_in, width, scale=0.4), "bias": arr(width, scale=0.1)}),
        LayerSpec("batch_normalization", "bn", {"epsilon": 1e-3, "momentum": 0.99, "center": True,
                                                "scale": True},
                  {"gamma": arr(width), "beta": arr(width), "moving_mean": arr(width, scale=0.1),
                   "moving_variance": np.abs(arr(width)) + dt(0.5)}),
        LayerSpec("activation", "act", {"activation": act}, {}),
        LayerSpec("dropout", "drop", {"rate": 0.2}, {}),
        LayerSpec("dense", "d2", {"units": n_out, "use_bias": False,
                                  "activation": Activation.make("linear")},
                  {"kernel": arr(width, n_out, scale=0.3)}),
    ]
    return ModelSpec(precision, n_in, layers)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("name,params", ACTIVATIONS, ids=lambda v: str(v))
def test_every_activation_matches_reference(tmp_path: Path, precision: str, name: str,
                                            params: dict) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{name}{params}".encode()))
    act = Activation.make(name, **params)
    # exp(batch_norm(exp(.))) overflows float32 on random weights: one exponential is enough
    dense_act = Activation.make("linear") if name == "exponential" else None
    spec = random_model(rng, precision, act, dense_act=dense_act)
    path = tmp_path / "m.colnn"
    write_model(spec, path)
    lib = "double" if precision == "float64" else "single"
    x = rng.standard_normal((37, spec.n_inputs)).astype(spec.dtype)
    with NativeModel(path, precision=lib) as m:
        assert (m.n_inputs, m.n_outputs, m.n_layers) == (7, 5, 6)
        y = m.predict(x)
    y_ref = reference.forward(spec, x.T.astype(np.float64)).T
    tol = 1e-5 if precision == "float32" else 1e-12
    err = np.abs(y - y_ref).max() / max(np.abs(y_ref).max(), 1e-30)
    assert err <= tol, f"{name} {params}: relative error {err:.2e}"


def test_double_build_reads_float32_file_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    spec = random_model(rng, "float32", Activation.make("tanh"))
    path = tmp_path / "f32.colnn"
    write_model(spec, path)
    with NativeModel(path, precision="double") as m:
        m.save(tmp_path / "back.colnn")
    from harness.modelfile import read_model
    back = read_model(tmp_path / "back.colnn")
    assert back.precision == "float64"
    for a, b in zip(spec.layers, back.layers):
        for k, t in a.tensors.items():
            # every float32 weight arrives as the same number in float64
            assert np.array_equal(t.astype(np.float64), b.tensors[k]), (a.name, k)


@pytest.mark.parametrize("lib,precision", [("single", "float32"), ("double", "float64")])
def test_save_round_trip_is_bit_exact(tmp_path: Path, lib: str, precision: str) -> None:
    rng = np.random.default_rng(11)
    spec = random_model(rng, precision, Activation.make("elu", alpha=1.3))
    write_model(spec, tmp_path / "a.colnn")
    x = rng.standard_normal((64, spec.n_inputs))
    with NativeModel(tmp_path / "a.colnn", precision=lib) as m:
        y1 = m.predict(x)
        m.save(tmp_path / "b.colnn")
    with NativeModel(tmp_path / "b.colnn", precision=lib) as m2:
        y2 = m2.predict(x)
    assert np.array_equal(y1, y2)
    from harness.modelfile import read_model
    back = read_model(tmp_path / "b.colnn")
    for a, b in zip(spec.layers, back.layers):
        for k, t in a.tensors.items():
            assert np.array_equal(t, b.tensors[k]), (a.name, k)


@pytest.mark.parametrize("lib", ["single", "double"])
def test_a_full_disk_while_saving_keeps_the_earlier_model(tmp_path: Path, small_disk,
                                                           lib: str) -> None:
    """A real ENOSPC in the middle of a model file (a small tmpfs): an error naming the file
    and the reason; the model saved there before is untouched and no temporary file is left."""
    rng = np.random.default_rng(4)
    dtype = "float32" if lib == "single" else "float64"
    big = ModelSpec(dtype, 300, [LayerSpec("dense", "d", {
        "units": 300, "use_bias": True, "activation": Activation.make("tanh")},
        {"kernel": rng.standard_normal((300, 300)), "bias": rng.standard_normal(300)})])
    small = random_model(rng, dtype, Activation.make("relu"))
    write_model(big, tmp_path / "big.colnn")
    write_model(small, tmp_path / "small.colnn")
    disk = small_disk("256k")
    with NativeModel(tmp_path / "small.colnn", precision=lib) as m:
        m.save(disk / "m.colnn")
    before = (disk / "m.colnn").read_bytes()
    with NativeModel(tmp_path / "big.colnn", precision=lib) as m:
        with pytest.raises(ColnnError) as info:
            m.save(disk / "m.colnn")
    message = str(info.value)
    assert str(disk / "m.colnn") in message and "No space left on device" in message, message
    assert sorted(p.name for p in disk.iterdir()) == ["m.colnn"]
    assert (disk / "m.colnn").read_bytes() == before


def test_columns_are_independent(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    spec = random_model(rng, "float32", Activation.make("softmax"))
    write_model(spec, tmp_path / "m.colnn")
    x = rng.standard_normal((1000, spec.n_inputs)).astype(np.float32)
    with NativeModel(tmp_path / "m.colnn") as m:
        y_all = m.predict(x)
        y_one = np.vstack([m.predict(x[i:i + 1]) for i in range(0, 1000, 97)])
        y_chunk = m.predict(x[:100])
    assert np.allclose(y_all[::97], y_one, rtol=1e-5, atol=1e-6)
    assert np.allclose(y_all[:100], y_chunk, rtol=1e-5, atol=1e-6)


def test_bad_calls_give_status_and_message(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    spec = random_model(rng, "float32", Activation.make("relu"))
    write_model(spec, tmp_path / "m.colnn")
    with NativeModel(tmp_path / "m.colnn") as m:
        with pytest.raises(Exception, match="features"):
            m.predict(np.zeros((4, 3), np.float32))
        with pytest.raises(ColnnError, match="n_columns must be >= 1") as e:
            m.predict(np.zeros((0, 7), np.float32))
        assert e.value.status == 3
        x = np.zeros((4, 7), np.float32)
        x[2, 5] = np.nan
        with pytest.raises(ColnnError, match="feature 6 of column 3 is not finite") as e:
            m.predict(x)
        assert e.value.status == 4
        # the handle stays usable after an error
        assert np.all(np.isfinite(m.predict(np.ones((2, 7), np.float32))))
    with pytest.raises(ColnnError, match="no such file") as e:
        NativeModel(tmp_path / "absent.colnn")
    assert e.value.status == 1
    (tmp_path / "junk.colnn").write_text("hello world\n")
    with pytest.raises(ColnnError, match=r"junk\.colnn.*neither a colnn model file nor an FKB"):
        NativeModel(tmp_path / "junk.colnn")


def test_c_api_from_a_c_program(tmp_path: Path, repo_root: Path, lib_single: Path) -> None:
    """The header compiles and a C host can load, query, run and free a model."""
    import subprocess
    rng = np.random.default_rng(1)
    spec = random_model(rng, "float32", Activation.make("relu"))
    write_model(spec, tmp_path / "m.colnn")
    src = tmp_path / "host.c"
    src.write_text(r'''
#include <stdio.h>
#include <stdlib.h>
#include "colnn.h"
int main(int argc, char **argv) {
  char err[512];
  colnn_model *m = NULL;
  if (colnn_real_bytes() != sizeof(colnn_real)) { puts("precision mismatch"); return 3; }
  if (colnn_load(argv[1], &m, err, sizeof err) != COLNN_OK) { printf("load: %s\n", err); return 1; }
  int nin = colnn_num_inputs(m), nout = colnn_num_outputs(m), nc = 3;
  colnn_real *x = calloc((size_t)nin * nc, sizeof *x), *y = calloc((size_t)nout * nc, sizeof *y);
  for (int i = 0; i < nin * nc; i++) x[i] = 0.01f * i;
  if (colnn_forward(m, x, nc, y, err, sizeof err) != COLNN_OK) { printf("forward: %s\n", err); return 2; }
  for (int j = 0; j < nc; j++) { for (int i = 0; i < nout; i++) printf("%.7e ", y[j * nout + i]); printf("\n"); }
  int bad = colnn_forward(m, x, 0, y, err, sizeof err);
  printf("zero columns -> %d: %s\n", bad, err);
  bad = colnn_load("/nonexistent/model.colnn", &m, err, sizeof err);
  printf("missing -> %d: %s\n", bad, err);
  colnn_free(m);
  return 0;
}
''')
    exe = tmp_path / "host"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src), f"-I{repo_root / 'fortran/include'}",
                    str(lib_single), f"-Wl,-rpath,{lib_single.parent}"], check=True)
    proc = subprocess.run([str(exe), str(tmp_path / "m.colnn")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    y_c = np.array([[float(v) for v in line.split()] for line in lines[:3]])
    x = (0.01 * np.arange(7 * 3)).reshape(3, 7).astype(np.float32)
    y_ref = reference.forward(spec, x.T.astype(np.float64)).T
    assert np.abs(y_c - y_ref).max() <= 1e-5 * np.abs(y_ref).max()
    assert lines[3].startswith("zero columns -> 3:")
    assert "missing -> 1:" in lines[4] and "/nonexistent/model.colnn" in lines[4]


def _malformed_cases():
    from test_modelfile import MALFORMED
    return [pytest.param(text, id=name) for name, text, _line, _sub in MALFORMED]


@pytest.mark.parametrize("lib", ["single", "double"])
@pytest.mark.parametrize("text", _malformed_cases())
def test_fortran_reader_refuses_what_the_python_reader_refuses(tmp_path: Path, lib: str,
                                                               text: str) -> None:
    """The same malformed files as the Python reader's tests: the Fortran reader (through the
    C binding) refuses each with a status and a message naming the file."""
    path = tmp_path / "bad.colnn"
    path.write_text(text)
    with pytest.raises(ColnnError) as info:
        NativeModel(path, precision=lib)
    assert info.value.status in (2, 4, 5), str(info.value)
    assert str(path) in str(info.value)
