#!/usr/bin/env python3
"""What the colnn forward pass spends outside the GEMMs, measured with the library as built.

Three model files of the paper architecture (94 -> 5 x 256 -> 65, random weights) are timed
interleaved through the C binding (NativeModel.forward_raw, preallocated arrays):
  full      Dense(linear) -> BatchNormalization -> LeakyReLU(0.3) -> Dropout, as Keras has it
  folded    the same network with each BatchNormalization folded into the Dense before it
            (kernel * s, bias * s + t, s = gamma / sqrt(var + eps), t = beta - mean * s) and
            LeakyReLU as the Dense's own activation: what a load-time BN fold plus a fused
            bias + activation epilogue would give (output checked against `full`)
  gemm-only the same Dense layers without bias, BN and activations: the GEMMs, the column-block
            loop, the copies and the finite checks only
plus the sum of the sgemm_ times of the six layer shapes (the BLAS libcolnn binds to, same
threads): the bound for a library that adds nothing to the GEMMs.

    .venv/bin/python bench/ablation.py [--columns 1 64 1024 8192] [--threads N] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--columns", nargs="+", type=int, default=[1, 64, 1024, 8192])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--wait-quiet", type=float, default=60.0)
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(BENCH_DIR))
    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np
    import forward as fwd
    from blas_rates import paper_spec
    from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model
    from harness.native import NativeModel, library_path

    fwd.QUIET.update(wait_s=args.wait_quiet)
    full = paper_spec(np)
    folded_layers, plain_layers = [], []
    pending = None
    for layer in full.layers:
        if layer.type == "dense":
            if pending is not None:
                folded_layers.append(pending)
            pending = LayerSpec("dense", layer.name, dict(layer.attrs),
                                {k: v.copy() for k, v in layer.tensors.items()})
            plain_layers.append(LayerSpec("dense", layer.name, {
                "units": layer.attrs["units"], "use_bias": False,
                "activation": Activation.make("linear")}, {"kernel": layer.tensors["kernel"]}))
        elif layer.type == "batch_normalization":
            t = layer.tensors
            s64 = t["gamma"].astype(np.float64) / np.sqrt(
                t["moving_variance"].astype(np.float64) + layer.attrs["epsilon"])
            shift = t["beta"] - t["moving_mean"] * s64
            pending.tensors["kernel"] = (pending.tensors["kernel"] * s64).astype(np.float32)
            pending.tensors["bias"] = (pending.tensors["bias"] * s64 + shift).astype(np.float32)
        elif layer.type == "activation":
            pending.attrs["activation"] = layer.attrs["activation"]
    folded_layers.append(pending)
    specs = {"full": full, "folded": ModelSpec("float32", 94, folded_layers),
             "gemm-only": ModelSpec("float32", 94, plain_layers)}

    lib = str(library_path("single"))
    with tempfile.TemporaryDirectory(prefix="colnn-ablation-") as tmp:
        models = {}
        for name, spec in specs.items():
            path = Path(tmp) / f"{name}.colnn"
            write_model(spec, path)
            models[name] = NativeModel(path, library=lib)
        sgemm, blas_path = fwd.resolve_sgemm(lib)
        dense = [(lay.tensors["kernel"].shape[1], lay.tensors["kernel"].shape[0])
                 for lay in full.layers if lay.type == "dense"]
        macs = sum(m * k for m, k in dense)
        print(f"libcolnn {lib} ({fwd.library_identity(lib)}); BLAS {blas_path}; "
              f"threads {args.threads}; {args.rounds} interleaved rounds")
        print(f"{'columns':>8} {'full':>10} {'folded':>10} {'gemm-only':>10} {'gemm sum':>10}"
              f"   {'folded/full':>11} {'gemm-only/full':>14} {'sum/full':>8}   (columns/s)")
        rng = np.random.default_rng(5)
        for nc in args.columns:
            x = rng.standard_normal((nc, 94), dtype=np.float32)
            ys = {n: np.empty((nc, 65), np.float32) for n in models}
            for n, m in models.items():
                m.predict(x, out=ys[n])
            err = float(np.max(np.abs(ys["folded"] - ys["full"])) / np.max(np.abs(ys["full"])))
            if not err < 1e-4:
                raise SystemExit(f"folded model differs from the full one: {err:.2e}")
            xp = x.ctypes.data
            fns = {n: (lambda m=m, yp=ys[n].ctypes.data: m.forward_raw(xp, nc, yp))
                   for n, m in models.items()}
            res = fwd.measure_set(fns, None, args.min_time, args.rounds)
            gemm_sum = 0.0
            for shape in sorted(set(dense)):
                r = fwd.sgemm_rate(sgemm, np, shape[0], nc, shape[1], None, args.min_time / 3,
                                   rounds=args.rounds)
                gemm_sum += dense.count(shape) * r["median_s"]
            cps = {n: nc / r["median_s"] for n, r in res.items()}
            cps["gemm sum"] = nc / gemm_sum
            print(f"{nc:>8} {cps['full']:>10,.0f} {cps['folded']:>10,.0f} "
                  f"{cps['gemm-only']:>10,.0f} {cps['gemm sum']:>10,.0f}   "
                  f"{cps['folded'] / cps['full']:>10.2f}x {cps['gemm-only'] / cps['full']:>13.2f}x"
                  f" {cps['gemm sum'] / cps['full']:>7.2f}x   (full: "
                  f"{2 * macs * cps['full'] / 1e9:.1f} GFLOP/s; fold err {err:.1e})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
