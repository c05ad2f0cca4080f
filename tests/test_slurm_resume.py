"""What a real cluster does to a sweep, on the local Slurm (nothing faked): `harness study`
killed while its arrays wait in the queue, then --resume (it adopts them: nothing runs twice);
two jobs given the same task (its lock: one runs it, the other exits 0 and writes nothing);
held jobs, a dependency that can never be satisfied, a partition time limit and drained or down
nodes shown by `harness status` with the commands that fix them; `harness cancel`; a task
stopped at its time limit after the USR1 requeue, and tasks whose node went down, recorded as
retryable errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pytest

from harness.status import ErrorReason, TaskProgress
from harness.study.config import STAGES
from harness.study.executors import SlurmExecutor
from harness.study.layout import StudyDir
from harness.study.runner import run_stages
from test_study import TINY, harness_cli, make_study, merged, table, toml_text

pytestmark = pytest.mark.usefixtures("local_slurm")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert not check or proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc


def nodes() -> list[str]:
    return sorted(set(run("sinfo", "-h", "-N", "-o", "%N").stdout.split()))


@contextmanager
def drained(reason: str) -> Iterator[list[str]]:
    """Every node drained (nothing starts; what is queued stays queued), resumed after."""
    names = nodes()
    for node in names:
        run("scontrol", "update", f"nodename={node}", "state=drain", f"reason={reason}")
    try:
        yield names
    finally:
        for node in names:
            run("scontrol", "update", f"nodename={node}", "state=resume", check=False)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90, poll: float = 0.3,
             state: Callable[[], str] = lambda: "") -> Any:
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"not within {timeout} s: {what}\n{state()}")


def records(root: Path) -> list[dict[str, Any]]:
    path = root / "slurm" / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else []


def squeue(job_ids: list[str]) -> list[dict[str, str]]:
    """Our jobs' elements: [{'id': '12_3', 'raw': '15', 'state': .., 'reason': ..}]."""
    if not job_ids:
        return []
    out = run("squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids),
              "-o", "%i|%A|%T|%r", check=False).stdout
    return [dict(zip(("id", "raw", "state", "reason"), line.split("|", 3)))
            for line in out.splitlines() if line.count("|") >= 3]


def live(root: Path) -> list[dict[str, str]]:
    ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
             "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
    return [q for q in squeue([r["job_id"] for r in records(root)]) if q["state"] not in ended]


@pytest.fixture
def cleanup() -> Iterator[list[Path]]:
    """Study directories whose jobs are cancelled after the test, whatever happened."""
    roots: list[Path] = []
    yield roots
    for root in roots:
        ids = [r["job_id"] for r in records(root)]
        if ids:
            run("scancel", *ids, check=False)
        wait_for("the test's jobs to leave the cluster", lambda: not live(root), 60)


def stage_counts(status: str) -> dict[str, dict[str, int]]:
    """{'convert': {'done': 4, 'total': 6, 'running': 1, ...}} from `harness status`."""
    out = {}
    for stage in STAGES:
        m = re.search(rf"^  {stage} (\d+)/(\d+) done((?:, \d+ \w+)*)$", status, re.M)
        assert m, f"no line for {stage} in:\n{status}"
        counts = {"done": int(m.group(1)), "total": int(m.group(2))}
        counts.update({w: int(n) for n, w in re.findall(r", (\d+) (\w+)", m.group(3))})
        out[stage] = counts
    return out


def assert_counts_add_up(status: str) -> dict[str, dict[str, int]]:
    counts = stage_counts(status)
    for stage, c in counts.items():
        parts = sum(v for k, v in c.items() if k != "total")
        assert parts == c["total"], f"{stage}: {c} in\n{status}"
        assert set(c) <= {"total"} | {str(p) for p in TaskProgress}, c
    return counts


def status_with(root: Path, needle: str, timeout: float = 90) -> str:
    """`harness status` once its output contains ``needle``."""
    def check() -> str | None:
        proc = harness_cli("status", str(root))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout if needle in proc.stdout else None
    return wait_for(f"{needle!r} in the status", check, timeout)


def fix_of(status: str, needle: str) -> str:
    """The command after '->' on the status line that contains ``needle``."""
    line = next((ln for ln in status.splitlines() if needle in ln and "->" in ln), None)
    assert line is not None, f"no line with {needle!r} and a fix in:\n{status}"
    return line.split("->", 1)[1].strip()


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> StudyDir:
    sd = make_study(tmp_path_factory.mktemp("reference") / "local", TINY)
    run_stages(sd, STAGES, "local", progress=False)
    return sd


def test_resume_adopts_the_queued_arrays_of_a_killed_sweep(
        local_reference: StudyDir, tmp_path: Path, cleanup: list[Path]) -> None:
    """`harness study` SIGKILLed while all its arrays wait (every node drained); `harness
    status` names the drained node and its reason, and a held array; --resume submits nothing
    again and adopts the six arrays; with the fixes status printed, run as printed, the study
    finishes: every task ran once, in the first arrays, and the table equals a local run."""
    config = tmp_path / "tiny.toml"
    config.write_text(toml_text(merged(TINY, executor__kind="slurm")))
    root = tmp_path / "swept"
    cleanup.append(root)
    with drained("test: keep the arrays queued") as names:
        sweep = subprocess.Popen([sys.executable, "-m", "harness", "study", str(config), "-o",
                                  str(root), "-q"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_for("six submitted arrays", lambda: len(records(root)) == 6, 120)
        sweep.send_signal(signal.SIGKILL)
        sweep.communicate()
        first = [r["job_id"] for r in records(root)]
        assert len(live(root)) == 2 + 3 + 3 + 6 + 1 + 1

        status = harness_cli("status", str(root))
        assert status.returncode == 0, status.stderr
        counts = assert_counts_add_up(status.stdout)
        assert counts["couple"] == {"done": 0, "total": 6, "pending": 6}, status.stdout
        node_fix = fix_of(status.stdout, f"node {names[0]} drained")
        assert node_fix == f"scontrol update nodename={names[0]} state=resume"
        assert "test: keep the arrays queued" in status.stdout

        run("scontrol", "hold", first[1])            # the train array
        status = status_with(root, "held", 30)
        release = fix_of(status, "train tasks 0-2 pending")
        assert release.startswith("scontrol release ") and first[1] in release, status

        resumed = harness_cli("study", "--resume", str(root), "--no-wait", "-q")
        assert resumed.returncode == 0, resumed.stderr
        said = resumed.stderr.splitlines()
        assert sum(ln.startswith("adopted ") for ln in said) == 6, resumed.stderr
        assert not any(ln.startswith("submitted") for ln in said), resumed.stderr
        assert [r["job_id"] for r in records(root)] == first

        run(*release.split())
        run(*node_fix.split())
    done = harness_cli("study", "--resume", str(root), "-q")
    assert done.returncode == 0, done.stderr
    assert [r["job_id"] for r in records(root)] == first        # nothing submitted again
    sd = StudyDir.open(root)
    assert all(sd.counts(s)["ok"] == sd.n_tasks(s) for s in STAGES)
    # each task ran once, as attempt 1 of an element of the first arrays (one log each)
    elements = {q["raw"]: q["id"] for q in squeue(first)}
    for stage in STAGES:
        markers = [json.loads(sd.marker(stage, i).read_text()) for i in range(sd.n_tasks(stage))]
        assert all(m["slurm_job"] in elements and m["attempt"] == 1 for m in markers), markers
        logs = list((root / "slurm" / "logs").glob(f"{stage}-*.out"))
        assert len(logs) == sd.n_tasks(stage), logs
    runs = pd.read_csv(sd.results_dir / "runs.csv")
    assert len(runs) == 12 and runs[["name", "ic"]].duplicated().sum() == 0
    pd.testing.assert_frame_equal(table(sd), table(local_reference))
    status = harness_cli("status", str(root)).stdout
    assert all(c == {"done": c["total"], "total": c["total"]}
               for c in assert_counts_add_up(status).values()), status


def test_status_explains_pending_tasks_and_cancel_cancels(tmp_path: Path,
                                                          cleanup: list[Path]) -> None:
    """A data array cancelled: the train array behind it can never start (status says so and
    what to do); a job id the scheduler never knew is gone, not an error; --resume submits the
    truth runs again and makes the live train array wait for them; a partition time limit
    below the stage's; `harness cancel` with --stage, and with nothing queued."""
    sd = make_study(tmp_path / "reasons", merged(TINY, executor__kind="slurm"))
    root = sd.root
    cleanup.append(root)
    with drained("test: nothing starts"):
        proc = harness_cli("study", "--resume", str(root), "--stages", "data,train",
                           "--no-wait", "-q")
        assert proc.returncode == 0, proc.stderr
        data_job, train_job = [r["job_id"] for r in records(root)]
        path = root / "slurm" / "jobs.json"
        path.write_text(json.dumps(records(root) + [{
            "stage": "couple", "job_id": "1999999", "job_name": "colnn-tiny-couple",
            "array": "0-5", "bundle": 1}], indent=1))
        run("scancel", data_job)
        status = status_with(root, "DependencyNeverSatisfied")
        counts = assert_counts_add_up(status)
        assert counts["data"] == {"done": 0, "total": 2, "pending": 2}
        assert counts["train"] == {"done": 0, "total": 3, "pending": 3}
        assert fix_of(status, "data tasks 0-1 pending: not in the queue") == \
            f"harness study --resume {root}"
        assert fix_of(status, "can never start") == \
            f"harness cancel {root} && harness study --resume {root}"

        proc = harness_cli("study", "--resume", str(root), "--stages", "data,train",
                           "--no-wait")
        assert proc.returncode == 0, proc.stderr
        assert f"adopted  train    job {train_job}" in proc.stderr
        new_data = records(root)[-1]["job_id"]
        assert records(root)[-1]["stage"] == "data" and len(records(root)) == 4
        assert f"job {train_job} now waits for afterok:{new_data}" in proc.stderr
        # the rechained train array: Slurm updates its reason on its next pass
        status = status_with(root, f"train tasks 0-2 pending: queued in job {train_job}, "
                                   "waits for the stage before (Dependency)")
        assert_counts_add_up(status)
        run("scontrol", "update", "partitionname=local", "maxtime=00:00:30")
        try:
            status = status_with(root, "PartitionTimeLimit")
            assert "its time limit 01:00:00 (executor.slurm.time.data)" in status
            assert fix_of(status, "PartitionTimeLimit").startswith(
                f"scontrol update JobId={new_data}_0,{new_data}_1 TimeLimit=")
        finally:
            run("scontrol", "update", "partitionname=local", "maxtime=INFINITE")

        proc = harness_cli("cancel", str(root), "--stage", "couple")
        assert proc.returncode == 0 and "nothing of study tiny is queued or running in " \
            "stage couple" in proc.stdout, proc.stdout + proc.stderr
        proc = harness_cli("cancel", str(root))
        assert proc.returncode == 0, proc.stderr
        assert f"data job {new_data} (2 pending)" in proc.stdout
        assert f"train job {train_job} (3 pending)" in proc.stdout
        wait_for("the cancelled jobs to end", lambda: not live(root), 30)
        proc = harness_cli("cancel", str(root))
        assert proc.returncode == 0 and "nothing of study tiny is queued or running" in \
            proc.stdout
    help_text = harness_cli("cancel", "--help")
    assert help_text.returncode == 0 and "--stage" in help_text.stdout


# ---------------------------------------------------------------------------------------------
LONG_DATA = 3_000_000      # truth-run steps: about 11 s here, long enough to catch it running


def long_data(steps: int, **changes: Any) -> dict[str, Any]:
    """TINY with truth runs of ``steps`` steps (few samples: small files)."""
    return merged(TINY, data__steps=steps, data__sample_interval=steps // 100, **changes)


def test_two_jobs_given_one_task_run_it_once(tmp_path: Path, cleanup: list[Path]) -> None:
    """The same array element submitted twice at once (what a second --resume used to do):
    one job runs the truth run; the other finds the task's lock taken, says by which job,
    exits 0 and writes nothing."""
    sd = make_study(tmp_path / "twice", long_data(LONG_DATA, executor__kind="slurm"))
    cleanup.append(sd.root)
    SlurmExecutor(progress=False).write_scripts(sd)
    ids: list[str] = []
    for _ in range(2):
        proc = subprocess.run(["sbatch", "--parsable", "--array=0", "slurm/data.sbatch"],
                              capture_output=True, text=True, cwd=sd.root, timeout=60)
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.strip().split(";")[0])
    (sd.root / "slurm" / "jobs.json").write_text(json.dumps([
        {"stage": "data", "job_id": i, "job_name": "colnn-tiny-data", "bundle": 1}
        for i in ids]))
    wait_for("both jobs to end", lambda: not live(sd.root), 120)
    logs = {i: (sd.root / "slurm" / "logs" / f"data-{i}_0.out").read_text() for i in ids}
    busy = [i for i, text in logs.items() if "is already running" in text]
    assert len(busy) == 1, logs
    ran = next(i for i in ids if i not in busy)
    assert re.search(rf"data task 0 is already running \(Slurm job {ran}_0 on host \S+, pid "
                     rf"\d+, since [\d:\- ]+\); this process leaves it alone", logs[busy[0]])
    states = {q["id"]: q["state"] for q in squeue(ids)}
    assert states == {f"{ran}_0": "COMPLETED", f"{busy[0]}_0": "COMPLETED"}
    exit_code = run("scontrol", "-o", "show", "job", busy[0]).stdout
    assert "ExitCode=0:0" in exit_code
    marker = json.loads(sd.marker("data", 0).read_text())
    assert marker["status"] == "ok" and marker["attempt"] == 1
    assert marker["slurm_job"] == squeue([ran])[0]["raw"]
    assert (sd.root / "locks" / "data" / "0.lock").read_text() == ""     # released


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    """Outside Slurm: while one `harness task` runs a truth run, a second exits 0 at once,
    naming it; SIGKILL the first (no cleanup of its own): the next run takes the task."""
    sd = make_study(tmp_path / "kill", long_data(LONG_DATA))
    cmd = [sys.executable, "-m", "harness", "task", "data", "0", "--study", str(sd.root)]
    # its own process group: killed with its host program, as a job's processes die together
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lock = sd.root / "locks" / "data" / "0.lock"
    wait_for("the first to hold the lock", lambda: lock.is_file() and lock.read_text(), 60)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert f"pid {first.pid}" in second.stderr and "is already running" in second.stderr
    assert not sd.marker("data", 0).exists()
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    assert not sd.marker("data", 0).exists()
    status = harness_cli("status", str(sd.root)).stdout
    assert "data 0/2 done, 2 pending" in status         # the dead holder is not 'running'
    third = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    wait_for("the third to take the lock", lambda: f'"pid": {third.pid}' in lock.read_text(), 60)
    third.send_signal(signal.SIGTERM)                  # and a stop is recorded, retryable
    _, err = third.communicate(timeout=60)
    assert third.returncode == 128 + signal.SIGTERM, err
    marker = json.loads(sd.marker("data", 0).read_text())
    assert marker["status"] == "error" and marker["reason"] == ErrorReason.TERMINATED
    assert sd.pending("data") == [0, 1]


# ---------------------------------------------------------------------------------------------
def test_time_limit_requeues_then_records_a_retryable_error(tmp_path: Path, local_slurm: Path,
                                                           cleanup: list[Path]) -> None:
    """Truth runs far longer than executor.slurm.time.data = 1 minute: Slurm's USR1 (50 s
    before the limit) reaches the task through the sbatch trap, the task records 'error'
    (time_limit, requeued) and the element is requeued; the second attempt stops the same way
    with no requeues left. Never a result: --resume reruns them."""
    sd = make_study(tmp_path / "limit", long_data(
        LONG_DATA * 10, executor__kind="slurm", executor__slurm__time={"data": "00:01:00"},
        executor__slurm__signal_seconds=50, executor__slurm__max_requeues=1))
    cleanup.append(sd.root)
    job = SlurmExecutor(progress=False).submit(sd, ["data"])[0]["job_id"]

    def marker(i: int) -> dict[str, Any]:
        path = sd.marker("data", i)
        return json.loads(path.read_text()) if path.is_file() else {}

    seen: dict[tuple[int, int], dict[str, Any]] = {}     # (task, attempt) -> its marker
    held: dict[str, float] = {}                          # requeued element -> held since

    def both_stopped_twice() -> bool:
        for i in range(2):
            m = marker(i)
            if m.get("attempt"):
                seen.setdefault((i, m["attempt"]), m)
        for q in squeue([job]):
            # Slurm holds a requeued element back (BeginTime, about 2 minutes): not that long
            # here, but a few seconds (slurmd refuses to launch a job it killed moments ago:
            # "Job N already killed, do not launch batch job", and the element fails)
            if q["state"] == "PENDING" and q["reason"] == "BeginTime":
                since = held.setdefault(q["id"], time.time())
                if time.time() - since > 5:
                    run("scontrol", "update", f"JobId={q['id']}", "StartTime=now", check=False)
                    held.pop(q["id"])
        return all((i, 2) in seen for i in range(2))

    def state() -> str:
        logs = "\n".join(f"{p.name}: {p.read_text()[-600:]}"
                         for p in (sd.root / "slurm" / "logs").glob("*.out"))
        shown = run("scontrol", "-o", "show", "job", job, check=False).stdout
        daemons = "".join(f"{p.name}:\n{p.read_text()[-3000:]}\n"
                          for p in (local_slurm / "log").glob("*.log") if "munge" not in p.name)
        return f"seen {sorted(seen)}\nqueue {squeue([job])}\n{shown}\n{logs}\n{daemons}"

    wait_for("two stops of each truth run", both_stopped_twice, 240, state=state)
    for i in range(2):
        first, last = seen[(i, 1)], seen[(i, 2)]
        for m in (first, last):
            assert m["status"] == "error" and m["reason"] == ErrorReason.TIME_LIMIT, m
        assert "requeued" in first["message"], first
        assert "no requeues left (executor.slurm.max_requeues = 1)" in last["message"], last
    wait_for("the array to end", lambda: not live(sd.root), 60)
    shown = run("scontrol", "-o", "show", "job", job).stdout
    assert len(re.findall(r"Restarts=1\b", shown)) == 2, shown
    assert sd.pending("data") == [0, 1]         # --resume reruns them
    status = harness_cli("status", str(sd.root)).stdout
    assert "data 0/2 done, 2 error" in status
    assert "data tasks 0-1 error: time_limit: stopped at Slurm's warning" in status, status


def test_node_failure_is_retryable_and_a_drained_node_is_shown(tmp_path: Path,
                                                             cleanup: list[Path]) -> None:
    """Both truth runs running when their node is set down (then drained: the local slurmd
    would bring it straight back, ReturnToService=2): the element that may not be requeued
    ends NODE_FAIL and its task is recorded 'error' (node_fail) from the queue; the other is
    requeued by Slurm and waits; status names the node, its reason and the command that
    returns it to service. After the printed commands, --resume finishes both."""
    sd = make_study(tmp_path / "node", long_data(LONG_DATA, executor__kind="slurm"))
    cleanup.append(sd.root)
    job = SlurmExecutor(progress=False).submit(sd, ["data"])[0]["job_id"]
    wait_for("both truth runs running", lambda: all(
        sd.lock_path("data", i).is_file() and sd.lock_path("data", i).read_text()
        for i in range(2)), 60)
    run("scontrol", "update", f"JobId={job}_0", "Requeue=0")
    node = nodes()[0]
    try:
        lost_at = time.time()
        for state in ("down", "drain"):
            run("scontrol", "update", f"nodename={node}", f"state={state}",
                "reason=test: node lost")
        wait_for("NODE_FAIL", lambda: any(q["state"] == "NODE_FAIL" for q in squeue([job])), 60)
        status = status_with(sd.root, "data task 1 pending", 60)
        assert_counts_add_up(status)
        assert re.search(rf"data task 0 error: job {job}_0 ended NODE_FAIL on {node} ", status), \
            status
        node_fix = fix_of(status, f"node {node} ")
        assert node_fix == f"scontrol update nodename={node} state=resume"
        assert "test: node lost" in status
        start_now = fix_of(status, "data task 1 pending")
        assert start_now == f"scontrol update JobId={job}_1 StartTime=now", status
        proc = harness_cli("study", "--resume", str(sd.root), "--stages", "data", "--no-wait")
        assert proc.returncode == 0, proc.stderr
        assert "recorded from the queue: data task 0" in proc.stderr
        assert f"adopted  data     job {job}" in proc.stderr
        assert records(sd.root)[-1]["array"] == "0"      # only the lost task again
        marker = json.loads(sd.marker("data", 0).read_text())
        assert marker["status"] == "error" and marker["reason"] == ErrorReason.NODE_FAIL
        assert node in marker["message"] and "NODE_FAIL" in marker["message"]
        run(*node_fix.split())
        # not within seconds of the kill: slurmd would refuse to launch it again so soon
        time.sleep(max(0.0, lost_at + 6 - time.time()))
        run(*start_now.split())
    finally:
        run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
    wait_for("both truth runs", lambda: sd.counts("data")["ok"] == 2, 150)
    assert all(sd.lock_path("data", i).read_text() == "" for i in range(2))
