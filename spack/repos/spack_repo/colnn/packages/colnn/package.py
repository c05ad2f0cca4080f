# The colnn Fortran library (libcolnn, libcolnn_mpi), the coupler (libcolnn_coupler) and the toy
# hosts, built through the project's CMake. Used by the repository's spack.yaml, which develops
# it from the source tree (`spack -e . install`); scripts/spack_install_offline.sh builds it with
# Debian's packages as externals (spack/externals-debian.yaml).
import os

from spack_repo.builtin.build_systems.cmake import CMakePackage

from spack.package import *


class Colnn(CMakePackage):
    """Neural-network parameterizations for Fortran models: batched inference over column
    blocks, training, ensembles, a CCPP-style coupler with a C binding, and toy hosts
    (two-scale Lorenz-96, shallow water) that measure steps to failure."""

    homepage = "https://example.invalid/colnn"
    git = "https://example.invalid/colnn.git"

    license("Apache-2.0")
    maintainers("colnn-team")

    # developed from the source tree by the environment (spack.yaml `develop:`)
    version("main", branch="main")

    variant("precision", default="single", values=("single", "double"), multi=False,
            description="Working precision wp of the library")
    variant("openmp", default=True, description="OpenMP over column blocks and members")
    variant("mpi", default=True,
            description="libcolnn_mpi, the coupler's MPI hosts (mpi_f08) and their HDF5 output")
    variant("blas", default=True, description="BLAS ?gemm for dense layers (else matmul)")
    variant("shared", default=True,
            description="Shared libraries (the Python harness loads libcolnn with ctypes)")

    depends_on("c", type="build")
    depends_on("fortran", type="build")
    depends_on("cmake@3.20:", type="build")
    depends_on("pkgconfig", type="build")
    depends_on("blas", when="+blas")
    depends_on("mpi", when="+mpi")
    # the toy hosts write diagnostics with HDF5's Fortran high-level API and dimension scales,
    # from rank 0 (no MPI-IO: a serial HDF5 will do, a parallel one too); hid_t is 64-bit from 1.10
    depends_on("hdf5@1.10:+fortran+hl", when="+mpi")
    # their result.json names the configuration and model by SHA-256 (libcrypto)
    depends_on("openssl", when="+mpi")

    def cmake_args(self):
        spec = self.spec
        args = [
            self.define("COLNN_DOUBLE", spec.satisfies("precision=double")),
            self.define_from_variant("COLNN_OPENMP", "openmp"),
            self.define_from_variant("COLNN_USE_BLAS", "blas"),
            self.define_from_variant("COLNN_MPI", "mpi"),
            self.define_from_variant("COLNN_HOSTS", "mpi"),
            self.define_from_variant("BUILD_SHARED_LIBS", "shared"),
            self.define("COLNN_BUILD_TESTS", self.run_tests),
        ]
        if spec.satisfies("+blas"):
            args.append(self.define("COLNN_BLAS_LIBRARIES", spec["blas"].libs.joined(";")))
        return args

    @run_after("install")
    def check_hosts(self):
        """The project's CMake leaves the host programs out, with a message, when it finds no MPI
        with mpi_f08, no HDF5 Fortran HL or no libcrypto; with +mpi that is a failed build."""
        if not self.spec.satisfies("+mpi"):
            return
        missing = [name for name in ("colnn_l96", "colnn_sw")
                   if not os.path.isfile(join_path(self.prefix.bin, name))]
        if missing:
            raise InstallError(
                f"+mpi, but {' and '.join(missing)} not built: CMake found no MPI with mpi_f08, "
                "no HDF5 Fortran HL or no OpenSSL libcrypto (the cmake phase's output says which)")
