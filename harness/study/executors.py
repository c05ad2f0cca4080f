"""Where a study's tasks run, behind one small interface: ``Executor.run(study, stages)``.

* ``local``: a process pool on this machine (the default; no cluster needed).
* ``slurm``: one ``sbatch`` job array per stage (``%`` throttle), chained with
  ``--dependency=afterok`` (data -> train) and ``afterany`` (the rest: a stage goes on when some
  of the previous stage's tasks failed, and records what it could not do); ``--requeue`` and
  ``--signal`` for a clean stop near the time limit. The scripts are written from the templates
  in the repository's ``slurm/`` into ``STUDY/slurm/`` and kept there.
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
from pathlib import Path
from typing import Any, Sequence

from ..status import TaskState
from .config import STAGES, StudyError
from .layout import StudyDir, atomic_write_json
from .tasks import run_task

__all__ = ["Executor", "LocalExecutor", "SlurmExecutor", "MpiExecutor", "make_executor",
           "array_spec", "render_template", "queue_state", "TEMPLATE_DIR"]

#: the sbatch templates: the repository's slurm/ (or $COLNN_SLURM_TEMPLATES, e.g. in the image)
TEMPLATE_DIR = Path(os.environ.get("COLNN_SLURM_TEMPLATES")
                    or Path(__file__).resolve().parents[2] / "slurm")
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
        if marker.get("status") == TaskState.ERROR:
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


def _record_jobs(sd: StudyDir, jobs: list[dict[str, Any]]) -> None:
    """Appends submissions to slurm/jobs.json (what `harness status` asks squeue about)."""
    path = sd.root / "slurm" / "jobs.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    atomic_write_json(path, history + jobs)


def _slurm_cmd(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=120)
    except FileNotFoundError:
        raise StudyError(f"{args[0]} not found: the slurm executor needs the Slurm client "
                         f"commands (apt: slurm-client) and a cluster") from None


def queue_state(job_names: Sequence[str]) -> list[dict[str, str]]:
    """Our jobs' array tasks in the queue: [{'job': '12_3', 'name': .., 'state': .., 'reason'}]."""
    if not job_names or shutil.which("squeue") is None:
        return []
    proc = _slurm_cmd(["squeue", "-h", "-r", "--name=" + ",".join(job_names),
                       "-o", "%i|%j|%T|%r"])
    if proc.returncode != 0:
        raise StudyError(f"squeue failed: {proc.stderr.strip()}")
    out = []
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            out.append(dict(zip(("job", "name", "state", "reason"), parts)))
    return out


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
        """One array per stage with unfinished tasks, chained; returns the submitted jobs."""
        scripts = self.write_scripts(sd)
        throttle = sd.config.executor.slurm.throttle
        bundle = sd.config.executor.slurm.bundle
        jobs: list[dict[str, Any]] = []
        previous: str | None = None
        for stage in stages:
            todo = sd.pending(stage)
            if not todo:
                continue
            # array task i runs tasks i*bundle .. i*bundle+bundle-1 (finished ones are skipped)
            array = array_spec(sorted({i // bundle for i in todo}))
            args = ["sbatch", "--parsable", f"--array={array}%{throttle}"]
            dependency = None
            if previous is not None:
                # nothing to train on without the truth runs; later stages record what the
                # earlier ones could not deliver
                dependency = f"{'afterok' if stage == 'train' else 'afterany'}:{previous}"
                args.append(f"--dependency={dependency}")
            args.append(str(scripts[stage].relative_to(sd.root)))
            proc = _slurm_cmd(args, cwd=sd.root)
            if proc.returncode != 0:
                if jobs:
                    _slurm_cmd(["scancel", *[j["job_id"] for j in jobs]])
                raise StudyError(f"sbatch {' '.join(args[2:])} failed: {proc.stderr.strip()}")
            job_id = proc.stdout.strip().split(";")[0]
            jobs.append({"stage": stage, "job_id": job_id, "job_name": _job_name(sd, stage),
                         "array": array, "bundle": bundle, "tasks": array_spec(todo),
                         "dependency": dependency,
                         "command": shlex.join(args), "submitted": time.time()})
            previous = job_id
        _record_jobs(sd, jobs)
        return jobs

    def run(self, sd: StudyDir, stages: Sequence[str], wait: bool = True) -> None:
        jobs = self.submit(sd, stages)
        for job in jobs:
            print(f"submitted {job['stage']:8s} job {job['job_id']} array {job['array']}"
                  f"{'  after ' + job['dependency'] if job['dependency'] else ''}",
                  file=sys.stderr)
        if wait and jobs:
            self.follow(sd, jobs)

    def follow(self, sd: StudyDir, jobs: list[dict[str, Any]],
               stages: Sequence[str] | None = None) -> None:
        """Live counts until our jobs leave the queue; a chain that can never run (a failed
        afterok dependency) is cancelled with the reason."""
        names = [j["job_name"] for j in jobs]
        ids = {j["job_id"] for j in jobs}
        stages = list(stages or [j["stage"] for j in jobs])
        poll = sd.config.executor.slurm.poll_seconds
        last = ""
        while True:
            queue = [q for q in queue_state(names) if q["job"].split("_")[0] in ids]
            line = status_line(sd, queue, stages)
            if self.progress and line != last:
                print(line, file=sys.stderr, flush=True)
                last = line
            never = [q for q in queue if "DependencyNeverSatisfied" in q["reason"]]
            if never:
                _slurm_cmd(["scancel", *sorted({q["job"].split("_")[0] for q in queue})])
                _check_stage_errors(sd, "data")
                raise StudyError(f"{sd.root}: a stage's dependency can never be satisfied "
                                 f"(a task of the stage before failed); cancelled the rest. "
                                 f"See slurm/logs/ and `harness status {sd.root}`")
            if not queue:
                break
            time.sleep(poll)
        for stage in stages:
            _check_stage_errors(sd, stage)


def status_line(sd: StudyDir, queue: list[dict[str, str]], stages: Sequence[str]) -> str:
    """'train 3/8 done, 1 failed, 2 running, 2 pending | ...' from disk and the queue."""
    parts = []
    for stage in stages:
        counts = sd.counts(stage)
        stage_name_end = f"-{stage}"
        mine = [q for q in queue if q["name"].endswith((stage_name_end, "-farm"))]
        running = sum(q["state"] in ("RUNNING", "COMPLETING") for q in mine)
        pending = sum(q["state"] in ("PENDING", "REQUEUED", "CONFIGURING") for q in mine)
        parts.append(f"{stage} {counts['ok']}/{sd.n_tasks(stage)} done"
                     + (f", {counts['error']} failed" if counts["error"] else "")
                     + (f", {counts['waiting']} waiting" if counts["waiting"] else "")
                     + (f", {running} running" if running else "")
                     + (f", {pending} pending" if pending else ""))
    return " | ".join(parts)


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
        proc = _slurm_cmd(["sbatch", "--parsable", "slurm/farm.sbatch"], cwd=sd.root)
        if proc.returncode != 0:
            raise StudyError(f"sbatch slurm/farm.sbatch failed: {proc.stderr.strip()}")
        job = {"stage": "farm", "job_id": proc.stdout.strip().split(";")[0],
               "job_name": _job_name(sd, "farm"), "array": "", "dependency": None,
               "command": "sbatch --parsable slurm/farm.sbatch", "submitted": time.time()}
        _record_jobs(sd, [job])
        print(f"submitted the task farm: job {job['job_id']} ({self.ranks} ranks)",
              file=sys.stderr)
        if wait:
            SlurmExecutor(self.progress).follow(sd, [job], stages)


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
