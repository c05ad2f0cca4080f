"""Ensembles in the Fortran library (through the C binding): member mean, spread and outputs,
reproducible input noise, results bitwise independent of the thread count, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model
from harness.native import ColnnError, NativeEnsemble, NativeModel


def member(rng: np.random.Generator, n_in: int = 6, n_out: int = 4, width: int | None = None,
           depth: int = 2) -> ModelSpec:
    width = width or int(rng.integers(8, 20))
    layers, w = [], n_in
    for i in range(depth):
        layers.append(LayerSpec("dense", f"d{i}", {
            "units": width, "use_bias": True,
            "activation": Activation.make("leaky_relu", negative_slope=0.2)},
            {"kernel": (0.5 * rng.standard_normal((w, width))).astype(np.float32),
             "bias": (0.1 * rng.standard_normal(width)).astype(np.float32)}))
        w = width
    layers.append(LayerSpec("dense", "out", {"units": n_out, "use_bias": False,
                                             "activation": Activation.make("tanh")},
                            {"kernel": (0.5 * rng.standard_normal((w, n_out))).astype(np.float32)}))
    return ModelSpec("float32", n_in, layers)


def make_ensemble(d: Path, n_members: int, seed: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for m in range(n_members):   # members differ in architecture
        write_model(member(rng, depth=1 + m % 3), d / f"member_{m:02d}.colnn")
    return d


def run_in_process(path: Path, out: Path, threads: int, noise: float, columns: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, str(Path(__file__).with_name("ensemble_run.py")), str(path),
                    str(out), str(noise), str(columns)], check=True, env=env)
    return dict(np.load(out))


@pytest.mark.parametrize("n_members", [1, 3, 8])
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_bitwise_identical_for_1_and_2_threads(tmp_path: Path, n_members: int,
                                                noise: float) -> None:
    ens = make_ensemble(tmp_path / "ens", n_members)
    one = run_in_process(ens, tmp_path / "t1.npz", 1, noise, 333)
    two = run_in_process(ens, tmp_path / "t2.npz", 2, noise, 333)
    for key in one:
        assert one[key].tobytes() == two[key].tobytes(), key
    if noise > 0:   # the call counter moves the noise on between calls
        assert not np.array_equal(one["a_mean"], one["b_mean"])
    else:
        assert np.array_equal(one["a_mean"], one["b_mean"])


def test_without_noise_mean_is_mean_of_members(tmp_path: Path) -> None:
    ens_dir = make_ensemble(tmp_path / "ens", 5, seed=3)
    x = np.random.default_rng(1).standard_normal((200, 6)).astype(np.float32)
    one_by_one = []
    for f in sorted(ens_dir.glob("*.colnn")):
        with NativeModel(f) as m:
            one_by_one.append(m.predict(x))
    with NativeEnsemble(ens_dir) as ens:
        assert ens.n_members == 5
        out = ens.predict(x, spread=True, members=True)
    stack = np.stack(one_by_one)
    assert np.array_equal(out["members"], stack)
    expected = stack[0].copy()
    for y in stack[1:]:
        expected += y
    expected *= np.float32(1 / 5)
    assert np.array_equal(out["mean"], expected)
    assert np.allclose(out["spread"], stack.std(axis=0), rtol=1e-5, atol=1e-6)


def test_noise_is_gaussian_per_member_and_reproducible(tmp_path: Path) -> None:
    n = 6
    identity = ModelSpec("float32", n, [LayerSpec(
        "dense", "id", {"units": n, "use_bias": False, "activation": Activation.make("linear")},
        {"kernel": np.eye(n, dtype=np.float32)})])
    d = tmp_path / "id"
    d.mkdir()
    for m in range(4):
        write_model(identity, d / f"m{m}.colnn")
    x = np.zeros((4000, n), np.float32)
    sd = np.array([0.5, 1.0, 2.0, 0.0, 0.1, 3.0], np.float32)
    with NativeEnsemble(d) as ens:
        ens.set_noise(sd, seed=7)
        a = ens.predict(x, members=True)["members"]
        b = ens.predict(x, members=True)["members"]
        ens.set_noise(sd, seed=7)            # same seed, counter reset: same noise again
        a_again = ens.predict(x, members=True)["members"]
        ens.set_noise(sd, seed=8)
        c = ens.predict(x, members=True)["members"]
    assert np.array_equal(a, a_again)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])     # members get different noise
    assert np.all(a[:, :, 3] == 0)           # sd 0: untouched
    for f in (0, 1, 2, 4, 5):
        vals = a[:, :, f].ravel()
        assert abs(vals.mean()) < 0.05 * sd[f] * 4
        assert abs(vals.std() / sd[f] - 1) < 0.03
    z = (a[:, :, 1].ravel() - 0) / 1.0       # tails of a normal: ~4.6% beyond 2 sd
    assert 0.035 < np.mean(np.abs(z) > 2) < 0.057


def test_column_offset_makes_noise_independent_of_the_split(tmp_path: Path) -> None:
    ens_dir = make_ensemble(tmp_path / "ens", 3)
    x = np.random.default_rng(2).standard_normal((100, 6)).astype(np.float32)
    with NativeEnsemble(ens_dir) as whole, NativeEnsemble(ens_dir) as parts:
        whole.set_noise(0.2, seed=5)
        parts.set_noise(0.2, seed=5)
        full = whole.predict(x)["mean"]
        first = parts.predict(x[:37], column_offset=0)["mean"]
    with NativeEnsemble(ens_dir) as parts2:
        parts2.set_noise(0.2, seed=5)
        second = parts2.predict(x[37:], column_offset=37)["mean"]
    assert np.array_equal(full, np.vstack([first, second]))


def test_list_file_with_relative_paths(tmp_path: Path) -> None:
    ens_dir = make_ensemble(tmp_path / "ens", 3)
    lst = tmp_path / "members.txt"
    lst.write_text("# members\nens/member_02.colnn\n\n" + str(ens_dir / "member_00.colnn") + "\n")
    with NativeEnsemble(lst) as ens:
        assert ens.n_members == 2


def test_bad_ensembles_are_refused_naming_the_member(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ColnnError, match="no member files"):
        NativeEnsemble(empty)
    with pytest.raises(ColnnError, match="no such file"):
        NativeEnsemble(tmp_path / "nowhere")
    mixed = make_ensemble(tmp_path / "mixed", 2)
    write_model(member(np.random.default_rng(9), n_out=5), mixed / "member_09.colnn")
    with pytest.raises(ColnnError, match=r"member_09\.colnn maps 6 inputs to 5 outputs"):
        NativeEnsemble(mixed)
    broken = make_ensemble(tmp_path / "broken", 2)
    (broken / "member_01.colnn").write_text("colnn 1\nprecision float32\n")
    with pytest.raises(ColnnError, match=r"member 2: .*member_01\.colnn"):
        NativeEnsemble(broken)
    ok = make_ensemble(tmp_path / "ok", 2)
    with NativeEnsemble(ok) as ens:
        with pytest.raises(ColnnError, match="finite and >= 0"):
            ens.set_noise(-0.1, seed=1)
        with pytest.raises(ColnnError, match="give 1 or 6"):
            ens.set_noise(np.ones(3), seed=1)
        with pytest.raises(ColnnError, match="n_columns must be >= 1"):
            ens.predict(np.zeros((0, 6)))
        assert ens.predict(np.zeros((2, 6)))["mean"].shape == (2, 4)   # still usable
