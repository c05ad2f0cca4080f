"""`spack install colnn` for real and offline (scripts/spack_install_offline.sh): every dependency
an external from Debian's packages (spack/externals-debian.yaml), the package built from this
tree, then a Fortran and a C program linked against the installed prefix (pkg-config and
find_package) and run, the installed toy host run on 1 and 2 ranks, and py-colnn-harness
installed with this venv's Python packages as externals and its demo run on the Spack-built
library. Spack is not on CI's PATH: there the install test skips with its reason (set
COLNN_SPACK and COLNN_SPACK_PACKAGES to checkouts to run it); the externals file and the
script's refusal of a missing external are checked everywhere."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts/spack_install_offline.sh"
EXTERNALS = REPO / "spack/externals-debian.yaml"


def _spack_checkouts() -> tuple[Path, Path] | str:
    """(a Spack checkout, a spack-packages checkout), or why there is none."""
    if os.environ.get("COLNN_SPACK"):
        root = Path(os.environ["COLNN_SPACK"]).resolve()
        if root.is_file():                      # COLNN_SPACK=.../bin/spack
            root = root.parents[1]
    elif shutil.which("spack"):
        root = Path(shutil.which("spack")).resolve().parents[1]
    else:
        return ("no Spack: spack is not on PATH and COLNN_SPACK is not set (a checkout of "
                "github.com/spack/spack, 1.x)")
    if not (root / "bin/spack").is_file():
        return f"{root}: not a Spack checkout (no bin/spack)"
    if os.environ.get("COLNN_SPACK_PACKAGES"):
        packages = Path(os.environ["COLNN_SPACK_PACKAGES"]).resolve()
    else:
        # where Spack 1.x clones its builtin repository for a user
        clones = sorted(Path.home().glob(".spack/package_repos/*/repos/spack_repo/builtin"))
        if not clones:
            return ("no spack-packages checkout: set COLNN_SPACK_PACKAGES (github.com/spack/"
                    "spack-packages at the release made for this Spack)")
        packages = clones[0].parents[2]
    if not (packages / "repos/spack_repo/builtin").is_dir():
        return f"{packages}: not a spack-packages checkout (no repos/spack_repo/builtin)"
    return root, packages


def test_the_externals_file_covers_what_colnn_needs() -> None:
    packages = yaml.safe_load(EXTERNALS.read_text())["packages"]
    for name in ("gcc", "cmake", "gmake", "pkgconf", "openmpi", "openblas", "hdf5", "openssl"):
        entry = packages[name]
        assert entry["buildable"] is False, name
        assert len(entry["externals"]) == 1 and entry["externals"][0]["prefix"], name
    # the recipe's depends_on("hdf5@1.10:+fortran+hl") and the OpenMP OpenBLAS setup.sh links
    assert "+fortran+hl" in packages["hdf5"]["externals"][0]["spec"]
    assert "threads=openmp" in packages["openblas"]["externals"][0]["spec"]
    compilers = packages["gcc"]["externals"][0]["extra_attributes"]["compilers"]
    assert set(compilers) == {"c", "fortran"}
    for virtual, provider in (("c", "gcc"), ("fortran", "gcc"), ("mpi", "openmpi"),
                              ("blas", "openblas"), ("pkgconfig", "pkgconf")):
        assert packages[virtual]["require"] == [provider], virtual


def test_the_externals_are_on_this_machine() -> None:
    """What scripts/setup.sh installs is what the externals file names."""
    proc = subprocess.run(["bash", str(SCRIPT), "--check-externals"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "every external of" in proc.stderr


def test_a_missing_external_is_named_before_spack_runs(tmp_path: Path) -> None:
    spack = tmp_path / "spack"
    (spack / "bin").mkdir(parents=True)
    ran = tmp_path / "spack-ran"
    (spack / "bin/spack").write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    (spack / "bin/spack").chmod(0o755)
    packages = tmp_path / "spack-packages"
    (packages / "repos/spack_repo/builtin").mkdir(parents=True)
    externals = tmp_path / "externals.yaml"
    externals.write_text(EXTERNALS.read_text()
                         .replace("gfortran-12\n", "gfortran-99\n")
                         .replace("prefix: /usr/lib/x86_64-linux-gnu/openblas-openmp",
                                  f"prefix: {tmp_path}/no-openblas"))
    work = tmp_path / "work"
    proc = subprocess.run(["bash", str(SCRIPT), "--externals", str(externals), str(spack),
                           str(packages), str(work)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "gcc: compiler /usr/bin/gfortran-99 does not exist" in proc.stderr
    assert f"openblas: prefix {tmp_path}/no-openblas does not exist" in proc.stderr
    assert "Spack was not run" in proc.stderr
    assert not ran.exists() and not work.exists()


def test_spack_install_colnn_offline_and_link_against_it(tmp_path: Path) -> None:
    found = _spack_checkouts()
    if isinstance(found, str):
        pytest.skip(found)
    spack, packages = found
    args = ["bash", str(SCRIPT)]
    harness = sys.prefix != sys.base_prefix and importlib.util.find_spec("tensorflow")
    if harness:
        # this venv (scripts/setup.sh's) gives the harness its Python and Python packages
        args += ["--harness-venv", sys.prefix]
    work = tmp_path / "work"
    proc = subprocess.run([*args, str(spack), str(packages), str(work)], capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    oks = [line for line in proc.stderr.splitlines() if "  ok: " in line]
    assert len(oks) == (10 if harness else 6), proc.stderr
    prefixes = list((work / "opt").glob("*/colnn-main-*"))
    assert len(prefixes) == 1, prefixes
    for path in ("bin/colnn_l96", "bin/colnn_sw", "lib/libcolnn.so", "lib/libcolnn_mpi.so",
                 "lib/cmake/colnn/colnnConfig.cmake", "lib/pkgconfig/colnn_coupler.pc",
                 "include/colnn/colnn.mod", "include/colnn/colnn_coupler.h"):
        assert (prefixes[0] / path).exists(), path
