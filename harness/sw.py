"""2-D shallow-water data for the study: training pairs from a truth run of ``colnn_sw``.

A truth file holds snapshots ``u, v, h`` and the forcing ``theta_u, theta_v, theta_h`` of shape
(time, y, x) on the C-grid; a network column is one cell (see coupler/hosts/sw/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .climate import (MAX_PDF_BINS, MAX_SPEC_WAVES, FieldClimateCalibration,
                      calibrate_field_climate, padded)
from .errors import HarnessError
from .plugins import HostPlugin, split_in_time

if TYPE_CHECKING:
    from .study.config import CoupleConfig, HostConfig

__all__ = ["read_truth", "training_pairs", "N_INPUTS", "N_OUTPUTS", "SWPlugin"]

N_INPUTS, N_OUTPUTS = 15, 3
FIELDS = ("u", "v", "h")
TARGETS = ("theta_u", "theta_v", "theta_h")


def read_truth(path: Path | str) -> tuple[dict[str, np.ndarray], dict]:
    """({name: (time, y, x) array}, attrs) of a truth file."""
    try:
        with h5py.File(path, "r") as f:
            data = {name: np.asarray(f[name][...], dtype=np.float64) for name in FIELDS + TARGETS}
            attrs = {k: (v.decode() if isinstance(v, bytes) else
                         (v.item() if hasattr(v, "item") else v)) for k, v in f.attrs.items()}
    except (OSError, KeyError) as exc:
        raise HarnessError(f"{path}: not a shallow-water truth file ({exc})") from None
    shapes = {a.shape for a in data.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise HarnessError(f"{path}: fields must share one (time, y, x) shape, got {shapes}")
    return data, attrs


def _field_windows(data: dict[str, np.ndarray], every: int, per_window: int
                   ) -> list[dict[str, np.ndarray]]:
    """The truth's snapshots as a coupled run's climate windows: [{"u", "v", "h"}: (samples,
    y, x)]."""
    n = data["u"][every - 1::every].shape[0] // per_window
    return [{k: data[k][every - 1::every][i * per_window:(i + 1) * per_window]
             for k in ("u", "v", "h")} for i in range(n)]


def training_pairs(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (samples, 15), targets (samples, 3)) in the host's order: for u, v, h each the
    cell (i, j), then (i-1, j), (i+1, j), (i, j-1), (i, j+1) (periodic)."""
    feats = []
    for name in FIELDS:
        a = data[name]
        feats += [a, np.roll(a, 1, axis=2), np.roll(a, -1, axis=2),
                  np.roll(a, 1, axis=1), np.roll(a, -1, axis=1)]
    inputs = np.stack(feats, axis=-1).reshape(-1, N_INPUTS)
    targets = np.stack([data[name] for name in TARGETS], axis=-1).reshape(-1, N_OUTPUTS)
    return inputs, targets


class SWPlugin(HostPlugin):
    """The 2-D shallow-water host (``colnn_sw``) for studies: a column is one grid cell seeing
    the 5-point stencil of u, v and h; the network replaces the forcing. Failure: NaN, depth and
    speed bounds and an energy bound (a multiple of the truth's maximum, calibrated here);
    baselines: no forcing and the truth forcing."""

    name = "sw"
    trains_online = True
    baselines = ("none", "truth")
    #: the climate tests' windows: 10 days sampled every 12 h (the truth's snapshots), i.e. 20
    #: samples of the whole grid a window, 30 windows in a 300-day truth run to calibrate on
    study_defaults = {"data.dt": 900.0, "data.steps": 28_800, "data.spinup_steps": 4_800,
                      "data.sample_interval": 48, "couple.dt": 900.0, "couple.steps": 6_000,
                      "couple.baselines": ["none", "truth"],
                      "couple.drift_window_time": 10 * 86_400.0,
                      "couple.drift_sample_time": 43_200.0}
    calibrated_keys = frozenset({"energy_max", "energy_warn", "clim_ke", "clim_pe",
                                 "clim_h_std", "clim_speed_mean", "climate_window",
                                 "climate_sample_interval", "climate_sigma", "n_pdf_bins",
                                 "pdf_edges", "clim_pdf", "pdf_dist_mean", "pdf_dist_sd",
                                 "n_ke_waves", "clim_ke_spectrum", "spec_dist_mean",
                                 "spec_dist_sd"})
    #: the first step above the energy warning level, the largest energy reached, and the last
    #: climate window's z-scores of the h distribution and the KE spectrum
    table_metrics = {"energy_warn_step": "energy_warn_step", "max_energy": "max_energy",
                     "climate_z_pdf": "final_window_z_pdf",
                     "climate_z_spectrum": "final_window_z_spectrum"}

    #: training_pairs keeps the truth's (time, y, x) order: a snapshot is nx * ny rows in a row
    snapshot_pairs = True
    #: theta_h, the thickness tendency: the truth's (h_eq - h) / relax_days has a domain mean of
    #: -mean(h) / relax_days with a zero-mean h_eq, i.e. ~0, as mass is conserved by the
    #: dynamics (flux-form continuity); a network's domain-mean error in it drifts the mass
    mass_output = 2
    mass_output_name = "theta_h"

    def snapshot_columns(self, truth: Path) -> int:
        try:
            with h5py.File(truth, "r") as f:
                _, ny, nx = f["h"].shape
        except (OSError, KeyError, ValueError) as exc:
            raise HarnessError(f"{truth}: not a shallow-water truth file ({exc})") from None
        return int(nx * ny)

    def inputs_label(self, host: "HostConfig") -> str:
        return "u, v, h on the 5-point stencil"

    def calibrate(self, first: Path, last: Path, couple: "CoupleConfig") -> dict[str, Any]:
        try:
            with h5py.File(first, "r") as f:
                clim = {name: np.asarray(f[name][...], dtype=np.float64)
                        for name in ("ke", "pe", "h_std", "mean_speed", "energy")}
            with h5py.File(last, "r") as f:
                n_snap = int(f["u"].shape[0])
        except (OSError, KeyError) as exc:
            raise HarnessError(f"{first}: not a shallow-water truth file ({exc})") from None
        e_max = float(clim["energy"].max())
        climate, window, sample, rates = self._calibrate_climate(first, last, couple)
        on = couple.drift
        return {"n_snapshots": n_snap, "truth_energy_max": e_max,
                "climate": climate.as_dict(),
                "false_alarm_rates": {crit: {str(k): v for k, v in r.items()}
                                      for crit, r in rates.items()},
                "failure": {"energy_max": couple.energy_factor * e_max,
                            "energy_warn": couple.warn_factor * e_max,
                            "clim_ke": float(clim["ke"].mean()),
                            "clim_pe": float(clim["pe"].mean()),
                            "clim_h_std": float(clim["h_std"].mean()),
                            "clim_speed_mean": float(clim["mean_speed"].mean()),
                            "climate_window": window if on else 0,
                            "climate_sample_interval": sample,
                            "climate_sigma": couple.drift_sigma,
                            # the host's arrays have fixed bounds; n_* says how much is used
                            "n_pdf_bins": len(climate.clim_pdf),
                            "pdf_edges": padded(climate.pdf_edges, MAX_PDF_BINS - 1),
                            "clim_pdf": padded(climate.clim_pdf, MAX_PDF_BINS),
                            "pdf_dist_mean": climate.pdf_dist_mean,
                            "pdf_dist_sd": climate.pdf_dist_sd,
                            "n_ke_waves": len(climate.clim_ke_spectrum),
                            "clim_ke_spectrum": padded(climate.clim_ke_spectrum,
                                                        MAX_SPEC_WAVES),
                            "spec_dist_mean": climate.spec_dist_mean,
                            "spec_dist_sd": climate.spec_dist_sd},
                "bias_variable": "bias_ke",
                "bias_label": "relative bias of kinetic energy vs the truth climatology"}

    def _calibrate_climate(self, first: Path, last: Path, couple: "CoupleConfig"
                           ) -> tuple[FieldClimateCalibration, int, int, dict]:
        """The h distribution and KE spectrum criteria in windows of couple.drift_window_time
        sampled every couple.drift_sample_time (a multiple of the truth's snapshot interval),
        from the first truth run; their false-alarm rates on the last."""
        data, attrs = read_truth(first)
        snap = float(attrs["dt"]) * float(attrs["sample_interval"])
        every = int(round(couple.drift_sample_time / snap))
        per_window = int(round(couple.drift_window_time / couple.drift_sample_time))
        sample = int(round(couple.drift_sample_time / couple.dt))
        if every < 1 or abs(every * snap - couple.drift_sample_time) > 1e-9 * snap or \
                abs(sample * couple.dt - couple.drift_sample_time) > 1e-9 * snap:
            raise HarnessError(f"couple.drift_sample_time {couple.drift_sample_time}: must be a "
                               f"multiple of the truth's snapshot interval {snap} s and of "
                               f"couple.dt {couple.dt}")
        if per_window < 1 or abs(per_window * couple.drift_sample_time
                                 - couple.drift_window_time) > 1e-9 * couple.drift_window_time:
            raise HarnessError(f"couple.drift_window_time {couple.drift_window_time}: must be a "
                               f"multiple of couple.drift_sample_time")
        nx = data["u"].shape[-1]
        n_waves = min(nx // 2, MAX_SPEC_WAVES)
        try:
            climate = calibrate_field_climate(_field_windows(data, every, per_window),
                                              couple.drift_pdf_bins, n_waves)
            zp, zs = climate.z_scores(_field_windows(read_truth(last)[0], every, per_window))
        except ValueError as exc:
            raise HarnessError(f"{first}: {exc} (couple.drift_window_time "
                               f"{couple.drift_window_time} s; a longer truth run or shorter "
                               f"windows)") from None
        sigmas = tuple(sorted({3.0, 4.0, 5.0, float(couple.drift_sigma)}))
        z = {"distribution": zp} if climate.clim_pdf else {}
        z["spectrum"] = zs
        z["any"] = np.nanmax(np.vstack(list(z.values())), axis=0)
        rates = {k: {sg: float((v > sg).mean()) for sg in sigmas} for k, v in z.items()}
        return climate, per_window * sample, sample, rates

    def training_pairs(self, truth: Path, host: "HostConfig",
                       validation_fraction: float) -> dict[str, np.ndarray]:
        data, _ = read_truth(truth)
        cut = split_in_time(data["u"].shape[0], validation_fraction, truth)
        xt, yt = training_pairs({k: v[:cut] for k, v in data.items()})
        xv, yv = training_pairs({k: v[cut:] for k, v in data.items()})
        return {"x_train": xt, "y_train": yt, "x_val": xv, "y_val": yv}
