#!/usr/bin/env python3
"""Coupled-run benchmark: the Lorenz-96 host (colnn_l96, coarse mode) with K columns and a
network of the paper's shape, in one run on this machine.

Network: the stencil inputs of the host (X_{k-1}, X_k, X_{k+1}) -> 5 x [Dense(256),
BatchNormalization, LeakyReLU(0.3), Dropout(0.1)] -> Dense(1), random weights (the output
layer scaled down so the coupled run stays bounded for the whole benchmark).

Measured, each as the median of --rounds interleaved rounds:
  coupled     colnn_l96 with closure = 'nn': steps/s, and the NN's share of the step (the time
              inside colnn_coupler_run over the wall time of the step loop, from result.json)
  bare        the same network's batched forward on the same K columns through the C binding
              (NativeModel.forward_raw on preallocated buffers), per call
  dynamics    colnn_l96 with closure = 'none' (the host alone), steps/s
Printed ratio: NN time per coupler call in the coupled run / bare forward per call (goal
<= 1.2: the coupler adds no copies and no allocation to the forward pass). The host calls the
network 4 times per step (once per RK4 stage).

    .venv/bin/python bench/coupled.py [--columns 8192] [--steps 200] [--threads N] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--columns", type=int, default=8192, help="K, the host's columns")
    p.add_argument("--steps", type=int, default=200, help="coupled steps per run")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--json", help="write the figures to this file")
    return p.parse_args(argv)


def paper_shaped(n_in: int, n_out: int, width: int, blocks: int, seed: int = 0):
    import numpy as np
    from harness.modelfile import Activation, LayerSpec, ModelSpec
    rng = np.random.default_rng(seed)
    layers, w = [], n_in
    for i in range(blocks):
        layers += [
            LayerSpec("dense", f"dense_{i}", {"units": width, "use_bias": True,
                                              "activation": Activation.make("linear")},
                      {"kernel": (rng.standard_normal((w, width)) / np.sqrt(w)).astype(np.float32),
                       "bias": (0.1 * rng.standard_normal(width)).astype(np.float32)}),
            LayerSpec("batch_normalization", f"bn_{i}",
                      {"epsilon": 1e-3, "momentum": 0.99, "center": True, "scale": True},
                      {"gamma": (1 + 0.1 * rng.standard_normal(width)).astype(np.float32),
                       "beta": (0.1 * rng.standard_normal(width)).astype(np.float32),
                       "moving_mean": (0.1 * rng.standard_normal(width)).astype(np.float32),
                       "moving_variance": (1 + rng.uniform(0, 0.5, width)).astype(np.float32)}),
            LayerSpec("activation", f"leaky_{i}",
                      {"activation": Activation.make("leaky_relu", negative_slope=0.3)}),
            LayerSpec("dropout", f"dropout_{i}", {"rate": 0.1}),
        ]
        w = width
    layers.append(LayerSpec("dense", "output", {"units": n_out, "use_bias": True,
                                                "activation": Activation.make("linear")},
                            {"kernel": (1e-3 * rng.standard_normal((w, n_out))).astype(np.float32),
                             "bias": np.full(n_out, -3.9, np.float32)}))
    return ModelSpec("float32", n_in, layers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads) if var == "OMP_NUM_THREADS" else "1"
    import numpy as np
    from harness.hosts import host_run_from_dict, run_host
    from harness.modelfile import write_model
    from harness.native import NativeModel, library_path

    work = Path(tempfile.mkdtemp(prefix="colnn-coupled-"))
    spec = paper_shaped(3, 1, args.width, args.blocks)
    model_file = work / "paper_shaped.colnn"
    write_model(spec, model_file)
    k = args.columns

    def host(closure: str, name: str) -> dict:
        data = {"host": "l96", "threads": args.threads, "model": {"k": k},
                "run": {"mode": "coarse", "closure": closure, "inputs": "stencil",
                        "dt": 0.005, "n_steps": args.steps, "output_interval": args.steps,
                        "seed": 1},
                "failure": {"max_abs": 1e6}}
        if closure == "nn":
            data["coupler"] = {"model_file": str(model_file)}
        result = run_host(host_run_from_dict(data, work, output_dir=work / name))
        if result["status"] != "completed":
            raise SystemExit(f"the {closure} run did not complete: {result}")
        return result

    model = NativeModel(model_file)
    x = np.ascontiguousarray(np.random.default_rng(1).normal(3.8, 5.0, (k, 3)), np.float32)
    y = np.empty((k, 1), np.float32)

    def bare_per_call(min_time: float = 1.0) -> float:
        for _ in range(3):
            model.forward_raw(x.ctypes.data, k, y.ctypes.data)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_time or n < 5:
            model.forward_raw(x.ctypes.data, k, y.ctypes.data)
            n += 1
        return (time.perf_counter() - t0) / n

    rows = []
    for r in range(args.rounds):
        nn = host("nn", f"nn{r}")
        none = host("none", f"none{r}")
        bare = bare_per_call()
        loop = nn["wall_time_s"] - nn["io_time_s"]
        rows.append({
            "steps_per_s": args.steps / loop,
            "nn_share": nn["nn_time_s"] / loop,
            "nn_per_call_s": nn["nn_time_s"] / (4 * args.steps),
            "bare_per_call_s": bare,
            "ratio": nn["nn_time_s"] / (4 * args.steps) / bare,
            "dynamics_steps_per_s": args.steps / (none["wall_time_s"] - none["io_time_s"]),
        })
        print(f"round {r + 1}: " + ", ".join(f"{key} {value:.4g}" for key, value in
                                             rows[-1].items()), flush=True)
    med = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    params = spec.n_params
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"threads {args.threads}; library {library_path()}")
    print(f"L96 coarse, K = {k} columns, network 3 -> {args.blocks} x {args.width} -> 1 "
          f"({params} values), {args.steps} steps x 4 NN calls, medians of {args.rounds} rounds")
    print(f"  coupled steps/s            {med['steps_per_s']:10.1f}")
    print(f"  NN share of the step       {100 * med['nn_share']:10.1f} %")
    print(f"  NN per call, coupled       {1e3 * med['nn_per_call_s']:10.3f} ms")
    print(f"  bare batched forward       {1e3 * med['bare_per_call_s']:10.3f} ms")
    print(f"  coupled / bare             {med['ratio']:10.3f}   (goal <= 1.2)")
    print(f"  host alone (closure none)  {med['dynamics_steps_per_s']:10.1f} steps/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"median": med, "rounds": rows,
                                               "columns": k, "threads": args.threads}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
