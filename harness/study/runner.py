"""A study from its configuration to its report, and its progress read back from disk."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from .config import STAGES, StudyError, load_config
from .executors import make_executor
from .jobs import QueueEntry, SubmittedJob, cancel_jobs, node_problems, query_queue, read_jobs
from .layout import StudyDir
from .progress import study_progress

__all__ = ["open_or_create", "run_stages", "status_text", "cancel_study", "default_study_dir",
           "live_jobs"]


def default_study_dir(name: str) -> Path:
    return Path("studies") / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "study")


def open_or_create(config: Path | str | None, output: Path | str | None) -> StudyDir:
    """The study directory for a configuration (validated first: nothing is written or
    submitted for an invalid one), or an existing study directory (``config`` None)."""
    if config is None:
        if output is None:
            raise StudyError("give a study configuration, or --resume DIR")
        return StudyDir.open(output)
    cfg = load_config(config)
    root = Path(output) if output is not None else default_study_dir(cfg.name)
    return StudyDir.create(root, cfg, Path(config).read_text())


def run_stages(sd: StudyDir, stages: Sequence[str] = STAGES, executor: str | None = None,
               wait: bool = True, progress: bool = True) -> None:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise StudyError(f"unknown stages {unknown} (stages: {', '.join(STAGES)})")
    ordered = [s for s in STAGES if s in stages]
    runner = make_executor(sd, executor, progress)
    if runner.kind != "slurm":
        # the slurm executor adopts the study's live jobs (SlurmExecutor.plan_and_submit)
        _note_live_jobs(sd, runner.kind)
    runner.run(sd, ordered, wait=wait)


def live_jobs(sd: StudyDir) -> tuple[list[SubmittedJob], list[QueueEntry]]:
    """The study's recorded jobs and the queue's elements of them that are still live;
    raises StudyError when the queue cannot be read."""
    jobs = read_jobs(sd)
    return jobs, [e for e in query_queue(jobs) if e.live]


def _describe_live(sd: StudyDir, jobs: Sequence[SubmittedJob],
                   live: Sequence[QueueEntry]) -> list[str]:
    by_id = {j.job_id: j for j in jobs}
    out = []
    for job_id in sorted({e.array_job for e in live}, key=lambda i: (len(i), i)):
        mine = [e for e in live if e.array_job == job_id]
        running = sum(e.running for e in mine)
        parts = [f"{running} running"] if running else []
        if len(mine) > running:
            parts.append(f"{len(mine) - running} pending")
        out.append(f"{by_id[job_id].stage} job {job_id} ({', '.join(parts)})")
    return out


def _note_live_jobs(sd: StudyDir, kind: str) -> None:
    """A local or mpi run beside live Slurm jobs of the study is safe (a task another job is
    running is left to it: the task locks; one finished here is skipped there: the markers),
    and a `harness collect` while a sweep runs is how one looks at partial tables; say what
    is still queued, so nobody is surprised by the sharing."""
    try:
        jobs, live = live_jobs(sd)
    except StudyError:
        return
    if live:
        print(f"harness: note: Slurm jobs of this study are still queued or running "
              f"({'; '.join(_describe_live(sd, jobs, live))}); the {kind} run leaves the tasks "
              f"they are running to them, and they skip what it finishes", file=sys.stderr)


def cancel_study(root: Path | str, stages: Sequence[str] | None = None) -> str:
    """scancel of the study's live jobs (of ``stages``, or all); says what it cancelled, or
    that nothing was queued."""
    sd = StudyDir.open(root)
    known = set(STAGES) | {"farm"}
    unknown = [s for s in stages or () if s not in known]
    if unknown:
        raise StudyError(f"unknown stages {unknown} (stages: {', '.join(STAGES)}, farm)")
    jobs = [j for j in read_jobs(sd)
            if not stages or j.stage in stages or set(j.stages) & set(stages)]
    which = f" in stage{'s' if len(stages or ()) > 1 else ''} {', '.join(stages)}" \
        if stages else ""
    live = [e for e in query_queue(jobs) if e.live] if jobs else []
    if not live:
        return f"nothing of study {sd.config.name} is queued or running{which}"
    cancel_jobs(sorted({e.array_job for e in live}, key=lambda i: (len(i), i)))
    rq = shlex.quote(str(sd.root))
    return (f"cancelled {'; '.join(_describe_live(sd, jobs, live))}\n"
            f"tasks that were running record 'error' (terminated); `harness study --resume "
            f"{rq}` submits what is left")


def status_text(root: Path | str) -> str:
    """Per stage: the tasks done, running, pending, waiting and failed (they add up), from
    disk and the Slurm queue; why the ones not done are not, with the command that fixes the
    common causes; then the candidates' outcomes so far."""
    sd = StudyDir.open(root)
    notes = []
    try:
        jobs = read_jobs(sd)
    except StudyError as exc:
        jobs, notes = [], [f"({exc})"]
    submitted = f"; {len(jobs)} Slurm jobs submitted, see slurm/jobs.json" if jobs else ""
    lines = [f"study {sd.config.name} in {sd.root} (host {sd.config.host.name}, "
             f"{_candidates_text(sd.config)}, configured executor "
             f"{sd.config.executor.kind}{submitted})"]
    entries: list[QueueEntry] = []
    nodes = []
    if jobs:
        try:
            entries = query_queue(jobs, history=True)
        except StudyError as exc:
            notes.append(f"(Slurm queue not available: {str(exc).splitlines()[-1]})")
        if any(e.live for e in entries):
            nodes = node_problems(sd.config.executor.slurm.partition)
    progress = study_progress(sd, jobs, entries, STAGES, nodes)
    lines += [f"  {note}" for note in notes]
    lines += [f"  {stage.line()}" for stage in progress.stages]
    details = progress.details()
    if details:
        lines.append("  not done:")
        lines += [f"    {line}" for line in details]
    outcomes: dict[str, int] = {}
    for cand in sd.plan["candidates"]:
        for stage_file, key in (("train.json", "train"), ("convert.json", "convert")):
            path = sd.candidate_dir(cand["name"]) / stage_file
            if path.is_file():
                try:
                    status = json.loads(path.read_text()).get("status", "?")
                except json.JSONDecodeError:
                    status = "damaged"
                outcomes[f"{key} {status}"] = outcomes.get(f"{key} {status}", 0) + 1
    if outcomes:
        lines.append("  candidates: " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    report = sd.root / "report" / "report.md"
    if report.is_file():
        lines.append(f"  report: {report}")
    return "\n".join(lines)


def _candidates_text(cfg) -> str:
    t = cfg.training
    if t.seeds == 1:
        return f"{t.candidates} candidates"
    return f"{t.candidates * t.seeds} candidates ({t.candidates} hyperparameter sets x {t.seeds} seeds)"
