"""Batched coupled runs (issue 17, item 2): one host process runs R independent runs (initial
conditions and seeds of one configuration) with one coupler call per RK stage for all of them.

Every run of a batch is bitwise the run alone: result.json (but for the times, the coupler's
counters, which are the batch's, and config_hash, which is of the batch's namelist) and every
dataset and attribute of diagnostics.h5, for both hosts, with the network and the other
closures, on 1 and 2 MPI ranks (a real mpirun). A NaN injected into one run fails that run alone
at that step and the others finish as they do alone; an initial-condition index out of range is
an error of that run, naming it; a batch too large for its memory limit is refused before the
first step with the size it needs. Networks are written as colnn files (no Keras needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from harness.hosts import HostError, HostRun, run_host, run_host_batch
from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model

K = 8
SW_DAY = 96
#: result.json fields that are not the run's outcome: timings, the coupler's counters (of the
#: whole batch) and the hash of the namelist file (the batch has one for all its runs)
NOT_COMPARED = {"wall_time_s", "nn_time_s", "dynamics_time_s", "io_time_s", "config_hash"}
BATCH_EXTRAS = {"coupler_calls", "coupler_columns", "coupler_seconds"}


def _dense(rng: np.random.Generator, name: str, n_in: int, units: int, act: str,
           scale: float = 1.0) -> LayerSpec:
    return LayerSpec("dense", name, {"units": units, "use_bias": True,
                                     "activation": Activation.make(act)},
                     {"kernel": scale * rng.normal(0, 1 / np.sqrt(n_in), (n_in, units)),
                      "bias": scale * rng.normal(0, 0.1, units)})


def small_network(path: Path, n_in: int, n_out: int, mean: float, var: float,
                  out_scale: float, seed: int = 0) -> Path:
    """n_in -> Normalization -> Dense 16 tanh -> Dense 16 tanh -> Dense n_out (scaled)."""
    rng = np.random.default_rng(seed)
    write_model(ModelSpec("float32", n_in, [
        LayerSpec("normalization", "norm", {"epsilon": 1e-7, "invert": False},
                  {"mean": np.full(n_in, mean), "variance": np.full(n_in, var)}),
        _dense(rng, "d1", n_in, 16, "tanh"), _dense(rng, "d2", 16, 16, "tanh"),
        _dense(rng, "out", 16, n_out, "linear", out_scale)]), path)
    return path


@pytest.fixture(scope="module")
def l96(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("batch_l96")
    truth = run_host(HostRun(host="l96", output_dir=base / "truth", model={"k": K},
                             run={"mode": "truth", "dt": 0.001, "n_steps": 4000,
                                  "spinup_steps": 500, "sample_interval": 100, "seed": 3}),
                     timeout=300)
    assert truth["status"] == "completed"
    return {"base": base, "truth": base / "truth" / "truth.h5",
            "nn": small_network(base / "l96.colnn", 3, 1, 2.5, 12.0, 2.0)}


@pytest.fixture(scope="module")
def sw(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("batch_sw")
    truth = run_host(HostRun(host="sw", output_dir=base / "truth", model={"nx": 16, "ny": 12},
                             run={"mode": "truth", "n_steps": 2 * SW_DAY,
                                  "spinup_steps": SW_DAY, "sample_interval": SW_DAY // 4,
                                  "seed": 5}), timeout=300)
    assert truth["status"] == "completed"
    return {"base": base, "truth": base / "truth" / "truth.h5",
            "nn": small_network(base / "sw.colnn", 15, 3, 0.0, 4.0, 1e-7)}


def l96_runs(fix: dict, name: str, closure: str, ranks: int = 1, n: int = 4,
             **extra_run) -> list[HostRun]:
    base: Path = fix["base"]
    coupler = {"model_file": str(fix["nn"])} if closure == "nn" else {}
    return [HostRun(host="l96", output_dir=base / name / f"run{r}", model={"k": K},
                    ranks=ranks, coupler=coupler,
                    run={"mode": "coarse", "closure": closure, "dt": 0.005, "n_steps": 300,
                         "output_interval": 10, "init_file": str(fix["truth"]),
                         "init_index": 3 + 7 * r, "seed": 100 + r,
                         "cubic_coeffs": [0.3, -0.6, 0.0, 0.0005], **extra_run})
            for r in range(n)]


def sw_runs(fix: dict, name: str, ranks: int = 1, n: int = 4, **extra_run) -> list[HostRun]:
    base: Path = fix["base"]
    return [HostRun(host="sw", output_dir=base / name / f"run{r}", model={"nx": 16, "ny": 12},
                    ranks=ranks, coupler={"model_file": str(fix["nn"])},
                    run={"mode": "coarse", "closure": "nn", "n_steps": 60,
                         "output_interval": 6, "init_file": str(fix["truth"]),
                         "init_index": 1 + 2 * r, "seed": 200 + r, **extra_run})
            for r in range(n)]


def solo(runs: list[HostRun], suffix: str = "solo") -> list[dict]:
    """Each run alone, in a directory of its own next to the batch's."""
    out = []
    for run in runs:
        alone = HostRun(**{**run.__dict__, "output_dir": run.output_dir.with_name(
            run.output_dir.name + "." + suffix)})
        out.append(run_host(alone, timeout=300))
    return out


def assert_same_run(batch_dir: Path, solo_dir: Path) -> None:
    """result.json (but the times, the batch's counters and config_hash) and every dataset
    and attribute of diagnostics.h5 bitwise equal."""
    got = json.loads((batch_dir / "result.json").read_text())
    want = json.loads((solo_dir / "result.json").read_text())
    for r in (got, want):
        for key in NOT_COMPARED:
            r.pop(key, None)
        for key in BATCH_EXTRAS:
            r["extra"].pop(key, None)
    assert got == want, f"{batch_dir} differs from {solo_dir}"
    with h5py.File(batch_dir / "diagnostics.h5") as a, h5py.File(solo_dir / "diagnostics.h5") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert dict(a.attrs) == dict(b.attrs) or _attrs_equal(a.attrs, b.attrs)
        for name in a:
            x, y = a[name][()], b[name][()]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert x.tobytes() == y.tobytes(), f"{batch_dir}: {name} differs from the run alone"


def _attrs_equal(a, b) -> bool:
    if sorted(a.keys()) != sorted(b.keys()):
        return False
    return all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


def batch_and_solo(runs: list[HostRun], name: str) -> tuple[list[dict], list[dict]]:
    batch = run_host_batch(runs, timeout=300, batch_dir=runs[0].output_dir.parent / "batch")
    return batch, solo(runs)


@pytest.mark.parametrize("closure", ["nn", "cubic", "none"])
def test_l96_batch_equals_each_run_alone(l96: dict, closure: str) -> None:
    runs = l96_runs(l96, f"same_{closure}", closure)
    batch, alone = batch_and_solo(runs, closure)
    assert [r["status"] for r in batch] == [r["status"] for r in alone]
    assert len({r["extra"]["mean_x"] for r in batch}) == len(runs)   # four different runs
    for run in runs:
        assert_same_run(run.output_dir, run.output_dir.with_name(run.output_dir.name + ".solo"))
    if closure == "nn":
        # one coupler call a stage for the four runs: the calls of one run alone
        assert batch[0]["extra"]["coupler_calls"] == alone[0]["extra"]["coupler_calls"]
        assert batch[0]["extra"]["coupler_columns"] == 4 * alone[0]["extra"]["coupler_columns"]


def test_l96_batch_in_double_precision_equals_each_run_alone(l96: dict) -> None:
    runs = l96_runs(l96, "double", "nn")
    for run in runs:
        run.precision = "double"
    batch, alone = batch_and_solo(runs, "double")
    assert [r["status"] for r in batch] == [r["status"] for r in alone]
    for run in runs:
        assert_same_run(run.output_dir, run.output_dir.with_name(run.output_dir.name + ".solo"))


def test_l96_batch_on_two_ranks_equals_each_run_alone(l96: dict) -> None:
    runs = l96_runs(l96, "ranks2", "nn", ranks=2)
    batch, alone = batch_and_solo(runs, "ranks2")
    for run in runs:
        assert_same_run(run.output_dir, run.output_dir.with_name(run.output_dir.name + ".solo"))
    # and the same bits as one rank (the library and the host are layout-invariant)
    one_rank = l96_runs(l96, "ranks1", "nn", ranks=1)
    run_host_batch(one_rank, timeout=300, batch_dir=l96["base"] / "ranks1" / "batch")
    for a, b in zip(runs, one_rank):
        with h5py.File(a.output_dir / "diagnostics.h5") as x, \
                h5py.File(b.output_dir / "diagnostics.h5") as y:
            assert x["x_final"][()].tobytes() == y["x_final"][()].tobytes()


@pytest.mark.parametrize("ranks", [1, 2])
def test_sw_batch_equals_each_run_alone(sw: dict, ranks: int) -> None:
    runs = sw_runs(sw, f"sw_ranks{ranks}", ranks=ranks)
    batch, alone = batch_and_solo(runs, f"sw{ranks}")
    assert all(r["status"] == "completed" for r in batch), batch
    for run in runs:
        assert_same_run(run.output_dir, run.output_dir.with_name(run.output_dir.name + ".solo"))


@pytest.mark.parametrize("host, ranks", [("l96", 1), ("l96", 2), ("sw", 1)])
def test_nan_in_one_run_fails_that_run_alone(l96: dict, sw: dict, host: str,
                                             ranks: int) -> None:
    name = f"nan_{host}_{ranks}"
    runs = (l96_runs(l96, name, "nn", ranks=ranks) if host == "l96"
            else sw_runs(sw, name, ranks=ranks))
    hit, step = 2, 37
    runs[hit].run.update(inject_nan_step=step, inject_nan_column=5)
    batch, alone = batch_and_solo(runs, name)
    assert batch[hit]["status"] == "failed" and batch[hit]["failure_step"] == step
    assert batch[hit]["reason"] == "nonfinite"
    others = [r for i, r in enumerate(batch) if i != hit]
    assert all(r["status"] == "completed" for r in others), others
    # the injected run and the others, each the run alone
    for run in runs:
        assert_same_run(run.output_dir, run.output_dir.with_name(run.output_dir.name + ".solo"))
    # the failed run's columns left the network: fewer columns than four runs to the end
    full = 4 * alone[0]["extra"]["coupler_columns"]
    assert batch[0]["extra"]["coupler_columns"] < full


def test_network_error_in_one_run_fails_that_run_alone(l96: dict) -> None:
    """A network whose output overflows to inf once X_k passes 12 somewhere: the batch's call
    fails, each run is then called alone to tell which failed (nn_error at their own steps);
    the others go on as they do alone."""
    path = l96["base"] / "overflow.colnn"
    write_model(ModelSpec("float32", 3, [
        LayerSpec("dense", "over12", {"units": 1, "use_bias": True,
                                      "activation": Activation.make("relu")},
                  {"kernel": np.array([[0.0], [1.0], [0.0]]), "bias": np.array([-12.0])}),
        LayerSpec("dense", "huge", {"units": 1, "use_bias": True,
                                    "activation": Activation.make("linear")},
                  {"kernel": np.array([[1e38]]), "bias": np.array([0.0])})]), path)
    runs = l96_runs(l96, "nn_error", "nn", n=6)
    for i, run in enumerate(runs):
        run.coupler = {"model_file": str(path)}
        run.run.pop("init_file")       # keyed random states: some runs pass 12 sooner
        run.run["seed"] = 1000 + 17 * i
    batch, alone = batch_and_solo(runs, "nn_error")
    reasons = [r["reason"] for r in batch]
    assert "nn_error" in reasons, reasons
    assert len({r["failure_step"] for r in batch}) > 1, batch   # runs fail at their own steps
    for run in runs:
        assert_same_run(run.output_dir, run.output_dir.with_name(run.output_dir.name + ".solo"))


def test_init_index_out_of_range_is_an_error_of_that_run(l96: dict) -> None:
    runs = l96_runs(l96, "bad_index", "cubic")
    runs[1].run["init_index"] = 10_000
    batch = run_host_batch(runs, timeout=300)
    assert batch[1]["status"] == "error"
    assert "run 2" in batch[1]["message"] and "init_index 10000" in batch[1]["message"]
    assert [r["status"] for r in batch[:1] + batch[2:]] == ["completed"] * 3
    alone = solo([runs[0], runs[2], runs[3]])
    assert all(r["status"] == "completed" for r in alone)
    for run in (runs[0], runs[2], runs[3]):
        assert_same_run(run.output_dir, run.output_dir.with_name(run.output_dir.name + ".solo"))


def test_batch_over_its_memory_limit_is_refused_before_the_first_step(sw: dict) -> None:
    runs = sw_runs(sw, "memory", max_batch_bytes=200_000)
    with pytest.raises(HostError, match=r"n_runs = 4 needs about .* bytes\) on a rank .*"
                                        r"max_batch_bytes") as err:
        run_host_batch(runs, timeout=300)
    # the size it needs, in bytes, is in the message; it is what 4 runs of this grid take
    needed = int(str(err.value).split("(")[1].split(" bytes")[0])
    assert 4 * 16 * 12 * 8 * 21 < needed < 4 * 16 * 12 * 8 * 100
    for run in runs:
        result = json.loads((run.output_dir / "result.json").read_text())
        assert result["status"] == "error" and result["steps"] == 0
        assert not (run.output_dir / "diagnostics.h5").exists()
    # a batch of one within the limit runs
    assert run_host_batch(sw_runs(sw, "memory1", n=1, max_batch_bytes=200_000),
                          timeout=300)[0]["status"] == "completed"


def test_absurd_batches_are_refused(l96: dict, tmp_path: Path) -> None:
    runs = l96_runs(l96, "absurd", "cubic", n=65)
    with pytest.raises(HostError, match="a batch holds at most 64"):
        run_host_batch(runs, timeout=300)
    # the host's own check, for a namelist written by hand
    run = l96_runs(l96, "absurd_nml", "cubic", n=1)[0]
    run.run.update(n_runs=1000)
    with pytest.raises(HostError, match=r"n_runs must be in 1 \.\. 64"):
        run_host(run, timeout=60)
    # an estimate beyond any machine: k = 2**28 columns, 64 runs
    big = l96_runs(l96, "absurd_mem", "none", n=2)
    for r in big:
        r.model["k"] = 2**28
        r.run.pop("init_file")
    with pytest.raises(HostError, match=r"n_runs = 2 needs about .* GiB .* memory available"):
        run_host_batch(big, timeout=60)
