#!/usr/bin/env python3
"""Batched coupled runs: R runs of the Lorenz-96 host in one process (n_runs = R, one coupler
call per RK stage for all of them) against one process per run, as a study's couple task runs
them.

Runs: L96 coarse mode, K = 8 columns, R initial conditions (seeds 1..R), closure 'nn' with a
network of random weights on the host's stencil inputs (3 values):
  paper    3 -> 5 x [Dense 256, BatchNorm, LeakyReLU 0.3, Dropout] -> 1 (bench/coupled.py)
  wide     3 -> 10 x [Dense 512, BatchNorm, LeakyReLU 0.3, Dropout] -> 1
Measured, each the median of --rounds rounds, in the same invocation (ratios only against
figures taken here):
  throughput   coupled steps per second, all runs together: R x steps / the wall time of the
               task (the first process start to the last result), batched (one process) and one
               process per run (one after another, as a study task runs them); and the
               network's share of the batched task (the coupler's seconds / the task's)
  NN GFLOP/s   2 x multiply-adds x columns / the coupler's own seconds (result.json's extras),
               at 8 columns a call (one process per run) and 8 R (batched), and the library's
               forward at 8,192 columns (NativeModel.forward_raw), one thread throughout
  overhead     a --overhead-steps run with a small network (3 -> 16 -> 16 -> 1): the task's wall
               time minus the host's own time (its wall_time_s less its I/O), per run, one
               process per run and batched

    .venv/bin/python bench/couple_batch.py [--runs 10] [--steps 400] [--rounds 3]
                                           [--overhead-steps 20000]
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
sys.path.insert(0, str(REPO_ROOT / "bench"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="R, initial conditions")
    p.add_argument("--steps", type=int, default=400, help="coupled steps per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--overhead-steps", type=int, default=20000)
    p.add_argument("--json", help="write the figures to this file")
    return p.parse_args(argv)


def small_network(seed: int = 0):
    import numpy as np
    from harness.modelfile import Activation, LayerSpec, ModelSpec
    rng = np.random.default_rng(seed)

    def dense(name, n_in, units, act, scale=1.0):
        return LayerSpec("dense", name, {"units": units, "use_bias": True,
                                         "activation": Activation.make(act)},
                         {"kernel": scale * rng.normal(0, 1 / np.sqrt(n_in), (n_in, units)),
                          "bias": scale * rng.normal(0, 0.1, units)})
    return ModelSpec("float32", 3, [
        LayerSpec("normalization", "norm", {"epsilon": 1e-7, "invert": False},
                  {"mean": np.full(3, 2.5), "variance": np.full(3, 12.0)}),
        dense("d1", 3, 16, "tanh"), dense("d2", 16, 16, "tanh"),
        dense("out", 16, 1, "linear", 2.0)])


def multiply_adds(spec) -> int:
    return sum(l.tensors["kernel"].shape[0] * l.tensors["kernel"].shape[1]
               for l in spec.layers if l.type == "dense")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import numpy as np
    from coupled import paper_shaped
    from harness.hosts import HostRun, run_host, run_host_batch
    from harness.modelfile import write_model
    from harness.native import NativeModel, library_path

    work = Path(tempfile.mkdtemp(prefix="colnn-couple-batch-"))
    k, r_runs = 8, args.runs
    nets = {"paper": paper_shaped(3, 1, 256, 5), "wide": paper_shaped(3, 1, 512, 10),
            "small": small_network()}
    files = {}
    for name, spec in nets.items():
        files[name] = work / f"{name}.colnn"
        write_model(spec, files[name])

    def runs(net: str, tag: str, steps: int) -> list[HostRun]:
        return [HostRun(host="l96", output_dir=work / tag / f"ic{i}", model={"k": k},
                        coupler={"model_file": str(files[net])},
                        run={"mode": "coarse", "closure": "nn", "dt": 0.005, "n_steps": steps,
                             "output_interval": max(steps // 10, 1), "seed": i + 1},
                        failure={"max_abs": 1e6})
                for i in range(r_runs)]

    def one_per_run(rs: list[HostRun]) -> tuple[float, list[dict]]:
        t0 = time.perf_counter()
        results = [run_host(r) for r in rs]
        return time.perf_counter() - t0, results

    def batched(rs: list[HostRun], tag: str) -> tuple[float, list[dict]]:
        t0 = time.perf_counter()
        results = run_host_batch(rs, batch_dir=work / tag / "batch")
        return time.perf_counter() - t0, results

    def check(results: list[dict]) -> None:
        bad = [r for r in results if r["status"] != "completed"]
        if bad:
            raise SystemExit(f"a run did not complete: {bad[0]}")

    def nn_gflops(results: list[dict], macs: int, batch: bool) -> float:
        # the coupler's counters are the process's: the batch's once, each solo run's own
        chosen = results[:1] if batch else results
        cols = sum(r["extra"]["coupler_columns"] for r in chosen)
        secs = sum(r["extra"]["coupler_seconds"] for r in chosen)
        return 2.0 * macs * cols / secs / 1e9

    def forward_gflops(net: str, columns: int = 8192) -> float:
        model = NativeModel(files[net])
        x = np.ascontiguousarray(np.random.default_rng(1).normal(3.8, 5.0, (columns, 3)),
                                 np.float32)
        y = np.empty((columns, 1), np.float32)
        for _ in range(2):
            model.forward_raw(x.ctypes.data, columns, y.ctypes.data)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0 or n < 3:
            model.forward_raw(x.ctypes.data, columns, y.ctypes.data)
            n += 1
        return 2.0 * multiply_adds(nets[net]) * columns / ((time.perf_counter() - t0) / n) / 1e9

    figures: dict[str, dict] = {}
    for net in ("paper", "wide"):
        macs = multiply_adds(nets[net])
        rows = []
        for rnd in range(args.rounds):
            t_solo, solo = one_per_run(runs(net, f"{net}_solo{rnd}", args.steps))
            t_batch, batch = batched(runs(net, f"{net}_batch{rnd}", args.steps),
                                     f"{net}_batch{rnd}")
            check(solo)
            check(batch)
            rows.append({"solo_steps_per_s": r_runs * args.steps / t_solo,
                         "batch_steps_per_s": r_runs * args.steps / t_batch,
                         "solo_nn_gflops": nn_gflops(solo, macs, False),
                         "batch_nn_gflops": nn_gflops(batch, macs, True),
                         "batch_nn_share": batch[0]["extra"]["coupler_seconds"] / t_batch})
            rows[-1]["speedup"] = rows[-1]["batch_steps_per_s"] / rows[-1]["solo_steps_per_s"]
            print(f"{net} round {rnd + 1}: " + ", ".join(f"{key} {v:.4g}"
                                                         for key, v in rows[-1].items()),
                  flush=True)
        med = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        med["forward_8192_gflops"] = forward_gflops(net)
        figures[net] = med

    # per-run overhead: the task's wall time less the host's own time
    rows = []
    for rnd in range(args.rounds):
        t_solo, solo = one_per_run(runs("small", f"over_solo{rnd}", args.overhead_steps))
        t_batch, batch = batched(runs("small", f"over_batch{rnd}", args.overhead_steps),
                                 f"over_batch{rnd}")
        check(solo)
        check(batch)
        own_solo = sum(r["wall_time_s"] - r["io_time_s"] for r in solo)
        # a batch's runs share one clock from the host's start: its own time is the last
        # run's end, less every run's I/O
        own_batch = max(r["wall_time_s"] for r in batch) - sum(r["io_time_s"] for r in batch)
        rows.append({"solo_overhead_s": (t_solo - own_solo) / r_runs,
                     "batch_overhead_s": (t_batch - own_batch) / r_runs,
                     "solo_task_s": t_solo, "batch_task_s": t_batch})
        print(f"overhead round {rnd + 1}: " + ", ".join(f"{key} {v:.4g}"
                                                       for key, v in rows[-1].items()),
              flush=True)
    figures["overhead"] = {key: statistics.median(row[key] for row in rows) for key in rows[0]}

    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"one thread; library {library_path()}")
    print(f"L96 coarse, K = {k}, R = {r_runs} initial conditions, {args.steps} steps a run, "
          f"medians of {args.rounds} rounds")
    for net, label in (("paper", "3 -> 5 x 256 -> 1"), ("wide", "3 -> 10 x 512 -> 1")):
        f = figures[net]
        print(f"  {net} ({label}):")
        print(f"    run-steps/s, one process a run    {f['solo_steps_per_s']:10.1f}")
        print(f"    run-steps/s, batched (R = {r_runs})     {f['batch_steps_per_s']:10.1f}"
              f"   x {f['speedup']:.2f} (goal >= 5)")
        print(f"    network's share of the batch      {100 * f['batch_nn_share']:10.1f} %")
        print(f"    NN GFLOP/s at {k} columns a call      {f['solo_nn_gflops']:10.2f}")
        print(f"    NN GFLOP/s at {k * r_runs} columns a call     {f['batch_nn_gflops']:10.2f}")
        print(f"    library forward at 8,192 columns  {f['forward_8192_gflops']:10.2f}   "
              f"(batched / this: {f['batch_nn_gflops'] / f['forward_8192_gflops']:.2f}, "
              f"one a run / this: {f['solo_nn_gflops'] / f['forward_8192_gflops']:.2f})")
    o = figures["overhead"]
    print(f"  per-run overhead (task wall - host's own time), {args.overhead_steps} steps, "
          f"small network:")
    print(f"    one process a run   {1e3 * o['solo_overhead_s']:8.1f} ms a run "
          f"(task {o['solo_task_s']:.2f} s)")
    print(f"    batched             {1e3 * o['batch_overhead_s']:8.1f} ms a run "
          f"(task {o['batch_task_s']:.2f} s)   x {o['solo_overhead_s'] / o['batch_overhead_s']:.1f}"
          f" less")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
