"""A study from its configuration to its report, and its progress read back from disk."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from .config import STAGES, StudyError, load_config
from .executors import make_executor, queue_state, status_line
from .layout import StudyDir

__all__ = ["open_or_create", "run_stages", "status_text", "default_study_dir"]


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
    make_executor(sd, executor, progress).run(sd, ordered, wait=wait)


def status_text(root: Path | str) -> str:
    """Per stage: finished / failed / pending tasks from disk, running and queued ones from
    Slurm when the study was submitted there; then the candidates' outcomes so far."""
    sd = StudyDir.open(root)
    jobs_path = sd.root / "slurm" / "jobs.json"
    jobs = json.loads(jobs_path.read_text()) if jobs_path.is_file() else []
    submitted = f"; {len(jobs)} Slurm jobs submitted, see slurm/jobs.json" if jobs else ""
    lines = [f"study {sd.config.name} in {sd.root} (host {sd.config.host.name}, "
             f"{_candidates_text(sd.config)}, configured executor "
             f"{sd.config.executor.kind}{submitted})"]
    queue = []
    if jobs:
        ids = {j["job_id"] for j in jobs}
        try:
            queue = [q for q in queue_state(sorted({j["job_name"] for j in jobs}))
                     if q["job"].split("_")[0] in ids]
        except StudyError as exc:
            lines.append(f"  (Slurm queue not available: {str(exc).splitlines()[-1]})")
    for part in status_line(sd, queue, STAGES).split(" | "):
        lines.append(f"  {part}")
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
    if queue:
        states: dict[str, int] = {}
        for q in queue:
            states[q["state"]] = states.get(q["state"], 0) + 1
        lines.append("  queue: " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items())))
    report = sd.root / "report" / "report.md"
    if report.is_file():
        lines.append(f"  report: {report}")
    return "\n".join(lines)


def _candidates_text(cfg) -> str:
    t = cfg.training
    if t.seeds == 1:
        return f"{t.candidates} candidates"
    return f"{t.candidates * t.seeds} candidates ({t.candidates} hyperparameter sets x {t.seeds} seeds)"
