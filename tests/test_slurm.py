"""A real Slurm on localhost (scripts/local_slurm.sh): job arrays with a throttle, afterok
dependencies, and an array of coupled L96 host runs submitted with sbatch. Nothing is faked."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness.hosts import host_executable, host_run_from_dict, namelist_text, read_result


def sbatch(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_states(job: str) -> list[str]:
    proc = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True,
                          text=True, timeout=60)
    return [f.split("=", 1)[1] for line in proc.stdout.splitlines() for f in line.split()
            if f.startswith("JobState=")]


def wait(job: str, timeout: float = 120) -> list[str]:
    end = time.time() + timeout
    while time.time() < end:
        states = job_states(job)
        if states and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for s in states):
            return states
        if any(s == "PENDING" for s in states):
            reasons = subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True,
                                     text=True).stdout
            if "DependencyNeverSatisfied" in reasons:
                return ["NEVER"]
        time.sleep(0.3)
    raise AssertionError(f"job {job} did not finish in {timeout} s: {job_states(job)}")


def test_array_with_throttle_and_dependency(local_slurm: Path, tmp_path: Path) -> None:
    array = sbatch("--array=0-5%2", "-o", "task_%a.out",
                   "--wrap", "echo $SLURM_ARRAY_TASK_ID; sleep 0.5", cwd=tmp_path)
    after = sbatch(f"--dependency=afterok:{array}", "-o", "after.out",
                   "--wrap", "cat task_*.out | sort -n | tr '\\n' ' '", cwd=tmp_path)
    assert wait(array) == ["COMPLETED"] * 6
    assert wait(after) == ["COMPLETED"]
    assert (tmp_path / "after.out").read_text().split() == [str(i) for i in range(6)]


def test_afterok_on_a_failed_job_never_runs(local_slurm: Path, tmp_path: Path) -> None:
    bad = sbatch("-o", "bad.out", "--wrap", "exit 3", cwd=tmp_path)
    after = sbatch(f"--dependency=afterok:{bad}", "--wrap", "true", cwd=tmp_path)
    assert wait(bad) == ["FAILED"]
    assert wait(after) == ["NEVER"]
    subprocess.run(["scancel", after], timeout=60)


def test_array_of_coupled_host_runs(local_slurm: Path, tmp_path: Path) -> None:
    """Three L96 coarse runs as one job array: each task runs the host on its own namelist."""
    for i in range(3):
        run = host_run_from_dict({"host": "l96", "run": {"mode": "coarse", "closure": "none",
                                                         "n_steps": 200, "seed": i}},
                                 tmp_path, output_dir=tmp_path / f"run{i}")
        run.output_dir.mkdir()
        (run.output_dir / "run.nml").write_text(namelist_text(run))
    exe = host_executable("l96")
    job = sbatch("--array=0-2", "-o", "run%a/slurm.out", "--wrap",
                 f"cd run$SLURM_ARRAY_TASK_ID && '{exe}' run.nml", cwd=tmp_path)
    assert wait(job) == ["COMPLETED"] * 3
    results = [read_result(tmp_path / f"run{i}") for i in range(3)]
    assert [r["status"] for r in results] == ["completed"] * 3
    assert [r["seed"] for r in results] == [0, 1, 2]
    assert len({r["config_hash"] for r in results}) == 3


def _script(*args: str, namespace_without_cgroups: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """scripts/local_slurm.sh, optionally in a mount namespace whose /sys/fs/cgroup is an empty
    tmpfs (as in containers and chroots without cgroups); the daemons it starts stay there."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "local_slurm.sh"
    cmd = ["bash", str(script), *args]
    if namespace_without_cgroups:
        # the root may not be a mount point (a chroot): only /sys is made private, so the
        # tmpfs stays in this namespace
        cmd = ["unshare", "-m", "--propagation", "unchanged", "bash", "-c",
               'mount --make-rprivate /sys && mount -t tmpfs none /sys/fs/cgroup && exec "$@"',
               "nocgroup", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _running(directory: Path) -> list[str]:
    alive = []
    for pidfile in directory.glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), 0)
            alive.append(pidfile.stem)
        except (ProcessLookupError, ValueError):
            pass
    return alive


@pytest.fixture
def cluster_dir():
    # munged wants every directory above its socket searchable by all (pytest's are 0700)
    d = Path(tempfile.mkdtemp(prefix="colnn-slurm-"))
    d.chmod(0o755)
    yield d
    _script("stop", str(d))
    shutil.rmtree(d, ignore_errors=True)


def test_slurm_without_cgroups_runs_jobs(cluster_dir: Path) -> None:
    """No cgroup file system: slurmd cannot start with 'autodetect' and runs without cgroups;
    a real batch job runs. (A second cluster beside the suite's: its own ports.)"""
    proc = _script("start", str(cluster_dir), namespace_without_cgroups=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runs without them" in proc.stderr
    assert "CgroupPlugin=cgroup/v1" in (cluster_dir / "cgroup.conf").read_text()
    env = {**os.environ, "SLURM_CONF": str(cluster_dir / "slurm.conf")}
    out = cluster_dir / "job.out"
    sub = subprocess.run(["sbatch", "--parsable", "-o", str(out), "--wrap", "echo ran"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert sub.returncode == 0, sub.stderr
    for _ in range(150):
        if out.exists() and out.read_text().strip() == "ran":
            break
        time.sleep(0.2)
    assert out.read_text().strip() == "ran"
    assert _script("stop", str(cluster_dir)).returncode == 0
    assert _running(cluster_dir) == []


def test_a_daemon_that_cannot_start_is_named_and_nothing_is_left(cluster_dir: Path) -> None:
    """slurmd forced to use cgroups where there are none: the script says which daemon, shows
    its log's last lines, and stops munged and slurmctld again."""
    proc = _script("start", str(cluster_dir), namespace_without_cgroups=True,
                   env={"LOCAL_SLURM_CGROUP": "autodetect"})
    assert proc.returncode == 1
    assert "local Slurm: slurmd did not start" in proc.stderr, proc.stderr
    assert "Unable to initialize cgroup plugin" in proc.stderr
    assert "stopped what this start had started (munged slurmctld)" in proc.stderr
    assert _running(cluster_dir) == []
