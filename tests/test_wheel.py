"""The wheel carries the library: built once through the project's build backend (scikit-build-
core running cmake/wheel/CMakeLists.txt, without build isolation), installed into a fresh venv
outside the tree, then run from another directory: `harness config` (everything from the
wheel), `harness demo`, a tiny study on the local executor, and GCM-style builds that find the
wheel's library through `harness config --cmakedir` (CMake, Fortran and C) and
`--pkgconfigdir` (pkg-config; single and double). Bad input: a wheel build without a Fortran
compiler, a configure without BLAS, a BLAS path that does not exist.

The venv gets the heavy dependencies (TensorFlow, h5py, ...) from this test's own environment
through a .pth file placed after its own site-packages; the harness itself comes only from the
wheel (asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import reference
from test_install import _check_output, _fortran_main, _model
from test_study import TINY, toml_text
from link_programs import COUPLER_HOST_F90

REPO = Path(__file__).resolve().parent.parent
#: the overrides the installed harness must not see (it finds everything in the wheel)
OVERRIDES = ("PYTHONPATH", "COLNN_LIB", "COLNN_LIB_DOUBLE", "COLNN_HOST_BIN",
             "COLNN_SLURM_TEMPLATES")
PRECISIONS = ("single", "double")
#: what each precision's prefix in the wheel holds (harness/_native/<precision>/...)
PREFIX_FILES = ("lib/libcolnn.so", "lib/libcolnn.so.0", "lib/libcolnn_coupler.so",
                "lib/libcolnn_mpi.so", "lib/cmake/colnn/colnnConfig.cmake",
                "lib/cmake/colnn/colnnTargets.cmake", "lib/pkgconfig/colnn.pc",
                "lib/pkgconfig/colnn_coupler.pc", "include/colnn/colnn.h",
                "include/colnn/colnn_coupler.h", "include/colnn/colnn.mod",
                "include/colnn/colnn_coupler.mod", "include/colnn/colnn_ccpp.meta",
                "bin/colnn_l96", "bin/colnn_sw")


def _build_wheel(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
         "--disable-pip-version-check", "-w", str(out / "dist"),
         "-C", f"build-dir={out / 'build'}", str(REPO)],
        capture_output=True, text=True, timeout=1800, env=dict(os.environ, **env))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = _build_wheel(out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    wheels = sorted((out / "dist").glob("colnn_harness-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the tree with the wheel installed (no index, no dependencies: those
    come from this environment's site-packages, after the venv's own)."""
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=120)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_colnn_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--no-index", "--disable-pip-version-check",
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _harness(venv: Path, *args: str, cwd: Path, timeout: float = 900
             ) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(venv / "bin" / "harness"), *args], cwd=cwd, env=_env(venv),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"harness {' '.join(args)}:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return proc


# ---------------------------------------------------------------------------------------------
def test_wheel_carries_both_precisions_and_the_templates(wheel: Path) -> None:
    assert wheel.name.startswith("colnn_harness-0.1.0-py3-none-linux_"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for precision in PRECISIONS:
            missing = [f for f in PREFIX_FILES if f"harness/_native/{precision}/{f}" not in names]
            assert not missing, f"{precision}: not in the wheel: {missing}"
            # relocatable: pkg-config and CMake files name no build path
            for name in (f"harness/_native/{precision}/lib/pkgconfig/colnn.pc",
                         f"harness/_native/{precision}/lib/cmake/colnn/colnnTargets.cmake"):
                text = zf.read(name).decode()
                assert "/build/" not in text and str(REPO) not in text, name
        assert {"harness/_data/slurm/stage.sbatch.in", "harness/_data/slurm/farm.sbatch.in",
                "harness/_native/build-info.json", "harness/cli.py",
                "harness/study/executors.py"} <= names
        info = json.loads(zf.read("harness/_native/build-info.json"))
        assert info["version"] == "0.1.0" and info["build_type"] == "Release"
        assert "__pycache__" not in "".join(names)


def test_installed_harness_is_the_wheel(venv: Path, tmp_path: Path) -> None:
    """The package, the library of each precision, the host programs and the templates all come
    from the venv; nothing points back into the source tree."""
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import harness, harness.locate as l, harness.study.executors as e\n"
         "print(harness.__file__)\n"
         "for p in ('single', 'double'):\n"
         "    print(l.library(p).path); print(l.host_bin_dir(p).path)\n"
         "print(e.TEMPLATE_DIR)"],
        cwd=tmp_path, env=_env(venv), capture_output=True, text=True, check=True)
    paths = proc.stdout.split()
    assert len(paths) == 6
    for path in paths:
        assert Path(path).resolve().is_relative_to(venv.resolve()), paths
        assert Path(path).exists(), path
    out = _harness(venv, "config", cwd=tmp_path).stdout
    assert "installed from a wheel" in out and str(REPO) not in out, out
    assert out.count("(wheel)") == 7, out           # 2 x (library, hosts, prefix) + templates
    assert "MISSING" not in out, out


def test_demo_from_another_directory(venv: Path, tmp_path: Path) -> None:
    out = _harness(venv, "demo", "--workdir", "run", "--epochs", "2", cwd=tmp_path).stdout
    assert "demo passed" in out, out[-3000:]
    assert str(venv / "lib") in out                 # verify names the wheel's library


def test_tiny_study_from_another_directory(venv: Path, tmp_path: Path) -> None:
    """The tests' tiny L96 study (3 candidates, truth runs, coupled runs, baselines, the top-2
    ensemble, collect and report) on the local executor, with the wheel's hosts and library."""
    (tmp_path / "tiny.toml").write_text(toml_text(TINY))
    _harness(venv, "study", "tiny.toml", "-o", "study", "-q", cwd=tmp_path)
    study = tmp_path / "study"
    table = pd.read_csv(study / "results" / "candidates.csv")
    candidates = table[table["kind"] == "candidate"]
    assert len(candidates) == TINY["training"]["candidates"], table
    assert (candidates["convert_status"] == "ok").all(), table
    assert candidates["steps_to_failure"].notna().all(), table       # coupled runs happened
    runs = pd.read_csv(study / "results" / "runs.csv")
    assert len(runs) > 0 and runs["status"].notna().all()
    assert (study / "report" / "report.md").is_file()
    for verify in study.glob("candidates/*/convert.json"):
        library = json.loads(verify.read_text())["verify"]["library_path"]
        assert Path(library).is_relative_to(venv), library


# ---------------------------------------------------------------------------------------------
C_HOST = ('#include <stdio.h>\n#include "colnn.h"\n'
          'int main(int c, char **v) { char e[256]; colnn_model *m;\n'
          '  if (colnn_load(v[1], &m, e, sizeof e)) { puts(e); return 1; }\n'
          '  colnn_real x[8] = {1, 2, 3, 4, -1, -2, -3, -4}, y[6];\n'
          '  if (colnn_forward(m, x, 2, y, e, sizeof e)) { puts(e); return 2; }\n'
          '  printf("%zu", sizeof(colnn_real));\n'
          '  for (int i = 0; i < 6; i++) printf(" %.8e", (double)y[i]);\n'
          '  puts(""); colnn_free(m); return 0; }\n')


def _check_c_output(stdout: str, spec, real_bytes: int) -> None:
    size, *values = stdout.split()
    assert int(size) == real_bytes
    y = np.array([float(v) for v in values]).reshape(2, 3)
    x = np.array([[1, 2, 3, 4], [-1, -2, -3, -4]], dtype=np.float64)
    assert np.allclose(y, reference.forward(spec, x.T).T, rtol=1e-5, atol=1e-6)


def test_find_package_through_harness_config_cmakedir(venv: Path, tmp_path: Path) -> None:
    """A GCM's CMake build, Fortran and C: find_package(colnn) with colnn_DIR from `harness
    config --cmakedir`, linked and run against the wheel's library (no LD_LIBRARY_PATH)."""
    model, spec = _model(tmp_path)
    cmakedir = _harness(venv, "config", "--cmakedir", cwd=tmp_path).stdout.strip()
    assert Path(cmakedir, "colnnConfig.cmake").is_file() and Path(cmakedir).is_relative_to(venv)
    src = tmp_path / "gcm"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.20)\nproject(toy_gcm LANGUAGES Fortran C)\n"
        "find_package(colnn 0.1 REQUIRED)\n"
        "add_executable(toy_gcm main.f90)\ntarget_link_libraries(toy_gcm PRIVATE colnn::colnn)\n"
        "add_executable(toy_c host.c)\ntarget_link_libraries(toy_c PRIVATE colnn::colnn)\n")
    (src / "main.f90").write_text(_fortran_main(model))
    (src / "host.c").write_text(C_HOST)
    build = tmp_path / "gcm-build"
    env = {k: v for k, v in os.environ.items() if k not in ("CMAKE_PREFIX_PATH", "colnn_DIR")}
    for cmd in (["cmake", "-S", str(src), "-B", str(build), f"-Dcolnn_DIR={cmakedir}"],
                ["cmake", "--build", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = subprocess.run([str(build / "toy_gcm")], check=True, capture_output=True, text=True)
    _check_output(out.stdout, spec)
    out = subprocess.run([str(build / "toy_c"), str(model)], check=True, capture_output=True,
                         text=True)
    _check_c_output(out.stdout, spec, 4)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_pkg_config_through_harness_config_pkgconfigdir(venv: Path, tmp_path: Path,
                                                       precision: str) -> None:
    """A Make-style build: a Fortran host calling the coupler scheme (`pkg-config colnn_coupler`)
    and a C host (`pkg-config colnn`, which defines COLNN_DOUBLE for the double library), with
    PKG_CONFIG_PATH from `harness config --pkgconfigdir`."""
    model, spec = _model(tmp_path)
    pcdir = _harness(venv, "config", "--pkgconfigdir", "--precision", precision,
                     cwd=tmp_path).stdout.strip()
    assert Path(pcdir).is_relative_to(venv) and f"_native/{precision}/" in pcdir

    def flags(package: str) -> list[str]:
        return subprocess.run(["pkg-config", "--cflags", "--libs", package], check=True,
                              capture_output=True, text=True,
                              env=dict(os.environ, PKG_CONFIG_PATH=pcdir)).stdout.split()

    (tmp_path / "colnn.nml").write_text(f"&colnn_coupler\n  model_file = '{model}'\n/\n")
    (tmp_path / "toy_host.f90").write_text(COUPLER_HOST_F90)
    (tmp_path / "host.c").write_text(C_HOST)
    for cmd in (["gfortran", "-o", "toy_host", "toy_host.f90", *flags("colnn_coupler")],
                ["gcc", "-o", "host", "host.c", *flags("colnn")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run(["./toy_host"], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    _check_output(out.stdout, spec)
    out = subprocess.run(["./host", str(model)], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    _check_c_output(out.stdout, spec, 8 if precision == "double" else 4)


# ---------------------------------------------------------------------------------------------
def test_wheel_build_without_fortran_compiler_names_it(tmp_path: Path) -> None:
    proc = _build_wheel(tmp_path, FC="/nonexistent/gfortran")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "no Fortran compiler found (FC=/nonexistent/gfortran is not a" in out, out[-4000:]
    assert "apt install gfortran" in out
    assert "colnn: the wheel build failed" in out         # scikit-build-core's closing line
    assert not list(tmp_path.glob("dist/*.whl"))


def _configure(source: Path, build: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["cmake", "-S", str(source), "-B", str(build), *options],
                          capture_output=True, text=True, timeout=600)


def test_wheel_without_blas_falls_back_and_says_so(tmp_path: Path) -> None:
    """No BLAS anywhere (FindBLAS disabled, the OpenMP OpenBLAS directories ignored): the wheel's
    configure goes on with the matmul fallback, warns naming what is missing and how to get it,
    and records it for `harness config`; the project's own configure says the same."""
    ignore = ";".join(f"{d}/openblas-openmp" for d in
                      ("/usr/lib/" + (sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"),
                       "/usr/lib64", "/usr/lib"))
    no_blas = ["-DCMAKE_DISABLE_FIND_PACKAGE_BLAS=ON", f"-DCMAKE_IGNORE_PATH={ignore}"]
    proc = _configure(REPO / "cmake/wheel", tmp_path / "wheel", *no_blas)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = " ".join(proc.stderr.split())
    assert "colnn wheel: no BLAS library found" in text and "matmul intrinsic" in text, text
    assert "libopenblas-openmp-dev" in text and "COLNN_BLAS_LIBRARIES" in text
    info = json.loads((tmp_path / "wheel" / "build-info.json").read_text())
    assert info["blas"] == "none" and "no BLAS library found" in info["notes"][0]

    proc = _configure(REPO, tmp_path / "lib", *no_blas, "-DCOLNN_HOSTS=OFF", "-DCOLNN_MPI=OFF",
                      "-DCOLNN_BUILD_TESTS=OFF")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "blas=OFF" in proc.stdout
    text = " ".join(proc.stderr.split())
    assert "colnn: no BLAS library found" in text and "matmul intrinsic" in text, text


def test_blas_that_does_not_exist_is_named(tmp_path: Path) -> None:
    for source in (REPO / "cmake/wheel", REPO):
        proc = _configure(source, tmp_path / source.name, "-DCOLNN_BLAS_LIBRARIES=/no/libblas.so",
                          "-DCOLNN_HOSTS=OFF", "-DCOLNN_BUILD_TESTS=OFF")
        assert proc.returncode != 0
        assert "COLNN_BLAS_LIBRARIES names /no/libblas.so, which does not" in \
            " ".join(proc.stderr.split()), proc.stderr[-2000:]
