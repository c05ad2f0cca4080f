"""Faults injected into a study sweep on a real Slurm cluster, then ``harness study --resume``.

While ``harness study CONFIG --executor slurm`` runs, this script
  * cancels (scancel) a share of the array tasks it sees running (train, convert and couple
    stages; for 20% the 1st, 6th, 11th ... task seen running),
  * requeues one running coupled-run task by hand (``scontrol requeue``, released at once),
  * restarts slurmd once while tasks run (they must go on),
  * runs two ``harness collect`` at once, over and over, and reads the results files all the
    time: each read must be a whole file (the planned rows, parseable JSON lines).
Then ``harness study --resume DIR`` completes the study, and the results table is compared
with an undisturbed study of the same configuration: 0 lost, 0 duplicated, equal table.

    python tests/sweep_faults.py --slurm-dir /tmp/colnn-slurm --candidates 10 --ics 3

``--slurm-dir`` is a cluster started by ``scripts/local_slurm.sh start DIR`` (as root); the
suite's tests/test_study.py runs a bounded variant on the session's cluster.

On a multi-node cluster (``scripts/local_slurm_cluster.sh start DIR N``), ``--kill-node NAME``
kills that node (its slurmd and every process in its network namespace) the first time a task
of the train, convert or couple stage has started there, instead of the slurmd restart; ``--no-requeue``
submits the arrays with ``--no-requeue`` (executor.slurm.extra), so that the node's tasks end
NODE_FAIL and wait for --resume instead of being requeued by Slurm:

    python tests/sweep_faults.py --slurm-dir DIR --kill-node node2 [--no-requeue]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
ARRAY_STAGES = ("train", "convert", "couple")


@dataclass
class FaultReport:
    sweep_rc: int = -1                   # `harness study` under the faults: it ends cleanly
    sweep_stderr_tail: str = ""
    array_tasks: int = 0                 # planned array tasks of train, convert and couple
    seen_running: int = 0                # of those, seen in state RUNNING by the injector
    cancelled: list[str] = field(default_factory=list)        # 'stage:index'
    cancelled_lost_work: int = 0         # cancelled tasks that had not written their marker
    requeued: list[str] = field(default_factory=list)
    requeued_attempt: int = 0            # the requeued task's attempt number in its marker
    slurmd_restarts: int = 0
    running_at_restart: int = 0
    nodes: int = 0                       # the cluster's nodes (sinfo)
    killed_node: str = ""                # --kill-node: the node killed, and what ran there
    killed_tasks: list[str] = field(default_factory=list)
    killed_processes: int = 0
    node_down_s: float = -1.0            # from the kill until Slurm said the node is down
    node_fail_recorded: list[str] = field(default_factory=list)   # markers: reason node_fail
    requeued_by_slurm: list[str] = field(default_factory=list)    # killed, ran again by itself
    waiting_after_sweep: int = 0         # tasks that waited for a cancelled one
    pending_after_sweep: int = 0
    collect_calls: int = 0
    collect_failures: list[str] = field(default_factory=list)
    reads: int = 0
    partial_reads: list[str] = field(default_factory=list)
    resume_rc: int = -1
    lost: int = 0
    duplicated: int = 0
    stray_temp_files: list[str] = field(default_factory=list)
    table_equal: bool = False
    table_difference: str = ""
    wall_s: float = 0.0


def _harness(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT)


def queue_of(job_ids: list[str]) -> list[tuple[str, str]]:
    """[('123_4', 'RUNNING'), ...] for our jobs' array tasks."""
    if not job_ids:
        return []
    proc = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T"],
                          capture_output=True, text=True, timeout=60)
    return [tuple(line.split("|")) for line in proc.stdout.splitlines()    # type: ignore
            if line.count("|") == 1]


def nodes_of(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{'123_4': ('130', 'node2'), ...}: our jobs' running array tasks, their own job ids
    (SLURM_JOB_ID) and where they run."""
    if not job_ids:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-t", "running", "-j", ",".join(job_ids),
                           "-o", "%i|%A|%N"], capture_output=True, text=True, timeout=60)
    return {parts[0]: (parts[1], parts[2]) for parts in
            (line.split("|") for line in proc.stdout.splitlines()) if len(parts) == 3}


def _holder_job(lock: Path) -> str:
    """The SLURM_JOB_ID of the process holding a task's lock ('' when none is written)."""
    try:
        return str((json.loads(lock.read_text() or "null") or {}).get("job", ""))
    except (OSError, ValueError):
        return ""


def node_state(node: str) -> str:
    return subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True,
                          text=True, timeout=60).stdout.strip()


def release(task: str) -> None:
    """A requeued job is held back by Slurm (BeginTime ~2 min): let it start now."""
    end = time.time() + 30
    while time.time() < end:
        if (task, "PENDING") in queue_of([task.split("_")[0]]):
            subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"],
                           capture_output=True, timeout=60)
            return
        time.sleep(0.2)


class _Readers:
    """Two `harness collect` at once in a loop, and a reader of the results files."""

    def __init__(self, root: Path, n_models: int, n_runs: int, report: FaultReport) -> None:
        self.root, self.n_models, self.n_runs, self.report = root, n_models, n_runs, report
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._collect_pairs, daemon=True),
                        threading.Thread(target=self._read, daemon=True)]

    def __enter__(self) -> "_Readers":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _collect_pairs(self) -> None:
        while not self.stop.wait(2.0):
            if not (self.root / "plan.json").is_file():
                continue
            procs = [subprocess.Popen([sys.executable, "-m", "harness", "collect",
                                       str(self.root), "--executor", "local", "-q"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, cwd=REPO_ROOT) for _ in range(2)]
            for proc in procs:
                out, err = proc.communicate(timeout=600)
                self.report.collect_calls += 1
                if proc.returncode != 0:
                    self.report.collect_failures.append(err.strip()[-500:])

    def _read(self) -> None:
        import pandas as pd
        results = self.root / "results"
        checks = {"candidates.csv": self.n_models, "runs.csv": self.n_runs}
        while not self.stop.wait(0.05):
            for name, rows in checks.items():
                path = results / name
                if not path.is_file():
                    continue
                try:
                    n = len(pd.read_csv(path))
                except Exception as exc:     # noqa: BLE001 - any failure is a partial read
                    n = -1
                    self.report.partial_reads.append(f"{name}: {exc}")
                self.report.reads += 1
                if n not in (-1, rows):
                    self.report.partial_reads.append(f"{name}: {n} rows, planned {rows}")
            for name in ("summary.json", "optuna.journal"):
                path = results / name
                try:
                    text = path.read_text()
                except FileNotFoundError:
                    continue
                self.report.reads += 1
                try:
                    if name.endswith(".json"):
                        json.loads(text)
                    elif text:
                        assert text.endswith("\n")
                        [json.loads(line) for line in text.splitlines()]
                except (ValueError, AssertionError):
                    self.report.partial_reads.append(f"{name}: {len(text)} bytes, not whole")


def run_with_faults(config: Path, root: Path, slurm_dir: Path, reference: Path,
                    cancel_fraction: float = 0.2, progress: bool = False,
                    kill_node: str | None = None) -> FaultReport:
    """Runs the study in ``root`` on the cluster of ``slurm_dir`` with the faults, resumes it
    and compares it with the finished undisturbed study ``reference``. ``kill_node``: a node of
    a multi-node cluster (scripts/local_slurm_cluster.sh) to kill while it runs an array task,
    instead of restarting slurmd."""
    import pandas as pd

    from harness.study.collect import TIMING_COLUMNS
    from harness.study.config import STAGES
    from harness.study.layout import StudyDir, task_ics

    start = time.time()
    report = FaultReport()
    ref = StudyDir.open(reference)
    n_models = len(pd.read_csv(ref.results_dir / "candidates.csv"))
    n_runs = sum(len(task_ics(t)) for t in ref.plan["couple"])
    report.array_tasks = sum(ref.n_tasks(s) for s in ARRAY_STAGES)
    env = {**os.environ, "SLURM_CONF": str(slurm_dir / "slurm.conf")}
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    report.nodes = len(subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True,
                                      text=True, timeout=60).stdout.split())
    killed_at = 0.0

    sweep = subprocess.Popen([sys.executable, "-m", "harness", "study", str(config),
                              "--output", str(root), "--executor", "slurm", "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO_ROOT, env=env)
    seen: dict[str, str] = {}          # array task -> stage
    stage_of: dict[str, str] = {}      # job id -> stage
    shown = ""
    with _Readers(root, n_models, n_runs, report):
        while sweep.poll() is None:
            jobs_file = root / "slurm" / "jobs.json"
            if not stage_of and jobs_file.is_file():
                stage_of = {j["job_id"]: j["stage"] for j in json.loads(jobs_file.read_text())}
            queue = queue_of(sorted(stage_of))
            running = [t for t, state in queue if state == "RUNNING" and "_" in t]
            for task in running:
                stage = stage_of[task.split("_")[0]]
                if task in seen or stage not in ARRAY_STAGES:
                    continue
                seen[task] = stage
                label = f"{stage}:{task.split('_')[1]}"
                order = len(seen)
                # the 1st, 6th, 11th ... task seen running: 20% of them, whatever the count
                if len(report.cancelled) < math.ceil(cancel_fraction * order - 1e-9):
                    if subprocess.run(["scancel", task], capture_output=True).returncode == 0:
                        report.cancelled.append(label)
                elif stage == "couple" and not report.requeued:
                    if subprocess.run(["scontrol", "requeue", task],
                                      capture_output=True).returncode == 0:
                        report.requeued.append(label)
                        release(task)
            if kill_node and not report.killed_node:
                # array tasks on the node whose task has started (holds its lock: bundle 1)
                here = [t for t, (raw, node) in nodes_of(sorted(stage_of)).items()
                        if node == kill_node and stage_of[t.split("_")[0]] in ARRAY_STAGES
                        and _holder_job(root / "locks" / stage_of[t.split("_")[0]]
                                        / f"{t.split('_')[1]}.lock") == raw]
                if here:
                    proc = subprocess.run(
                        ["bash", str(REPO_ROOT / "scripts" / "local_slurm_cluster.sh"),
                         "kill-node", str(slurm_dir), kill_node],
                        capture_output=True, text=True, timeout=120, env=env)
                    if proc.returncode != 0:
                        raise RuntimeError(f"kill-node failed: {proc.stderr}")
                    killed_at = time.time()
                    report.killed_node = kill_node
                    report.killed_tasks = [f"{stage_of[t.split('_')[0]]}:{t.split('_')[1]}"
                                           for t in here]
                    report.killed_processes = len(
                        proc.stdout.split(":", 1)[1].split("(")[0].split())
            if (killed_at and report.node_down_s < 0
                    and "down" in node_state(kill_node or "")):
                report.node_down_s = time.time() - killed_at
            if (not kill_node and not report.slurmd_restarts and report.cancelled
                    and report.requeued and running):
                report.running_at_restart = len(running)
                proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "local_slurm.sh"),
                                       "restart-slurmd", str(slurm_dir)],
                                      capture_output=True, text=True, timeout=120, env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"slurmd restart failed: {proc.stderr}")
                report.slurmd_restarts += 1
            line = (f"{len(seen)} seen running, {len(report.cancelled)} cancelled, "
                    f"{len(report.requeued)} requeued, {report.slurmd_restarts} slurmd restarts"
                    + (f", {kill_node} killed with {report.killed_tasks}"
                       f"{'' if report.node_down_s < 0 else ', down'}" if killed_at else ""))
            if progress and line != shown:
                print(line, file=sys.stderr, flush=True)
                shown = line
            time.sleep(0.1)
    _, err = sweep.communicate()
    report.sweep_rc = sweep.returncode
    report.sweep_stderr_tail = err.strip()[-1000:]
    report.seen_running = len(seen)
    sd = StudyDir.open(root)
    for label in report.cancelled:
        stage, index = label.split(":")
        report.cancelled_lost_work += sd.task_state(stage, int(index)) != "ok"
    for label in report.requeued:
        stage, index = label.split(":")
        marker = json.loads(sd.marker(stage, int(index)).read_text())
        report.requeued_attempt = int(marker.get("attempt", 0))
    for label in report.killed_tasks:
        stage, index = label.split(":")
        marker = json.loads(sd.marker(stage, int(index)).read_text() or "{}") \
            if sd.marker(stage, int(index)).is_file() else {}
        if marker.get("status") == "ok" and int(marker.get("attempt", 1)) > 1:
            report.requeued_by_slurm.append(label)
    report.node_fail_recorded = [
        f"{s}:{i}" for s in STAGES for i in range(sd.n_tasks(s)) if sd.marker(s, i).is_file()
        and json.loads(sd.marker(s, i).read_text()).get("reason") == "node_fail"]
    report.waiting_after_sweep = sum(sd.counts(s)["waiting"] for s in STAGES)
    report.pending_after_sweep = sum(sd.counts(s)["pending"] for s in STAGES)

    resumed = _harness("study", "--resume", str(root), "--executor", "slurm", "-q")
    report.resume_rc = resumed.returncode
    report.lost = sum(sd.n_tasks(s) - sd.counts(s)["ok"] for s in STAGES)
    runs = pd.read_csv(sd.results_dir / "runs.csv")
    planned = {(t["name"], ic) for t in sd.plan["couple"] for ic in task_ics(t)}
    present = set(zip(runs["name"], runs["ic"]))
    report.lost += len(planned - present) + int((~runs["status"].isin(
        ("completed", "failed", "skipped"))).sum())
    report.duplicated = int(runs[["name", "ic"]].duplicated().sum()) + int(
        pd.read_csv(sd.results_dir / "candidates.csv")["name"].duplicated().sum())
    report.stray_temp_files = sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp*"))
    mine = pd.read_csv(sd.results_dir / "candidates.csv").drop(columns=list(TIMING_COLUMNS))
    theirs = pd.read_csv(ref.results_dir / "candidates.csv").drop(columns=list(TIMING_COLUMNS))
    try:
        pd.testing.assert_frame_equal(mine, theirs)
        report.table_equal = True
    except AssertionError as exc:
        report.table_difference = str(exc)[:2000]
    if report.resume_rc != 0:
        report.table_difference += f"\nresume failed: {resumed.stderr[-2000:]}"
    report.wall_s = time.time() - start
    return report


def _write_config(path: Path, candidates: int, ics: int, steps: int, seed: int,
                  extra: tuple[str, ...] = ()) -> None:
    path.write_text(f"""\
name = "faults"
seed = {seed}

[host]
name = "l96"
inputs = "stencil"
failure = {{ max_abs = 50.0 }}

[data]
steps = 30000

[space]
nodes = [8, 16]
layers = [1, 2]

[training]
candidates = {candidates}
epochs = 2
batch_size = 256

[couple]
steps = {steps}
initial_conditions = {ics}
drift_window_time = 1.0
drift_pdf_bins = 8
ensemble_top_k = 2

[executor]
workers = 2

[executor.slurm]
throttle = 4
poll_seconds = 1.0
extra = {json.dumps(list(extra))}
""")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slurm-dir", type=Path, required=True,
                    help="a cluster started with scripts/local_slurm.sh start DIR")
    ap.add_argument("--work", type=Path, default=Path("build/sweep-faults"))
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--ics", type=int, default=3, help="initial conditions per model")
    ap.add_argument("--steps", type=int, default=20000, help="coupled steps per run")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--cancel-fraction", type=float, default=0.2)
    ap.add_argument("--kill-node", metavar="NAME",
                    help="a multi-node cluster (scripts/local_slurm_cluster.sh): kill this node "
                         "while it runs an array task, instead of restarting slurmd")
    ap.add_argument("--no-requeue", action="store_true",
                    help="submit with --no-requeue: a task whose node dies ends NODE_FAIL and "
                         "waits for --resume (else Slurm requeues it)")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    if work.exists():
        raise SystemExit(f"{work} exists: give a new --work directory")
    work.mkdir(parents=True)
    config = work / "faults.toml"
    _write_config(config, args.candidates, args.ics, args.steps, args.seed,
                  ("--no-requeue",) if args.no_requeue else ())
    t0 = time.time()
    ref = _harness("study", str(config), "--output", str(work / "reference"), "--executor",
                   "local", "-q")
    if ref.returncode != 0:
        raise SystemExit(f"the undisturbed study failed:\n{ref.stderr}")
    print(f"undisturbed study (local executor): {time.time() - t0:.0f} s", file=sys.stderr)
    report = run_with_faults(config, work / "disturbed", args.slurm_dir.resolve(),
                             work / "reference", args.cancel_fraction, progress=True,
                             kill_node=args.kill_node)
    text = json.dumps(asdict(report), indent=2)
    (work / "faults.json").write_text(text + "\n")
    print(text)
    ok = (report.table_equal and report.lost == 0 and report.duplicated == 0
          and not report.partial_reads and not report.collect_failures
          and not report.stray_temp_files
          and (not args.kill_node or report.killed_node == args.kill_node))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
