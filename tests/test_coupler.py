"""The coupler (CCPP-style init/run/finalize with errmsg/errflg): a C host built against the
installed library with find_package(colnn) runs a model in column chunks; bad configurations
fail at init with a clear message, before any step."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.modelfile import write_model
from harness.native import NativeModel

from test_ensemble import member


@pytest.fixture(scope="module")
def installed_double(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    prefix = tmp_path_factory.mktemp("prefix_double")
    subprocess.run(["cmake", "--build", str(repo_root / "build/double")], check=True,
                   capture_output=True)
    subprocess.run(["cmake", "--install", str(repo_root / "build/double"), "--prefix",
                    str(prefix)], check=True, capture_output=True)
    return prefix


def build_example(name: str, prefix: Path, repo_root: Path, build: Path) -> Path:
    env = dict(os.environ, CMAKE_PREFIX_PATH=str(prefix))
    proc = subprocess.run(["cmake", "-S", str(repo_root / "coupler/examples" / name), "-B",
                           str(build)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return build / name


@pytest.fixture(scope="module")
def c_host(installed: Path, tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    return build_example("c_host", installed, repo_root, tmp_path_factory.mktemp("c_host"))


@pytest.fixture(scope="module")
def fortran_host(installed: Path, tmp_path_factory: pytest.TempPathFactory,
                 repo_root: Path) -> Path:
    return build_example("fortran_host", installed, repo_root,
                         tmp_path_factory.mktemp("fortran_host"))


def namelist(path: Path, **entries: object) -> Path:
    def fmt(v: object) -> str:
        if isinstance(v, bool):
            return ".true." if v else ".false."
        if isinstance(v, (str, Path)):
            return f"'{v}'"
        return str(v)
    path.write_text("&colnn_coupler\n" + "".join(f"  {k} = {fmt(v)}\n" for k, v in entries.items())
                    + "/\n")
    return path


def host_inputs(n_in: int, ncol: int) -> np.ndarray:
    j, i = np.meshgrid(np.arange(ncol), np.arange(n_in), indexing="ij")
    return (0.01 * ((i * 7 + j * 3) % 23) - 0.1).astype(np.float32)


def test_c_host_runs_the_model_in_chunks(c_host: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.colnn"
    write_model(member(np.random.default_rng(1)), model)
    nml = namelist(tmp_path / "coupler.nml", model_file=model)
    out = subprocess.run([str(c_host), str(nml), "6", "4", "101", "16"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    y = np.array([[float(v) for v in line.split()] for line in out.stdout.splitlines()])
    with NativeModel(model) as m:
        expected = m.predict(host_inputs(6, 101))
    assert y.shape == (101, 4)
    assert np.allclose(y, expected, rtol=1e-6, atol=1e-7)


def test_c_host_with_a_noisy_ensemble_is_independent_of_the_chunk_size(c_host: Path,
                                                                        tmp_path: Path) -> None:
    from test_ensemble import make_ensemble
    ens = make_ensemble(tmp_path / "ens", 3)
    nml = namelist(tmp_path / "coupler.nml", ensemble=ens, noise_sd=0.2, noise_seed=3)
    a = subprocess.run([str(c_host), str(nml), "6", "4", "50", "7"], capture_output=True,
                       text=True, check=True).stdout
    b = subprocess.run([str(c_host), str(nml), "6", "4", "50", "50"], capture_output=True,
                       text=True, check=True).stdout
    assert a == b


@pytest.mark.parametrize("kind", ["model", "noisy ensemble"])
def test_openmp_chunk_loop_equals_the_serial_run_bitwise(c_host: Path, tmp_path: Path,
                                                          kind: str) -> None:
    """The GCM pattern: an OpenMP loop over column chunks, each thread calling
    colnn_coupler_run for its own chunks. The outputs are bitwise those of the serial loop
    (once: garbage in almost every column, with errflg = 0)."""
    if kind == "model":
        model = tmp_path / "m.colnn"
        write_model(member(np.random.default_rng(2), width=192, depth=3), model)
        nml = namelist(tmp_path / "coupler.nml", model_file=model)
    else:
        from test_ensemble import make_ensemble
        ens = make_ensemble(tmp_path / "ens", 3)
        nml = namelist(tmp_path / "coupler.nml", ensemble=ens, noise_sd=0.2, noise_seed=5)
    args = [str(c_host), str(nml), "6", "4", "3000", "24"]
    serial = subprocess.run(args + ["1"], capture_output=True, text=True, check=True).stdout
    for threads in ("2", "4"):
        for _ in range(3):
            proc = subprocess.run(args + [threads], capture_output=True, text=True,
                                  env=dict(os.environ, OMP_NUM_THREADS="1"))
            assert proc.returncode == 0, proc.stderr
            differ = sum(a != b for a, b in zip(proc.stdout.splitlines(), serial.splitlines()))
            assert differ == 0, f"{threads} threads: {differ} of 3000 columns differ"


@pytest.mark.parametrize("kind", ["model", "noisy ensemble"])
def test_fortran_host_openmp_chunk_loop(fortran_host: Path, tmp_path: Path, kind: str) -> None:
    """The Fortran example host: its threaded loop over chunks gives the serial loop's bits."""
    if kind == "model":
        model = tmp_path / "m.colnn"
        write_model(member(np.random.default_rng(3), width=160, depth=3), model)
        nml = namelist(tmp_path / "coupler.nml", model_file=model)
    else:
        from test_ensemble import make_ensemble
        nml = namelist(tmp_path / "coupler.nml", ensemble=make_ensemble(tmp_path / "ens", 4),
                       noise_sd=0.3, noise_seed=9)
    for threads in ("2", "4"):
        proc = subprocess.run([str(fortran_host), str(nml), "6", "4", "2500", "20", threads],
                              capture_output=True, text=True, env=dict(os.environ,
                                                                       OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("0 of 2500 columns differ"), proc.stdout


@pytest.mark.parametrize("entries,n_in,n_out,message", [
    (dict(model_fil="x"), 6, 4, "bad &colnn_coupler namelist"),
    (dict(), 6, 4, "exactly one of model_file and ensemble"),
    (dict(model_file="MODEL", noise_sd=0.1), 6, 4, "input noise needs an ensemble"),
    (dict(model_file="MODEL"), 5, 4, "the model maps 6 inputs to 4 outputs, the host passes 5"),
    (dict(model_file="MODEL"), 6, 3, "expects 3"),
    (dict(model_file="/nonexistent/m.colnn"), 6, 4, "/nonexistent/m.colnn: no such file"),
    (dict(ensemble="ENS", noise_sd=-1.0), 6, 4, "noise_sd must be finite and >= 0"),
])
def test_bad_configuration_fails_at_init(c_host: Path, tmp_path: Path, entries: dict, n_in: int,
                                         n_out: int, message: str) -> None:
    model = tmp_path / "m.colnn"
    write_model(member(np.random.default_rng(1)), model)
    from test_ensemble import make_ensemble
    ens = make_ensemble(tmp_path / "ens", 2)
    entries = {k: (model if v == "MODEL" else ens if v == "ENS" else v) for k, v in entries.items()}
    nml = namelist(tmp_path / "bad.nml", **entries)
    out = subprocess.run([str(c_host), str(nml), str(n_in), str(n_out), "10", "4"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.startswith("init failed: colnn_coupler_init")
    assert message in out.stderr, out.stderr


TWO_SCHEMES_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "colnn_coupler.h"
/* two networks in one host: 'convection' (6 -> 4) and 'radiation' (6 -> 3), then misuse */
int main(int argc, char **argv) {
  char err[1024];
  int conv = 0, rad = 0, dup = 0, nc = 5;
  if (colnn_scheme_init(argv[1], "convection", 6, 4, NULL, NULL, &conv, err, sizeof err)) { printf("init conv: %s\n", err); return 1; }
  if (colnn_scheme_init(argv[1], "radiation", 6, 3, NULL, NULL, &rad, err, sizeof err)) { printf("init rad: %s\n", err); return 1; }
  colnn_real x[6 * 5], yc[4 * 5], yr[3 * 5];
  for (int i = 0; i < 6 * nc; i++) x[i] = (colnn_real)(0.05 * (i % 11) - 0.2);
  if (colnn_scheme_run(conv, x, nc, yc, 0, 1, NULL, err, sizeof err)) { printf("run conv: %s\n", err); return 1; }
  if (colnn_scheme_run(rad, x, nc, yr, 0, 1, NULL, err, sizeof err)) { printf("run rad: %s\n", err); return 1; }
  for (int j = 0; j < nc; j++) { for (int i = 0; i < 4; i++) printf("%.8e ", (double)yc[j * 4 + i]); printf("\n"); }
  for (int j = 0; j < nc; j++) { for (int i = 0; i < 3; i++) printf("%.8e ", (double)yr[j * 3 + i]); printf("\n"); }
  printf("same name -> %d: %s\n", colnn_scheme_init(argv[1], "radiation", 6, 3, NULL, NULL, &dup, err, sizeof err), err);
  printf("unknown name -> %d: %s\n", colnn_scheme_init(argv[1], "chemistry", 6, 3, NULL, NULL, &dup, err, sizeof err), err);
  printf("no name -> %d: %s\n", colnn_scheme_init(argv[1], "", 6, 3, NULL, NULL, &dup, err, sizeof err), err);
  if (colnn_scheme_finalize(rad, err, sizeof err)) { printf("finalize: %s\n", err); return 1; }
  printf("after finalize -> %d: %s\n", colnn_scheme_run(rad, x, nc, yr, 0, 1, NULL, err, sizeof err), err);
  printf("bad id -> %d: %s\n", colnn_scheme_run(42, x, nc, yr, 0, 1, NULL, err, sizeof err), err);
  printf("conv still -> %d\n", colnn_scheme_run(conv, x, nc, yc, 0, 1, NULL, err, sizeof err));
  if (colnn_scheme_init(argv[1], "radiation", 6, 3, NULL, NULL, &dup, err, sizeof err)) { printf("re-init: %s\n", err); return 1; }
  printf("re-init id %d (was %d)\n", dup, rad);
  int64_t calls, cols; double secs;
  if (colnn_scheme_timers(conv, &calls, &cols, &secs, err, sizeof err)) { printf("timers: %s\n", err); return 1; }
  printf("conv timers %lld calls %lld columns %s\n", (long long)calls, (long long)cols, secs > 0 ? "some time" : "no time");
  printf("timers of finalized -> %d\n", colnn_scheme_timers(rad, &calls, &cols, &secs, err, sizeof err));
  return 0;
}
"""


def test_two_schemes_in_one_c_host(installed: Path, tmp_path: Path) -> None:
    """Two networks from two &colnn_coupler groups of one file; a second scheme with a live
    name, an unknown name, a file of two groups without a name, a finalized id and an id that
    never existed are errors that say so; the other scheme runs on."""
    conv, rad = tmp_path / "conv.colnn", tmp_path / "rad.colnn"
    write_model(member(np.random.default_rng(4)), conv)
    write_model(member(np.random.default_rng(5), n_out=3), rad)
    nml = tmp_path / "schemes.nml"
    nml.write_text(f"&colnn_coupler name = 'convection', model_file = '{conv}' /\n"
                   f"&colnn_coupler name = 'radiation', model_file = '{rad}' /\n")
    src = tmp_path / "two.c"
    src.write_text(TWO_SCHEMES_C)
    pc = installed / "lib" / "pkgconfig"
    if not pc.is_dir():
        pc = next(installed.glob("lib*/pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "colnn_coupler"],
                           capture_output=True, text=True, check=True,
                           env=dict(os.environ, PKG_CONFIG_PATH=str(pc))).stdout.split()
    libdir = next(f[2:] for f in flags if f.startswith("-L"))
    exe = tmp_path / "two"
    subprocess.run(["gcc", "-o", str(exe), str(src), *flags, f"-Wl,-rpath,{libdir}"],
                   check=True)
    proc = subprocess.run([str(exe), str(nml)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    x = np.array([[0.05 * ((j * 6 + i) % 11) - 0.2 for i in range(6)] for j in range(5)],
                 dtype=np.float32)
    for path, rows in ((conv, lines[0:5]), (rad, lines[5:10])):
        with NativeModel(path) as m:
            expected = m.predict(x)
        got = np.array([[float(v) for v in row.split()] for row in rows], dtype=np.float32)
        np.testing.assert_array_equal(got, expected)
    text = "\n".join(lines[10:])
    assert "same name -> 1: colnn_coupler_init (scheme 'radiation'): a scheme named " \
           "'radiation' is already initialised" in text
    assert "unknown name -> 1:" in text and "no &colnn_coupler group with name = 'chemistry'" \
        in text
    assert "no name -> 1:" in text and "holds 2 &colnn_coupler groups" in text
    assert "after finalize -> 1: colnn_scheme_run: scheme 2 does not exist" in text
    assert "bad id -> 1: colnn_scheme_run: scheme 42 does not exist" in text
    assert "conv still -> 0" in text
    assert "re-init id 3 (was 2)" in text
    assert "conv timers 2 calls 10 columns some time" in text   # the failed call is not counted
    assert "timers of finalized -> 1" in text


@pytest.mark.parametrize("precision", ["single", "double"])
@pytest.mark.parametrize("kind", ["model", "noisy ensemble"])
def test_double_precision_columns_first_host(installed: Path, installed_double: Path,
                                             c_host: Path, tmp_path: Path, repo_root: Path,
                                             precision: str, kind: str) -> None:
    """A real64 host holding (columns, features) chunks links and runs against the single and
    the double library; the outputs are the library's own for the same columns; a chunk of the
    wrong shape is an error naming the expected shape."""
    prefix = installed if precision == "single" else installed_double
    exe = build_example("gcm_layout", prefix, repo_root, tmp_path / "build")
    if kind == "model":
        model = tmp_path / "m.colnn"
        write_model(member(np.random.default_rng(7)), model)
        nml = namelist(tmp_path / "c.nml", model_file=model)
    else:
        from test_ensemble import make_ensemble
        ens = make_ensemble(tmp_path / "ens", 3)
        nml = namelist(tmp_path / "c.nml", ensemble=ens, noise_sd=0.2, noise_seed=4)
    # the usual 8 MB stack: the host's 24 MB local array stays off it unless -fopenmp leaked
    # into the host's own flags through colnn's CMake target
    flags = (tmp_path / "build" / "compile_commands.json").read_text()
    assert "host.f90" in flags and "openmp" not in flags, flags
    proc = subprocess.run(["bash", "-c", 'ulimit -s 8192 && exec "$0" "$@"', str(exe),
                           str(nml), "6", "4", "77", "10"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    bad = lines[0]
    assert bad.startswith("bad shape -> 1: colnn_coupler_run") and (
        ("takes 6" in bad and "(columns, features)" in bad) or "inputs must be (3, 6)" in bad), bad
    assert lines[1] == "ccpp scheme gives the same bits: T", lines[1]
    y = np.array([[float(v) for v in line.split()] for line in lines[2:]])
    assert y.shape == (77, 4)
    x = np.array([[0.01 * ((i * 7 + j * 3) % 23) - 0.1 for i in range(6)] for j in range(77)])
    if kind == "model":
        with NativeModel(model, precision=precision) as m:
            # the host's chunks of 10 (the batch size can change the last bits: issue 17)
            expected = np.concatenate([m.predict(x[j:j + 10].astype(m.dtype))
                                       for j in range(0, 77, 10)]).astype(np.float64)
        np.testing.assert_array_equal(y, expected)
    elif precision == "single":
        # the same ensemble through the C host (features-first, the library's precision): the
        # noise key is (column, step) in both, so the staged path must give the same numbers
        out = subprocess.run([str(c_host), str(nml), "6", "4", "77", "10"], capture_output=True,
                             text=True, check=True).stdout
        expected = np.array([[float(v) for v in line.split()] for line in out.splitlines()])
        np.testing.assert_array_equal(y.astype(np.float32), expected.astype(np.float32))
    else:
        assert np.all(np.isfinite(y)) and np.abs(y).max() > 0


def test_the_ccpp_scheme_is_installed(installed: Path) -> None:
    """What a CCPP host needs after install: the scheme's metadata and its Fortran module."""
    assert (installed / "include" / "colnn" / "colnn_ccpp.meta").is_file()
    assert list(installed.rglob("colnn_ccpp.mod")), "colnn_ccpp.mod is not installed"


def test_the_installed_package_leaves_the_host_alone(installed: Path) -> None:
    """What a host's build takes from the package: no MPI unless it asks (colnn::colnn_mpi has
    its own targets file), no OpenMP or BLAS usage requirements, no absolute library paths,
    and pkg-config's run path."""
    cmake_dir = next(installed.rglob("colnnTargets.cmake")).parent
    targets = (cmake_dir / "colnnTargets.cmake").read_text()
    targets += "".join(p.read_text() for p in cmake_dir.glob("colnnTargets-*.cmake"))
    assert "MPI::" not in targets and "OpenMP" not in targets and "openblas" not in targets
    assert (cmake_dir / "colnnMPITargets.cmake").is_file()
    for pc in installed.rglob("*.pc"):
        text = pc.read_text()
        assert "openblas" not in text and "-fopenmp" not in text, pc
        assert "-Wl,-rpath,${libdir}" in text, pc


def _normalizing_member(path: Path, variance: np.ndarray) -> None:
    """Normalization (mean 0, the given variances) then an identity Dense: the output is the
    normalized input, so the noise the network saw can be read off its output."""
    from harness.modelfile import Activation, LayerSpec, ModelSpec
    n = variance.size
    write_model(ModelSpec("float32", n, [
        LayerSpec("normalization", "norm", {"epsilon": 0.0, "invert": False},
                  {"mean": np.zeros(n), "variance": variance}),
        LayerSpec("dense", "id", {"units": n, "use_bias": False,
                                  "activation": Activation.make("linear")},
                  {"kernel": np.eye(n)})]), path)


@pytest.mark.parametrize("units, sd, expected", [
    ("normalized", "0.1", [0.1] * 6),
    ("auto", "0.1", [0.1] * 6),
    ("raw", "0.1", [0.1 / s for s in (1, 10, 100, 1, 10, 100)]),
    ("normalized", "0.1, 0.2, 0.3, 0.1, 0.2, 0.3", [0.1, 0.2, 0.3] * 2),
])
def test_noise_per_feature_in_normalized_units(c_host: Path, tmp_path: Path, units: str,
                                               sd: str, expected: list[float]) -> None:
    """Inputs in physical units (here variances 1, 1e2, 1e4): noise in the model's normalized
    units is the same size for every feature; in raw units it drowns in some and vanishes in
    others. Per-feature values too."""
    variance = np.array([1.0, 1e2, 1e4] * 2)
    ens = tmp_path / "ens"
    ens.mkdir()
    for m in range(2):
        _normalizing_member(ens / f"m{m}.colnn", variance)
    nml = tmp_path / "c.nml"
    nml.write_text(f"&colnn_coupler ensemble = '{ens}', noise_sd = {sd}, noise_seed = 3, "
                   f"noise_units = '{units}' /\n")
    out = subprocess.run([str(c_host), str(nml), "6", "6", "4000", "500"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    y = np.array([[float(v) for v in line.split()] for line in out.stdout.splitlines()])
    x = host_inputs(6, 4000).astype(np.float64)
    # the mean of 2 members' independent noise: sd / sqrt(2)
    seen = (y - x / np.sqrt(variance)).std(axis=0) * np.sqrt(2)
    np.testing.assert_allclose(seen, expected, rtol=0.06)


@pytest.mark.parametrize("text, message", [
    ("noise_sd = 0.1, 0.2", "noise_sd gives 2 values; give 1, or one per input feature (6)"),
    ("noise_sd = 0.1, noise_units = 'sigma'", "noise_units must be 'auto', 'raw' or"),
    ("noise_sd = 0.1, -0.2", "noise_sd must be finite and >= 0"),
    ("noise_sd = 0.1, noise_units = 'normalized', MIXED", "does not"),
    ("noise_sd = 0.1, MIXED", "some members normalize their inputs and some do not"),
])
def test_bad_noise_settings_fail_at_init(c_host: Path, tmp_path: Path, text: str,
                                         message: str) -> None:
    ens = tmp_path / "ens"
    ens.mkdir()
    _normalizing_member(ens / "a.colnn", np.ones(6))
    if "MIXED" in text:
        write_model(member(np.random.default_rng(0), n_out=6), ens / "b.colnn")
        text = text.replace(", MIXED", "")
    else:
        _normalizing_member(ens / "b.colnn", np.ones(6))
    nml = tmp_path / "c.nml"
    nml.write_text(f"&colnn_coupler ensemble = '{ens}', {text} /\n")
    out = subprocess.run([str(c_host), str(nml), "6", "6", "10", "5"], capture_output=True,
                         text=True)
    assert out.returncode == 1 and message in out.stderr, out.stderr


DECLARED_C = r"""
#include <stdio.h>
#include "colnn_coupler.h"
int main(int argc, char **argv) {
  char err[1024];
  int s = 0;
  int rc = colnn_scheme_init(argv[1], "", 6, 4, argv[2], argv[3][0] ? argv[3] : NULL, &s,
                             err, sizeof err);
  printf("%d: %s\n", rc, err);
  return 0;
}
"""


def test_declared_variables_are_checked_at_init(installed: Path, tmp_path: Path) -> None:
    """A host that declares its variables gets an error naming the position, the host's value
    and the model's when they differ, and when the model does not describe its inputs."""
    from harness.features import Feature, with_features
    spec = member(np.random.default_rng(0))
    ins = [Feature("ta", lev, "K") for lev in ("850", "500", "250")] + \
        [Feature("qv", lev, "kg/kg") for lev in ("850", "500", "250")]
    outs = [Feature("dtdt", lev, "K/s") for lev in ("850", "500", "250", "100")]
    described, plain = tmp_path / "described.colnn", tmp_path / "plain.colnn"
    write_model(with_features(spec, ins, outs), described)
    write_model(spec, plain)
    src = tmp_path / "declare.c"
    src.write_text(DECLARED_C)
    pc = next(installed.glob("lib*/pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "colnn_coupler"],
                           capture_output=True, text=True, check=True,
                           env=dict(os.environ, PKG_CONFIG_PATH=str(pc))).stdout.split()
    exe = tmp_path / "declare"
    subprocess.run(["gcc", "-o", str(exe), str(src), *flags], check=True)
    good_in = "\n".join(f.text() for f in ins)
    good_out = "\n".join(f.text() for f in outs)

    def init(model: Path, inputs: str, outputs: str = "") -> str:
        nml = namelist(tmp_path / "c.nml", model_file=model)
        return subprocess.run([str(exe), str(nml), inputs, outputs], capture_output=True,
                              text=True, check=True).stdout.strip()

    assert init(described, good_in, good_out) == "0:"
    assert init(described, good_in.replace("ta 500 K", "ta  500   K")) == "0:"  # blanks
    bad = init(described, good_in.replace("qv 500 kg/kg", "qv 500 g/kg"))
    assert bad.startswith("1: colnn_coupler_init: input_vars(5) is 'qv 500 g/kg', the model")
    assert "has 'qv 500 kg/kg' at input 5" in bad
    bad = init(described, good_in, good_out.replace("dtdt 100 K/s\n", "").rsplit("\n", 1)[0])
    assert "output_vars declares 2 variables" in bad or "output_vars declares 3" in bad, bad
    bad = init(plain, good_in)
    assert "does not describe its inputs (record them with harness convert --inputs-meta" in bad
