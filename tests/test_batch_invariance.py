"""Batch invariance of the forward pass: a column's outputs are a pure function of its inputs and
the model, whatever the number of columns in the call, the chunking or the threads.

A GCM's chunk size and processor layout decide how many columns reach each call; climate models
test that such choices do not change the answer bit for bit. Models are written directly as
colnn files (no Keras needed): the FKB paper's architecture (widths 94, 256 and 65, so row tiles
have tails) and a small one with odd widths and a leading Normalization layer.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model
from harness.native import NativeEnsemble, NativeModel, batch_invariant_kernel

PRECISIONS = {"single": ("float32", np.float32), "double": ("float64", np.float64)}


def _dense(rng, name: str, n_in: int, units: int, act: str, **params) -> LayerSpec:
    return LayerSpec("dense", name, {"units": units, "use_bias": True,
                                     "activation": Activation.make(act, **params)},
                     {"kernel": rng.normal(0, 1 / np.sqrt(n_in), (n_in, units)),
                      "bias": rng.normal(0, 0.1, units)})


def paper_spec(dtype: str, seed: int = 0, width: int = 256, blocks: int = 5) -> ModelSpec:
    """94 -> blocks x [Dense width, BatchNorm, LeakyReLU 0.3, Dropout] -> 65, random weights."""
    rng = np.random.default_rng(seed)
    layers: list[LayerSpec] = []
    n = 94
    for i in range(blocks):
        layers.append(_dense(rng, f"dense_{i}", n, width, "linear"))
        layers.append(LayerSpec("batch_normalization", f"bn_{i}",
                                {"epsilon": 1e-3, "momentum": 0.99, "center": True, "scale": True},
                                {"gamma": 1 + 0.2 * rng.standard_normal(width),
                                 "beta": 0.1 * rng.standard_normal(width),
                                 "moving_mean": 0.3 * rng.standard_normal(width),
                                 "moving_variance": 0.5 + rng.uniform(0, 1.5, width)}))
        layers.append(LayerSpec("activation", f"leaky_{i}", {"activation": Activation.make(
            "leaky_relu", negative_slope=0.3)}, {}))
        layers.append(LayerSpec("dropout", f"dropout_{i}", {"rate": 0.1}, {}))
        n = width
    layers.append(_dense(rng, "output", n, 65, "linear"))
    return ModelSpec(dtype, 94, layers)


def odd_spec(dtype: str, seed: int) -> ModelSpec:
    """37 -> Normalization -> Dense 50 tanh -> Dense 13: widths that fill no register tile."""
    rng = np.random.default_rng(seed)
    return ModelSpec(dtype, 37, [
        LayerSpec("normalization", "norm", {"epsilon": 1e-7, "invert": False},
                  {"mean": rng.normal(0, 1, 37), "variance": rng.uniform(0.5, 2, 37)}),
        _dense(rng, "hidden", 37, 50, "tanh"),
        _dense(rng, "out", 50, 13, "linear")])


def random_chunks(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(1, min(12, n - 1) + 1),
                              replace=False))
    edges = [0, *cuts.tolist(), n]
    return list(zip(edges[:-1], edges[1:]))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = {}
    base = tmp_path_factory.mktemp("invariance")
    for precision, (dtype, _) in PRECISIONS.items():
        for name, spec in (("paper", paper_spec(dtype)), ("odd", odd_spec(dtype, 3))):
            path = base / f"{name}-{precision}.colnn"
            write_model(spec, path)
            out[(name, precision)] = path
    return out


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("name", ["paper", "odd"])
def test_every_column_count_and_chunking_gives_the_same_bits(models, precision: str,
                                                             name: str) -> None:
    n_max = 200 if precision == "single" else 130
    _, np_dtype = PRECISIONS[precision]
    with NativeModel(models[(name, precision)], precision=precision) as model:
        rng = np.random.default_rng(11)
        x = rng.normal(0, 1.5, (n_max, model.n_inputs)).astype(np_dtype)
        whole = model.predict(x)
        # the kernel computes what the model says: against a float64 numpy forward
        reference = _numpy_forward(models[(name, precision)], x.astype(np.float64))
        tol = 2e-4 if precision == "single" else 1e-11
        np.testing.assert_allclose(whole, reference, rtol=tol, atol=tol)
        differing = [n for n in range(1, n_max + 1)
                     if not np.array_equal(model.predict(x[:n]), whole[:n])]
        assert differing == [], f"column counts whose leading columns differ: {differing[:20]}"
        # a column alone, at any position
        for j in range(0, n_max, 17):
            assert np.array_equal(model.predict(x[j:j + 1]), whole[j:j + 1]), f"column {j}"
        for trial in range(20):
            parts = [model.predict(x[a:b]) for a, b in random_chunks(rng, n_max)]
            assert np.array_equal(np.concatenate(parts), whole), f"chunking trial {trial}"


def _numpy_forward(path: Path, x: np.ndarray) -> np.ndarray:
    from harness.modelfile import read_model
    spec = read_model(path)
    a = x
    for layer in spec.layers:
        t = {k: np.asarray(v, np.float64) for k, v in layer.tensors.items()}
        if layer.type == "dense":
            a = a @ t["kernel"] + t["bias"]
            act = layer.attrs["activation"].name
            if act == "tanh":
                a = np.tanh(a)
        elif layer.type == "batch_normalization":
            eps = float(layer.attrs["epsilon"])
            a = (a - t["moving_mean"]) / np.sqrt(t["moving_variance"] + eps) * t["gamma"] + t["beta"]
        elif layer.type == "activation":
            a = np.where(a > 0, a, 0.3 * a)
        elif layer.type == "normalization":
            a = (a - t["mean"]) / np.sqrt(np.maximum(t["variance"], 1e-7))
    return a


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_noisy_ensemble_is_batch_invariant(models, tmp_path: Path, precision: str) -> None:
    """Members and noise: the noise is keyed by (seed, member, call, global column, feature), so
    a split of the columns draws the same noise when each part is the same call (set_noise
    restarts the call counter; a host passes its step instead); the products must not change
    either."""
    dtype, np_dtype = PRECISIONS[precision]
    members = tmp_path / "members"
    members.mkdir()
    for m in range(3):
        write_model(paper_spec(dtype, seed=20 + m, width=96, blocks=2), members / f"m{m}.colnn")
    n = 120
    with NativeEnsemble(members, precision=precision) as ens:
        def predict(xs, **kw):
            ens.set_noise(0.05, seed=7)
            return ens.predict(xs, **kw)

        x = np.random.default_rng(5).normal(0, 1, (n, ens.n_inputs)).astype(np_dtype)
        whole = predict(x, spread=True, members=True)
        for count in range(1, n + 1):
            part = predict(x[:count], spread=True, members=True)
            for key in whole:
                assert np.array_equal(part[key], whole[key][..., :count, :]), (key, count)
        rng = np.random.default_rng(9)
        for _ in range(10):
            pieces = [predict(x[a:b], members=True, column_offset=a)
                      for a, b in random_chunks(rng, n)]
            assert np.array_equal(np.concatenate([p["mean"] for p in pieces]), whole["mean"])
            assert np.array_equal(np.concatenate([p["members"] for p in pieces], axis=1),
                                  whole["members"])


DIGEST = """
import hashlib, sys
import numpy as np
from harness.native import NativeModel
path, precision, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
with NativeModel(path, precision=precision) as m:
    dt = np.float32 if precision == "single" else np.float64
    x = np.random.default_rng(2).normal(0, 1, (1500, m.n_inputs)).astype(dt)
    y = np.concatenate([m.predict(x[a:a + chunk]) for a in range(0, len(x), chunk)])
print(hashlib.sha256(y.tobytes()).hexdigest())
"""


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_threads_and_chunk_sizes_do_not_change_the_bits(models, repo_root: Path,
                                                        precision: str) -> None:
    """1,500 columns in one call (several OpenMP blocks) or in chunks of 7 or 64, with 1 or 2
    OpenMP threads: one digest. Each run is a fresh process (the thread count is read at start)."""
    digests = set()
    for threads in ("1", "2"):
        for chunk in (1500, 64, 7):
            env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
            out = subprocess.run([sys.executable, "-c", DIGEST, str(models[("paper", precision)]),
                                  precision, str(chunk)], cwd=repo_root, env=env,
                                 capture_output=True, text=True, check=True)
            digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_every_instruction_set_gives_the_same_bits(models, repo_root: Path, precision: str) -> None:
    """The kernel for AVX-512, for AVX2+FMA and the generic C one (fma() from libm) compute the
    same chain of exactly rounded fmas: one digest across the kernels this machine can run,
    so a run on an AVX2-only node reproduces one on an AVX-512 node."""
    names, digests = set(), set()
    probe = "from harness.native import batch_invariant_kernel as k; import sys; print(k(precision=sys.argv[1]))"
    for cap in ("avx512", "avx2", "generic"):
        env = dict(os.environ, COLNN_INVARIANT_KERNEL=cap)
        name = subprocess.run([sys.executable, "-c", probe, precision], cwd=repo_root, env=env,
                              capture_output=True, text=True, check=True).stdout.strip()
        if name != cap:
            continue    # this machine cannot run that kernel
        names.add(name)
        out = subprocess.run([sys.executable, "-c", DIGEST, str(models[("odd", precision)]),
                              precision, "7"], cwd=repo_root, env=env, capture_output=True,
                             text=True, check=True)
        digests.add(out.stdout.strip())
    assert "generic" in names and len(names) >= 2, names
    assert len(digests) == 1, (names, digests)


def test_the_blas_path_stays_available_and_agrees_to_rounding(models) -> None:
    """set_batch_invariant(False) gives the BLAS path back (throughput over reproducibility): it
    agrees with the invariant kernel to rounding, and the kernel in use is named."""
    assert batch_invariant_kernel() in {"avx512", "avx2", "generic"}
    x = np.random.default_rng(4).normal(0, 1, (300, 94)).astype(np.float32)
    with NativeModel(models[("paper", "single")]) as model:
        invariant = model.predict(x)
        model.set_batch_invariant(False)
        blas = model.predict(x)
        model.set_batch_invariant(True)
        again = model.predict(x)
    assert np.array_equal(invariant, again)
    np.testing.assert_allclose(blas, invariant, rtol=1e-4, atol=1e-4)
    digest = hashlib.sha256(invariant.tobytes()).hexdigest()
    assert digest == hashlib.sha256(again.tobytes()).hexdigest()
