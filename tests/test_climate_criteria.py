"""Failure tests that see a wrong climate: the distribution and autocorrelation criteria in the
L96 host's drift windows (coupler/hosts/common/climate_stats.f90), their calibration on truth
runs (harness/climate.py, harness/l96.py), and a run locked onto a regular wave, which keeps a
plausible mean and standard deviation and must still fail."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from harness.climate import (acf_distance, calibrate_climate, hellinger_distance, power_spectrum,
                             quantile_edges, window_acf)
from harness.hosts import HostError, host_run_from_dict, run_host
from harness.l96 import L96Plugin, calibrate_drift
from harness.sw import SWPlugin
from harness.study.config import CoupleConfig, StudyError, config_from_dict

ROOT = Path(__file__).resolve().parent.parent
K = 8
WINDOW, SAMPLE = 1000, 10          # coarse steps of dt = 0.005: 5 and 0.05 model time units
L96_COUPLE = CoupleConfig(steps=20_000, dt=0.005, drift_window_time=5.0, drift_sample_time=0.05)


def run(base: Path, name: str, mode: str = "coarse", **sections: dict) -> dict:
    data = {"host": "l96", "model": {"k": K}, "run": {"mode": mode, **sections.pop("run", {})},
            **sections}
    return run_host(host_run_from_dict(data, base, output_dir=base / name), timeout=300)


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("climate")
    out: dict = {"base": base}
    for seed in (1, 2):       # 200 time units each: 40 drift windows
        result = run(base, f"truth{seed}", "truth",
                     run={"dt": 0.001, "n_steps": 200_000, "spinup_steps": 2000,
                          "sample_interval": 10, "seed": seed})
        assert result["status"] == "completed"
        out[seed] = base / f"truth{seed}" / "truth.h5"
    couple = L96_COUPLE
    out["calibration"] = L96Plugin().calibrate(out[1], out[2], couple)
    return out


def fortran_statistics(tmp: Path, values: np.ndarray, edges: np.ndarray, pdf: np.ndarray,
                       lags: np.ndarray, ref_acf: np.ndarray, field: np.ndarray,
                       n_waves: int) -> np.ndarray:
    """field (rows, n) as Python holds a host's (n, rows) array."""
    exe = ROOT / "build" / "single" / "coupler" / "test_climate_stats"
    text = [f"{values.shape[0]} {values.shape[1]}",
            " ".join(repr(float(v)) for v in values.ravel(order="F")), str(pdf.size),
            " ".join(repr(float(e)) for e in edges), " ".join(repr(float(p)) for p in pdf),
            str(lags.size), " ".join(str(int(lag)) for lag in lags),
            " ".join(repr(float(a)) for a in ref_acf),
            f"{field.shape[1]} {field.shape[0]} {n_waves}",
            " ".join(repr(float(v)) for v in field.ravel())]
    (tmp / "window.txt").write_text("\n".join(text) + "\n")
    out = subprocess.run([str(exe), str(tmp / "window.txt")], capture_output=True, text=True,
                         check=True)
    return np.array([float(v) for v in out.stdout.split()])


def test_the_host_and_the_calibration_compute_the_same_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    edges = quantile_edges(rng.normal(3.7, 5.0, 20_000), 16)
    pdf = rng.dirichlet(np.ones(16))
    lags = np.array([1, 5, 10, 20, 49])
    ref_acf = rng.uniform(-0.5, 0.5, lags.size)
    windows = [rng.normal(3.7, 5.0, (K, 100)),
               rng.normal(20.0, 1.0, (K, 100)),                   # all above the last edge
               np.sin(np.arange(100) * 0.3)[None, :] * np.ones((K, 1)) * 9 + 3]
    windows[0][0, :15] = edges        # values on the edges fall into the bin above
    windows[0][1, :] = 4.0            # a column that does not vary: fully correlated
    for n in (32, 7):                 # even and odd periodic lengths
        field = rng.normal(0.0, 0.3, (5, n)) + np.sin(2 * np.pi * 3 * np.arange(n) / n)
        for w in windows:
            got = fortran_statistics(tmp_path, w, edges, pdf, lags, ref_acf, field, n // 2)
            acf = window_acf(w, lags)
            want = np.array([hellinger_distance(w, edges, pdf), acf_distance(acf, ref_acf), *acf,
                             *power_spectrum(field[None], n // 2)])
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_criteria_are_calibrated_on_truth_with_their_false_alarm_rates(truth: dict) -> None:
    cal = truth["calibration"]
    climate, fail = cal["climate"], cal["failure"]
    assert fail["pdf_check"] and fail["acf_check"]
    assert fail["n_pdf_bins"] == 16 and len(fail["pdf_edges"]) == 63      # the host's bounds
    # equal-probability bins of the truth
    np.testing.assert_allclose(climate["clim_pdf"], 1 / 16, atol=0.01)
    assert climate["acf_lags"] == [10, 20, 30, 40, 50]                     # 0.5 .. 2.5 time units
    assert 0 < climate["pdf_dist_sd"] < climate["pdf_dist_mean"] < 0.2
    rates = cal["false_alarm_rates"]
    assert set(rates) == {"mean/std", "distribution", "autocorrelation", "any"}
    # windows of a truth run the calibration did not see: none fails at the default 5 sigma
    assert all(r["5.0"] == 0.0 for r in rates.values()), rates
    assert rates["any"]["3.0"] >= max(rates[c]["3.0"] for c in rates if c != "any")


def wave_closure() -> list[float]:
    """U = a + b X: the coarse model becomes the one-scale Lorenz-96 at F = 3.5, where it runs on
    a regular wave, rescaled (X = d Y) to the truth's standard deviation (5.04; Y's is 1.74)."""
    d = 5.04 / 1.74
    return [3.5 * d * d - 20.0, 1.0 - d, 0.0, 0.0]


def test_a_run_locked_on_a_regular_wave_fails_by_its_distribution(truth: dict) -> None:
    fail = truth["calibration"]["failure"]
    runs = {"init_file": str(truth[2]), "init_index": 100, "dt": 0.005, "n_steps": 20_000,
            "closure": "cubic", "cubic_coeffs": wave_closure()}
    base = truth["base"]
    # the mean/std test alone lets it run the whole budget
    alone = run(base, "wave_meanstd", run=runs,
                failure={**fail, "pdf_check": False, "acf_check": False})
    assert alone["status"] == "completed" and alone["steps"] == 20_000
    with h5py.File(base / "wave_meanstd" / "diagnostics.h5") as f:
        assert np.abs(f["drift_z_mean"][:]).max() < 5 and np.abs(f["drift_z_std"][:]).max() < 5
        assert "drift_z_pdf" not in f
    both = run(base, "wave", run=runs, failure=fail)
    assert both["status"] == "failed" and both["reason"] == "distribution", both
    assert both["variable"] == "x_pdf" and "Hellinger" in both["message"]
    assert both["failure_step"] == both["steps"] and both["steps"] % WINDOW == 0
    assert both["steps"] <= 5 * WINDOW
    with h5py.File(base / "wave" / "diagnostics.h5") as f:
        zp = f["drift_z_pdf"][:]
        assert zp[-1] > 5 and len(zp) == both["steps"] // WINDOW
        assert len(f["drift_z_acf"][:]) == len(zp)
    assert both["extra"]["final_window_z_pdf"] == pytest.approx(zp[-1])


def test_the_fitted_closure_passes_every_criterion(truth: dict) -> None:
    cal = truth["calibration"]
    result = run(truth["base"], "cubic",
                 run={"init_file": str(truth[2]), "init_index": 100, "dt": 0.005,
                      "n_steps": 20_000, "closure": "cubic", "cubic_coeffs": cal["cubic_coeffs"]},
                 failure=cal["failure"])
    assert result["status"] == "completed", result


def test_an_autocorrelation_far_from_the_truths_fails_by_it(truth: dict) -> None:
    """The autocorrelation criterion alone: the truth's own climate against a reference acf of
    0.9 at every lag (a persistent flow) is a run whose temporal structure is wrong."""
    fail = dict(truth["calibration"]["failure"])
    n = fail["n_acf_lags"]
    fail.update(pdf_check=False, clim_acf=[0.9] * n + fail["clim_acf"][n:])
    result = run(truth["base"], "acf",
                 run={"init_file": str(truth[2]), "init_index": 100, "dt": 0.005,
                      "n_steps": 4000, "closure": "cubic",
                      "cubic_coeffs": truth["calibration"]["cubic_coeffs"]},
                 failure=fail)
    assert result["status"] == "failed" and result["reason"] == "autocorrelation", result
    assert result["variable"] == "x_acf"


@pytest.mark.parametrize("change, key", [
    ({"drift_check": False}, "pdf_check"),
    ({"n_pdf_bins": 1}, "n_pdf_bins"),
    ({"n_pdf_bins": 65}, "n_pdf_bins"),
    ({"pdf_dist_sd": 0.0}, "pdf_dist_mean, pdf_dist_sd"),
    ({"n_acf_lags": 0}, "n_acf_lags"),
    ({"acf_dist_sd": -1.0}, "acf_dist_mean, acf_dist_sd"),
])
def test_bad_criteria_settings_name_the_key(truth: dict, change: dict, key: str) -> None:
    fail = {**truth["calibration"]["failure"], **change}
    with pytest.raises(HostError, match=f"&l96_failure: {re.escape(key)} "):
        run(truth["base"], "bad", run={"n_steps": 10}, failure=fail)


def test_unordered_edges_and_lags_beyond_the_window_are_refused(truth: dict) -> None:
    fail = truth["calibration"]["failure"]
    edges = list(fail["pdf_edges"])
    edges[3], edges[4] = edges[4], edges[3]
    for change, key in (({"pdf_edges": edges}, "pdf_edges, clim_pdf"),
                        ({"acf_lags": [WINDOW // SAMPLE] + list(fail["acf_lags"][1:])},
                         "acf_lags, clim_acf")):
        with pytest.raises(HostError, match=f"&l96_failure: {key} "):
            run(truth["base"], "bad", run={"n_steps": 10}, failure={**fail, **change})


@pytest.mark.parametrize("couple, message", [
    ({"drift_pdf_bins": 1}, "couple.drift_pdf_bins"),
    ({"drift_pdf_bins": 65}, "couple.drift_pdf_bins"),
    ({"drift_acf_lags": [0.5, 1.0]}, "couple.drift_acf_lags"),
    ({"drift_acf_lags": [0.2, 0.2]}, "couple.drift_acf_lags"),
])
def test_bad_study_settings_name_the_key(couple: dict, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        config_from_dict({"host": {"name": "l96"}, "couple": couple})


def test_lags_that_are_not_whole_distinct_samples_are_refused(truth: dict) -> None:
    from harness.errors import HarnessError
    # 100 samples a window: 0.001 rounds to no lag at all, 0.201 and 0.2 to the same one
    for lags in ([0.001], [0.2, 0.201]):
        couple = replace(L96_COUPLE, drift_acf_lags=lags)
        with pytest.raises(HarnessError, match="couple.drift_acf_lags"):
            L96Plugin().calibrate(truth[1], truth[2], couple)


def test_too_few_values_a_bin_are_refused(truth: dict) -> None:
    """1-unit windows of 20 samples x 8 columns: 160 values, too few for 16 bins."""
    from harness.errors import HarnessError
    couple = replace(L96_COUPLE, drift_window_time=1.0)
    with pytest.raises(HarnessError, match=r"couple.drift_pdf_bins: 16 bins for 160 values a "
                                           r"window leave 10 a bin.*at most 8 bins"):
        L96Plugin().calibrate(truth[1], truth[2], couple)
    assert L96Plugin().calibrate(truth[1], truth[2], replace(couple, drift_pdf_bins=8))


def test_criteria_can_be_switched_off(truth: dict) -> None:
    couple = replace(L96_COUPLE, drift_pdf_bins=0,
                     drift_acf_lags=[])
    cal = L96Plugin().calibrate(truth[1], truth[2], couple)
    assert cal["failure"]["pdf_check"] is False and cal["failure"]["acf_check"] is False
    assert set(cal["false_alarm_rates"]) == {"mean/std", "any"}
    assert calibrate_drift(truth[1], 5.0, 0.05).n_windows == 40
    assert calibrate_climate(np.zeros((3, K, 10)) + np.arange(10), 0, []).clim_pdf == []


# ---------------------------------------------------------------------------------------------
# the shallow-water host: the distribution of h and the kinetic-energy spectrum

def run_sw(base: Path, name: str, mode: str = "coarse", **sections: dict) -> dict:
    data = {"host": "sw", "run": {"mode": mode, **sections.pop("run", {})}, **sections}
    return run_host(host_run_from_dict(data, base, output_dir=base / name), timeout=300)


@pytest.fixture(scope="module")
def sw_truth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("climate_sw")
    out: dict = {"base": base}
    for seed in (1, 2):       # 300 days each: 30 windows of 10 days
        result = run_sw(base, f"truth{seed}", "truth",
                        run={"dt": 900.0, "n_steps": 28_800, "spinup_steps": 4_800,
                             "sample_interval": 48, "seed": seed})
        assert result["status"] == "completed"
        out[seed] = base / f"truth{seed}" / "truth.h5"
    couple = replace(CoupleConfig(steps=6_000, dt=900.0), **{
        k.removeprefix("couple."): v for k, v in SWPlugin.study_defaults.items()
        if k.startswith("couple.drift")})
    out["calibration"] = SWPlugin().calibrate(out[1], out[2], couple)
    return out


def sw_coarse(truth: dict, name: str, closure: str, failure: dict | None = None) -> dict:
    return run_sw(truth["base"], name,
                  run={"closure": closure, "dt": 900.0, "n_steps": 6_000,
                       "init_file": str(truth[2]), "init_index": 100},
                  failure=failure or truth["calibration"]["failure"])


def test_sw_criteria_are_calibrated_with_their_false_alarm_rates(sw_truth: dict) -> None:
    cal = sw_truth["calibration"]
    fail = cal["failure"]
    assert fail["climate_window"] == 960 and fail["climate_sample_interval"] == 48
    assert fail["n_pdf_bins"] == 16 and fail["n_ke_waves"] == 16       # nx = 32
    spectrum = np.array(cal["climate"]["clim_ke_spectrum"])
    assert (spectrum > 0).all() and spectrum[0] > spectrum[-1]         # energy at large scales
    rates = cal["false_alarm_rates"]
    assert set(rates) == {"distribution", "spectrum", "any"}
    assert all(r["5.0"] == 0.0 for r in rates.values()), rates


def test_sw_truth_forcing_passes_and_no_forcing_fails_by_its_spectrum(sw_truth: dict) -> None:
    truth = sw_coarse(sw_truth, "truth_closure", "truth")
    assert truth["status"] == "completed", truth
    assert abs(truth["extra"]["final_window_z_spectrum"]) < 5
    # without the forcing the flow loses its small scales long before any bound is reached
    none = sw_coarse(sw_truth, "no_closure", "none")
    assert none["status"] == "failed" and none["reason"] == "spectrum", none
    assert none["variable"] == "ke_spectrum" and none["failure_step"] % 960 == 0
    with h5py.File(sw_truth["base"] / "no_closure" / "diagnostics.h5") as f:
        zs = f["climate_z_spectrum"][:]
        assert zs[-1] > 5 and (zs[:-1] <= 5).all() and len(f["climate_z_pdf"][:]) == len(zs)
    # with the criteria off, the same run reaches the end: the energy bound does not see it
    off = sw_coarse(sw_truth, "no_closure_off", "none",
                    {**sw_truth["calibration"]["failure"], "climate_window": 0})
    assert off["status"] == "completed", off


def test_sw_a_wrong_h_distribution_fails_by_it(sw_truth: dict) -> None:
    """The truth's own flow against a reference pdf with its mass moved to the other end."""
    fail = dict(sw_truth["calibration"]["failure"])
    n = fail["n_pdf_bins"]
    fail["clim_pdf"] = [0.0] * (n - 1) + [1.0] + fail["clim_pdf"][n:]
    result = sw_coarse(sw_truth, "pdf", "truth", fail)
    assert result["status"] == "failed" and result["reason"] == "distribution", result
    assert result["variable"] == "h_pdf" and result["steps"] == 960


@pytest.mark.parametrize("change, key", [
    ({"climate_window": 100}, "climate_window"),
    ({"climate_sigma": 0.0}, "climate_sigma"),
    ({"n_pdf_bins": 1}, "n_pdf_bins"),
    ({"n_ke_waves": 17}, "n_ke_waves"),
    ({"spec_dist_sd": 0.0}, "clim_ke_spectrum, spec_dist_mean, spec_dist_sd"),
    ({"pdf_dist_sd": 0.0}, "pdf_dist_mean, pdf_dist_sd"),
])
def test_sw_bad_criteria_settings_name_the_key(sw_truth: dict, change: dict, key: str) -> None:
    with pytest.raises(HostError, match=f"&sw_failure: {re.escape(key)} "):
        run_sw(sw_truth["base"], "bad", run={"n_steps": 10},
               failure={**sw_truth["calibration"]["failure"], **change})


@pytest.mark.parametrize("host", ["l96", "sw"])
def test_batched_runs_keep_their_own_windows(truth: dict, sw_truth: dict, host: str) -> None:
    """Each run of a batch keeps its own window samples and counts: bitwise the run alone,
    failing by the criteria at its own window."""
    from harness.hosts import HostRun, run_host_batch
    from test_batch_runs import assert_same_run
    fix = truth if host == "l96" else sw_truth
    base = fix["base"] / "batch"
    if host == "l96":
        model, run = {"k": K}, {"closure": "cubic", "cubic_coeffs": wave_closure(), "dt": 0.005,
                                "n_steps": 20_000}
    else:
        model, run = {}, {"closure": "none", "dt": 900.0, "n_steps": 6_000}
    runs = [HostRun(host=host, output_dir=base / f"run{i}", model=model,
                    failure=fix["calibration"]["failure"],
                    run={"mode": "coarse", "init_file": str(fix[2]), "init_index": 50 + 150 * i,
                         "seed": 7 + i, **run}) for i in range(3)]
    batch = run_host_batch(runs, timeout=300, batch_dir=base / "batch")
    assert {r["reason"] for r in batch} <= {"distribution", "spectrum", "autocorrelation"}
    assert all(r["status"] == "failed" for r in batch), batch
    for r in runs:
        alone = HostRun(**{**r.__dict__, "output_dir": r.output_dir.with_name(
            r.output_dir.name + ".solo")})
        run_host(alone, timeout=300)
        assert_same_run(r.output_dir, alone.output_dir)


def test_the_calibration_command_prints_every_criterion(truth: dict) -> None:
    import json
    import sys
    out = subprocess.run([sys.executable, "-m", "harness", "l96-calibrate", str(truth[1]),
                          "--check", str(truth[2]), "--pdf-bins", "8", "--acf-lags", "0.2"],
                         capture_output=True, text=True, check=True)
    cal = json.loads(out.stdout)
    assert len(cal["climate"]["clim_pdf"]) == 8 and cal["climate"]["acf_lags"] == [20]
    assert set(cal["false_alarm_rate_per_window"]) == {"mean/std", "distribution",
                                                       "autocorrelation", "any"}
    bad = subprocess.run([sys.executable, "-m", "harness", "l96-calibrate", str(truth[1]),
                          "--acf-lags", "0.001"], capture_output=True, text=True)
    assert bad.returncode != 0 and "drift_acf_lags" in bad.stderr
