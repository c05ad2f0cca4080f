"""Measured cost per candidate of a study configuration, and its projected wall time.

Runs a probe of CONFIG on this machine: the first --candidates candidates of the study (the
random search draws them in order, so they are the full study's first candidates) trained for
--epochs epochs, converted, and coupled from every initial condition for --couple-steps steps,
as the study runs them (couple.batch_runs initial conditions per host process). From the
measured times it projects, per candidate, training for the configured epochs (an upper bound:
early stopping ends many sooner), conversion and the full-length coupled runs (each couple
task's fixed cost, i.e. its wall time less the host's own, once, plus the host's time per step
times the configured steps; an upper bound: runs that fail stop early), then the study's wall
time on the configured Slurm throttle (slots) or on --slots.

    .venv/bin/python bench/study_cost.py examples/study/l96-paper.toml [--candidates 4]
        [--epochs 1] [--couple-steps 2000] [--slots 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.study.config import config_from_dict  # noqa: E402
from harness.study.layout import StudyDir, task_ics  # noqa: E402
from harness.study.runner import run_stages  # noqa: E402


def marker(sd: StudyDir, stage: str, index: int) -> dict:
    return json.loads(sd.marker(stage, index).read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--couple-steps", type=int, default=2000)
    ap.add_argument("--slots", type=int, default=0, help="default: executor.slurm.throttle")
    ap.add_argument("--keep", help="keep the probe study here")
    args = ap.parse_args()

    data = tomllib.loads(Path(args.config).read_text())
    full = config_from_dict(data, args.config)
    threads = min(full.training.threads, os.cpu_count() or 1)
    probe = json.loads(json.dumps(data))
    probe["name"] = f"{full.name}-cost-probe"
    probe.setdefault("training", {}).update(candidates=args.candidates, epochs=args.epochs,
                                            threads=threads)
    probe.setdefault("couple", {}).update(steps=args.couple_steps, ensemble_top_k=0)
    probe["executor"] = {"kind": "local", "workers": 1}
    cfg = config_from_dict(probe, "probe")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="colnn-cost-"))
    try:
        sd = StudyDir.create(work / "probe", cfg)
        run_stages(sd, ["data", "train", "convert", "couple"], "local", progress=True)
        n_ic = cfg.couple.initial_conditions
        data_s = [marker(sd, "data", i)["wall_s"] for i in range(cfg.data.runs)]
        rows = []
        for cand in sd.plan["candidates"]:
            i, name = cand["index"], cand["name"]
            train = json.loads((sd.candidate_dir(name) / "train.json").read_text())
            epochs = max(train.get("epochs", 1), 1)
            per_epoch = train["train_s"] / epochs
            convert_s = marker(sd, "convert", i)["wall_s"]
            couple_s, per_step = 0.0, []
            for j, task in enumerate(sd.plan["couple"]):
                if task["name"] != name:
                    continue
                # a task is one host process running its initial conditions as one batch: the
                # process's fixed cost (start, model load, output) is paid once per task, the
                # stepping scales with the steps; a failed run stops early, so the batch's
                # slowest run gives the time per step (an upper bound)
                task_marker = marker(sd, "couple", j)
                results = [json.loads((sd.run_dir(name, ic) / "result.json").read_text())
                           for ic in task_ics(task)
                           if (sd.run_dir(name, ic) / "result.json").is_file()]
                if not results:
                    continue
                host_s = max(r["wall_time_s"] for r in results)
                steps = max(max(r.get("steps") or 1 for r in results), 1)
                per_step.append(host_s / steps / len(results))
                couple_s += (task_marker["wall_s"] - host_s) + host_s / steps * full.couple.steps
            if not per_step:
                couple_s = float("nan")
            train_s = per_epoch * full.training.epochs
            rows.append({"name": name, "nodes": cand["nodes"], "layers": cand["layers"],
                         "optimizer": cand["optimizer"], "params": train.get("n_params"),
                         "status": train["status"], "s_per_epoch": per_epoch,
                         "couple_ms_per_run_step": 1e3 * statistics.median(per_step)
                         if per_step else float("nan"),
                         "train_s": train_s, "convert_s": convert_s, "couple_s": couple_s,
                         "total_s": train_s + convert_s + couple_s})
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    slots = args.slots or full.executor.slurm.throttle
    n = full.training.candidates
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; TensorFlow threads {threads}; config {args.config}")
    print(f"probe: first {args.candidates} of {n} candidates, {args.epochs} epoch(s) measured, "
          f"coupled {args.couple_steps} steps x {n_ic} initial conditions in batches of "
          f"{cfg.couple.batch_runs} runs per process; projected to "
          f"{full.training.epochs} epochs and {full.couple.steps} steps (upper bounds)")
    print(f"{'cand':6s} {'nodes':>5s} {'layers':>6s} {'opt':>8s} {'params':>9s} "
          f"{'s/epoch':>8s} {'train s':>8s} {'conv s':>7s} {'ms/step':>8s} {'couple s':>9s} "
          f"{'total s':>8s}")
    for r in rows:
        print(f"{r['name']:6s} {r['nodes']:5d} {r['layers']:6d} {r['optimizer']:>8s} "
              f"{r['params'] or 0:9d} {r['s_per_epoch']:8.1f} {r['train_s']:8.0f} "
              f"{r['convert_s']:7.1f} {r['couple_ms_per_run_step']:8.3f} {r['couple_s']:9.0f} "
              f"{r['total_s']:8.0f}")
    mean = statistics.mean(r["total_s"] for r in rows)
    median = statistics.median(r["total_s"] for r in rows)
    truth = max(data_s)
    print(f"per candidate: median {median:.0f} s, mean {mean:.0f} s (slot-seconds on this "
          f"machine's cores); truth runs {truth:.1f} s each")
    serial_h = (sum(data_s) + n * mean) / 3600
    wall_h = (truth + n * mean / min(slots, n)) / 3600
    print(f"projected: {n} candidates = {serial_h:.1f} h on one such slot; on {slots} slots "
          f"about {wall_h:.2f} h wall (+ queue waits), baselines and ensemble extra")
    print(json.dumps({"rows": rows, "per_candidate_median_s": median,
                      "per_candidate_mean_s": mean, "slots": slots,
                      "projected_wall_h": wall_h, "projected_serial_h": serial_h}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
