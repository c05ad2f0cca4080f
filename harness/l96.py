"""Two-scale Lorenz-96 data for the study: training pairs from a truth run, the cubic baseline,
and the calibration of the drift test (climatology, window spread, false-alarm rates).

A truth file (``truth.h5``, written by ``colnn_l96`` in truth mode) holds snapshots ``x`` and
``u`` of shape (time, k): the slow state and the coupling term U_k = -(h c / b) sum_j Y_jk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .climate import (MAX_ACF_LAGS, MAX_PDF_BINS, ClimateCalibration, calibrate_climate,
                      padded)
from .errors import HarnessError
from .plugins import HostPlugin, split_in_time

if TYPE_CHECKING:
    from .study.config import CoupleConfig, HostConfig

__all__ = ["read_truth", "training_pairs", "fit_cubic", "DriftCalibration", "calibrate_drift",
           "false_alarm_rates", "n_features", "L96Plugin"]

INPUTS = ("local", "stencil", "full")


def read_truth(path: Path | str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(x, u, attrs) of a truth file; x and u are (time, k)."""
    try:
        with h5py.File(path, "r") as f:
            x = np.asarray(f["x"][...], dtype=np.float64)
            u = np.asarray(f["u"][...], dtype=np.float64)
            attrs = {k: (v.decode() if isinstance(v, bytes) else
                         (v.item() if hasattr(v, "item") else v)) for k, v in f.attrs.items()}
    except (OSError, KeyError) as exc:
        raise HarnessError(f"{path}: not an L96 truth file ({exc})") from None
    if x.ndim != 2 or x.shape != u.shape or x.shape[0] < 1:
        raise HarnessError(f"{path}: x and u must be (time, k) of one shape, got {x.shape}, "
                           f"{u.shape}")
    return x, u, attrs


def n_features(inputs: str, halfwidth: int, k: int) -> tuple[int, int]:
    """(inputs, outputs) per network column for an input choice."""
    if inputs == "local":
        return 1, 1
    if inputs == "stencil":
        return 2 * halfwidth + 1, 1
    if inputs == "full":
        return k, k
    raise HarnessError(f"inputs must be one of {INPUTS}, got {inputs!r}")


def training_pairs(x: np.ndarray, u: np.ndarray, inputs: str = "stencil",
                   halfwidth: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) as (samples, features), in the order the host packs a column:
    local: X_k -> U_k; stencil: X_{k-w} .. X_{k+w} -> U_k (periodic); full: X -> U."""
    if inputs == "full":
        return x.copy(), u.copy()
    n_in, _ = n_features(inputs, halfwidth, x.shape[1])
    w = (n_in - 1) // 2
    cols = [np.roll(x, -i, axis=1) for i in range(-w, w + 1)]   # cols[i + w][t, k] = x[t, k + i]
    feats = np.stack(cols, axis=-1).reshape(-1, n_in)
    return feats, u.reshape(-1, 1)


def fit_cubic(x: np.ndarray, u: np.ndarray) -> list[float]:
    """Least-squares U ~ c1 + c2 X + c3 X^2 + c4 X^3 (the classical closure); [c1, c2, c3, c4]."""
    coeffs = np.polynomial.polynomial.polyfit(x.ravel(), u.ravel(), 3)
    return [float(c) for c in coeffs]


@dataclass
class DriftCalibration:
    """What the host's drift test needs (&l96_failure), from truth runs."""

    clim_mean: float
    clim_std: float
    sd_window_mean: float
    sd_window_std: float
    window_time: float
    sample_time: float
    n_windows: int

    def as_dict(self) -> dict:
        return asdict(self)


def _windows(x: np.ndarray, sample_every: int, per_window: int) -> tuple[np.ndarray, np.ndarray]:
    xs = x[sample_every - 1::sample_every]
    n = xs.shape[0] // per_window
    if n < 1:
        raise HarnessError(f"the truth run is shorter than one drift window "
                           f"({per_window} samples of {sample_every} snapshots)")
    w = xs[: n * per_window].reshape(n, per_window * xs.shape[1])
    mean = w.mean(axis=1)
    std = np.sqrt(np.maximum((w ** 2).mean(axis=1) - mean ** 2, 0))
    return mean, std


def _window_series(x: np.ndarray, sample_every: int, per_window: int) -> np.ndarray:
    """The drift windows' samples as the coarse host holds them: (windows, K, samples)."""
    xs = x[sample_every - 1::sample_every]
    n = xs.shape[0] // per_window
    return xs[: n * per_window].reshape(n, per_window, xs.shape[1]).transpose(0, 2, 1)


def _spacing(attrs: dict, window_time: float, sample_time: float) -> tuple[int, int]:
    snap_time = float(attrs["dt"]) * float(attrs["sample_interval"])
    every = int(round(sample_time / snap_time))
    if every < 1 or abs(every * snap_time - sample_time) > 1e-9 * sample_time:
        raise HarnessError(f"the drift sample time {sample_time} is not a multiple of the truth "
                           f"snapshot interval {snap_time}")
    per_window = int(round(window_time / sample_time))
    if per_window < 1 or abs(per_window * sample_time - window_time) > 1e-9 * window_time:
        raise HarnessError(f"the drift window {window_time} is not a multiple of the sample time "
                           f"{sample_time}")
    return every, per_window


def calibrate_drift(truth: Path | str, window_time: float, sample_time: float) -> DriftCalibration:
    """Climatology of X and the spread of the window mean and window std of X over
    non-overlapping windows, sampled as the coarse host samples them."""
    x, _, attrs = read_truth(truth)
    every, per_window = _spacing(attrs, window_time, sample_time)
    mean, std = _windows(x, every, per_window)
    if mean.size < 2:
        raise HarnessError(f"{truth}: {mean.size} drift window(s); the calibration needs many "
                           f"(a longer truth run)")
    # the references are the windows' own averages, so the test is unbiased for the truth
    return DriftCalibration(clim_mean=float(mean.mean()), clim_std=float(std.mean()),
                            sd_window_mean=float(mean.std(ddof=1)),
                            sd_window_std=float(std.std(ddof=1)), window_time=window_time,
                            sample_time=sample_time, n_windows=int(mean.size))


def calibrate_window_climate(truth: Path | str, cal: DriftCalibration, pdf_bins: int,
                             acf_lags: list[float]) -> ClimateCalibration:
    """The distribution and autocorrelation criteria in the drift test's windows (harness.climate)
    from a truth run; the lags, fractions of the window, become whole samples."""
    x, _, attrs = read_truth(truth)
    every, per_window = _spacing(attrs, cal.window_time, cal.sample_time)
    lags = [int(round(f * per_window)) for f in acf_lags]
    if any(lag < 1 or lag >= per_window for lag in lags) or len(set(lags)) != len(lags):
        raise HarnessError(f"couple.drift_acf_lags: {acf_lags} of a window of {per_window} "
                           f"samples give the lags {lags}: each must be a distinct whole number "
                           f"of samples in 1..{per_window - 1} (more samples a window, or fewer "
                           f"lags)")
    try:
        return calibrate_climate(_window_series(x, every, per_window), pdf_bins, lags)
    except ValueError as exc:
        raise HarnessError(f"{truth}: {exc}") from None


def climate_false_alarm_rates(truth: Path | str, cal: DriftCalibration,
                              climate: ClimateCalibration, sigmas: tuple[float, ...]
                              ) -> dict[str, dict[float, float]]:
    """Per criterion and for any of them (what a run meets), the fraction of a truth run's
    windows that would fail at each threshold."""
    x, _, attrs = read_truth(truth)
    every, per_window = _spacing(attrs, cal.window_time, cal.sample_time)
    z = {"mean/std": _mean_std_z(x, cal, every, per_window)}
    zp, za = climate.z_scores(_window_series(x, every, per_window))
    if climate.clim_pdf:
        z["distribution"] = zp
    if climate.acf_lags:
        z["autocorrelation"] = za
    z["any"] = np.max(np.vstack(list(z.values())), axis=0)
    return {k: {s: float((v > s).mean()) for s in sigmas} for k, v in z.items()}


def false_alarm_rates(truth: Path | str, cal: DriftCalibration,
                      sigmas: tuple[float, ...] = (3.0, 4.0, 5.0)) -> dict[float, float]:
    """Fraction of windows of a truth run (use one the calibration did not see) that the drift
    test would flag at each threshold."""
    x, _, attrs = read_truth(truth)
    every, per_window = _spacing(attrs, cal.window_time, cal.sample_time)
    z = _mean_std_z(x, cal, every, per_window)
    return {s: float((z > s).mean()) for s in sigmas}


def _mean_std_z(x: np.ndarray, cal: DriftCalibration, every: int, per_window: int
                ) -> np.ndarray:
    """Each window's larger |z| of its mean and its std: what the drift test compares."""
    mean, std = _windows(x, every, per_window)
    return np.maximum(np.abs(mean - cal.clim_mean) / cal.sd_window_mean,
                      np.abs(std - cal.clim_std) / cal.sd_window_std)


class L96Plugin(HostPlugin):
    """The two-scale Lorenz-96 host (``colnn_l96``) for studies: a column is one slow variable
    X_k; the network replaces the coupling term U_k. Failure: bounds, NaN and the drift test of
    window mean and std (calibrated here); baselines: no closure and the fitted cubic."""

    name = "l96"
    baselines = ("none", "cubic")
    trains_online = True
    study_defaults = {"data.dt": 0.001, "data.steps": 200_000, "data.spinup_steps": 2_000,
                      "data.sample_interval": 10, "couple.dt": 0.005, "couple.steps": 20_000,
                      "couple.baselines": ["none", "cubic"], "couple.drift_window_time": 5.0,
                      "couple.drift_sample_time": 0.05}
    calibrated_keys = frozenset({"drift_check", "drift_window", "drift_sample_interval",
                                 "drift_sigma", "clim_mean", "clim_std", "sd_window_mean",
                                 "sd_window_std", "pdf_check", "n_pdf_bins", "pdf_edges",
                                 "clim_pdf", "pdf_dist_mean", "pdf_dist_sd", "acf_check",
                                 "n_acf_lags", "acf_lags", "clim_acf", "acf_dist_mean",
                                 "acf_dist_sd"})
    #: the last drift window's z-scores of mean and std: how far from failing a survivor was
    table_metrics = {"drift_z_mean": "final_window_z_mean", "drift_z_std": "final_window_z_std",
                     "drift_z_pdf": "final_window_z_pdf", "drift_z_acf": "final_window_z_acf"}
    study_run_keys = frozenset({"inputs", "stencil_halfwidth", "cubic_coeffs"})

    def check(self, host: "HostConfig") -> None:
        if host.inputs not in INPUTS:
            raise ValueError(f"host.inputs: must be 'local', 'stencil' or 'full', got "
                             f"{host.inputs!r}")

    def inputs_label(self, host: "HostConfig") -> str:
        return host.inputs

    def run_keys(self, host: "HostConfig") -> dict[str, Any]:
        return {"inputs": host.inputs, "stencil_halfwidth": host.stencil_halfwidth}

    def baseline_run_keys(self, closure: str, calibration: dict[str, Any]) -> dict[str, Any]:
        return {"cubic_coeffs": calibration["cubic_coeffs"]} if closure == "cubic" else {}

    def calibrate(self, first: Path, last: Path, couple: "CoupleConfig") -> dict[str, Any]:
        x, u, _ = read_truth(first)
        n_snap = read_truth(last)[0].shape[0]
        dt = couple.dt
        window = round(couple.drift_window_time / dt)
        sample = round(couple.drift_sample_time / dt)
        if abs(window * dt - couple.drift_window_time) > 1e-9 * couple.drift_window_time or \
                abs(sample * dt - couple.drift_sample_time) > 1e-9 * couple.drift_sample_time:
            raise HarnessError(f"couple.drift_window_time and drift_sample_time must be "
                               f"multiples of couple.dt = {dt}")
        cal = calibrate_drift(first, couple.drift_window_time, couple.drift_sample_time)
        climate = calibrate_window_climate(first, cal, couple.drift_pdf_bins,
                                           couple.drift_acf_lags)
        sigmas = tuple(sorted({3.0, 4.0, 5.0, float(couple.drift_sigma)}))
        # the rates on the last truth run, which the calibration did not see
        rates = climate_false_alarm_rates(last, cal, climate, sigmas)
        pdf_on = bool(couple.drift and climate.clim_pdf)
        acf_on = bool(couple.drift and climate.acf_lags)
        return {"n_snapshots": int(n_snap), "drift": cal.as_dict(),
                "climate": climate.as_dict(),
                "false_alarm_rates": {crit: {str(k): v for k, v in r.items()}
                                      for crit, r in rates.items()},
                "cubic_coeffs": fit_cubic(x, u),
                "failure": {"drift_check": bool(couple.drift), "drift_window": window,
                            "drift_sample_interval": sample, "drift_sigma": couple.drift_sigma,
                            "clim_mean": cal.clim_mean, "clim_std": cal.clim_std,
                            "sd_window_mean": cal.sd_window_mean,
                            "sd_window_std": cal.sd_window_std,
                            "pdf_check": pdf_on, "acf_check": acf_on,
                            # the host's arrays have fixed bounds; n_* says how much is used
                            **({"n_pdf_bins": len(climate.clim_pdf),
                                "pdf_edges": padded(climate.pdf_edges, MAX_PDF_BINS - 1),
                                "clim_pdf": padded(climate.clim_pdf, MAX_PDF_BINS),
                                "pdf_dist_mean": climate.pdf_dist_mean,
                                "pdf_dist_sd": climate.pdf_dist_sd} if pdf_on else {}),
                            **({"n_acf_lags": len(climate.acf_lags),
                                "acf_lags": padded(climate.acf_lags, MAX_ACF_LAGS, 0),
                                "clim_acf": padded(climate.clim_acf, MAX_ACF_LAGS),
                                "acf_dist_mean": climate.acf_dist_mean,
                                "acf_dist_sd": climate.acf_dist_sd} if acf_on else {})},
                "bias_variable": "bias",
                "bias_label": "bias of the mean of X vs the truth climatology"}

    def training_pairs(self, truth: Path, host: "HostConfig",
                       validation_fraction: float) -> dict[str, np.ndarray]:
        x, u, _ = read_truth(truth)
        cut = split_in_time(x.shape[0], validation_fraction, truth)
        xt, yt = training_pairs(x[:cut], u[:cut], host.inputs, host.stencil_halfwidth)
        xv, yv = training_pairs(x[cut:], u[cut:], host.inputs, host.stencil_halfwidth)
        return {"x_train": xt, "y_train": yt, "x_val": xv, "y_val": yv}
