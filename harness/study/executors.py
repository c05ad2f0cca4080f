"""Where a study's tasks run, behind one small interface: ``Executor.run(study, stages)``.

* ``local``: a process pool on this machine (the default; no cluster needed).
* ``slurm``: one ``sbatch`` job array per stage (``%`` throttle), chained with
  ``--dependency=afterok`` (data -> train) and ``afterany`` (the rest: a stage goes on when some
  of the previous stage's tasks failed, and records what it could not do); ``--requeue`` and
  ``--signal`` for a clean stop near the time limit. The scripts are written from the templates
  in the repository's ``slurm/`` into ``STUDY/slurm/`` and kept there. The study's jobs that
  are still queued or running are adopted, never submitted twice (``harness.study.jobs``).
* ``mpi``: an mpi4py task farm in one allocation (``mpirun -n N`` here, or one sbatch job).

Every executor runs the same task function (:func:`harness.study.tasks.run_task`), so the
results do not depend on the executor.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..locate import slurm_templates
from ..status import TaskProgress, TaskState
from .config import STAGES, StudyError
from .jobs import QueueEntry, SubmittedJob, query_queue, read_jobs, record_job, slurm_cmd
from .layout import StudyDir, read_json
from .progress import record_lost_tasks, study_progress
from .tasks import run_task

__all__ = ["Executor", "LocalExecutor", "SlurmExecutor", "MpiExecutor", "Submission",
           "make_executor", "array_spec", "render_template", "TEMPLATE_DIR"]

#: the sbatch templates: $COLNN_SLURM_TEMPLATES (e.g. in the image), else the wheel's
#: harness/_data/slurm, else the repository's slurm/ (harness.locate.slurm_templates)
TEMPLATE_DIR = slurm_templates().path
UNITS = {"data": "truth run", "train": "candidate", "convert": "candidate",
         "couple": "coupled run", "collect": "study", "report": "study"}


class Executor(ABC):
    """Runs the unfinished tasks of the given stages, in stage order."""

    kind = "abstract"

    @abstractmethod
    def run(self, sd: StudyDir, stages: Sequence[str], wait: bool = True) -> None:
        """Returns when the stages are done (or, with wait=False, submitted)."""


def _check_stage_errors(sd: StudyDir, stage: str) -> None:
    """A truth run that failed leaves nothing to train on: stop there. Other stages' failed
    tasks are recorded and the study goes on (the table shows them)."""
    counts = sd.counts(stage)
    if stage == "data" and counts["error"]:
        bad = [i for i in range(sd.n_tasks(stage)) if sd.task_state(stage, i) == TaskState.ERROR]
        msg = json.loads(sd.marker(stage, bad[0]).read_text()).get("message", "")
        raise StudyError(f"{sd.root}: truth run {bad[0]} failed: {msg}")


class LocalExecutor(Executor):
    """A pool of worker processes on this machine (spawned: TensorFlow is not fork-safe); each
    worker keeps its TensorFlow import across tasks."""

    kind = "local"

    def __init__(self, workers: int = 2, progress: bool = True) -> None:
        self.workers = workers
        self.progress = progress

    def run(self, sd: StudyDir, stages: Sequence[str], wait: bool = True) -> None:
        from tqdm import tqdm
        pool: ProcessPoolExecutor | None = None
        try:
            for stage in stages:
                todo = sd.pending(stage)
                if not todo:
                    continue
                bar = tqdm(total=len(todo), desc=f"{stage:8s}", unit=UNITS[stage],
                           disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
                if stage in ("collect", "report") or self.workers == 1:
                    for index in todo:
                        marker = run_task(sd.root, stage, index, study=sd)
                        self._note(bar, marker)
                else:
                    if pool is None:
                        pool = ProcessPoolExecutor(
                            max_workers=self.workers,
                            mp_context=multiprocessing.get_context("spawn"))
                    futures = {pool.submit(run_task, str(sd.root), stage, i): i for i in todo}
                    remaining = set(futures)
                    while remaining:
                        done, remaining = wait_futures(remaining, return_when=FIRST_COMPLETED)
                        for fut in done:
                            self._note(bar, fut.result())
                bar.close()
                _check_stage_errors(sd, stage)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    @staticmethod
    def _note(bar: Any, marker: dict[str, Any]) -> None:
        bar.update(1)
        if marker.get("status") in (TaskState.ERROR, TaskProgress.RUNNING):
            bar.write(f"  {marker.get('stage')} task {marker.get('index')}: "
                      f"{marker.get('message', '')}")


# ---------------------------------------------------------------------------------------------
def array_spec(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts, run = [], []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


def render_template(name: str, values: dict[str, str]) -> str:
    """The template ``slurm/<name>`` with every {{KEY}} replaced (in one pass, so a value can
    never introduce another placeholder); a key without a value is an error."""
    path = TEMPLATE_DIR / name
    try:
        text = path.read_text()
    except OSError as exc:
        raise StudyError(f"cannot read the Slurm template {path}: {exc.strerror}") from None

    def fill(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise StudyError(f"{path}: no value for {{{{{m.group(1)}}}}}")
        return values[m.group(1)]
    return _PLACEHOLDER.sub(fill, text)


def _job_name(sd: StudyDir, stage: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", sd.config.name).strip("_")[:40] or "study"
    return f"colnn-{safe}-{stage}"


def _comment_safe(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)


def _directives(cfg: Any) -> str:
    """The site's #SBATCH lines (executor.slurm: partition, account, qos, extra)."""
    lines = [f"#SBATCH {d}" for d in cfg.extra]
    lines += [f"#SBATCH --{key}={getattr(cfg, key)}" for key in ("partition", "account", "qos")
              if getattr(cfg, key)]
    return "\n".join(lines)


def _task_command(sd: StudyDir) -> tuple[str, str]:
    """The shell words that start `harness` in an array task, and a comment line explaining
    them: this Python, or (executor.slurm.container) the image under srun + apptainer exec."""
    ct = sd.config.executor.slurm.container
    if not ct.image:
        return shlex.quote(sys.executable) + " -m harness", ""
    if not Path(ct.image).is_file():
        raise StudyError(f"executor.slurm.container.image: {ct.image}: no such file here (the "
                         f"image must be on a file system that this host and the compute nodes "
                         f"share)")
    root = str(sd.root)
    if ":" in root or "," in root:
        raise StudyError(f"{root}: a study directory whose path has ':' or ',' cannot be bound "
                         f"into the container (--bind separates paths with them); move it")
    cpus = sd.config.executor.slurm.cpus_per_task
    words = ["srun", "--ntasks=1", f"--cpus-per-task={cpus}"] if ct.srun else []
    words += [ct.runtime, "exec", "--bind", root]
    for bind in ct.bind:
        words += ["--bind", bind]
    words += [*ct.options, ct.image, "harness"]
    note = ("\n# It runs inside the Apptainer image executor.slurm.container.image, with the "
            "study directory\n# bound at the same path (the image's own harness, library and "
            "hosts).")
    return " ".join(shlex.quote(w) for w in words), note


class SlurmExecutor(Executor):
    kind = "slurm"

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def write_scripts(self, sd: StudyDir) -> dict[str, Path]:
        cfg = sd.config.executor.slurm
        harness, note = _task_command(sd)
        out = {}
        (sd.root / "slurm" / "logs").mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            n = sd.n_tasks(stage)
            bundle = cfg.bundle
            text = render_template("stage.sbatch.in", {
                "STUDY": _comment_safe(sd.config.name), "STAGE": stage, "UNIT": UNITS[stage],
                "N_TASKS": str(n), "STUDY_DIR": _comment_safe(shlex.quote(str(sd.root))),
                "LAST": str((n - 1) // bundle), "THROTTLE": str(cfg.throttle),
                "BUNDLE": str(bundle), "BUNDLE_LAST": str(bundle - 1),
                "JOB_NAME": _job_name(sd, stage), "CPUS": str(cfg.cpus_per_task),
                "MEM": cfg.mem, "TIME": cfg.time[stage],
                "SIGNAL_SECONDS": str(cfg.signal_seconds),
                "MAX_REQUEUES": str(cfg.max_requeues), "DIRECTIVES": _directives(cfg),
                "HARNESS": harness, "CONTAINER_NOTE": note})
            path = sd.root / "slurm" / f"{stage}.sbatch"
            path.write_text(text)
            path.chmod(0o755)
            out[stage] = path
        return out

    def submit(self, sd: StudyDir, stages: Sequence[str]) -> list[dict[str, Any]]:
        """One array per stage with unfinished tasks, chained; returns the new submissions
        (see :meth:`plan_and_submit` for the jobs it adopts)."""
        return self.plan_and_submit(sd, stages).new

    def plan_and_submit(self, sd: StudyDir, stages: Sequence[str]) -> "Submission":
        """Submits the unfinished tasks of ``stages`` that no live job of the study will run.

        The study's recorded jobs are checked against the queue first (one squeue call).
        Tasks that are still queued or running are adopted, not submitted again: the new
        arrays depend on the live ones, and a live array of a later stage that still has
        queued elements is made to wait for the new arrays of the stage before it
        (``scontrol update Dependency``). Adopting rather than refusing, because cancelling
        and resubmitting would throw away the queue position (priority age) the arrays have
        earned, hours on a busy cluster, and asks the user to decide something the harness
        can work out. Only a live MPI task farm of the study is refused (it is one job for all
        tasks: nothing to chain to per stage). Two runs of one task never overlap in any case
        (each task's lock, harness.study.locks).

        When the queue cannot be read, nothing is submitted (the harness cannot know what
        would run twice). Tasks whose job ended with its node or its time limit are recorded
        as retryable errors first (progress.record_lost_tasks)."""
        scripts = self.write_scripts(sd)
        throttle = sd.config.executor.slurm.throttle
        bundle = sd.config.executor.slurm.bundle
        known = read_jobs(sd)
        try:
            entries = query_queue(known, history=True)
        except StudyError as exc:
            raise StudyError(f"{sd.root}: cannot tell which of the study's Slurm jobs are still "
                             f"queued or running, so nothing was submitted (it could run "
                             f"tasks twice): {exc}") from None
        out = Submission(lost=record_lost_tasks(sd, study_progress(sd, known, entries)))
        by_id = {j.job_id: j for j in known}
        live = [e for e in entries if e.live and e.array_job in by_id]
        farms = sorted({e.array_job for e in live if by_id[e.array_job].is_farm})
        if farms:
            raise StudyError(f"{sd.root}: the study's MPI task farm (job {', '.join(farms)}) is "
                             f"still queued or running and runs the same tasks; wait for it "
                             f"(harness status {shlex.quote(str(sd.root))}) or cancel it "
                             f"(harness cancel {shlex.quote(str(sd.root))})")
        previous: list[str] = []     # the ids the next stage waits for
        waits_for: dict[str, list[str]] = {}
        for stage in STAGES:
            stage_live = [e for e in live if by_id[e.array_job].stage == stage]
            ids = sorted({e.array_job for e in stage_live}, key=_by_number)
            waits_for[stage] = list(previous)
            if stage in stages:
                out.adopted += [by_id[i] for i in ids]
                todo = sd.pending(stage)
                # a queued (or requeued) element runs all its tasks; a running one only those
                # it has not reached yet
                covered = {i for e in stage_live for _, i in by_id[e.array_job].covers(sd, e.index)
                           if not (e.running and _ran_in(sd, stage, i, e))}
                fresh = [i for i in todo if i not in covered]
                if fresh:
                    # array element k runs tasks k*bundle .. k*bundle+bundle-1 (finished ones
                    # are skipped)
                    array = array_spec(sorted({i // bundle for i in fresh}))
                    args = ["sbatch", "--parsable", f"--array={array}%{throttle}"]
                    dependency = _dependency(stage, previous)
                    if dependency:
                        # nothing to train on without the truth runs; later stages record
                        # what the earlier ones could not deliver
                        args.append(f"--dependency={dependency}")
                    args.append(str(scripts[stage].relative_to(sd.root)))
                    proc = slurm_cmd(args, cwd=sd.root)
                    if proc.returncode != 0:
                        if out.new:
                            slurm_cmd(["scancel", *[j["job_id"] for j in out.new]])
                        raise StudyError(f"sbatch {' '.join(args[2:])} failed: "
                                         f"{proc.stderr.strip()}")
                    job_id = proc.stdout.strip().split(";")[0]
                    job = {"stage": stage, "job_id": job_id, "job_name": _job_name(sd, stage),
                           "array": array, "bundle": bundle, "tasks": array_spec(fresh),
                           "dependency": dependency,
                           "command": shlex.join(args), "submitted": time.time()}
                    record_job(sd, job)
                    out.new.append(job)
                    ids.append(job_id)
            if ids:
                previous = ids
        # live arrays whose stage before got new work: make their queued elements wait for it
        new_ids = {j["job_id"] for j in out.new}
        for stage in STAGES:
            before = waits_for[stage]
            if not new_ids & set(before):
                continue
            for array_job in sorted({e.array_job for e in live
                                     if by_id[e.array_job].stage == stage and not e.running}):
                dependency = _dependency(stage, before)
                proc = slurm_cmd(["scontrol", "update", f"JobId={array_job}",
                                  f"Dependency={dependency}"])
                out.rechained.append((array_job, dependency, proc.returncode == 0,
                                      (proc.stderr or proc.stdout).strip()))
        return out

    def run(self, sd: StudyDir, stages: Sequence[str], wait: bool = True) -> None:
        sub = self.plan_and_submit(sd, stages)
        for line in sub.lost:
            print(f"recorded from the queue: {line}", file=sys.stderr)
        for adopted in sub.adopted:
            print(f"adopted  {adopted.stage:8s} job {adopted.job_id}: still queued or running, "
                  f"not submitted again", file=sys.stderr)
        for job in sub.new:
            print(f"submitted {job['stage']:8s} job {job['job_id']} array {job['array']}"
                  f"{'  after ' + job['dependency'] if job['dependency'] else ''}",
                  file=sys.stderr)
        for array_job, dependency, ok, said in sub.rechained:
            print(f"job {array_job} now waits for {dependency}" if ok else
                  f"job {array_job} could not be made to wait for {dependency} ({said}): "
                  f"tasks that need the new work record 'waiting'; --resume again when it "
                  f"ends", file=sys.stderr)
        followed = sub.adopted + [SubmittedJob.from_dict(j, "new") for j in sub.new]
        if wait and followed:
            self.follow(sd, followed)

    def follow(self, sd: StudyDir, jobs: Sequence[SubmittedJob],
               stages: Sequence[str] | None = None) -> None:
        """Live counts until our jobs leave the queue; a chain that can never run (a failed
        afterok dependency) is cancelled with the reason. A queue that does not answer (a
        slurmctld restart) is waited for, up to half an hour."""
        ids = {j.job_id for j in jobs}
        mine = {s for j in jobs for s in (j.stages if j.is_farm else [j.stage])}
        stages = list(stages or [s for s in STAGES if s in mine])
        poll = sd.config.executor.slurm.poll_seconds
        last, down_since = "", None
        entries: list[QueueEntry] = []
        while True:
            known = read_jobs(sd)
            try:
                entries = query_queue(known)
                down_since = None
            except StudyError as exc:
                down_since = down_since or time.time()
                if time.time() - down_since > 1800:
                    raise StudyError(f"{sd.root}: the Slurm queue has not answered for 30 "
                                     f"minutes ({exc}); the jobs may still run: "
                                     f"`harness status {shlex.quote(str(sd.root))}`") from None
                line = f"(Slurm queue not answering: {exc}; waiting)"
                if self.progress and line != last:
                    print(line, file=sys.stderr, flush=True)
                    last = line
                time.sleep(poll)
                continue
            ours = [e for e in entries if e.array_job in ids]
            line = study_progress(sd, known, entries, stages).line()
            if self.progress and line != last:
                print(line, file=sys.stderr, flush=True)
                last = line
            never = [e for e in ours if e.live and "DependencyNeverSatisfied" in e.reason]
            if never:
                slurm_cmd(["scancel", *sorted({e.array_job for e in ours if e.live})])
                _check_stage_errors(sd, "data")
                raise StudyError(f"{sd.root}: a stage's dependency can never be satisfied "
                                 f"(a task of the stage before failed); cancelled the rest. "
                                 f"See slurm/logs/ and `harness status {sd.root}`")
            if not any(e.live for e in ours):
                break
            time.sleep(poll)
        for line in record_lost_tasks(sd, study_progress(sd, known, entries)):
            print(f"recorded from the queue: {line}", file=sys.stderr)
        for stage in stages:
            _check_stage_errors(sd, stage)


@dataclass
class Submission:
    """What :meth:`SlurmExecutor.plan_and_submit` did."""

    new: list[dict[str, Any]] = field(default_factory=list)      #: jobs.json records
    adopted: list[SubmittedJob] = field(default_factory=list)    #: live jobs kept
    #: (array job, its new dependency, whether scontrol took it, what scontrol said)
    rechained: list[tuple[str, str, bool, str]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)    #: tasks recorded from the queue


def _dependency(stage: str, ids: Sequence[str]) -> str | None:
    if not ids:
        return None
    return f"{'afterok' if stage == 'train' else 'afterany'}:{':'.join(ids)}"


def _by_number(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (0, job_id)


def _ran_in(sd: StudyDir, stage: str, index: int, entry: QueueEntry) -> bool:
    """Whether this element has run the task already (it will not run it again)."""
    marker = read_json(sd.marker(stage, index))
    return bool(marker) and str(marker.get("slurm_job", "")) == entry.job_id


# ---------------------------------------------------------------------------------------------
class MpiExecutor(Executor):
    """An mpi4py task farm (harness.study.farm): ``mpirun -n N`` here, or one sbatch job."""

    kind = "mpi"

    def __init__(self, ranks: int = 3, launcher: str = "mpirun", progress: bool = True) -> None:
        self.ranks = ranks
        self.launcher = launcher
        self.progress = progress

    def run(self, sd: StudyDir, stages: Sequence[str], wait: bool = True) -> None:
        stages = [s for s in stages if sd.pending(s)]
        if not stages:
            return
        if self.launcher == "sbatch":
            self._sbatch(sd, stages, wait)
            return
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise StudyError("the mpi executor needs mpirun on PATH (apt: openmpi-bin)")
        cmd = [mpirun, "-np", str(self.ranks), "--oversubscribe", "--bind-to", "none",
               sys.executable, "-m", "harness", "farm", "--study", str(sd.root),
               "--stages", ",".join(stages)]
        if not self.progress:
            cmd.append("--quiet")
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1")
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise StudyError(f"the MPI task farm exited with status {proc.returncode}: "
                             f"{shlex.join(cmd)}")
        for stage in stages:
            _check_stage_errors(sd, stage)

    def _sbatch(self, sd: StudyDir, stages: Sequence[str], wait: bool) -> None:
        cfg = sd.config.executor.slurm
        (sd.root / "slurm" / "logs").mkdir(parents=True, exist_ok=True)
        longest = max(cfg.time[s] for s in stages)
        text = render_template("farm.sbatch.in", {
            "STUDY": _comment_safe(sd.config.name), "STAGES": ",".join(stages),
            "LAST_RANK": str(self.ranks - 1), "STUDY_DIR": _comment_safe(shlex.quote(str(sd.root))),
            "JOB_NAME": _job_name(sd, "farm"), "RANKS": str(self.ranks),
            "CPUS": str(cfg.cpus_per_task), "MEM": cfg.mem, "TIME": longest,
            "DIRECTIVES": _directives(cfg), "PYTHON": shlex.quote(sys.executable)})
        path = sd.root / "slurm" / "farm.sbatch"
        path.write_text(text)
        proc = slurm_cmd(["sbatch", "--parsable", "slurm/farm.sbatch"], cwd=sd.root)
        if proc.returncode != 0:
            raise StudyError(f"sbatch slurm/farm.sbatch failed: {proc.stderr.strip()}")
        job = {"stage": "farm", "job_id": proc.stdout.strip().split(";")[0],
               "job_name": _job_name(sd, "farm"), "array": "", "dependency": None,
               "stages": list(stages),
               "command": "sbatch --parsable slurm/farm.sbatch", "submitted": time.time()}
        record_job(sd, job)
        print(f"submitted the task farm: job {job['job_id']} ({self.ranks} ranks)",
              file=sys.stderr)
        if wait:
            SlurmExecutor(self.progress).follow(sd, [SubmittedJob.from_dict(job, "farm")],
                                                stages)


def make_executor(sd: StudyDir, kind: str | None = None, progress: bool = True) -> Executor:
    cfg = sd.config.executor
    kind = kind or cfg.kind
    if kind == "local":
        return LocalExecutor(cfg.workers, progress)
    if kind == "slurm":
        return SlurmExecutor(progress)
    if kind == "mpi":
        return MpiExecutor(cfg.mpi.ranks, cfg.mpi.launcher, progress)
    raise StudyError(f"unknown executor {kind!r} (local, slurm, mpi)")
