#!/usr/bin/env python3
"""Training throughput (samples/s) of the Fortran library against Keras `fit` for the paper
architecture (94 -> 5 x [Dense 256, BatchNorm, LeakyReLU 0.3, Dropout 0.1] -> 65), same batch
size, optimizer (Adam), loss (MSE) and thread count; each timed over whole epochs after a
warm-up epoch, median of --repeats epochs.

    .venv/bin/python bench/train.py [--samples 16384] [--batch 256] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16384)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import numpy as np
    import tensorflow as tf
    import keras
    from harness.convert import convert
    from harness.native import NativeModel
    from paper_model import paper_model
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, 94)).astype(np.float32)
    t = (0.1 * rng.standard_normal((args.samples, 65))).astype(np.float32)
    model = paper_model("float32")
    with tempfile.TemporaryDirectory() as d:
        model.save(Path(d) / "paper.keras")
        convert(Path(d) / "paper.keras", Path(d) / "paper.colnn")
        with NativeModel(Path(d) / "paper.colnn") as m:
            m.configure_training("adam learning_rate=0.001", "mse")
            m.train_epoch(x, t, args.batch, seed=1, epoch=0)
            fortran = []
            for e in range(args.repeats):
                t0 = time.perf_counter()
                m.train_epoch(x, t, args.batch, seed=1, epoch=e + 1)
                fortran.append(time.perf_counter() - t0)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="mse")
    model.fit(x, t, batch_size=args.batch, epochs=1, verbose=0)
    keras_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.fit(x, t, batch_size=args.batch, epochs=1, verbose=0)
        keras_times.append(time.perf_counter() - t0)
    rf = args.samples / statistics.median(fortran)
    rk = args.samples / statistics.median(keras_times)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    print(f"training throughput, paper architecture, batch {args.batch}, {args.samples} samples "
          f"per epoch, Adam + MSE, {args.threads} threads; {cpu}")
    print(f"  colnn train_epoch : {rf:10,.0f} samples/s (median of {args.repeats} epochs)")
    print(f"  Keras fit         : {rk:10,.0f} samples/s (median of {args.repeats} epochs)")
    print(f"  ratio colnn / Keras: {rf / rk:.2f}x (goal >= 1.0x)")


if __name__ == "__main__":
    main()
