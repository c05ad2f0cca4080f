"""fpm (the Fortran package manager) builds and tests libcolnn from fpm.toml: `fpm test` in the
debug profile (bounds checks) with the matmul fallback, in double precision, with BLAS, and a
project of one's own that depends on colnn with a precision macro. Each run starts from a copy
of fpm.toml and fortran/ (fpm writes its build/ and the tests their files into the project
root). fpm comes from PyPI (scripts/setup.sh installs it into the venv); without it the tests
skip, naming how to get it."""

from __future__ import annotations

import ctypes.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MANIFEST = tomllib.loads((REPO / "fpm.toml").read_text())


def _fpm() -> str:
    beside = Path(sys.executable).parent / "fpm"     # the venv's, when PATH lacks it
    found = str(beside) if beside.is_file() else shutil.which("fpm")
    if found is None:
        pytest.skip("fpm is not installed: pip install fpm (scripts/setup.sh installs it into "
                    "the venv)")
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """fpm.toml and fortran/ copied into a fresh directory."""
    root = tmp_path / "colnn"
    root.mkdir()
    shutil.copy2(REPO / "fpm.toml", root / "fpm.toml")
    shutil.copytree(REPO / "fortran", root / "fortran",
                    ignore=shutil.ignore_patterns("*.mod", "__pycache__"))
    return root


def _fpm_test(project: Path, *options: str) -> str:
    proc = subprocess.run([_fpm(), "test", *options], cwd=project, capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"fpm test {' '.join(options)} failed:\n{out[-6000:]}"
    for test in MANIFEST["test"]:
        assert f"{test['name']}: all passed" in out, (test["name"], out[-3000:])
    # the tests remove what they write into the project's root
    left = sorted(p.name for p in project.iterdir() if p.is_file() and p.name != "fpm.toml")
    assert not left, f"files left in the project root by the unit tests: {left}"
    return out


def test_fpm_tests_are_the_ctest_unit_tests() -> None:
    """fpm.toml runs the unit tests ctest runs (fortran/tests/CMakeLists.txt), and the MPI
    helpers stay out of fpm's library directory."""
    cmake = (REPO / "fortran/tests/CMakeLists.txt").read_text()
    ctest = re.search(r"foreach\(t ([\w ]+)\)", cmake).group(1).split()
    assert sorted(t["name"] for t in MANIFEST["test"]) == sorted(ctest)
    assert all(t["main"] == f"{t['name']}.f90" and t["source-dir"] == "fortran/tests"
               for t in MANIFEST["test"])
    library = REPO / MANIFEST["library"]["source-dir"]
    assert not [p for p in library.rglob("*.f90") if "mpi_f08" in p.read_text()]


def test_fpm_test_single_matmul_fallback(project: Path) -> None:
    """The default: single precision, no BLAS (the matmul intrinsic), fpm's debug profile with
    -fcheck=bounds."""
    _fpm_test(project)


def test_fpm_test_double(project: Path) -> None:
    _fpm_test(project, "--profile", "debug", "--flag", "-DCOLNN_DOUBLE")


def test_fpm_test_with_blas(project: Path) -> None:
    if ctypes.util.find_library("openblas") is None:
        pytest.skip("no OpenBLAS here (Debian: libopenblas-dev)")
    _fpm_test(project, "--profile", "debug", "--flag", "-DCOLNN_USE_BLAS",
              "--link-flag", "-Wl,--no-as-needed -lopenblas")


def test_fpm_dependency_with_precision_macro(project: Path) -> None:
    """A model of one's own that depends on colnn by path, asking for double precision through
    the dependency's macros, builds and runs."""
    app = project.parent / "gcm"
    (app / "app").mkdir(parents=True)
    (app / "fpm.toml").write_text(
        'name = "gcm"\n[dependencies]\n'
        'colnn = { path = "../colnn", preprocess.cpp.macros = ["COLNN_DOUBLE"] }\n')
    (app / "app" / "main.f90").write_text(
        "program gcm\n  use colnn\n  implicit none\n  type(network_t) :: net\n"
        "  print '(a, 1x, l1)', wp_name, net%is_loaded()\nend program gcm\n")
    proc = subprocess.run([_fpm(), "run"], cwd=app, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.split()[-2:] == ["float64", "F"], proc.stdout[-2000:]
