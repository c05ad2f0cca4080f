"""Shared fixtures. The Fortran library must already be built (scripts/setup.sh does it): a
missing library fails the tests instead of skipping them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def lib_single() -> Path:
    from harness.native import library_path
    path = library_path("single")
    assert path.exists(), f"{path} missing: run scripts/setup.sh"
    return path


@pytest.fixture(scope="session")
def lib_double() -> Path:
    from harness.native import library_path
    path = library_path("double")
    assert path.exists(), f"{path} missing: run scripts/setup.sh"
    return path
