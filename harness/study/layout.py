"""The study directory: where every stage reads and writes, and the plan that fixes its tasks.

```
STUDY/
  study.toml          the configuration as given          study.json  every value, defaults filled
  plan.json           candidates' hyperparameters and seeds, the task list of every stage
  data/truth-N/       truth runs (run.nml, truth.h5, result.json); data/calibration.json
  candidates/cNNNN/   model.keras, train.json, model.colnn, convert.json
  runs/NAME-icN/      coupled runs (run.nml, result.json, diagnostics.h5, host.log)
  ensembles/topK/     the ensemble's member model files
  tasks/STAGE/N.json  one per finished task (the done marker, written last and atomically)
  locks/STAGE/N.lock  held while a task runs (harness.study.locks): one process per task
  slurm/              generated sbatch scripts, jobs.json, logs/
  results/            candidates.csv/.parquet, runs.csv, curves.csv, climate.csv, summary.json
  report/             report.md and figures
```

A task is finished when its marker exists with status 'ok'; a rerun skips it, so a requeued or
resumed task never writes a second row. A marker with status 'error' (an infrastructure
failure: an exception, a host that could not start, a stop at the time limit, a failed node;
its ``reason`` says which) is retried by ``--resume``.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text as _atomic_write_text

from ..status import TaskState
from .config import STAGES, StudyConfig, StudyError, config_from_dict, config_to_dict

__all__ = ["StudyDir", "task_ics", "atomic_write_text", "atomic_write_json", "read_json",
           "search_distributions", "sample_candidates",
           "couple_tasks", "candidate_name", "online_name"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it into place (the parent is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, text)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A task's JSON output, or None when it is missing or damaged (a killed attempt)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def candidate_name(index: int) -> str:
    return f"c{index:04d}"


def online_name(candidate: str) -> str:
    """The coupled name of a candidate's online-trained twin."""
    return f"{candidate}-online"


def candidate_seed(study_seed: int, index: int) -> int:
    """A seed per candidate that depends only on the study seed and the candidate's index."""
    return int(np.random.SeedSequence([study_seed, index]).generate_state(1)[0] & 0x7FFFFFFF)


def search_distributions(cfg: StudyConfig) -> dict[str, Any]:
    """The space as Optuna distributions (a [low, high] range with low == high is fixed)."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)
    s = cfg.space

    def floats(lo_hi: list[float], log: bool = False) -> Any:
        lo, hi = lo_hi
        return (CategoricalDistribution([lo]) if lo == hi else
                FloatDistribution(lo, hi, log=log))

    return {"batch_norm": CategoricalDistribution(sorted(set(s.batch_norm))),
            "dropout": floats(s.dropout), "leaky_relu": floats(s.leaky_relu),
            "learning_rate": floats(s.learning_rate, log=True),
            "nodes": CategoricalDistribution(sorted(set(s.nodes))),
            "layers": IntDistribution(s.layers[0], s.layers[1]),
            "optimizer": CategoricalDistribution(list(dict.fromkeys(s.optimizer)))}


def n_networks(cfg: StudyConfig) -> int:
    """Candidates trained: hyperparameter sets x replicates."""
    return cfg.training.candidates * cfg.training.seeds


def sample_candidates(cfg: StudyConfig) -> list[dict[str, Any]]:
    """The random search: ``training.candidates`` points of the space (hyperparameter sets),
    drawn by Optuna's RandomSampler from the study seed (the same seed gives the same sets),
    each trained ``training.seeds`` times: candidate i*seeds + r is replicate r of set i, with
    a seed of its own (with one seed a candidate's seed is what it always was)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = search_distributions(cfg)
    search = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed),
                                 study_name=cfg.name)
    out = []
    n_seeds = cfg.training.seeds
    for i in range(cfg.training.candidates):
        trial = search.ask(dists)
        params = dict(trial.params)
        for r in range(n_seeds):
            index = i * n_seeds + r
            out.append({"name": candidate_name(index), "index": index,
                        "seed": candidate_seed(cfg.seed, index), "set": i, "replicate": r,
                        "batch_norm": bool(params["batch_norm"]),
                        "dropout": float(params["dropout"]),
                        "leaky_relu": float(params["leaky_relu"]),
                        "learning_rate": float(params["learning_rate"]),
                        "nodes": int(params["nodes"]), "layers": int(params["layers"]),
                        "optimizer": str(params["optimizer"])})
    return out


def couple_tasks(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Every coupled run: each candidate, each baseline and the ensemble, from each initial
    condition, grouped per model into tasks of at most couple.batch_runs initial conditions
    (``ics``) that one host process runs together. Fixed at planning time, so a Slurm array
    can be sized before training ends (a candidate that never got a model records its runs
    as skipped)."""
    models = [{"name": candidate_name(i), "kind": "candidate"}
              for i in range(n_networks(cfg))]
    if cfg.training.online_steps:
        models += [{"name": online_name(candidate_name(i)), "kind": "online",
                    "candidate": candidate_name(i)} for i in range(n_networks(cfg))]
    models += [{"name": f"baseline-{b}", "kind": "baseline", "closure": b}
               for b in cfg.couple.baselines]
    if cfg.couple.ensemble_top_k > 0:
        models.append({"name": f"ensemble-top{cfg.couple.ensemble_top_k}", "kind": "ensemble"})
    n, size = cfg.couple.initial_conditions, cfg.couple.batch_runs
    return [{**m, "ics": list(range(first, min(first + size, n)))}
            for m in models for first in range(0, n, size)]


def task_ics(task: dict[str, Any]) -> list[int]:
    """The initial conditions of a couple task (plans written before batched runs: one)."""
    return list(task["ics"]) if "ics" in task else [int(task["ic"])]


@dataclass
class StudyDir:
    """A study directory and what was planned in it."""

    root: Path
    config: StudyConfig
    plan: dict[str, Any]

    @classmethod
    def create(cls, root: Path | str, cfg: StudyConfig, source_text: str | None = None
               ) -> "StudyDir":
        """A new study directory, or the existing one if it was planned from the same
        configuration (a rerun resumes); a different configuration is an error."""
        root = Path(root).resolve()
        if re.search(r"[\x00-\x1f\x7f]", str(root)):
            raise StudyError(f"{str(root)!r}: a study directory's path must not contain "
                             "newlines or other control characters (job scripts, Slurm log "
                             "names and the hosts' namelists are line-based)")
        full = config_to_dict(cfg)
        if (root / "study.json").exists():
            old = json.loads((root / "study.json").read_text())
            if old != json.loads(json.dumps(full)):
                changed = sorted(_diff(old, full))
                raise StudyError(f"{root} holds a study with a different configuration "
                                 f"(changed: {', '.join(changed[:8])}); use a new directory")
            return cls.open(root)
        root.mkdir(parents=True, exist_ok=True)
        plan = {"candidates": sample_candidates(cfg), "couple": couple_tasks(cfg)}
        plan["tasks"] = {"data": cfg.data.runs, "train": n_networks(cfg),
                         "convert": n_networks(cfg), "couple": len(plan["couple"]),
                         "collect": 1, "report": 1}
        if source_text is not None:
            atomic_write_text(root / "study.toml", source_text)
        atomic_write_json(root / "plan.json", plan)
        atomic_write_json(root / "study.json", full)     # last: marks a complete plan
        return cls(root, cfg, plan)

    @classmethod
    def open(cls, root: Path | str) -> "StudyDir":
        root = Path(root).resolve()
        try:
            full = json.loads((root / "study.json").read_text())
            plan = json.loads((root / "plan.json").read_text())
        except FileNotFoundError:
            raise StudyError(f"{root} is not a study directory (no study.json/plan.json; "
                             f"start one with `harness study CONFIG -o {root}`)") from None
        except json.JSONDecodeError as exc:
            raise StudyError(f"{root}: damaged study.json or plan.json: {exc}") from None
        cfg = config_from_dict(full, str(root / "study.json"), check_host=False)
        return cls(root, cfg, plan)

    # paths
    def truth_dir(self, index: int) -> Path:
        return self.root / "data" / f"truth-{index}"

    def candidate_dir(self, name: str) -> Path:
        return self.root / "candidates" / name

    def run_dir(self, name: str, ic: int) -> Path:
        return self.root / "runs" / f"{name}-ic{ic}"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    # tasks
    def n_tasks(self, stage: str) -> int:
        return int(self.plan["tasks"][stage])

    def marker(self, stage: str, index: int) -> Path:
        return self.root / "tasks" / stage / f"{index}.json"

    def lock_path(self, stage: str, index: int) -> Path:
        return self.root / "locks" / stage / f"{index}.lock"

    def task_state(self, stage: str, index: int) -> str:
        """'ok', 'error' (retry on resume), 'waiting' (for an unfinished earlier task: rerun
        after it) or 'pending' (never finished)."""
        try:
            marker = json.loads(self.marker(stage, index).read_text())
            return str(marker.get("status", TaskState.ERROR))
        except FileNotFoundError:
            return TaskState.PENDING
        except (json.JSONDecodeError, OSError):
            return TaskState.ERROR

    def pending(self, stage: str, retry_errors: bool = True) -> list[int]:
        """The tasks of a stage still to run, the most expensive first (expected_cost): a pool
        of workers that starts the longest task last idles all but one worker while it runs;
        on the README's main job the couple stage's makespan was 12.3 s in plan order."""
        if stage not in STAGES:
            raise StudyError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
        states = [self.task_state(stage, i) for i in range(self.n_tasks(stage))]
        again = {TaskState.PENDING, TaskState.WAITING} | ({TaskState.ERROR} if retry_errors else set())
        todo = [i for i, s in enumerate(states) if s in again]
        return sorted(todo, key=lambda i: -self.expected_cost(stage, i))

    def expected_cost(self, stage: str, index: int) -> float:
        """A task's cost relative to its stage's others, from the plan alone: a network's
        multiply-adds per column (nodes^2 x layers) for training, conversion and its coupled
        runs (times the runs), an ensemble's as ensemble_top_k median candidates, baselines
        none; other stages' tasks cost alike."""
        if stage not in ("train", "convert", "couple"):
            return 0.0
        def macs(cand: dict[str, Any]) -> float:
            return float(cand.get("nodes", 0)) ** 2 * float(cand.get("layers", 0))
        cands = self.plan["candidates"]
        if stage != "couple":
            return macs(cands[index])
        task = self.plan["couple"][index]
        if task["kind"] in ("candidate", "online"):
            unit = next((macs(c) for c in cands
                         if c["name"] == task.get("candidate", task["name"])), 0.0)
        elif task["kind"] == "ensemble":
            sizes = sorted(macs(c) for c in cands)
            unit = self.config.couple.ensemble_top_k * sizes[len(sizes) // 2] if sizes else 0.0
        else:
            unit = 0.0
        return unit * len(task_ics(task))

    def counts(self, stage: str) -> dict[str, int]:
        out = {str(s): 0 for s in TaskState}
        for i in range(self.n_tasks(stage)):
            state = self.task_state(stage, i)
            out[state if state in out else TaskState.ERROR] += 1
        return out

    def remove(self, path: Path) -> None:
        """Remove a task's stale partial output (a killed attempt) before it reruns."""
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [prefix or "(root)"]
