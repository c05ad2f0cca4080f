"""A GCM-style downstream build: install the library, then link it from a Fortran program with
CMake's find_package(colnn), from a Fortran program built with pkg-config only (what a GCM's
Makefile does), a host calling the coupler scheme linked with pkg-config only, and from C with
pkg-config, and run them all."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model
from harness import reference
from link_programs import COUPLER_HOST_F90


def _model(tmp: Path) -> tuple[Path, ModelSpec]:
    rng = np.random.default_rng(7)
    spec = ModelSpec("float32", 4, [
        LayerSpec("dense", "d", {"units": 3, "use_bias": True,
                                 "activation": Activation.make("tanh")},
                  {"kernel": rng.standard_normal((4, 3)).astype(np.float32),
                   "bias": rng.standard_normal(3).astype(np.float32)})])
    path = tmp / "m.colnn"
    write_model(spec, path)
    return path, spec


def _fortran_main(model: Path) -> str:
    return ("program toy_gcm\n  use colnn\n  implicit none\n  type(network_t) :: net\n"
            "  integer :: stat\n  character(len=ERRMSG_LEN) :: msg\n  real(wp) :: x(4, 2), y(3, 2)\n"
            "  call net%load('" + str(model) + "', stat, msg)\n"
            "  if (stat /= 0) then\n    print '(a)', trim(msg)\n    error stop 1\n  end if\n"
            "  x(:, 1) = [1.0, 2.0, 3.0, 4.0]\n  x(:, 2) = -x(:, 1)\n"
            "  call net%forward(x, y, stat, msg)\n  print '(3es16.8)', y\nend program toy_gcm\n")


def _pkg_config_flags(prefix: Path, package: str = "colnn") -> list[str]:
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib/pkgconfig"))
    return subprocess.run(["pkg-config", "--cflags", "--libs", package], check=True,
                          capture_output=True, text=True, env=env).stdout.split()


def _check_output(stdout: str, spec: ModelSpec) -> None:
    y = np.array([float(v) for v in stdout.split()]).reshape(2, 3)
    x = np.array([[1, 2, 3, 4], [-1, -2, -3, -4]], dtype=np.float64)
    assert np.allclose(y, reference.forward(spec, x.T).T, rtol=1e-5, atol=1e-6)


def test_pkg_config_from_fortran(installed: Path, tmp_path: Path) -> None:
    """No CMake: gfortran with the flags pkg-config gives, as a GCM's Makefile would."""
    model, spec = _model(tmp_path)
    flags = _pkg_config_flags(installed)
    src = tmp_path / "toy_gcm.f90"
    src.write_text(_fortran_main(model))
    exe = tmp_path / "toy_gcm"
    proc = subprocess.run(["gfortran", "-o", str(exe), str(src), *flags,
                           f"-Wl,-rpath,{installed / 'lib'}"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True)
    _check_output(out.stdout, spec)


def test_pkg_config_coupler_scheme_from_fortran(installed: Path, tmp_path: Path) -> None:
    """A host that calls the coupler's init/run/finalize, linked with `pkg-config colnn_coupler`
    only (which brings libcolnn with it), on one chunk of columns; errflg is checked."""
    model, spec = _model(tmp_path)
    (tmp_path / "colnn.nml").write_text(f"&colnn_coupler\n  model_file = '{model}'\n/\n")
    flags = _pkg_config_flags(installed, "colnn_coupler")
    assert flags.index("-lcolnn_coupler") < flags.index("-lcolnn"), flags
    src = tmp_path / "toy_host.f90"
    src.write_text(COUPLER_HOST_F90)
    exe = tmp_path / "toy_host"
    proc = subprocess.run(["gfortran", "-o", str(exe), str(src), *flags,
                           f"-Wl,-rpath,{installed / 'lib'}"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, cwd=tmp_path)
    _check_output(out.stdout, spec)


def test_find_package_from_fortran(installed: Path, tmp_path: Path) -> None:
    model, spec = _model(tmp_path)
    src = tmp_path / "gcm"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.20)\nproject(toy_gcm LANGUAGES Fortran)\n"
        "find_package(colnn 0.1 REQUIRED)\nadd_executable(toy_gcm main.f90)\n"
        "target_link_libraries(toy_gcm PRIVATE colnn::colnn)\n")
    (src / "main.f90").write_text(_fortran_main(model))
    build = tmp_path / "gcm-build"
    env = dict(os.environ, CMAKE_PREFIX_PATH=str(installed))
    subprocess.run(["cmake", "-S", str(src), "-B", str(build)], check=True, capture_output=True,
                   env=env)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    out = subprocess.run([str(build / "toy_gcm")], check=True, capture_output=True, text=True)
    _check_output(out.stdout, spec)


def test_pkg_config_from_c(installed: Path, tmp_path: Path) -> None:
    model, spec = _model(tmp_path)
    flags = _pkg_config_flags(installed)
    assert any(f.startswith("-I") and f.endswith("include/colnn") for f in flags), flags
    src = tmp_path / "host.c"
    src.write_text('#include <stdio.h>\n#include "colnn.h"\n'
                   'int main(int c, char **v) { char e[256]; colnn_model *m;\n'
                   '  if (colnn_load(v[1], &m, e, sizeof e)) { puts(e); return 1; }\n'
                   '  colnn_real x[4] = {1, 2, 3, 4}, y[3];\n'
                   '  if (colnn_forward(m, x, 1, y, e, sizeof e)) { puts(e); return 2; }\n'
                   '  printf("%.8e %.8e %.8e\\n", y[0], y[1], y[2]); colnn_free(m); return 0; }\n')
    exe = tmp_path / "host"
    libdir = installed / "lib"
    subprocess.run(["gcc", "-o", str(exe), str(src), *flags, f"-Wl,-rpath,{libdir}"], check=True)
    out = subprocess.run([str(exe), str(model)], check=True, capture_output=True, text=True)
    y = np.array([float(v) for v in out.stdout.split()])
    ref = reference.forward(spec, np.array([[1.0, 2, 3, 4]]).T)[:, 0]
    assert np.allclose(y, ref, rtol=1e-5, atol=1e-6)
