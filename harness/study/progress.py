"""Where each task of a study stands, from its marker, its lock and the Slurm queue, and why
the ones that are not done are not: what `harness status` and the live counts of a Slurm run
print. Also the failures that only the queue saw (a node that died, a time limit) written into
the tasks' markers, so that --resume reruns them.

Every task is in exactly one :class:`TaskProgress`, so a stage's counts add up to its task
count. The queue is read per task, not per queue line: one array element runs ``bundle`` tasks,
a task whose marker is written can still be in the queue while its element exits, and two
submissions can hold the same task (counting queue lines gave `convert 4/6 done, 4 running,
2 pending`).
"""

from __future__ import annotations

import os
import shlex
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..status import ErrorReason, TaskProgress, TaskState
from .config import STAGES
from .jobs import FAILURE_STATES, NodeProblem, QueueEntry, SubmittedJob
from .layout import StudyDir, atomic_write_json, read_json
from .locks import LockHolder, TaskLock, read_holder

__all__ = ["TaskView", "StageProgress", "StudyProgress", "study_progress", "explain_pending",
           "record_lost_tasks", "index_ranges"]

_LOST_REASON = {"TIMEOUT": ErrorReason.TIME_LIMIT, "DEADLINE": ErrorReason.TIME_LIMIT,
                "NODE_FAIL": ErrorReason.NODE_FAIL, "BOOT_FAIL": ErrorReason.NODE_FAIL,
                "OUT_OF_MEMORY": ErrorReason.OUT_OF_MEMORY,
                "PREEMPTED": ErrorReason.PREEMPTED}
_NODE_REASONS = ("ReqNodeNotAvail", "NodeDown", "PartitionNodeLimit", "Nodes_required",
                 "Nodes required", "BadConstraints")
_QUIET_REASONS = ("Priority", "Resources", "None", "WaitingForScheduling", "")


@dataclass
class TaskView:
    stage: str
    index: int
    progress: TaskProgress
    why: str = ""                       #: the queue's reason, or the marker's
    fix: str = ""                       #: a command; '{jobs}' stands for the group's jobs
    job: str = ""                       #: the queue element that runs or holds it (123_4)
    reason: ErrorReason | None = None   #: why it failed (ERROR)
    lost_in: QueueEntry | None = None   #: ERROR known from the queue only: the ended element


@dataclass
class StageProgress:
    stage: str
    tasks: list[TaskView]

    def count(self, progress: TaskProgress) -> int:
        return sum(t.progress == progress for t in self.tasks)

    def line(self) -> str:
        """'convert 4/6 done, 1 running, 1 pending': the parts add up to the tasks."""
        text = f"{self.stage} {self.count(TaskProgress.DONE)}/{len(self.tasks)} done"
        for progress in (TaskProgress.RUNNING, TaskProgress.PENDING, TaskProgress.WAITING,
                         TaskProgress.ERROR):
            n = self.count(progress)
            if n:
                text += f", {n} {progress}"
        return text


@dataclass
class StudyProgress:
    stages: list[StageProgress]
    entries: list[QueueEntry] = field(default_factory=list)
    nodes: list[NodeProblem] = field(default_factory=list)

    def line(self) -> str:
        return " | ".join(s.line() for s in self.stages)

    def tasks(self) -> list[TaskView]:
        return [t for s in self.stages for t in s.tasks]

    def details(self) -> list[str]:
        """One line per group of tasks that are not done for the same reason (with the
        command that fixes it), then the nodes that cannot run jobs, then the queue."""
        groups: dict[tuple[str, str, str, str], list[TaskView]] = defaultdict(list)
        for t in self.tasks():
            if t.progress in (TaskProgress.PENDING, TaskProgress.WAITING, TaskProgress.ERROR):
                groups[(t.stage, t.progress, t.why, t.fix)].append(t)
        lines = []
        for (stage, progress, why, fix), views in groups.items():
            jobs = sorted({v.job for v in views if v.job}, key=_job_order)
            word = "task" if len(views) == 1 else "tasks"
            text = f"{stage} {word} {index_ranges([v.index for v in views])} {progress}: {why}"
            if fix:
                text += f" -> {fix.replace('{jobs}', ','.join(jobs))}"
            lines.append(text)
        if self.nodes and any(e.live for e in self.entries):
            lines += [f"{n.describe()} -> {n.fix}" for n in self.nodes]
        live = [e for e in self.entries if e.live]
        if live:
            states: dict[str, int] = defaultdict(int)
            for e in live:
                states[e.state.lower()] += 1
            ids = sorted({e.array_job for e in live}, key=_job_order)
            lines.append("queue: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
                         + f" (jobs {', '.join(ids)})")
        return lines


def _job_order(label: str) -> tuple[int, int, str]:
    base, _, index = label.partition("_")
    return (int(base) if base.isdigit() else 0, int(index) if index.isdigit() else -1, label)


def index_ranges(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(set(indices)) + [None]:   # type: ignore[list-item]
        if run and i is not None and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i] if i is not None else []
    return ", ".join(parts)


def explain_pending(entry: QueueEntry, job: SubmittedJob, sd: StudyDir,
                    nodes: Sequence[NodeProblem]) -> tuple[str, str]:
    """(why, fix) of a queued element from its state and Slurm's reason code."""
    root = shlex.quote(str(sd.root))
    reason, where = entry.reason, f"queued in job {entry.array_job}"
    if (entry.state in ("REQUEUE_HOLD", "SPECIAL_EXIT") or reason.startswith("JobHeld")
            or "held" in reason.lower()):
        return f"{where}, held ({reason or entry.state})", "scontrol release {jobs}"
    if reason == "DependencyNeverSatisfied":
        return (f"{where}, which can never start: the stage before ended with tasks that failed "
                f"or were cancelled (DependencyNeverSatisfied)",
                f"harness cancel {root} && harness study --resume {root}")
    if reason == "Dependency":
        return f"{where}, waits for the stage before (Dependency)", ""
    if reason == "BeginTime":
        return (f"{where}, requeued: Slurm holds it back until its begin time (BeginTime)",
                "scontrol update JobId={jobs} StartTime=now")
    if any(reason.startswith(r) for r in _NODE_REASONS):
        fix = "; ".join(n.fix for n in nodes) or "sinfo -R"
        return f"{where}, no node can run it ({reason})", fix
    if "TimeLimit" in reason or "WallDuration" in reason:
        stage = job.stage if not job.is_farm else "<stage>"
        limit = sd.config.executor.slurm.time.get(stage, "?")
        return (f"{where}, its time limit {limit} (executor.slurm.time.{stage}) is more than "
                f"the partition or QOS allows ({reason})",
                "scontrol update JobId={jobs} TimeLimit=HH:MM:SS")
    if reason in ("PartitionDown", "PartitionInactive"):
        part = sd.config.executor.slurm.partition or "<partition>"
        return f"{where}, its partition is down ({reason})", \
            f"scontrol update partitionname={part} state=up"
    if reason == "JobArrayTaskLimit":
        return (f"{where}, waits for the array's throttle (executor.slurm.throttle = "
                f"{sd.config.executor.slurm.throttle} at once)"), ""
    if reason in _QUIET_REASONS:
        return f"{where}, waits for a free slot ({reason or 'no reason yet'})", ""
    return f"{where} ({reason})", ""


def _alive_here(holder: LockHolder) -> bool:
    """A holder outside Slurm (a local or MPI run) on this host whose process still runs."""
    if holder.host != socket.gethostname() or holder.pid <= 0:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _first_line(text: str, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _task_view(sd: StudyDir, stage: str, index: int,
               covering: list[tuple[QueueEntry, SubmittedJob]],
               nodes: Sequence[NodeProblem], submitted: bool) -> TaskView:
    path = sd.marker(stage, index)
    marker = read_json(path)
    status = marker.get("status", TaskState.ERROR) if marker else (
        TaskState.ERROR if path.exists() else None)
    view = TaskView(stage, index, TaskProgress.DONE)
    if status == TaskState.OK:
        return view
    resume = f"harness study --resume {shlex.quote(str(sd.root))}"

    def ran_in(entry: QueueEntry) -> bool:
        # this element ran the task already (and wrote what its marker says)
        return bool(marker) and str(marker.get("slurm_job", "")) == entry.job_id

    holder = read_holder(sd.lock_path(stage, index))
    live = [(e, j) for e, j in covering if e.live]
    running = [(e, j) for e, j in live if e.running]
    if holder is not None:
        for e, _ in running:
            if holder.job and holder.job == e.job_id:
                return TaskView(stage, index, TaskProgress.RUNNING, f"on {e.nodes}", job=e.label)
        if not holder.job and _alive_here(holder):
            return TaskView(stage, index, TaskProgress.RUNNING, f"pid {holder.pid}")
    for e, j in running:
        if j.bundle == 1 and not j.is_farm and not ran_in(e):
            return TaskView(stage, index, TaskProgress.RUNNING, f"on {e.nodes}", job=e.label)
    queued = [(e, j) for e, j in live if not e.running]
    if queued:
        e, j = queued[0]
        why, fix = explain_pending(e, j, sd, nodes)
        return TaskView(stage, index, TaskProgress.PENDING, why, fix, job=e.label)
    behind = [e for e, _ in running if not ran_in(e)]
    if behind:
        return TaskView(stage, index, TaskProgress.PENDING,
                        f"after the tasks before it in running job {behind[0].label}",
                        job=behind[0].label)
    # nothing in the queue will run it: what ended, and what its marker says
    for e, _ in covering:
        died_here = ran_in(e) or (holder is not None and holder.job == e.job_id)
        if e.state in FAILURE_STATES and died_here and (
                status is None or (marker or {}).get("reason") == ErrorReason.TERMINATED):
            reason = _LOST_REASON[e.state]
            return TaskView(stage, index, TaskProgress.ERROR,
                            f"job {e.label} ended {e.state} on {e.nodes or 'its node'}", resume,
                            job=e.label, reason=reason, lost_in=e)
    if status == TaskState.WAITING:
        return TaskView(stage, index, TaskProgress.WAITING,
                        _first_line(marker.get("message", "") if marker else ""), resume)
    if status is not None:
        raw = (marker or {}).get("reason")
        reason = ErrorReason(raw) if raw in {r.value for r in ErrorReason} \
            else ErrorReason.EXCEPTION
        message = _first_line((marker or {}).get("message", "")) if marker else \
            f"damaged marker {path}"
        return TaskView(stage, index, TaskProgress.ERROR, f"{reason}: {message}", resume,
                        reason=reason)
    return TaskView(stage, index, TaskProgress.PENDING,
                    "not in the queue" if submitted else "not run yet", resume)


def study_progress(sd: StudyDir, jobs: Sequence[SubmittedJob] = (),
                   entries: Sequence[QueueEntry] = (), stages: Sequence[str] = STAGES,
                   nodes: Sequence[NodeProblem] = ()) -> StudyProgress:
    by_id = {j.job_id: j for j in jobs}
    covering: dict[tuple[str, int], list[tuple[QueueEntry, SubmittedJob]]] = defaultdict(list)
    for e in entries:
        job = by_id.get(e.array_job)
        if job is not None:
            for key in job.covers(sd, e.index):
                covering[key].append((e, job))
    return StudyProgress(
        [StageProgress(stage, [_task_view(sd, stage, i, covering.get((stage, i), []), nodes,
                                          bool(jobs))
                               for i in range(sd.n_tasks(stage))]) for stage in stages],
        list(entries), list(nodes))


def record_lost_tasks(sd: StudyDir, progress: StudyProgress) -> list[str]:
    """Writes an 'error' marker, with its reason, for each task whose job ended with its node
    or its limits (NODE_FAIL, TIMEOUT, ...) before the task could say so itself; returns what
    it recorded. Under the task's lock: a task that still runs somewhere is left alone."""
    done = []
    for view in progress.tasks():
        entry = view.lost_in
        if entry is None or view.reason is None:
            continue
        lock = TaskLock(sd.lock_path(view.stage, view.index))
        if lock.acquire() is not None:
            continue
        try:
            path = sd.marker(view.stage, view.index)
            old: dict[str, Any] = read_json(path) or {}
            if old.get("status") == TaskState.OK:
                continue
            message = (f"job {entry.label} ended {entry.state} on {entry.nodes or 'its node'} "
                       f"while it ran the task; --resume reruns it")
            if old.get("message"):
                message += f" (the task said: {_first_line(old['message'])})"
            atomic_write_json(path, {**old, "status": TaskState.ERROR, "reason": view.reason,
                                     "message": message, "stage": view.stage,
                                     "index": view.index, "slurm_job": entry.job_id,
                                     "recorded_from": "the Slurm queue"})
            done.append(f"{view.stage} task {view.index}: {message}")
        finally:
            lock.release()
    return done
