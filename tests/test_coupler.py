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
def c_host(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run(["cmake", "--build", str(repo_root / "build/single")], check=True,
                   capture_output=True)
    subprocess.run(["cmake", "--install", str(repo_root / "build/single"), "--prefix",
                    str(prefix)], check=True, capture_output=True)
    build = tmp_path_factory.mktemp("c_host_build")
    env = dict(os.environ, CMAKE_PREFIX_PATH=str(prefix))
    proc = subprocess.run(["cmake", "-S", str(repo_root / "coupler/examples/c_host"), "-B",
                           str(build)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    return build / "c_host"


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


@pytest.mark.parametrize("entries,n_in,n_out,message", [
    (dict(model_fil="x"), 6, 4, "bad &colnn_coupler namelist"),
    (dict(), 6, 4, "exactly one of model_file and ensemble"),
    (dict(model_file="MODEL", noise_sd=0.1), 6, 4, "input noise needs an ensemble"),
    (dict(model_file="MODEL"), 5, 4, "the model maps 6 inputs to 4 outputs, the host passes 5"),
    (dict(model_file="MODEL"), 6, 3, "expects 3"),
    (dict(model_file="/nonexistent/m.colnn"), 6, 4, "/nonexistent/m.colnn: no such file"),
    (dict(ensemble="ENS", noise_sd=-1.0), 6, 4, "noise_sd must be >= 0"),
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
