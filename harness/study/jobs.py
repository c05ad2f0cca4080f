"""A study's Slurm jobs: what the harness submitted (``STUDY/slurm/jobs.json``), what the
scheduler says of them now, the nodes that cannot run them, and cancelling them.

The queue is asked once for all of a study's jobs (``squeue --name`` with every job name the
study used, then kept to the recorded job ids: an unknown id never makes squeue fail, and a
second study of the same name is not mixed in); ``sacct`` is asked about the jobs squeue has
already forgotten where the site keeps accounting. A recorded job the scheduler no longer knows
has ended: it is gone, not an error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .config import STAGES, StudyError
from .layout import StudyDir, atomic_write_json

__all__ = ["SubmittedJob", "QueueEntry", "NodeProblem", "read_jobs", "record_job", "query_queue",
           "node_problems", "cancel_jobs", "slurm_cmd", "TERMINAL_STATES", "FAILURE_STATES"]

#: states of a job that has ended; any other state (pending, running, requeued, held,
#: suspended, one this module does not know) is live: never submitted a second time
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                             "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED"})
#: ended states that say the job's node or its limits stopped it (retryable, not a result)
FAILURE_STATES = frozenset({"TIMEOUT", "DEADLINE", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY",
                            "PREEMPTED"})
_RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT",
                             "RESIZING", "SUSPENDED", "STOPPED"})


@dataclass(frozen=True)
class SubmittedJob:
    """One record of slurm/jobs.json: an array of one stage, or the MPI task farm."""

    stage: str                     #: a stage, or 'farm'
    job_id: str                    #: the array's (base) job id
    job_name: str
    bundle: int = 1                #: tasks per array task
    stages: tuple[str, ...] = ()   #: the farm's stages
    dependency: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "SubmittedJob":
        try:
            stages = tuple(data.get("stages") or (STAGES if data["stage"] == "farm" else ()))
            return cls(stage=str(data["stage"]), job_id=str(data["job_id"]),
                       job_name=str(data["job_name"]), bundle=int(data.get("bundle") or 1),
                       stages=stages, dependency=data.get("dependency"))
        except (KeyError, TypeError, ValueError) as exc:
            raise StudyError(f"{where}: a job record without a valid {exc}: {data!r}") from None

    @property
    def is_farm(self) -> bool:
        return self.stage == "farm"

    def covers(self, sd: StudyDir, index: int | None) -> list[tuple[str, int]]:
        """The (stage, task) pairs array task ``index`` runs (the farm: all of its stages)."""
        if self.is_farm:
            return [(s, i) for s in self.stages if s in STAGES for i in range(sd.n_tasks(s))]
        if index is None or self.stage not in STAGES:
            return []
        first = index * self.bundle
        return [(self.stage, i) for i in range(first, min(first + self.bundle,
                                                          sd.n_tasks(self.stage)))]


@dataclass(frozen=True)
class QueueEntry:
    """A job, or one element of a job array, as squeue (or sacct) shows it."""

    job_id: str            #: the element's own id (SLURM_JOB_ID inside it; squeue's %A)
    array_job: str         #: the array's id (%F); the job id for a job that is no array
    index: int | None      #: the array index (%K), None for a job that is no array
    state: str             #: PENDING, RUNNING, COMPLETED, NODE_FAIL ...
    reason: str = ""
    nodes: str = ""
    name: str = ""

    @property
    def label(self) -> str:
        """How squeue, scontrol and scancel name it: 123_4, or 123."""
        return f"{self.array_job}_{self.index}" if self.index is not None else self.job_id

    @property
    def live(self) -> bool:
        return self.state not in TERMINAL_STATES

    @property
    def running(self) -> bool:
        return self.state in _RUNNING_STATES


@dataclass(frozen=True)
class NodeProblem:
    """A node that cannot run jobs (down, drained, failing), with the reason its admin or
    Slurm gave."""

    node: str
    state: str
    reason: str
    since: str = ""

    def describe(self) -> str:
        since = f" since {self.since}" if self.since and self.since != "Unknown" else ""
        return f"node {self.node} {self.state}{since}: {self.reason or '(no reason given)'}"

    @property
    def fix(self) -> str:
        return f"scontrol update nodename={self.node} state=resume"


def _jobs_path(sd: StudyDir) -> Path:
    return sd.root / "slurm" / "jobs.json"


def _raw_jobs(sd: StudyDir) -> list[dict[str, Any]]:
    path = _jobs_path(sd)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyError(f"{path}: cannot read the study's job records: {exc}") from None
    if not isinstance(data, list):
        raise StudyError(f"{path}: expected a list of job records")
    return data


def read_jobs(sd: StudyDir) -> list[SubmittedJob]:
    path = str(_jobs_path(sd))
    return [SubmittedJob.from_dict(d, path) for d in _raw_jobs(sd)]


def record_job(sd: StudyDir, job: dict[str, Any]) -> None:
    """Appends one submission to slurm/jobs.json, right after its sbatch: a harness killed
    between two submissions leaves every job it submitted on record for --resume to find."""
    atomic_write_json(_jobs_path(sd), _raw_jobs(sd) + [job])


def slurm_cmd(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=120)
    except FileNotFoundError:
        raise StudyError(f"{args[0]} not found: the slurm executor needs the Slurm client "
                         f"commands (apt: slurm-client) and a cluster") from None
    except subprocess.TimeoutExpired:
        raise StudyError(f"{' '.join(args[:2])} did not answer within 120 s (is slurmctld "
                         f"up? `scontrol ping`)") from None


_SQUEUE_FORMAT = "%A|%F|%K|%T|%N|%j|%r"


def _index(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def query_queue(jobs: Sequence[SubmittedJob], history: bool = False) -> list[QueueEntry]:
    """Every element of the given jobs that Slurm still knows: live ones, and ended ones while
    slurmctld keeps them (MinJobAge). ``history``: also ask sacct about the jobs squeue has
    forgotten (where accounting is kept; where it is not, they are simply gone).

    Raises StudyError when the queue cannot be read (no squeue, slurmctld not answering):
    the caller decides whether it can go on without knowing."""
    if not jobs:
        return []
    if shutil.which("squeue") is None:
        raise StudyError("squeue not found: cannot see which of the study's Slurm jobs are "
                         "still queued or running (apt: slurm-client)")
    ids = {j.job_id for j in jobs}
    names = sorted({j.job_name for j in jobs})
    proc = slurm_cmd(["squeue", "-h", "-r", "-t", "all", "--name=" + ",".join(names),
                      "-o", _SQUEUE_FORMAT])
    if proc.returncode != 0:
        raise StudyError(f"squeue failed: {proc.stderr.strip() or proc.stdout.strip()}")
    out: list[QueueEntry] = []
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|", 6)
        if len(parts) != 7 or parts[1] not in ids:
            continue
        job_id, array_job, index, state, nodes, name, reason = parts
        out.append(QueueEntry(job_id=job_id, array_job=array_job, index=_index(index),
                              state=state.split()[0] if state else "", reason=reason,
                              nodes=nodes, name=name))
    missing = ids - {e.array_job for e in out}
    if history and missing and shutil.which("sacct") is not None:
        out += _from_sacct(sorted(missing, key=_numeric))
    return out


def _numeric(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (0, job_id)


def _from_sacct(ids: Iterable[str]) -> list[QueueEntry]:
    """The ended elements of jobs squeue no longer shows; [] where the site keeps no
    accounting (sacct then fails: the jobs are gone, which is all we need to know)."""
    proc = slurm_cmd(["sacct", "-n", "-P", "-X", "-j", ",".join(ids),
                      "-o", "JobID,JobIDRaw,State,NodeList,JobName"])
    if proc.returncode != 0:
        return []
    out = []
    for line in proc.stdout.splitlines():
        parts = line.split("|", 4)
        if len(parts) != 5 or "[" in parts[0]:
            continue      # a pending array's summary line: squeue would have shown it
        label, raw, state, nodes, name = parts
        array_job, _, index = label.partition("_")
        out.append(QueueEntry(job_id=raw, array_job=array_job, index=_index(index),
                              state=state.split()[0] if state else "", nodes=nodes,
                              name=name))
    return out


def node_problems(partition: str = "") -> list[NodeProblem]:
    """Nodes that are down, drained, draining or failing (`sinfo -R`), one per node, with their
    reasons; [] when sinfo is missing or fails (status goes on without them)."""
    if shutil.which("sinfo") is None:
        return []
    args = ["sinfo", "-h", "-N", "-R", "-o", "%N|%T|%H|%E"]
    if partition:
        args[1:1] = ["-p", partition]
    try:
        proc = slurm_cmd(args)
    except StudyError:
        return []
    if proc.returncode != 0:
        return []
    seen: dict[str, NodeProblem] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4 and parts[0] not in seen:
            seen[parts[0]] = NodeProblem(node=parts[0], state=parts[1], since=parts[2],
                                         reason=parts[3])
    return list(seen.values())


def cancel_jobs(job_ids: Sequence[str]) -> None:
    """scancel, once for all of them (array ids cancel every element)."""
    if not job_ids:
        return
    proc = slurm_cmd(["scancel", *job_ids])
    if proc.returncode != 0:
        raise StudyError(f"scancel {' '.join(job_ids)} failed: {proc.stderr.strip()}")
