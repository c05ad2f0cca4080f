#!/usr/bin/env python3
"""What batch invariance costs: the forward pass of the paper architecture with the library's
batch-invariant kernel (the default) vs the BLAS path (set_batch_invariant(False)), both through
the C binding in the same process and run, at 1, 8, 64, 1,024 and 8,192 columns, single and
double precision. Prints columns/s of each and the ratio invariant / BLAS (>= 1: no cost), and
checks first that the BLAS path really changes bits with the column count on this machine
while the invariant one does not.

Model: 94 -> 5 x [Dense 256, BatchNorm, LeakyReLU 0.3, Dropout] -> 65 written directly as a
colnn file with random weights (tests/test_batch_invariance.py's paper_spec; no Keras needed).

    .venv/bin/python bench/batch_invariance.py [--columns 1 8 64 1024 8192] [--threads N]
                                               [--min-time S] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(REPO_ROOT), str(BENCH_DIR), str(REPO_ROOT / "tests")]

MACS_PER_COLUMN = 94 * 256 + 4 * 256 * 256 + 256 * 65


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--columns", type=int, nargs="+", default=[1, 8, 64, 1024, 8192])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="OpenMP and OpenBLAS threads (default: all usable cores)")
    p.add_argument("--min-time", type=float, default=0.5,
                   help="seconds of timed repeats per method and column count (default 0.5)")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    p.add_argument("--precisions", nargs="+", default=["single", "double"])
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from forward import BUSY_WARN, cpu_model, measure_set, set_thread_env
    set_thread_env(args.threads)
    import numpy as np

    from harness.modelfile import write_model
    from harness.native import NativeModel, batch_invariant_kernel, library_path
    from test_batch_invariance import paper_spec

    print("== batch invariance: cost of the invariant kernel vs the BLAS path ==")
    print(f"machine      : {cpu_model()}, threads = {args.threads}")
    print(f"kernel       : {batch_invariant_kernel()} (fma chain per element, k order)")
    results = {"threads": args.threads, "cpu": cpu_model(), "kernel": batch_invariant_kernel(),
               "rows": []}
    with tempfile.TemporaryDirectory(prefix="colnn-bi-") as tmp:
        for precision in args.precisions:
            dtype = np.float32 if precision == "single" else np.float64
            path = Path(tmp) / f"paper-{precision}.colnn"
            write_model(paper_spec("float32" if precision == "single" else "float64"), path)
            invariant = NativeModel(path, precision=precision)
            blas = NativeModel(path, precision=precision)
            blas.set_batch_invariant(False)
            print(f"library      : {library_path(precision)}")
            rng = np.random.default_rng(1)
            big = max(args.columns)
            xall = rng.standard_normal((big, 94)).astype(dtype)
            ref_inv, ref_blas = invariant.predict(xall), blas.predict(xall)
            changed = [nc for nc in args.columns
                       if not np.array_equal(blas.predict(xall[:nc]), ref_blas[:nc])]
            unchanged = all(np.array_equal(invariant.predict(xall[:nc]), ref_inv[:nc])
                            for nc in args.columns)
            print(f"{precision}: column counts whose leading columns change bits vs one "
                  f"{big}-column call: BLAS {changed or 'none'}; invariant "
                  f"{'none' if unchanged else 'SOME (a bug)'}")
            print(f"{'columns':>8} {'invariant col/s':>16} {'BLAS col/s':>12} "
                  f"{'invariant GFLOP/s':>18} {'invariant/BLAS':>15}")
            for nc in args.columns:
                x = np.ascontiguousarray(xall[:nc])
                y1 = np.empty((nc, 65), dtype)
                y2 = np.empty((nc, 65), dtype)
                xp, p1, p2 = x.ctypes.data, y1.ctypes.data, y2.ctypes.data
                t = measure_set({"invariant": lambda: invariant.forward_raw(xp, nc, p1),
                                 "blas": lambda: blas.forward_raw(xp, nc, p2)},
                                None, args.min_time, args.rounds)
                cps = {k: nc / v["median_s"] for k, v in t.items()}
                gflops = 2.0 * MACS_PER_COLUMN * cps["invariant"] / 1e9
                busy = max(v["others"] for v in t.values())
                mark = "!" if busy > BUSY_WARN else " "
                ratio = cps["invariant"] / cps["blas"]
                print(f"{nc:>8} {cps['invariant']:>16,.0f} {cps['blas']:>12,.0f} "
                      f"{gflops:>18.1f} {ratio:>14.2f}x{mark}")
                results["rows"].append({"precision": precision, "columns": nc,
                                        "columns_per_s": cps, "ratio": ratio,
                                        "invariant_gflops": gflops, "other_cores": busy,
                                        "blas_changes_bits": nc in changed})
            invariant.close()
            blas.close()
    print("ratio > 1: the invariant kernel is faster; '!': other processes used > "
          f"{BUSY_WARN} cores during that measurement")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
