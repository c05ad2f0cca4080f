"""The Fortran unit tests (fortran/tests), run through ctest in both precisions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.mark.parametrize("precision", ["single", "double"])
def test_fortran_unit_tests(repo_root: Path, precision: str) -> None:
    build = repo_root / "build" / precision
    assert (build / "CTestTestfile.cmake").exists(), f"{build} is not configured: run scripts/setup.sh"
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    proc = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "100% tests passed" in proc.stdout
