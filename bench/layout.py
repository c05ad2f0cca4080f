#!/usr/bin/env python3
"""A GCM's arrays against the library's: what a host's own layout and precision cost.

One physics step over --columns columns in chunks of --pcols, through a network of the paper's
shape (94 -> 5 x [Dense 256, BatchNorm, LeakyReLU 0.3] -> 65, random weights), timed as the
median of --rounds steps in one process (bench/layout_host.f90, built against the build tree):

  native      (features, columns) arrays in the library's precision: the baseline
  direct      the host's real64 (columns, features) chunks as they are (columns_first=.true.)
  transposed  the host transposes and converts each chunk into a buffer, calls, copies back
  threads     the native chunk loop on --threads OpenMP threads (one thread is 'native')

Printed ratios, each against 'native' measured in the same run: direct / native,
transposed / native, native / threads (the speed-up of the OpenMP chunk loop).

    .venv/bin/python bench/layout.py [--precision single|double] [--columns 4096] [--pcols 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", choices=["single", "double"], default="single")
    p.add_argument("--columns", type=int, default=4096)
    p.add_argument("--pcols", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model

    build = REPO_ROOT / "build" / args.precision
    dtype = "float32" if args.precision == "single" else "float64"
    rng = np.random.default_rng(0)
    layers, width = [], 94
    for k in range(5):
        layers += [
            LayerSpec("dense", f"d{k}", {"units": 256, "use_bias": True,
                                         "activation": Activation.make("linear")},
                      {"kernel": rng.normal(0, 1 / np.sqrt(width), (width, 256)),
                       "bias": rng.normal(0, 0.1, 256)}),
            LayerSpec("batch_normalization", f"bn{k}", {"epsilon": 1e-3, "momentum": 0.99,
                                                        "center": True, "scale": True},
                      {"gamma": np.ones(256), "beta": np.zeros(256),
                       "moving_mean": np.zeros(256), "moving_variance": np.ones(256)}),
            LayerSpec("activation", f"a{k}", {"activation": Activation.make(
                "leaky_relu", negative_slope=0.3)}, {})]
        width = 256
    layers.append(LayerSpec("dense", "out", {"units": 65, "use_bias": True,
                                             "activation": Activation.make("linear")},
                            {"kernel": rng.normal(0, 0.05, (256, 65)), "bias": np.zeros(65)}))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "paper.colnn"
        write_model(ModelSpec(dtype, 94, layers), model)
        exe = Path(tmp) / "layout_host"
        mods = [str(d) for d in build.rglob("*.mod") if d.parent.name in ("mod", "include")]
        moddirs = sorted({str(Path(m).parent) for m in mods})
        lib = build / "fortran" / "libcolnn.so"
        subprocess.run(["gfortran", "-O2", "-fopenmp", *[f"-I{d}" for d in moddirs],
                        str(REPO_ROOT / "bench" / "layout_host.f90"), "-o", str(exe), str(lib),
                        f"-Wl,-rpath,{lib.parent}"], check=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        out = subprocess.run([str(exe), str(model), "94", "65", str(args.columns),
                              str(args.pcols), str(args.rounds), str(args.threads)],
                             capture_output=True, text=True, check=True, env=env).stdout
    native, direct, transposed, threaded = (float(v) for v in out.split()[1:5])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.precision} library; {args.columns} columns in chunks of {args.pcols}")
    print(f"native (features, columns), library precision: {native * 1e3:8.2f} ms per step")
    print(f"direct real64 (columns, features):            {direct * 1e3:8.2f} ms  "
          f"ratio {direct / native:.3f}")
    print(f"host transposes + converts:                  {transposed * 1e3:8.2f} ms  "
          f"ratio {transposed / native:.3f}")
    print(f"native chunk loop on {args.threads} threads:              {threaded * 1e3:8.2f} ms  "
          f"speed-up {native / threaded:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
