# The colnn harness (the `harness` CLI: conversion, verification, studies, reports), the Python
# side of the project. It drives the Fortran library through its C binding (ctypes) and runs the
# toy hosts, so it depends on the colnn package and points the harness at it at run time.
from spack_repo.builtin.build_systems.python import PythonPackage

from spack.package import *


class PyColnnHarness(PythonPackage):
    """Keras <-> Fortran model conversion, verification against Keras, random-search studies of
    coupled neural-network parameterizations (local, Slurm, mpi4py executors), statistics and
    reports, for the colnn library."""

    homepage = "https://example.invalid/colnn"
    git = "https://example.invalid/colnn.git"

    license("Apache-2.0")
    maintainers("colnn-team")

    # developed from the source tree by the environment (spack.yaml `develop:`)
    version("main", branch="main")

    variant("keras", default=True,
            description="TensorFlow/Keras: training candidates and verifying against Keras")

    depends_on("python@3.11:", type=("build", "run"))  # tomllib
    # the project's build backend (tools/colnn_build_backend.py) is scikit-build-core; here it
    # makes a pure-Python wheel (config_settings below): the library comes from the colnn package
    depends_on("py-scikit-build-core@0.11:", type="build")

    with default_args(type=("build", "run")):
        depends_on("py-numpy@1.24:")
        depends_on("py-h5py@3.8:")
        depends_on("py-tqdm@4.60:")
        depends_on("py-xarray@2023.1:")
        # xarray reads the hosts' diagnostics.h5 with engine="h5netcdf", through h5py (above;
        # no `+h5py` here: that variant is only in recipes of py-h5netcdf@1.8:, and Spack 1.1's
        # package repository has none of them)
        depends_on("py-h5netcdf@1.1:")
        depends_on("py-pandas@2:")
        depends_on("py-pyarrow@14:")
        depends_on("py-scipy@1.10:")
        depends_on("py-matplotlib@3.7:")
        depends_on("py-optuna@3.5:")
        depends_on("py-mpi4py@3.1:")
        depends_on("py-f90nml@1.4:")  # the hosts' namelist files
        depends_on("py-lifelines@0.27:")  # the report's survival statistics
        depends_on("py-tensorflow@2.16:", when="+keras")
        depends_on("py-keras@3:", when="+keras")

    # the library is loaded at run time (ctypes) and the hosts are run as programs
    depends_on("colnn+shared", type="run")

    def config_settings(self, spec, prefix) -> dict:
        # no CMake build inside the Python package: the wheel's own copy of libcolnn and the
        # hosts would duplicate the colnn package's (which the run environment points at)
        return {"wheel.cmake": "false"}

    def setup_run_environment(self, env: EnvironmentModifications) -> None:
        colnn = self.spec["colnn"]
        # lib or lib64, as GNUInstallDirs chose on this system
        library = find_libraries("libcolnn", root=colnn.prefix, recursive=True, shared=True)
        precision = colnn.variants["precision"].value
        env.set("COLNN_LIB_DOUBLE" if precision == "double" else "COLNN_LIB", library[0])
        env.set("COLNN_HOST_BIN", colnn.prefix.bin)
        env.set("COLNN_SLURM_TEMPLATES", join_path(self.prefix.share, "colnn", "slurm"))

    @run_after("install")
    def install_slurm_templates(self) -> None:
        # the Slurm executor fills in these sbatch templates; they are not Python package data
        install_tree("slurm", join_path(self.prefix.share, "colnn", "slurm"))
        install_tree(join_path("examples", "study"),
                     join_path(self.prefix.share, "colnn", "examples", "study"))
