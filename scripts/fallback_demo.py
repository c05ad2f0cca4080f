#!/usr/bin/env python3
"""Per-column fallback and ramped coupling on the L96 host, with a deliberately bad column.

A small stencil network (X_{k-1}, X_k, X_{k+1} -> U_k) is trained in Keras on a truth run and
coupled for N steps from a snapshot of a second truth run. From step 1 on, network column 3's
inputs are replaced by 1e6 at every stage (inject_target = 'nn_input': a column unlike any in
training; the host's state is untouched), and the run is made:

  off        without fallback (the coupler passes the network's answer on),
  kept       with fallback (bounds [-60, 60], the fallback threshold raised to 0.2 so that one
             column of 8, 12.5 % of the column calls, is allowed),
  default    with fallback and the default threshold (more than 10 % of the column calls for
             10 consecutive steps fails the run),
  ramp       with fallback (threshold 0.2) and a ramp over the first N/4 steps,
  clean      the network without the bad column (reference).

Each line gives status, steps, failure step and reason, fallback column calls and the steps
with any. The figures go to docs/results/fallback/README.md.

  .venv/bin/python scripts/fallback_demo.py /tmp/fallback-demo [--steps 4000]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.convert import convert
from harness.hosts import HostError, host_run_from_dict, run_host
from harness.l96 import fit_cubic, read_truth, training_pairs

K = 8


def host(base: Path, name: str, mode: str, run: dict[str, Any],
         coupler: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = {"host": "l96", "model": {"k": K}, "run": {"mode": mode, **run},
            "failure": {"max_abs": 50.0}, "coupler": coupler or {}}
    try:
        return run_host(host_run_from_dict(spec, base, output_dir=base / name), timeout=600)
    except HostError as exc:
        return {"status": "error", "message": str(exc), "steps": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a directory for the runs")
    parser.add_argument("--steps", type=int, default=4000, help="coupled steps (dt = 0.005)")
    args = parser.parse_args()
    base = args.out.resolve()
    base.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    truth = {}
    for seed in (1, 2):
        r = host(base, f"truth{seed}", "truth",
                 {"dt": 0.001, "n_steps": 60000, "spinup_steps": 2000, "sample_interval": 10,
                  "seed": seed})
        assert r["status"] == "completed", r
        truth[seed] = base / f"truth{seed}" / "truth.h5"
    x, u, _ = read_truth(truth[1])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    inputs, targets = training_pairs(x, u, "stencil", 1)
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(inputs)
    model = keras.Sequential([keras.Input((3,)), norm, keras.layers.Dense(16),
                              keras.layers.LeakyReLU(negative_slope=0.1),
                              keras.layers.Dense(16), keras.layers.LeakyReLU(negative_slope=0.1),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(inputs, targets, batch_size=256, epochs=3, verbose=0)
    model.save(base / "nn.keras")
    convert(base / "nn.keras", base / "nn.colnn")
    common = {"dt": 0.005, "n_steps": args.steps, "init_file": str(truth[2]), "init_index": 50,
              "closure": "nn", "cubic_coeffs": fit_cubic(x, u), "output_interval": 10}
    bad = {**common, "inject_nan_step": 1, "inject_nan_column": 3, "inject_value": "1e6",
           "inject_target": "nn_input"}
    fallback = {"model_file": str(base / "nn.colnn"), "fallback": True,
                "fallback_lower": -60.0, "fallback_upper": 60.0}
    cases = {
        "off": (bad, {"model_file": str(base / "nn.colnn")}),
        "kept": (bad, {**fallback, "fallback_max_share": 0.2}),
        "default": (bad, fallback),
        "ramp": (bad, {**fallback, "fallback_max_share": 0.2, "ramp_steps": args.steps // 4}),
        "clean": (common, {"model_file": str(base / "nn.colnn")}),
    }
    rows = {}
    for name, (run, coupler) in cases.items():
        r = host(base, name, "coarse", run, coupler)
        extra = r.get("extra") or {}
        rows[name] = {"status": r.get("status"), "steps": r.get("steps"),
                      "failure_step": r.get("failure_step"), "reason": r.get("reason"),
                      "fallback_columns": extra.get("fallback_columns"),
                      "fallback_steps": extra.get("fallback_steps"),
                      "fallback_max_share": extra.get("fallback_max_share"),
                      "mean_x": extra.get("mean_x"), "message": r.get("message", "")[:160]}
        print(f"{name:8s} {json.dumps(rows[name])}")
    (base / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wall {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
