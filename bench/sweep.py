"""Scheduling overhead of a sweep: one stage of short coupled runs (default 100 tasks) through
a real Slurm job array vs the local executor's process pool, on the same slots.

For each executor: makespan (submission to the last task's done marker), the sum of the task
times (each task's own wall time, as its marker records it), ideal = sum / slots, makespan /
ideal (goal <= 1.15) and the scheduling overhead per task = (makespan - ideal) x slots / tasks.

    .venv/bin/python bench/sweep.py [--tasks 100] [--steps 250000] [--slots 2]

Needs root: it starts a single-node Slurm with scripts/local_slurm.sh advertising --slots CPUs
(or uses the cluster of $SLURM_CONF with --use-running-slurm) and stops it at the end. The
networks are two tiny candidates trained once beforehand (not timed); the tasks are the
candidates' and the baselines' coupled L96 runs from many initial conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.study.config import config_from_dict  # noqa: E402
from harness.study.executors import LocalExecutor, SlurmExecutor  # noqa: E402
from harness.study.jobs import SubmittedJob, query_queue  # noqa: E402
from harness.study.layout import StudyDir  # noqa: E402
from harness.study.runner import run_stages  # noqa: E402


def study_config(tasks: int, steps: int, slots: int) -> dict:
    models = 4                                   # 2 candidates + 2 baselines
    if tasks % models:
        raise SystemExit(f"--tasks must be a multiple of {models}")
    return {"name": "sweep-bench", "seed": 5,
            "host": {"name": "l96", "failure": {"max_abs": 1e6}},
            "data": {"steps": 30000},
            "space": {"nodes": [16], "layers": [2, 2], "optimizer": ["adam"],
                      "learning_rate": [1e-3, 1e-3]},
            "training": {"candidates": 2, "epochs": 2, "batch_size": 256},
            # no drift test: every run goes the whole way, so the tasks are alike
            "couple": {"steps": steps, "initial_conditions": tasks // models,
                       "ensemble_top_k": 0, "drift": False},
            "executor": {"workers": slots,
                         "slurm": {"throttle": slots, "poll_seconds": 0.5,
                                   "cpus_per_task": 1, "mem": "500M"}}}


def measure(sd: StudyDir, start: float, slots: int) -> dict:
    markers = [json.loads(p.read_text()) | {"mtime": p.stat().st_mtime}
               for p in (sd.root / "tasks" / "couple").glob("*.json")]
    assert len(markers) == sd.n_tasks("couple"), "some tasks did not finish"
    assert all(m["status"] == "ok" for m in markers)
    task_s = [m["wall_s"] for m in markers]
    makespan = max(m["mtime"] for m in markers) - start
    ideal = sum(task_s) / slots
    return {"tasks": len(markers), "makespan_s": makespan, "sum_task_s": sum(task_s),
            "median_task_s": statistics.median(task_s), "ideal_s": ideal,
            "ratio": makespan / ideal,
            "overhead_per_task_s": (makespan - ideal) * slots / len(markers)}


def fresh_copy(prepared: Path, dest: Path) -> StudyDir:
    shutil.copytree(prepared, dest)
    shutil.rmtree(dest / "tasks" / "couple", ignore_errors=True)
    shutil.rmtree(dest / "runs", ignore_errors=True)
    (dest / "data" / "calibration.json").unlink(missing_ok=True)
    return StudyDir.open(dest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--steps", type=int, default=250000, help="coupled steps per task")
    ap.add_argument("--slots", type=int, default=2, help="tasks at once (CPUs given to Slurm)")
    ap.add_argument("--bundles", default="1,5",
                    help="tasks per Slurm array task to measure (executor.slurm.bundle)")
    ap.add_argument("--use-running-slurm", action="store_true",
                    help="use the cluster of $SLURM_CONF instead of starting one")
    ap.add_argument("--keep", help="keep the study directories here")
    args = ap.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="colnn-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    slurm_dir = work / "slurm-cluster"
    started = False
    try:
        if not args.use_running_slurm:
            proc = subprocess.run(["bash", str(ROOT / "scripts" / "local_slurm.sh"), "start",
                                   str(slurm_dir), str(args.slots)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise SystemExit(f"cannot start the local Slurm: {proc.stderr}")
            os.environ["SLURM_CONF"] = str(slurm_dir / "slurm.conf")
            started = True
        print("preparing: truth runs and two tiny candidates (not timed)", file=sys.stderr)
        cfg = config_from_dict(study_config(args.tasks, args.steps, args.slots), "sweep")
        prepared = StudyDir.create(work / "prepared", cfg)
        run_stages(prepared, ["data", "train", "convert"], "local", progress=False)

        results = {}
        sd = fresh_copy(prepared.root, work / "local")
        start = time.time()
        LocalExecutor(args.slots, progress=False).run(sd, ["couple"])
        results["local"] = measure(sd, start, args.slots)

        for bundle in (int(b) for b in args.bundles.split(",")):
            sd = fresh_copy(prepared.root, work / f"slurm-bundle{bundle}")
            sd.config.executor.slurm.bundle = bundle      # submission side only
            start = time.time()
            jobs = [SubmittedJob.from_dict(j, "sweep")
                    for j in SlurmExecutor(progress=False).submit(sd, ["couple"])]
            while any(e.live for e in query_queue(jobs)):
                time.sleep(0.5)
            results[f"slurm-b{bundle}"] = measure(sd, start, args.slots)
    finally:
        if started:
            subprocess.run(["bash", str(ROOT / "scripts" / "local_slurm.sh"), "stop",
                            str(slurm_dir)], capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or ''}"
          f" python {platform.python_version()}; {args.tasks} coupled L96 runs of "
          f"{args.steps} steps, {args.slots} slots")
    print("slurm-bN: N tasks per array task (executor.slurm.bundle)")
    print(f"{'executor':9s} {'makespan s':>11s} {'sum task s':>11s} {'median task s':>14s} "
          f"{'ideal s':>9s} {'makespan/ideal':>15s} {'overhead/task s':>16s}")
    for name, r in results.items():
        print(f"{name:9s} {r['makespan_s']:11.1f} {r['sum_task_s']:11.1f} "
              f"{r['median_task_s']:14.2f} {r['ideal_s']:9.1f} {r['ratio']:15.3f} "
              f"{r['overhead_per_task_s']:16.3f}")
    for name, r in results.items():
        if name != "local":
            print(f"{name} makespan / local makespan: "
                  f"{r['makespan_s'] / results['local']['makespan_s']:.3f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
