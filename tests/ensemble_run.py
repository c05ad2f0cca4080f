"""Runs an ensemble in a fresh process (so OMP_NUM_THREADS from the caller applies) and saves
mean, spread and members of two consecutive calls: used by test_ensemble.py."""

import sys

import numpy as np

from harness.native import NativeEnsemble

path, out, noise = sys.argv[1], sys.argv[2], float(sys.argv[3])
with NativeEnsemble(path) as ens:
    if noise > 0:
        ens.set_noise(noise, seed=1234)
    x = np.random.default_rng(0).standard_normal((int(sys.argv[4]), ens.n_inputs))
    first = ens.predict(x, spread=True, members=True)
    second = ens.predict(x, spread=True, members=True)
np.savez(out, **{f"a_{k}": v for k, v in first.items()}, **{f"b_{k}": v for k, v in second.items()})
