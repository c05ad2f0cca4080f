"""The 2-D shallow-water host program (colnn_sw): mass conservation, energy, truth data, an
NN-forced run with a Keras-trained network, steps to failure, bad configurations and 1 vs 2
MPI ranks under a real mpirun."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from harness.hosts import host_defaults, host_executable, host_run_from_dict, read_result, run_host
from harness.sw import N_INPUTS, N_OUTPUTS, read_truth, training_pairs

DAY = 96   # steps of 900 s


def run(base: Path, name: str, mode: str = "coarse", ranks: int = 1, **sections: dict) -> dict:
    data = {"host": "sw", "ranks": ranks, "run": {"mode": mode, **sections.pop("run", {})},
            **sections}
    return run_host(host_run_from_dict(json.loads(json.dumps(data)), base,
                                       output_dir=base / name), timeout=300)


def diagnostics(base: Path, name: str) -> xr.Dataset:
    return xr.load_dataset(base / name / "diagnostics.h5", engine="h5netcdf")


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("sw")
    r = run(base, "truth", "truth", run={"n_steps": 30 * DAY, "spinup_steps": 30 * DAY,
                                         "sample_interval": DAY // 2, "seed": 1})
    assert r["status"] == "completed"
    return {"base": base, "file": base / "truth" / "truth.h5", "result": r,
            "init": {"init_file": str(base / "truth" / "truth.h5"), "init_index": 20}}


@pytest.fixture(scope="module")
def network(truth: dict) -> Path:
    """15 local values -> 3 forcing terms, trained in Keras on standardized targets; the model
    file undoes the standardization (Normalization(invert=True)), so the host sees SI units."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from harness.convert import convert
    data, _ = read_truth(truth["file"])
    x, y = training_pairs(data)
    keras.utils.set_random_seed(0)
    norm_in = keras.layers.Normalization()
    norm_in.adapt(x)
    mean, var = y.mean(axis=0), y.var(axis=0)
    hidden = [keras.layers.Dense(32), keras.layers.LeakyReLU(negative_slope=0.1),
              keras.layers.Dense(32), keras.layers.LeakyReLU(negative_slope=0.1),
              keras.layers.Dense(N_OUTPUTS)]
    train = keras.Sequential([keras.Input((N_INPUTS,)), norm_in, *hidden])
    train.compile(keras.optimizers.Adam(3e-3), "mse")
    hist = train.fit(x, (y - mean) / np.sqrt(var), batch_size=256, epochs=3, verbose=0,
                     validation_split=0.2)
    # local inputs cannot tell where the wind blows: on later (validation) days the fit is
    # partial, but clearly below the variance of the standardized targets (1)
    assert hist.history["val_loss"][-1] < 0.8, hist.history
    model = keras.Sequential([keras.Input((N_INPUTS,)), norm_in, *hidden,
                              keras.layers.Normalization(mean=mean, variance=var, invert=True)])
    model.save(truth["base"] / "sw.keras")
    convert(truth["base"] / "sw.keras", truth["base"] / "sw.colnn")
    return truth["base"] / "sw.colnn"


def test_defaults_come_from_the_host() -> None:
    d = host_defaults("sw")
    assert set(d) == {"sw_model", "sw_run", "sw_failure"}
    assert (d["sw_model"]["nx"], d["sw_model"]["depth"], d["sw_run"]["dt"]) == (32, 500.0, 900.0)


def test_truth_forcing_gives_a_developed_flow(truth: dict) -> None:
    extra = truth["result"]["extra"]
    # the prototype's configuration: energy up to ~480 m^3/s^2, speeds up to ~1.6 m/s
    assert 150 < extra["min_energy"] < extra["max_energy"] < 1000
    assert 0.5 < extra["max_speed"] < 5
    data, attrs = read_truth(truth["file"])
    assert data["h"].shape == (60, 32, 32) and attrs["dt"] == 900.0
    ds = xr.load_dataset(truth["file"], engine="h5netcdf")
    assert ds["h"].dims == ("time", "y", "x")


def test_mass_is_conserved_without_the_source_term(truth: dict) -> None:
    r = run(truth["base"], "norelax", "truth", run={"relaxation": False, "n_steps": 2000,
                                                    "sample_interval": 100, "seed": 2})
    assert abs(r["extra"]["mass_rel_drift"]) < 1e-14
    assert abs(r["extra"]["mean_h_drift"]) < 1e-12


def test_unforced_core_conserves_energy_and_mass(truth: dict) -> None:
    """Without forcing and dissipation the scheme only loses energy through the time step."""
    r = run(truth["base"], "core", run={**truth["init"], "closure": "none", "n_steps": 10 * DAY,
                                        "output_interval": DAY})
    assert r["status"] == "completed"
    ds = diagnostics(truth["base"], "core")
    e = ds["energy"].values
    assert np.all(np.diff(e) <= 0) and (e[0] - e[-1]) / e[0] < 1e-5
    assert ds["mass"].values[-1] == ds["mass"].values[0]


def test_nn_forced_run_produces_diagnostics(truth: dict, network: Path) -> None:
    max_e = truth["result"]["extra"]["max_energy"]
    r = run(truth["base"], "nn", run={**truth["init"], "closure": "nn", "n_steps": 10 * DAY,
                                      "output_interval": DAY // 4},
            failure={"energy_max": 10 * max_e, "energy_warn": 2 * max_e},
            coupler={"model_file": str(network)})
    assert r["status"] in ("completed", "failed") and r["nn_time_s"] > 0
    ds = diagnostics(truth["base"], "nn")
    assert ds.sizes["time"] >= 2 and {"energy", "mass", "mean_h", "max_speed"} <= set(ds)
    assert ds["h"].dims == ("y", "x")
    if r["status"] == "completed":
        assert ds.sizes["time"] == 41 and np.all(np.isfinite(ds["energy"]))


def test_nan_injection_and_bad_network(truth: dict, network: Path) -> None:
    base = truth["base"]
    r = run(base, "nan", run={**truth["init"], "closure": "nn", "n_steps": 200,
                              "inject_nan_step": 77, "inject_nan_column": 500},
            coupler={"model_file": str(network)})
    assert (r["status"], r["failure_step"], r["reason"], r["variable"]) == \
        ("failed", 77, "nonfinite", "h")
    assert float(diagnostics(base, "nan")["step"][-1]) == 77
    for value, step in (("inf", 31), ("-inf", 120)):
        r = run(base, f"inject{value}", run={**truth["init"], "closure": "nn", "n_steps": 200,
                                             "inject_nan_step": step, "inject_nan_column": 9,
                                             "inject_value": value},
                coupler={"model_file": str(network)})
        assert (r["status"], r["failure_step"], r["reason"]) == ("failed", step, "nonfinite")
        assert not list((base / f"inject{value}").glob("*.tmp"))
    from harness.modelfile import read_model, write_model
    spec = read_model(network)
    spec.layers[-1].tensors["variance"] = spec.layers[-1].tensors["variance"] * 1e12
    write_model(spec, base / "loud.colnn")
    fails = [run(base, f"loud{i}", run={**truth["init"], "closure": "nn", "n_steps": 2000},
                 coupler={"model_file": str(base / "loud.colnn")}) for i in (0, 1)]
    assert fails[0]["status"] == "failed" and fails[0]["failure_step"] < 2000
    assert fails[0]["failure_step"] == fails[1]["failure_step"]
    assert fails[0]["reason"] == fails[1]["reason"]


@pytest.mark.parametrize("text, expect", [
    ("&sw_run output_dir = 'OUT', n_step = 10 /", "n_step"),
    ("&sw_run output_dir = 'OUT', dt = 100000.0 /", "dt"),
    ("&sw_model nx = 2 /\n&sw_run output_dir = 'OUT' /", "nx"),
    ("&sw_run output_dir = 'OUT' /\n&sw_physics g = 1.0 /", "unknown namelist group"),
])
def test_bad_namelist_is_an_error_before_the_first_step(tmp_path: Path, text: str,
                                                        expect: str) -> None:
    (tmp_path / "run.nml").write_text(text.replace("OUT", str(tmp_path)) + "\n")
    proc = subprocess.run([str(host_executable("sw")), str(tmp_path / "run.nml")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    result = read_result(tmp_path)
    assert proc.returncode == 1 and result["status"] == "error" and result["steps"] == 0
    assert expect in result["message"]


def test_model_with_the_wrong_sizes_is_refused(truth: dict, tmp_path: Path) -> None:
    from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model
    spec = ModelSpec("float32", 14, [LayerSpec("dense", "d", {
        "units": 3, "use_bias": False, "activation": Activation.make("linear")},
        {"kernel": np.zeros((14, 3), np.float32)})])
    write_model(spec, tmp_path / "m14.colnn")
    (tmp_path / "run.nml").write_text(f"&sw_run output_dir = '{tmp_path}', closure = 'nn' /\n"
                                      f"&colnn_coupler model_file = '{tmp_path}/m14.colnn' /\n")
    proc = subprocess.run([str(host_executable("sw")), str(tmp_path / "run.nml")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    result = read_result(tmp_path)
    assert proc.returncode == 1 and result["status"] == "error"
    assert "maps 14 inputs to 3 outputs" in result["message"]


def test_one_and_two_ranks_are_identical(truth: dict, network: Path) -> None:
    base = truth["base"]
    for name, sections in (("truth", {"run": {"mode": "truth", "n_steps": 2 * DAY,
                                              "sample_interval": DAY // 4, "seed": 3}}),
                           ("nn", {"run": {**truth["init"], "closure": "nn", "n_steps": DAY,
                                           "output_interval": 8},
                                   "coupler": {"model_file": str(network)}})):
        mode = sections["run"].pop("mode", "coarse")
        one = run(base, f"{name}_np1", mode, ranks=1, **json.loads(json.dumps(sections)))
        two = run(base, f"{name}_np2", mode, ranks=2, **json.loads(json.dumps(sections)))
        assert (one["status"], one["steps"]) == (two["status"], two["steps"])
        # the physics is rank-independent; the coupler's columns add up over the ranks, its
        # calls are per rank and its seconds are a time
        timers = ("coupler_calls", "coupler_seconds")
        assert {k: v for k, v in one["extra"].items() if k not in timers} == \
            {k: v for k, v in two["extra"].items() if k not in timers}
        if name == "nn":
            assert two["extra"]["coupler_calls"] == 2 * one["extra"]["coupler_calls"]
        f = "truth.h5" if mode == "truth" else "diagnostics.h5"
        a = xr.load_dataset(base / f"{name}_np1" / f, engine="h5netcdf")
        b = xr.load_dataset(base / f"{name}_np2" / f, engine="h5netcdf")
        for var in a.data_vars:
            np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=f"{name} {var}")


def test_fallback_to_the_truth_forcing_over_ranks(truth: dict, network: Path) -> None:
    """A network whose forcing is a million times too loud, with fallback bounds of 1e-3 (SI
    units: the truth forcing is ~1e-7): every cell falls back to the truth forcing, so the run
    is the truth-forced coarse run (to the single-precision cast), on one rank as on two, and
    every call is counted (32 x 32 cells, 3 stages a step)."""
    from harness.modelfile import read_model, write_model
    base = truth["base"]
    spec = read_model(network)
    spec.layers[-1].tensors["variance"] = spec.layers[-1].tensors["variance"] * 1e12
    write_model(spec, base / "loud_fb.colnn")
    common = {**truth["init"], "n_steps": 96, "output_interval": 8}
    coupler = {"model_file": str(base / "loud_fb.colnn"), "fallback": True,
               "fallback_lower": -1e-3, "fallback_upper": 1e-3, "fallback_max_share": 1.0}
    runs = [run(base, f"fb{ranks}", ranks=ranks, run={**common, "closure": "nn"},
                coupler=coupler) for ranks in (1, 2)]
    forced = run(base, "fb_truth", run={**common, "closure": "truth"})
    for r in runs:
        assert r["status"] == "completed" and r["extra"]["fallback_columns"] == 3 * 32 * 32 * 96
    a, b, c = (diagnostics(base, n) for n in ("fb1", "fb2", "fb_truth"))
    np.testing.assert_array_equal(a["energy"].values, b["energy"].values)
    np.testing.assert_allclose(a["energy"].values, c["energy"].values, rtol=1e-4)
    assert (a["fallback_columns"].values[1:] == 3 * 32 * 32).all()


def test_online_learning_in_the_truth_run(truth: dict, network: Path) -> None:
    """The truth run trains the network online on (each cell's inputs, its truth forcing) every
    2 steps; the loss falls, the checkpoint is written, and 2 ranks take the same steps."""
    from harness.modelfile import read_model, write_model
    base = truth["base"]
    spec = read_model(network)
    rng = np.random.default_rng(3)
    for layer in spec.layers:
        if layer.type == "dense":
            k = layer.tensors["kernel"]
            layer.tensors["kernel"] = rng.normal(0, 1 / np.sqrt(k.shape[0]), k.shape)
    write_model(spec, base / "sw_online_start.colnn")
    runs = [run(base, f"online{ranks}", "truth", ranks=ranks,
                run={**truth["init"], "n_steps": 800, "spinup_steps": 0, "sample_interval": 400,
                     "online_interval": 2},
                coupler={"model_file": str(base / "sw_online_start.colnn"),
                         "online_training": True, "optimizer": "adam learning_rate=0.003"})
            for ranks in (1, 2)]
    extra = runs[0]["extra"]
    assert runs[0]["status"] == "completed" and extra["online_steps"] == 400, runs[0]
    # local inputs explain only part of the forcing (the offline fit is ~0.8 of the variance):
    # from random weights 400 steps take the loss down steadily, not to the floor
    losses = xr.load_dataset(base / "online1" / "truth.h5", engine="h5netcdf")["online_loss"].values
    assert (np.diff(losses[40::40]) < 0).all(), losses[::40]
    assert losses[-100:].mean() < 0.95 * losses[:20].mean()
    assert runs[1]["extra"]["online_last_loss"] == extra["online_last_loss"]
    assert (base / "online1" / "online.colnn").is_file()
