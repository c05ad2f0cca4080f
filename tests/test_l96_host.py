"""The two-scale Lorenz-96 host program (colnn_l96) end to end: truth data, the drift-test
calibration, coupled runs with a Keras-trained network through the coupler, the baselines,
steps to failure (bounds, NaN injection, a network returning non-finite values), bad
configurations stopped before the first step, and 1 vs 2 MPI ranks under a real mpirun."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from harness.hosts import (HostError, host_defaults, host_executable, host_run_from_dict,
                           read_result, run_host)
from harness.l96 import calibrate_drift, false_alarm_rates, fit_cubic, read_truth, training_pairs
from harness.modelfile import read_model, write_model

K = 8
WINDOW = 200          # coarse steps of dt = 0.005: a 1-time-unit drift window
SAMPLE = 10


def run(base: Path, name: str, mode: str = "coarse", ranks: int = 1, **sections: dict) -> dict:
    data = {"host": "l96", "ranks": ranks, "model": {"k": K, **sections.pop("model", {})},
            "run": {"mode": mode, **sections.pop("run", {})}, **sections}
    return run_host(host_run_from_dict(data, base, output_dir=base / name), timeout=300)


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("l96")
    out = {"base": base}
    for seed in (1, 2):
        result = run(base, f"truth{seed}", "truth",
                     run={"dt": 0.001, "n_steps": 60000, "spinup_steps": 2000,
                          "sample_interval": 10, "seed": seed})
        assert result["status"] == "completed" and result["steps"] == 62000
        out[seed] = base / f"truth{seed}" / "truth.h5"
    cal = calibrate_drift(out[1], WINDOW * 0.005, SAMPLE * 0.005)
    out["failure"] = {"drift_check": True, "drift_window": WINDOW,
                      "drift_sample_interval": SAMPLE, "drift_sigma": 5.0,
                      "clim_mean": cal.clim_mean, "clim_std": cal.clim_std,
                      "sd_window_mean": cal.sd_window_mean, "sd_window_std": cal.sd_window_std}
    out["calibration"] = cal
    out["init"] = {"init_file": str(out[2]), "init_index": 50, "dt": 0.005}
    return out


@pytest.fixture(scope="module")
def network(truth: dict) -> Path:
    """A small network trained in Keras on (X_{k-1}, X_k, X_{k+1}) -> U_k, converted."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from harness.convert import convert
    x, u, _ = read_truth(truth[1])
    inputs, targets = training_pairs(x, u, "stencil", 1)
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(inputs)
    model = keras.Sequential([keras.Input((3,)), norm, keras.layers.Dense(16),
                              keras.layers.LeakyReLU(negative_slope=0.1),
                              keras.layers.Dense(16), keras.layers.LeakyReLU(negative_slope=0.1),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    hist = model.fit(inputs, targets, batch_size=256, epochs=3, verbose=0, validation_split=0.2)
    # U has variance ~21 and a noise floor ~3: a trained network is well below the variance
    assert hist.history["val_loss"][-1] < 6.0, hist.history
    base = truth["base"]
    model.save(base / "nn.keras")
    convert(base / "nn.keras", base / "nn.colnn")
    return base / "nn.colnn"


def diagnostics(base: Path, name: str) -> xr.Dataset:
    return xr.load_dataset(base / name / "diagnostics.h5", engine="h5netcdf")


def test_defaults_come_from_the_host() -> None:
    d = host_defaults("l96")
    assert set(d) == {"l96_model", "l96_run", "l96_failure"}
    assert d["l96_model"] == {"k": 8, "j": 32, "f": 20.0, "h": 1.0, "b": 10.0, "c": 10.0}
    assert d["l96_run"]["cubic_coeffs"] == [0.0] * 4 and d["l96_failure"]["drift_check"] is False


def test_truth_climatology_and_drift_calibration(truth: dict) -> None:
    x, u, attrs = read_truth(truth[1])
    assert x.shape == (6000, K) and attrs["dt"] == 0.001
    # the prototype's figures for K = 8, J = 32, F = 20 (mean 3.78, std 5.07, var U 21.4)
    assert 3.4 < x.mean() < 4.2 and 4.7 < x.std() < 5.4 and 18 < u.var() < 25
    cal = truth["calibration"]
    assert cal.n_windows == 60 and cal.sd_window_mean > 0 and cal.sd_window_std > 0
    rates = false_alarm_rates(truth[2], cal, (3.0, 5.0))
    assert rates[5.0] == 0.0 and rates[3.0] <= 0.1
    ds = xr.load_dataset(truth[1], engine="h5netcdf")
    assert ds["x"].dims == ("time", "k") and ds["u"].shape == (6000, K)


def test_truth_with_h_zero_is_the_one_scale_model(truth: dict) -> None:
    """With h = 0 the slow variables of the truth evolve as the coarse model without closure."""
    base = truth["base"]
    n = 400
    t = run(base, "h0truth", "truth", model={"h": 0.0},
            run={"dt": 0.005, "n_steps": n, "sample_interval": n, "seed": 9})
    c = run(base, "h0coarse", model={"h": 0.0},
            run={"closure": "none", "dt": 0.005, "n_steps": n, "seed": 9})
    assert t["status"] == c["status"] == "completed"
    x_truth, _, _ = read_truth(base / "h0truth" / "truth.h5")
    np.testing.assert_array_equal(x_truth[-1], diagnostics(base, "h0coarse")["x_final"].values)


def test_coarse_step_is_fourth_order(truth: dict) -> None:
    base = truth["base"]
    finals = []
    for i, dt in enumerate((0.02, 0.01, 0.005, 0.0025)):
        r = run(base, f"conv{i}", run={"closure": "none", "dt": dt, "n_steps": int(0.4 / dt),
                                       "seed": 4})
        assert r["status"] == "completed"
        finals.append(diagnostics(base, f"conv{i}")["x_final"].values)
    e = [np.abs(finals[i] - finals[-1]).max() for i in range(3)]
    # error(dt) - error(dt/2) ratios ~ 2^4 when the error is dominated by the dt^4 term
    ratio = (e[0] - e[1]) / (e[1] - e[2])
    assert 12 < ratio < 20, e


def test_coupled_network_runs_the_configured_steps(truth: dict, network: Path) -> None:
    base = truth["base"]
    r = run(base, "nn", run={**truth["init"], "closure": "nn", "inputs": "stencil",
                             "n_steps": 2000, "output_interval": 20},
            failure=truth["failure"], coupler={"model_file": str(network)})
    assert r["status"] == "completed" and r["steps"] == 2000 and r["failure_step"] is None
    assert r["nn_time_s"] > 0 and r["wall_time_s"] >= r["nn_time_s"] + r["dynamics_time_s"] - 1e-6
    assert r["model_hash"] == __import__("hashlib").sha256(network.read_bytes()).hexdigest()
    # the coupler's own timers: one call per RK4 stage, K columns each
    extra = r["extra"]
    assert extra["coupler_calls"] == 4 * 2000 and extra["coupler_columns"] == 4 * 2000 * K
    assert 0 < extra["coupler_seconds"] <= r["nn_time_s"] + 1e-3
    cfg = (base / "nn" / "run.nml").read_bytes()
    assert r["config_hash"] == __import__("hashlib").sha256(cfg).hexdigest()
    ds = diagnostics(base, "nn")
    assert ds.sizes["time"] == 101 and ds.sizes["window_end"] == 10
    assert np.all(np.abs(ds["drift_z_mean"]) < 5) and np.all(np.isfinite(ds["bias"]))
    # the network's closure is close to the truth coupling term on average (mean U ~ -3.9)
    assert -5.5 < float(ds["u_mean"][1:].mean()) < -2.5


def test_baselines(truth: dict) -> None:
    """No closure drifts at the first window (the variance is far too large); the cubic fit runs."""
    base = truth["base"]
    x, u, _ = read_truth(truth[1])
    none = run(base, "none", run={**truth["init"], "closure": "none", "n_steps": 2000},
               failure=truth["failure"])
    assert none["status"] == "failed" and none["reason"] == "drift"
    assert none["failure_step"] == WINDOW and none["variable"] == "x_std"
    cubic = run(base, "cubic", run={**truth["init"], "closure": "cubic", "n_steps": 2000,
                                    "cubic_coeffs": fit_cubic(x, u)}, failure=truth["failure"])
    assert cubic["steps"] >= 2 * WINDOW


def bad_network(network: Path, path: Path, scale: float) -> Path:
    spec = read_model(network)
    last = [layer for layer in spec.layers if layer.type == "dense"][-1]
    last.tensors["kernel"] = last.tensors["kernel"] * scale
    write_model(spec, path)
    return path


def test_bad_network_fails_at_a_reproducible_step(truth: dict, network: Path) -> None:
    base = truth["base"]
    bad = bad_network(network, base / "huge.colnn", 1e3)
    results = [run(base, f"bad{i}", run={**truth["init"], "closure": "nn", "n_steps": 500},
                   failure=truth["failure"], coupler={"model_file": str(bad)}) for i in (0, 1)]
    for r in results:
        assert r["status"] == "failed" and r["reason"] == "bounds" and r["variable"] == "x"
        assert "max_abs" in r["message"]
        assert (base / "bad0" / "diagnostics.h5").exists()
    assert results[0]["failure_step"] == results[1]["failure_step"] < 500


def test_network_returning_non_finite_values_fails_at_that_step(truth: dict, network: Path) -> None:
    base = truth["base"]
    bad = bad_network(network, base / "inf.colnn", 1e38)
    r = run(base, "inf", run={**truth["init"], "closure": "nn", "n_steps": 100},
            coupler={"model_file": str(bad)})
    assert r["status"] == "failed" and r["reason"] == "nn_error" and r["failure_step"] == 1
    assert "finite" in r["message"]


@pytest.mark.parametrize("step, value", [(1, "nan"), (37, "nan"), (200, "nan"), (37, "inf"),
                                         (200, "-inf")])
def test_nan_injected_at_step_n_is_reported_at_step_n(truth: dict, network: Path,
                                                      step: int, value: str) -> None:
    base = truth["base"]
    name = f"nan{step}{value}"
    r = run(base, name, run={**truth["init"], "closure": "nn", "n_steps": 300,
                             "output_interval": 50, "inject_nan_step": step,
                             "inject_nan_column": 3, "inject_value": value},
            failure=truth["failure"], coupler={"model_file": str(network)})
    assert (r["status"], r["failure_step"], r["steps"], r["reason"], r["variable"]) == \
        ("failed", step, step, "nonfinite", "x")
    ds = diagnostics(base, name)      # flushed, up to and including the failing step
    assert float(ds["time"][-1]) == pytest.approx(step * 0.005)
    assert not np.isfinite(float(ds["x_mean"][-1]))
    assert sorted(p.name for p in (base / name).iterdir()) == \
        ["diagnostics.h5", "host.log", "result.json", "run.nml"]      # nothing half-written


def test_unwritable_output_is_an_error_that_keeps_the_run(truth: dict, network: Path,
                                                          tmp_path: Path) -> None:
    """diagnostics.h5 cannot be created (its temporary name is taken by a directory, which
    also stops root, unlike permissions): the run is an error naming the file, result.json
    keeps what happened up to then, and no other file appears."""
    out = tmp_path / "blocked"
    (out / "diagnostics.h5.tmp").mkdir(parents=True)
    with pytest.raises(HostError, match=r"diagnostics\.h5\.tmp"):
        run(out.parent, "blocked", run={**truth["init"], "closure": "nn", "n_steps": 120,
                                        "inject_nan_step": 60},
            coupler={"model_file": str(network)})
    r = read_result(out)
    assert (r["status"], r["steps"], r["failure_step"]) == ("error", 60, 60)
    assert sorted(p.name for p in out.iterdir()) == \
        ["diagnostics.h5.tmp", "host.log", "result.json", "run.nml"]


def test_a_full_disk_is_an_error_that_leaves_no_partial_file(small_disk) -> None:
    """The diagnostics (kept in memory, written at the end) do not fit: the run is an error
    naming the file and the full file system; the partial HDF5 file is gone; result.json
    (whole) records the steps run. On a disk too full even for host.log: an error, no
    partial file."""
    disk = small_disk("96k")
    with pytest.raises(HostError, match=r"diagnostics\.h5\.tmp: cannot write .* is full"):
        run(disk, "full", run={"closure": "none", "n_steps": 40000, "output_interval": 1})
    r = read_result(disk / "full")
    assert (r["status"], r["steps"], r["failure_step"]) == ("error", 40000, None)
    assert sorted(p.name for p in (disk / "full").iterdir()) == \
        ["host.log", "result.json", "run.nml"]
    tiny = small_disk("8k")
    with pytest.raises(HostError, match=r"(No space left on device|is full)"):
        run(tiny, "full", run={"closure": "none", "n_steps": 4000, "output_interval": 1})
    left = sorted(p.name for p in (tiny / "full").iterdir())
    assert not [n for n in left if n.endswith(".tmp")] and "host.log" not in left, left
    if "result.json" in left:
        assert read_result(tiny / "full")["status"] == "error"


def raw_run(tmp_path: Path, text: str) -> tuple[subprocess.CompletedProcess, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    nml = tmp_path / "run.nml"
    nml.write_text(text.replace("OUT", str(tmp_path)) + "\n")
    proc = subprocess.run([str(host_executable("l96")), str(nml)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    return proc, read_result(tmp_path)


@pytest.mark.parametrize("text, expect", [
    ("&l96_run output_dir = 'OUT', n_step = 10 /", "n_step"),
    ("&l96_model k = 2 /\n&l96_run output_dir = 'OUT' /", "k must be >= 4"),
    ("&l96_run output_dir = 'OUT', dt = -1.0 /", "dt must be in"),
    ("&l96_run output_dir = 'OUT', closure = 'magic' /", "closure must be"),
    ("&l96_run output_dir = 'OUT' /\n&l96_failur max_abs = 1 /", "unknown namelist group &l96_failur"),
    ("&l96_run output_dir = 'OUT', closure = 'none' /\n&l96_failure drift_check = .true. /",
     "calibration"),
    ("&l96_run output_dir = 'OUT', closure = 'nn' /\n&colnn_coupler model_file = 'OUT/none.colnn' /",
     "none.colnn"),
    ("&l96_run output_dir = 'OUT', init_file = 'OUT/missing.h5' /", "missing.h5"),
    ("&l96_run output_dir = 'OUT' /\n&l96_model k = 16", "&l96_model could not be read to its end"),
])
def test_bad_namelist_is_an_error_before_the_first_step(tmp_path: Path, text: str,
                                                        expect: str) -> None:
    proc, result = raw_run(tmp_path, text)
    assert proc.returncode == 1
    assert result["status"] == "error" and result["steps"] == 0
    assert expect in result["message"] and expect in proc.stderr


def test_model_with_the_wrong_sizes_is_refused_before_the_first_step(truth: dict, network: Path,
                                                                     tmp_path: Path) -> None:
    proc, result = raw_run(tmp_path, f"&l96_run output_dir = 'OUT', closure = 'nn', "
                                     f"inputs = 'local' /\n&colnn_coupler model_file = "
                                     f"'{network}' /")
    assert proc.returncode == 1 and result["status"] == "error" and result["steps"] == 0
    assert "maps 3 inputs to 1 outputs, the host passes 1 features" in result["message"]


def test_harness_checks_keys_and_types_before_running(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="run.n_step: unknown key"):
        host_run_from_dict({"host": "l96", "run": {"n_step": 3}}, tmp_path)
    with pytest.raises(HostError, match="model.k: expected an integer"):
        host_run_from_dict({"host": "l96", "model": {"k": "8"}}, tmp_path)
    with pytest.raises(HostError, match="coupler.model: unknown key"):
        host_run_from_dict({"host": "l96", "coupler": {"model": "x"}}, tmp_path)
    with pytest.raises(HostError, match="host must be one of"):
        host_run_from_dict({"host": "l95"}, tmp_path)


def test_one_and_two_ranks_are_identical(truth: dict, network: Path) -> None:
    """K = 16 over 1 and 2 ranks (halo exchange at every RK stage), network and truth modes."""
    base = truth["base"]
    common = {"model": {"k": 16},
              "run": {"closure": "nn", "inputs": "stencil", "dt": 0.005, "n_steps": 400,
                      "output_interval": 10, "seed": 5},
              "coupler": {"model_file": str(network)}}
    one = run(base, "np1", ranks=1, **json.loads(json.dumps(common)))
    two = run(base, "np2", ranks=2, **json.loads(json.dumps(common)))
    assert one["n_ranks"] == 1 and two["n_ranks"] == 2
    for key in ("status", "steps", "failure_step", "config_hash"):
        assert one[key] == two[key] or key == "config_hash"
    d1, d2 = diagnostics(base, "np1"), diagnostics(base, "np2")
    for name in ("x_mean", "x_std", "energy", "u_mean", "x_final"):
        np.testing.assert_array_equal(d1[name].values, d2[name].values)
    tr = {"model": {"k": 16}, "run": {"dt": 0.001, "n_steps": 2000, "sample_interval": 100,
                                      "seed": 3}}
    run(base, "tnp1", "truth", ranks=1, **json.loads(json.dumps(tr)))
    run(base, "tnp2", "truth", ranks=2, **json.loads(json.dumps(tr)))
    a, b = read_truth(base / "tnp1" / "truth.h5"), read_truth(base / "tnp2" / "truth.h5")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_noisy_ensemble_over_one_and_two_ranks(truth: dict, network: Path) -> None:
    """An ensemble with input noise behind the coupler: the noise is keyed by the global column
    and the step, so the decomposition does not change the run."""
    base = truth["base"]
    ens = base / "ensemble"
    ens.mkdir(exist_ok=True)
    spec = read_model(network)
    for m in range(3):
        for layer in spec.layers:
            if layer.type == "dense":
                layer.tensors["bias"] = layer.tensors["bias"] + np.float32(0.01 * m)
        write_model(spec, ens / f"member_{m}.colnn")
    common = {"model": {"k": 16},
              "run": {"closure": "nn", "inputs": "stencil", "dt": 0.005, "n_steps": 200,
                      "output_interval": 10, "seed": 5},
              "coupler": {"ensemble": str(ens), "noise_sd": 0.05, "noise_seed": 3}}
    one = run(base, "ens1", ranks=1, **json.loads(json.dumps(common)))
    two = run(base, "ens2", ranks=2, **json.loads(json.dumps(common)))
    assert one["status"] == two["status"] == "completed"
    d1, d2 = diagnostics(base, "ens1"), diagnostics(base, "ens2")
    np.testing.assert_array_equal(d1["x_final"].values, d2["x_final"].values)
    np.testing.assert_array_equal(d1["u_mean"].values, d2["u_mean"].values)
    plain = run(base, "ens_plain", **{**json.loads(json.dumps(common)),
                                      "coupler": {"model_file": str(network)}})
    assert plain["status"] == "completed"
    assert not np.array_equal(diagnostics(base, "ens_plain")["x_final"].values,
                              d1["x_final"].values)
    import hashlib
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                      for p in sorted(ens.glob("*.colnn")))
    assert one["model_hash"] == hashlib.sha256(listing.encode()).hexdigest()


def _readme_host_commands() -> list[list[str]]:
    """The `harness host run` lines of the README, as a user would paste them."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    lines = [line.split("#")[0].split() for line in readme.splitlines()
             if line.startswith("harness host run ")]
    assert lines, "the README shows no `harness host run` example"
    return lines


def _harness(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_readme_host_example_with_relative_paths(tmp_path: Path) -> None:
    """The README's `harness host run CONFIG -o RELATIVE_DIR`, as written (from a copy of the
    examples), and the same with both paths relative to another working directory."""
    repo = Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "examples", tmp_path / "examples")
    for command in _readme_host_commands():
        proc = _harness(command[1:], tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = tmp_path / command[command.index("-o") + 1]
        assert read_result(out)["status"] == "completed"
        assert f"output_dir = '{out}'" in (out / "run.nml").read_text()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        args = [a if not (tmp_path / a).exists() else os.path.join("..", a) for a in command[1:]]
        args[args.index("-o") + 1] = os.path.join("..", "runs2")
        proc = _harness(args, elsewhere)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        again = read_result(tmp_path / "runs2")
        assert again["status"] == "completed"
        assert again["steps"] == read_result(out)["steps"]


def test_relative_model_and_init_paths_of_a_host_config(truth: dict, network: Path,
                                                        tmp_path: Path) -> None:
    """model_file and init_file relative to the config file, the output directory relative to
    where the user stands: each names the same file wherever the host runs."""
    conf = tmp_path / "configs"
    conf.mkdir()
    shutil.copy(network, conf / "nn.colnn")
    shutil.copy(truth[2], conf / "truth.h5")
    (conf / "nn.toml").write_text(
        'host = "l96"\n[model]\nk = 8\n'
        '[run]\nmode = "coarse"\nclosure = "nn"\nn_steps = 400\ndt = 0.005\n'
        'init_file = "truth.h5"\ninit_index = 50\n'
        '[coupler]\nmodel_file = "nn.colnn"\n')
    (tmp_path / "work").mkdir()
    proc = _harness(["host", "run", "../configs/nn.toml", "-o", "out/nn"], tmp_path / "work")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = read_result(tmp_path / "work" / "out" / "nn")
    assert result["status"] == "completed" and result["steps"] == 400
    nml = (tmp_path / "work" / "out" / "nn" / "run.nml").read_text()
    assert f"'{conf / 'nn.colnn'}'" in nml and f"'{conf / 'truth.h5'}'" in nml


def test_result_json_on_a_full_disk_is_an_error_not_an_empty_file(small_disk,
                                                                  repo_root: Path) -> None:
    """result.json onto a disk with no byte left: the host's writer reports it (gfortran's
    formatted writes would not) and leaves neither result.json nor its temporary file."""
    disk = small_disk("64k")
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    writer = repo_root / "build" / "single" / "coupler" / "test_host_result"
    proc = subprocess.run([str(writer), str(disk / "result.json")], capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.startswith("error: "), proc.stdout + proc.stderr
    assert "result.json: cannot write: No space left on device" in proc.stdout
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


# ---------------------------------------------------------------------------------------------
# per-column fallback and ramped coupling (&colnn_coupler fallback, ramp_steps): the host's own
# closure (the cubic fit) stands in for a column the network gets wrong

def _cubic(truth: dict) -> list[float]:
    x, u, _ = read_truth(truth[1])
    return [float(c) for c in fit_cubic(x, u)]


def test_a_bad_column_falls_back_to_the_cubic_fit_and_is_counted(truth: dict,
                                                                 network: Path) -> None:
    """Column 3's network inputs are replaced by 1e6 at every stage (a column unlike anything
    in training, the host's state untouched): with fallback the run goes on with the cubic fit
    there and counts 4 calls a step (one column, 4 RK stages); without, the run stops; with
    the default threshold (more than a tenth of the column calls for 10 steps) one column of
    8 is too many and the run fails at step 10 with reason 'fallback'."""
    base = truth["base"]
    bad = {**truth["init"], "closure": "nn", "n_steps": 300, "cubic_coeffs": _cubic(truth),
           "inject_nan_step": 1, "inject_nan_column": 3, "inject_value": "1e6",
           "inject_target": "nn_input"}
    fallback = {"model_file": str(network), "fallback": True, "fallback_lower": -60.0,
                "fallback_upper": 60.0}
    kept = run(base, "fb_kept", run=bad, coupler={**fallback, "fallback_max_share": 0.2})
    assert kept["status"] == "completed" and kept["steps"] == 300, kept
    assert kept["extra"]["fallback_columns"] == 4 * 300
    assert kept["extra"]["fallback_steps"] == 300
    assert kept["extra"]["fallback_max_share"] == pytest.approx(4 / (4 * K))
    series = xr.load_dataset(base / "fb_kept" / "diagnostics.h5", engine="h5netcdf")
    counts = series["fallback_columns"].values
    assert counts[0] == 0 and (counts[1:] == 4).all() and counts.size == 301

    stopped = run(base, "fb_off", run=bad, coupler={"model_file": str(network)})
    assert stopped["status"] == "failed" and stopped["failure_step"] < 300, stopped

    too_many = run(base, "fb_share", run=bad, coupler=fallback)
    assert too_many["status"] == "failed" and too_many["reason"] == "fallback", too_many
    assert too_many["failure_step"] == 10 and "fallback_max_share" in too_many["message"]


def test_fallback_of_every_column_is_the_cubic_run(truth: dict, network: Path) -> None:
    """A network whose outputs are all huge or infinite, with fallback, bounds and a threshold
    it cannot exceed, is the cubic closure's run (to the single-precision cast of the closure)."""
    base = truth["base"]
    inf = bad_network(network, base / "inf_fb.colnn", 1e38)
    common = {**truth["init"], "n_steps": 200, "cubic_coeffs": _cubic(truth),
              "output_interval": 1}
    nn = run(base, "fb_all", run={**common, "closure": "nn"},
             coupler={"model_file": str(inf), "fallback": True, "fallback_max_share": 1.0,
                      "fallback_lower": -1e3, "fallback_upper": 1e3})
    cubic = run(base, "fb_cubic", run={**common, "closure": "cubic"})
    assert nn["status"] == cubic["status"] == "completed", nn
    assert nn["extra"]["fallback_columns"] == 4 * K * 200
    a, b = diagnostics(base, "fb_all"), diagnostics(base, "fb_cubic")
    np.testing.assert_allclose(a["x_mean"].values, b["x_mean"].values, rtol=1e-4, atol=1e-4)


def test_ramped_coupling_eases_the_network_in(truth: dict, network: Path) -> None:
    """ramp_steps = R: the first steps follow the cubic run (w = step / R is small), the run
    after R steps is coupled to the network alone; a ramp longer than the run is refused."""
    base = truth["base"]
    common = {**truth["init"], "n_steps": 400, "cubic_coeffs": _cubic(truth),
              "output_interval": 1}
    ramp = run(base, "ramp", run={**common, "closure": "nn"},
               coupler={"model_file": str(network), "ramp_steps": 400})
    cubic = run(base, "ramp_cubic", run={**common, "closure": "cubic"})
    plain = run(base, "ramp_nn", run={**common, "closure": "nn"},
                coupler={"model_file": str(network)})
    assert ramp["status"] == cubic["status"] == plain["status"] == "completed"
    r, c, p = (diagnostics(base, n)["u_mean"].values for n in ("ramp", "ramp_cubic", "ramp_nn"))
    # step 1's closure is 1/400 network and 399/400 cubic fit
    assert abs(r[1] - c[1]) < abs(r[1] - p[1])
    assert "fallback_columns" not in ramp["extra"] or ramp["extra"]["fallback_columns"] == 0
    with pytest.raises(HostError, match=r"ramp_steps is 401, longer than the run \(l96_run n_steps = 400\)"):
        run(base, "ramp_long", run={**common, "closure": "nn"},
            coupler={"model_file": str(network), "ramp_steps": 401})


@pytest.mark.parametrize("coupler, key", [
    ({"fallback": True}, "cubic_coeffs"),                       # no closure of its own
    ({"ramp_steps": 10}, "cubic_coeffs"),
    ({"fallback": True, "fallback_lower": 1.0, "fallback_upper": -1.0}, "fallback_lower(1)"),
    ({"fallback_upper": 5.0}, "fallback = .false."),
    ({"fallback": True, "fallback_max_share": 0.0}, "fallback_max_share"),
    ({"fallback": True, "fallback_max_steps": 0}, "fallback_max_steps"),
    ({"ramp_steps": -1}, "ramp_steps"),
])
def test_bad_fallback_and_ramp_settings_fail_at_init(truth: dict, network: Path,
                                                     coupler: dict, key: str) -> None:
    base = truth["base"]
    name = "fbbad_" + "_".join(f"{k}{v}" for k, v in coupler.items()).replace(".", "p")
    coeffs = {} if key == "cubic_coeffs" else {"cubic_coeffs": _cubic(truth)}
    with pytest.raises(HostError) as error:
        run(base, name, run={**truth["init"], "closure": "nn", "n_steps": 10, **coeffs},
            coupler={"model_file": str(network), **coupler})
    assert key in str(error.value) and "colnn_coupler_init" in str(error.value), error.value
    assert read_result(base / name)["steps"] == 0


# ---------------------------------------------------------------------------------------------
# online learning in the truth run (Rasp 2020's coupled online learning, in Fortran): the
# coupler's hook takes an optimizer step every online_interval steps on (each column's inputs,
# the true coupling term)

def untrained_like(network: Path, path: Path, seed: int = 1) -> Path:
    """The network's architecture and normalization with fresh random dense weights."""
    rng = np.random.default_rng(seed)
    spec = read_model(network)
    for layer in spec.layers:
        if layer.type == "dense":
            kernel = layer.tensors["kernel"]
            layer.tensors["kernel"] = rng.normal(0, 1 / np.sqrt(kernel.shape[0]), kernel.shape)
            layer.tensors["bias"] = np.zeros_like(layer.tensors["bias"])
    write_model(spec, path)
    return path


ONLINE = {"online_training": True, "optimizer": "adam learning_rate=0.003"}


def test_online_learning_in_the_truth_run(truth: dict, network: Path, tmp_path: Path) -> None:
    """An untrained network learns U from the truth run (its loss falls from ~50 to below the
    variance of U), is checkpointed with its optimizer state, runs coupled in coarse mode, and
    converts back to Keras with the same outputs; on two ranks it takes the same steps."""
    base = truth["base"]
    start = untrained_like(network, base / "online_start.colnn")
    truth_run = {"n_steps": 6000, "spinup_steps": 0, "dt": 0.005, "init_file": str(truth[2]),
                 "init_index": 10, "sample_interval": 100, "online_interval": 10,
                 "checkpoint_interval": 3000}
    results = [run(base, f"online{ranks}", "truth", ranks=ranks, run=truth_run,
                   coupler={"model_file": str(start), **ONLINE}) for ranks in (1, 2)]
    one, two = results
    assert one["status"] == "completed" and one["extra"]["online_steps"] == 600, one
    assert one["extra"]["online_skipped"] == 0
    # from ~50 (untrained) to below the variance of U (~21), near the offline networks' ~6
    assert one["extra"]["online_last_loss"] < one["extra"]["online_first_loss"] / 4, one["extra"]
    # every rank takes the step on all columns: the same weights on 1 and 2 ranks
    assert two["extra"]["online_last_loss"] == one["extra"]["online_last_loss"]
    trained = base / "online1" / "online.colnn"
    assert read_model(trained).training is not None          # a checkpoint: optimizer state
    losses = xr.load_dataset(base / "online1" / "truth.h5", engine="h5netcdf")["online_loss"]
    assert losses.sizes["online_update_step"] == 600 and np.isfinite(losses.values).all()
    assert losses.values[-100:].mean() < 12, losses.values[-100:].mean()

    coupled = run(base, "online_coarse", run={**truth["init"], "closure": "nn", "n_steps": 400},
                  coupler={"model_file": str(trained)})
    assert coupled["status"] in ("completed", "failed") and coupled["steps"] > 0, coupled

    from harness.convert import convert
    from harness.native import NativeModel
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    convert(trained, tmp_path / "online.keras")
    x = np.random.default_rng(0).normal(2.5, 3.5, (64, 3)).astype(np.float32)
    with NativeModel(trained) as native:
        fortran = native.predict(x)
    keras_out = keras.saving.load_model(tmp_path / "online.keras").predict(x, verbose=0)
    np.testing.assert_allclose(keras_out, fortran, rtol=1e-4, atol=1e-4)


def test_online_learning_skips_a_non_finite_target(truth: dict, network: Path) -> None:
    """A NaN target of column 3 at the update of step 50 (inject_target = 'nn_target'): the
    step is skipped and counted, the weights stay as they were (the checkpoint after step 50
    has the weights of a run that stopped at step 40, the update before); the settings the
    hook cannot take are init errors naming the key."""
    base = truth["base"]
    start = untrained_like(network, base / "online_start2.colnn")
    truth_run = {"spinup_steps": 0, "dt": 0.005, "init_file": str(truth[2]), "init_index": 10,
                 "sample_interval": 10, "online_interval": 10}
    skipped = run(base, "online_nan", "truth",
                  run={**truth_run, "n_steps": 50, "inject_nan_step": 50, "inject_nan_column": 3,
                       "inject_target": "nn_target"},
                  coupler={"model_file": str(start), **ONLINE})
    before = run(base, "online_40", "truth", run={**truth_run, "n_steps": 40},
                 coupler={"model_file": str(start), **ONLINE})
    assert skipped["status"] == "completed", skipped
    assert (skipped["extra"]["online_steps"], skipped["extra"]["online_skipped"]) == (4, 1)
    assert (before["extra"]["online_steps"], before["extra"]["online_skipped"]) == (4, 0)
    a, b = (read_model(base / d / "online.colnn") for d in ("online_nan", "online_40"))
    for la, lb in zip(a.layers, b.layers):
        for name in la.tensors:
            np.testing.assert_array_equal(la.tensors[name], lb.tensors[name])
    losses = xr.load_dataset(base / "online_nan" / "truth.h5", engine="h5netcdf")["online_loss"]
    assert np.isnan(losses.values[-1]) and np.isfinite(losses.values[:-1]).all()

    short = {**truth_run, "n_steps": 50}
    with pytest.raises(HostError, match="loss"):
        run(base, "online_badloss", "truth", run=short,
            coupler={"model_file": str(start), **ONLINE, "loss": "hinge_of_doom"})
    with pytest.raises(HostError, match="online_training"):
        run(base, "online_off", "truth", run=short, coupler={"model_file": str(start)})
    with pytest.raises(HostError, match="online_training"):
        run(base, "online_coarse_bad", run={**truth["init"], "closure": "nn", "n_steps": 10},
            coupler={"model_file": str(start), **ONLINE})
    with pytest.raises(HostError, match="online_interval"):
        run(base, "online_coarse_key", run={**truth["init"], "closure": "nn", "n_steps": 10,
                                            "online_interval": 5},
            coupler={"model_file": str(start)})
    with pytest.raises(HostError, match="ensemble"):
        (base / "online_ens.txt").write_text(f"{start}\n{start}\n")
        run(base, "online_ens", "truth", run=short,
            coupler={"ensemble": str(base / "online_ens.txt"), **ONLINE})
