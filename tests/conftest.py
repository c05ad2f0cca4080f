"""Shared fixtures. The Fortran library must already be built (scripts/setup.sh does it): a
missing library fails the tests instead of skipping them."""

from __future__ import annotations

import os
import subprocess
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


@pytest.fixture(scope="session")
def local_slurm():
    """A real single-node Slurm (munged, slurmctld, slurmd on localhost, as root) for the
    session; SLURM_CONF is set for the client commands and the cluster is stopped at the end."""
    import shutil
    import subprocess
    import tempfile
    assert os.geteuid() == 0, "the Slurm tests start munged/slurmctld/slurmd and need root"
    # munged wants every directory above its socket searchable by all (pytest's are 0700)
    d = Path(tempfile.mkdtemp(prefix="colnn-slurm-"))
    d.chmod(0o755)
    script = REPO_ROOT / "scripts" / "local_slurm.sh"
    proc = subprocess.run(["bash", str(script), "start", str(d), "4"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(d / "slurm.conf")
    try:
        yield d
    finally:
        subprocess.run(["bash", str(script), "stop", str(d)], capture_output=True, timeout=120)
        shutil.rmtree(d, ignore_errors=True)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture
def small_disk(tmp_path: Path):
    """mount(size) -> a fresh tmpfs of that size (a real ENOSPC; needs root, as the Slurm
    tests do); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"disk-{size}"
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    """The single-precision build installed into a fresh prefix (once a session), as a host
    model, a GCM build or a host of one's own finds it."""
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run(["cmake", "--build", str(repo_root / "build/single")], check=True,
                   capture_output=True)
    subprocess.run(["cmake", "--install", str(repo_root / "build/single"), "--prefix",
                    str(prefix)], check=True, capture_output=True)
    return prefix
