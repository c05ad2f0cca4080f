"""MPI-aware column decomposition with a real mpirun (Debian's Open MPI): the batched forward of
a model and of a noisy ensemble over columns split across 1 and 2 ranks, gathered on rank 0,
must be bitwise identical."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.modelfile import write_model

from test_ensemble import make_ensemble, member


@pytest.fixture(scope="module")
def test_mpi_exe(repo_root: Path) -> Path:
    exe = repo_root / "build/single/fortran/tests/test_mpi"
    assert exe.exists(), f"{exe} missing: the single build found no MPI (run scripts/setup.sh)"
    assert shutil.which("mpirun"), "mpirun not on PATH (openmpi-bin)"
    return exe


def run_ranks(exe: Path, n: int, model: Path, ens: Path, out: Path) -> bytes:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run(["mpirun", "-np", str(n), "--oversubscribe", "--bind-to", "none",
                           str(exe), str(model), str(ens), str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out.read_bytes()


def test_one_and_two_ranks_give_identical_results(tmp_path: Path, test_mpi_exe: Path) -> None:
    model = tmp_path / "model.colnn"
    write_model(member(np.random.default_rng(4)), model)
    ens = make_ensemble(tmp_path / "ens", 3, seed=11)
    one = run_ranks(test_mpi_exe, 1, model, ens, tmp_path / "np1.bin")
    two = run_ranks(test_mpi_exe, 2, model, ens, tmp_path / "np2.bin")
    assert len(one) == 4 * (4 + 4) * 1001
    assert one == two
    values = np.frombuffer(one, dtype=np.float32)
    assert np.all(np.isfinite(values)) and np.abs(values).max() > 0
