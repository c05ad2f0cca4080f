"""A multi-node Slurm cluster on one machine (scripts/local_slurm_cluster.sh): slurmctld in the
root network namespace and three slurmd nodes, each in a network namespace of its own (own
address on a private /24 behind a bridge, own loopback and hostname), sharing the file system.
Nothing is faked: a study whose arrays spread over the nodes; a host run with its two ranks on
two nodes through `srun --mpi=pmix` (Open MPI's TCP transport over the nodes' network), bitwise
equal to one rank; a node killed mid-sweep (its slurmd and its jobs' processes) and the study
resumed to the undisturbed table; node counts the machine cannot hold refused before anything
starts, and a start that fails half-way leaving nothing behind.

Needs root and network namespaces with veth pairs and bridges; skipped (with the reason)
without them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from harness.hosts import host_executable, host_run_from_dict, namelist_text, read_result, run_host
from harness.l96 import read_truth
from harness.status import ErrorReason
from harness.study.config import STAGES
from harness.study.layout import StudyDir, task_ics
from harness.study.runner import run_stages
from test_slurm_resume import assert_counts_add_up, records, squeue, wait_for
from test_study import TINY, harness_cli, make_study, merged, table, toml_text

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "local_slurm_cluster.sh"
NODES = ("node1", "node2", "node3")
ARRAY_STAGES = ("data", "train", "convert", "couple")
#: the tiny study on the cluster; --no-requeue (a site directive, executor.slurm.extra): a task
#: whose node dies ends NODE_FAIL and waits for --resume, instead of being requeued by Slurm
MULTI = merged(TINY, executor__kind="slurm", executor__slurm__extra=["--no-requeue"])
WALL: dict[str, float] = {}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root: it makes network namespaces, a bridge and starts Slurm daemons"
    for cmd in ("slurmctld", "slurmd", "munged", "srun", "ip", "nsenter", "unshare", "ss"):
        if shutil.which(cmd) is None:
            return f"{cmd} not found (apt: slurm-wlm munge iproute2 util-linux)"
    probe = subprocess.run(["unshare", "--net", "sh", "-c",
                            "ip link add t0 type veth peer name t1 && ip link add b0 type bridge"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no network namespaces with veth pairs and bridges here: {probe.stderr.strip()}"
    # named namespaces (ip netns add) also need mount propagation of /: not in a chroot
    name = f"colnn-probe-{os.getpid()}"
    named = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if named.returncode == 0:
        named = subprocess.run(["ip", "netns", "exec", name, "true"], capture_output=True,
                               text=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    if named.returncode != 0:
        return f"no named network namespaces to enter here (ip netns: {named.stderr.strip()})"
    return None


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def script(*args: str, env: dict[str, str] | None = None,
           timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert not check or proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc


def cluster_id(directory: Path) -> str:
    import hashlib
    return hashlib.md5(str(directory.resolve()).encode()).hexdigest()[:6]


def processes_of(directory: Path) -> list[str]:
    """The processes started for the cluster of ``directory`` (the script exports its
    SLURM_CONF to everything it starts: daemons, and the jobs through them)."""
    needle = f"SLURM_CONF={directory / 'slurm.conf'}".encode()
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                out.append(f"{proc.name} {(proc / 'cmdline').read_bytes()[:80]!r}")
        except OSError:
            pass
    return out


def leftovers(directory: Path) -> list[str]:
    """What a cluster of ``directory`` still has on this machine: namespaces, links, processes."""
    cid = cluster_id(directory)
    out = [ln.split()[0] for ln in run("ip", "netns", "list").stdout.splitlines()
           if ln.startswith(f"colnn-{cid}-")]
    out += [ln.split(":")[1].strip().split("@")[0] for ln in
            run("ip", "-o", "link", "show").stdout.splitlines()
            if re.search(rf": (cbr|cv|cn){cid}", ln)]
    return out + processes_of(directory)


@dataclass
class Cluster:
    dir: Path
    subnet: str               #: e.g. 10.213.0 (the nodes are .2, .3, .4; the bridge .1)
    started_s: float


def node_state(node: str) -> str:
    return run("sinfo", "-h", "-n", node, "-o", "%T").stdout.strip()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # munged wants every directory above its socket searchable by all (pytest's are 0700)
    d = Path(tempfile.mkdtemp(prefix="colnn-nodes-"))
    d.chmod(0o755)
    t0 = time.time()
    proc = script("start", str(d), str(len(NODES)), "1")
    old = os.environ.get("SLURM_CONF")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip() == f"SLURM_CONF={d / 'slurm.conf'}"
        env = dict(line.split("=", 1) for line in (d / "cluster.env").read_text().split())
        os.environ["SLURM_CONF"] = str(d / "slurm.conf")
        yield Cluster(d, env["SUBNET"].rsplit(".", 1)[0], time.time() - t0)
    finally:
        stopped = script("stop", str(d))
        left = leftovers(d)
        shutil.rmtree(d, ignore_errors=True)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
    assert stopped.returncode == 0 and left == [], (stopped.stderr, left)


def element_nodes(job_ids: list[str]) -> dict[str, str]:
    """{raw job id of an array element: the node it ran on} (squeue keeps ended elements for
    MinJobAge = 300 s)."""
    if not job_ids:
        return {}
    out = run("squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids),
              "-o", "%A|%N").stdout
    return dict(line.split("|", 1) for line in out.split() if "|" in line)


def markers(sd: StudyDir, stage: str) -> list[dict[str, Any]]:
    return [json.loads(sd.marker(stage, i).read_text()) for i in range(sd.n_tasks(stage))]


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spread(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> StudyDir:
    """The tiny study through sbatch arrays on the three nodes, undisturbed."""
    sd = make_study(tmp_path_factory.mktemp("spread") / "study", MULTI)
    t0 = time.time()
    run_stages(sd, STAGES, progress=False)
    WALL["spread"] = time.time() - t0
    return sd


def test_the_nodes_have_their_own_namespaces_addresses_and_hostnames(cluster: Cluster) -> None:
    out = run("sinfo", "-h", "-N", "-o", "%N %T %c").stdout.split("\n")
    assert sorted(ln.strip() for ln in out if ln.strip()) == [f"{n} idle 1" for n in NODES]
    conf = (cluster.dir / "slurm.conf").read_text()
    for k, node in enumerate(NODES, start=2):
        assert f"NodeName={node} NodeAddr={cluster.subnet}.{k} " in conf
        said = script("exec", str(cluster.dir), node, "sh", "-c",
                      "hostname; ip -4 -o addr show | awk '{print $2, $4}'; ip route")
        assert said.returncode == 0, said.stderr
        lines = said.stdout.splitlines()
        assert lines[0] == node
        assert sorted(lines[1:3]) == [f"eth0 {cluster.subnet}.{k}/24", "lo 127.0.0.1/8"]
        # no way out of the machine: the only route is the nodes' subnet
        assert lines[3:] == [f"{cluster.subnet}.0/24 dev eth0 proto kernel scope link "
                             f"src {cluster.subnet}.{k} "]
    status = script("status", str(cluster.dir))
    assert status.returncode == 0 and all(f"{n} {cluster.subnet}." in status.stdout
                                          for n in NODES), status.stdout


def test_unknown_node_is_an_error(cluster: Cluster) -> None:
    proc = script("kill-node", str(cluster.dir), "node9")
    assert proc.returncode == 1 and "no node 'node9'" in proc.stderr, proc.stderr
    assert all(node_state(n) == "idle" for n in NODES)


def test_a_study_spreads_its_arrays_over_the_nodes(spread: StudyDir) -> None:
    """Every task ran once, and each node ran tasks: the task markers' hosts (each node has
    its own hostname) agree with the nodes Slurm placed the array elements on."""
    sd = spread
    assert all(sd.counts(s)["ok"] == sd.n_tasks(s) for s in STAGES)
    jobs = records(sd.root)
    assert [j["stage"] for j in jobs] == list(STAGES)
    placed = element_nodes([q["raw"] for q in squeue([j["job_id"] for j in jobs])])
    ran: Counter[str] = Counter()
    for stage in STAGES:
        for m in markers(sd, stage):
            assert m["attempt"] == 1 and m["host"] == placed[m["slurm_job"]], m
            ran[m["host"]] += stage in ARRAY_STAGES
        logs = list((sd.root / "slurm" / "logs").glob(f"{stage}-*.out"))
        assert len(logs) == sd.n_tasks(stage), logs
    assert set(ran) == set(NODES) and all(ran[n] > 0 for n in NODES), ran
    print(f"\nspread: {sum(ran.values())} array tasks on {dict(sorted(ran.items()))} in "
          f"{WALL['spread']:.0f} s")


# ---------------------------------------------------------------------------------------------
def test_host_ranks_on_two_nodes_equal_one_rank(cluster: Cluster, spread: StudyDir,
                                                tmp_path: Path) -> None:
    """The L96 host with its two ranks on node1 and node2 (`srun --mpi=pmix`, one rank per
    node, Open MPI's TCP transport on the nodes' subnet only) and with one rank: the truth run
    (both scales, halo exchange every step) and a run coupled to the study's first network
    are bitwise equal."""
    model = spread.candidate_dir("c0000") / "model.colnn"
    cases = {
        "truth": {"model": {"k": 16}, "run": {"mode": "truth", "dt": 0.001, "n_steps": 2000,
                                              "sample_interval": 100, "seed": 3}},
        "coupled": {"model": {"k": 16},
                    "run": {"mode": "coarse", "closure": "nn", "inputs": "stencil",
                            "dt": 0.005, "n_steps": 400, "output_interval": 10, "seed": 5},
                    "coupler": {"model_file": str(model)}},
    }
    env = {**os.environ, "OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "self,tcp",
           "OMPI_MCA_btl_tcp_if_include": f"{cluster.subnet}.0/24",
           "OMPI_MCA_btl_base_verbose": "100", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    exe = host_executable("l96")
    for name, spec in cases.items():
        one = run_host(host_run_from_dict(json.loads(json.dumps({"host": "l96", **spec})),
                                          tmp_path, output_dir=tmp_path / f"{name}-np1"),
                       timeout=300)
        two = host_run_from_dict(json.loads(json.dumps({"host": "l96", "ranks": 2, **spec})),
                                 tmp_path, output_dir=tmp_path / f"{name}-np2")
        two.output_dir.mkdir()
        (two.output_dir / "run.nml").write_text(namelist_text(two))
        proc = subprocess.run(
            ["srun", "--mpi=pmix", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
             "--nodelist=node1,node2", "--label", str(exe), "run.nml"],
            capture_output=True, text=True, cwd=two.output_dir, env=env, timeout=300)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        # rank 0 on node1 and rank 1 on node2, talking over the nodes' network
        assert re.search(r"^0: \[node1:\d+\]", log, re.M) and \
            re.search(r"^1: \[node2:\d+\]", log, re.M), log[-4000:]
        assert re.search(rf"connect\(\) to {re.escape(cluster.subnet)}\.\d+:\d+ completed", log), \
            log[-4000:]
        result = read_result(two.output_dir)
        assert one["n_ranks"] == 1 and result["n_ranks"] == 2
        for key in ("status", "steps", "failure_step"):
            assert one[key] == result[key], (key, one[key], result[key])
        if name == "truth":
            a = read_truth(tmp_path / f"{name}-np1" / "truth.h5")
            b = read_truth(two.output_dir / "truth.h5")
            for x, y in zip(a[:2], b[:2]):
                np.testing.assert_array_equal(x, y)
        else:
            import xarray as xr
            d1, d2 = (xr.load_dataset(tmp_path / f"{name}-np{n}" / "diagnostics.h5",
                                      engine="h5netcdf") for n in (1, 2))
            for var in ("x_mean", "x_std", "energy", "u_mean", "x_final"):
                np.testing.assert_array_equal(d1[var].values, d2[var].values)


# ---------------------------------------------------------------------------------------------
def test_a_node_killed_mid_sweep_then_resume_gives_the_undisturbed_table(
        cluster: Cluster, spread: StudyDir, tmp_path: Path) -> None:
    """`harness study` on the three nodes; while the training runs, one node is killed (its
    slurmd and every process in its namespace: the training task with it). Slurm sets the
    node DOWN and the element NODE_FAIL; the sweep records the task as a retryable node_fail
    and goes on (what needs that candidate waits); `harness study --resume` reruns what is
    left on the two live nodes: every task done once, no run lost or twice, and the table
    equals the undisturbed study's. Then the node is restarted and comes back."""
    config = tmp_path / "multi.toml"
    config.write_text(toml_text(MULTI))
    root = tmp_path / "disturbed"
    t0 = time.time()
    sweep = subprocess.Popen([sys.executable, "-m", "harness", "study", str(config), "-o",
                              str(root), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        def victim() -> tuple[int, str, str] | None:
            """(train task, its element's job id, node) once a training task runs."""
            jobs = {r["stage"]: r["job_id"] for r in records(root)}
            if "train" not in jobs:
                return None
            running = {q["raw"]: q for q in squeue([jobs["train"]]) if q["state"] == "RUNNING"}
            nodes = element_nodes(list(running))
            for i in range(3):
                lock = root / "locks" / "train" / f"{i}.lock"
                try:
                    holder = json.loads(lock.read_text() or "null")
                except (OSError, ValueError):
                    continue
                if holder and holder["job"] in running and holder["host"] == nodes.get(
                        holder["job"]):
                    return i, holder["job"], holder["host"]
            return None

        task, element, node = wait_for("a training task running", victim, 180, 0.2)
        killed = script("kill-node", str(cluster.dir), node)
        killed_at = time.time()
        assert killed.returncode == 0, killed.stderr
        assert f"killed {node}: " in killed.stdout
        n_killed = len(killed.stdout.split(":", 1)[1].split("(")[0].split())
        ns = f"colnn-{cluster_id(cluster.dir)}-{node}"
        assert run("ip", "netns", "pids", ns).stdout.strip() == ""
        state = wait_for(f"{node} down", lambda: "down" in node_state(node) and
                         node_state(node), 90, 0.5)
        down_s = time.time() - killed_at
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.send_signal(signal.SIGKILL)
            sweep.communicate()
    sweep_s = time.time() - t0
    ended = {q["raw"]: q["state"] for q in squeue([r["job_id"] for r in records(root)])}
    assert ended[element] == "NODE_FAIL", ended
    assert sweep.returncode == 0, err
    assert f"recorded from the queue: train task {task}: job " in err, err
    sd = StudyDir.open(root)
    marker = json.loads(sd.marker("train", task).read_text())
    assert marker["status"] == "error" and marker["reason"] == ErrorReason.NODE_FAIL, marker
    assert f"ended NODE_FAIL on {node}" in marker["message"], marker
    assert sd.pending("train") == [task]
    waiting = {s: sd.counts(s)["waiting"] for s in STAGES}
    assert waiting["convert"] == 1 and waiting["couple"] >= 1, waiting
    status = harness_cli("status", str(root))
    assert status.returncode == 0, status.stderr
    counts = assert_counts_add_up(status.stdout)
    assert counts["train"] == {"done": 2, "total": 3, "error": 1}, status.stdout
    assert f"train task {task} error: node_fail: job " in status.stdout, status.stdout

    t1 = time.time()
    resumed = harness_cli("study", "--resume", str(root), "-q")
    resume_s = time.time() - t1
    assert resumed.returncode == 0, resumed.stderr
    resubmitted = records(root)[len(STAGES):]
    assert [r["stage"] for r in resubmitted] == ["train", "convert", "couple", "collect",
                                                 "report"]
    assert resubmitted[0]["tasks"] == str(task)
    # every task done, each by one element; the lost one again, on a live node
    lost = sum(sd.n_tasks(s) - sd.counts(s)["ok"] for s in STAGES)
    rerun = json.loads(sd.marker("train", task).read_text())
    assert rerun["status"] == "ok" and rerun["host"] != node, rerun
    runs = pd.read_csv(sd.results_dir / "runs.csv")
    planned = {(t["name"], ic) for t in sd.plan["couple"] for ic in task_ics(t)}
    lost += len(planned - set(zip(runs["name"], runs["ic"])))
    duplicated = int(runs[["name", "ic"]].duplicated().sum()) + int(
        pd.read_csv(sd.results_dir / "candidates.csv")["name"].duplicated().sum())
    assert lost == 0 and duplicated == 0, (lost, duplicated)
    pd.testing.assert_frame_equal(table(sd), table(spread))
    assert all(sd.lock_path(s, i).read_text() == "" for s in STAGES
               for i in range(sd.n_tasks(s)))

    # the node comes back when its slurmd is restarted (ReturnToService=2)
    back = script("restart-node", str(cluster.dir), node)
    assert back.returncode == 0, back.stderr
    assert node_state(node) == "idle"
    tasks = sum(sd.n_tasks(s) for s in STAGES)
    print(f"\nnode killed: {tasks} tasks on {len(NODES)} nodes; {node} killed with train task "
          f"{task} running ({n_killed} processes), {state} after {down_s:.0f} s; sweep "
          f"{sweep_s:.0f} s, resume {resume_s:.0f} s: {len(resubmitted)} arrays, lost {lost}, "
          f"duplicated {duplicated}, table equal")


# ---------------------------------------------------------------------------------------------
@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="colnn-nodes-bad-"))
    d.chmod(0o755)
    yield d
    script("stop", str(d))
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("args, env, reason", [
    (["0"], {}, "the node count must be a whole number >= 1, got '0'"),
    (["two"], {}, "the node count must be a whole number >= 1, got 'two'"),
    (["3", "0"], {}, "CPUS_PER_NODE must be a whole number >= 1, got '0'"),
    (["254"], {}, "254 nodes: the node subnet (a /24) has addresses for 253"),
    (["65"], {}, "65 nodes: more than LOCAL_SLURM_MAX_NODES=64"),
    (["3"], {"LOCAL_SLURM_MAX_NODES": "2"}, "3 nodes: more than LOCAL_SLURM_MAX_NODES=2"),
    (["2"], {"LOCAL_SLURM_SUBNET": "127.0.0"},
     "the node subnet 127.0.0.0/24 is in use on this machine (lo 127."),
    (["2"], {"LOCAL_SLURM_SUBNET": "10.300.0"}, "LOCAL_SLURM_SUBNET=10.300.0 is not"),
])
def test_a_node_count_the_machine_cannot_hold_is_refused_before_anything_starts(
        cluster_dir: Path, args: list[str], env: dict[str, str], reason: str) -> None:
    proc = script("start", str(cluster_dir), *args, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"local Slurm cluster: refused: {reason}" in proc.stderr, proc.stderr
    assert "nothing was started" in proc.stderr
    assert leftovers(cluster_dir) == [] and not (cluster_dir / "slurm.conf").exists()


def test_not_root_is_refused(cluster_dir: Path, tmp_path: Path) -> None:
    copy = Path(tempfile.mkdtemp(prefix="colnn-script-")) / "local_slurm_cluster.sh"
    try:
        copy.parent.chmod(0o755)
        shutil.copy(SCRIPT, copy)
        copy.chmod(0o755)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "bash", str(copy), "start", str(cluster_dir), "2"],
                              capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    assert proc.returncode == 1, proc.stderr
    assert "refused: the cluster needs root" in proc.stderr, proc.stderr
    assert leftovers(cluster_dir) == []


def test_a_start_that_fails_half_way_leaves_nothing(cluster_dir: Path, tmp_path: Path) -> None:
    """node2's slurmd cannot start (a stand-in that fails for node2 only, the real slurmd for
    the others): the script names it with its log, and stops node1's slurmd, slurmctld and
    munged, and removes the namespaces, veths and bridge it had made."""
    fake = tmp_path / "bin"
    fake.mkdir()
    real = shutil.which("slurmd")
    (fake / "slurmd").write_text(
        "#!/bin/sh\n"
        'if [ "$2" = node2 ]; then echo "slurmd: fatal: test: node2 cannot start" >&2; '
        "exit 1; fi\n"
        f'exec {real} "$@"\n')
    (fake / "slurmd").chmod(0o755)
    proc = script("start", str(cluster_dir), "3", env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "local Slurm cluster: slurmd of node2 did not start" in proc.stderr, proc.stderr
    assert "test: node2 cannot start" in proc.stderr
    assert "stopped what this start had started (bridge 3 namespaces munged slurmctld " \
           "node1)" in proc.stderr, proc.stderr
    assert leftovers(cluster_dir) == []
