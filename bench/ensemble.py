#!/usr/bin/env python3
"""Parallel efficiency of the colnn ensemble: 8 members of the paper architecture
(94 -> 5 x [Dense 256, BatchNorm, LeakyReLU 0.3, Dropout] -> 65, random weights) on 8,192
columns with input noise, timed through the C binding with 1 thread and with more threads
(each thread count in a fresh process: OpenMP reads OMP_NUM_THREADS at start).

Efficiency(N) = t(1) / (N t(N)); the baseline is the same ensemble on one thread.

    .venv/bin/python bench/ensemble.py [--members 8] [--columns 8192] [--threads 1 2 ...]
                                       [--noise 0.1] [--min-time 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def paper_member(seed: int):
    import numpy as np
    from harness.modelfile import Activation, LayerSpec, ModelSpec
    rng = np.random.default_rng(seed)
    f32 = np.float32
    layers, width = [], 94
    for i in range(5):
        layers.append(LayerSpec("dense", f"dense_{i}", {
            "units": 256, "use_bias": True, "activation": Activation.make("linear")},
            {"kernel": (rng.standard_normal((width, 256)) / np.sqrt(width)).astype(f32),
             "bias": (0.1 * rng.standard_normal(256)).astype(f32)}))
        layers.append(LayerSpec("batch_normalization", f"bn_{i}", {
            "epsilon": 1e-3, "momentum": 0.99, "center": True, "scale": True},
            {"gamma": (1 + 0.2 * rng.standard_normal(256)).astype(f32),
             "beta": (0.1 * rng.standard_normal(256)).astype(f32),
             "moving_mean": (0.3 * rng.standard_normal(256)).astype(f32),
             "moving_variance": rng.uniform(0.5, 2.0, 256).astype(f32)}))
        layers.append(LayerSpec("activation", f"leaky_{i}", {
            "activation": Activation.make("leaky_relu", negative_slope=0.3)}, {}))
        layers.append(LayerSpec("dropout", f"dropout_{i}", {"rate": 0.1}, {}))
        width = 256
    layers.append(LayerSpec("dense", "output", {"units": 65, "use_bias": True,
                                                "activation": Activation.make("linear")},
                            {"kernel": (rng.standard_normal((256, 65)) / 16).astype(f32),
                             "bias": np.zeros(65, f32)}))
    return ModelSpec("float32", 94, layers)


def child(args: argparse.Namespace) -> None:
    import numpy as np
    from harness.native import NativeEnsemble
    x = np.random.default_rng(0).standard_normal((args.columns, 94)).astype(np.float32)
    with NativeEnsemble(args.dir) as ens:
        if args.noise > 0:
            ens.set_noise(args.noise, seed=1)
        ens.predict(x)
        times = []
        end = time.perf_counter() + args.min_time
        while time.perf_counter() < end or len(times) < 5:
            t0 = time.perf_counter()
            ens.predict(x)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": statistics.median(times), "repeats": len(times)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--columns", type=int, default=8192)
    p.add_argument("--threads", type=int, nargs="+", default=None)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    from harness.modelfile import write_model
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or sorted({1, cores} | ({cores // 2} if cores >= 4 else set()))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    with tempfile.TemporaryDirectory() as d:
        for m in range(args.members):
            write_model(paper_member(m), Path(d) / f"member_{m:02d}.colnn")
        rows = []
        for n in threads:
            env = dict(os.environ, OMP_NUM_THREADS=str(n), OPENBLAS_NUM_THREADS=str(n))
            out = subprocess.run([sys.executable, __file__, "--child", "--dir", d,
                                  "--columns", str(args.columns), "--noise", str(args.noise),
                                  "--min-time", str(args.min_time)],
                                 env=env, capture_output=True, text=True, check=True)
            rows.append({"threads": n, **json.loads(out.stdout)})
    t1 = rows[0]["median_s"] if rows[0]["threads"] == 1 else None
    print(f"ensemble: {args.members} members of the paper architecture, {args.columns} columns, "
          f"noise sd {args.noise}; machine: {cpu}, {cores} cores usable")
    print(f"{'threads':>8} {'time/call':>12} {'member-cols/s':>15} {'speedup':>9} {'efficiency':>11}")
    for r in rows:
        rate = args.members * args.columns / r["median_s"]
        speed = t1 / r["median_s"] if t1 else float("nan")
        r.update(rate=rate, speedup=speed, efficiency=speed / r["threads"])
        print(f"{r['threads']:>8} {r['median_s'] * 1e3:>10.1f}ms {rate:>15,.0f} {speed:>8.2f}x "
              f"{100 * r['efficiency']:>10.1f}%")
    print("efficiency = t(1 thread) / (threads x t(threads)); goal >= 85%")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
