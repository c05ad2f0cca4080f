"""2-D shallow-water data for the study: training pairs from a truth run of ``colnn_sw``.

A truth file holds snapshots ``u, v, h`` and the forcing ``theta_u, theta_v, theta_h`` of shape
(time, y, x) on the C-grid; a network column is one cell (see coupler/hosts/sw/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

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
    baselines = ("none", "truth")
    study_defaults = {"data.dt": 900.0, "data.steps": 28_800, "data.spinup_steps": 4_800,
                      "data.sample_interval": 48, "couple.dt": 900.0, "couple.steps": 6_000,
                      "couple.baselines": ["none", "truth"]}
    calibrated_keys = frozenset({"energy_max", "energy_warn", "clim_ke", "clim_pe",
                                 "clim_h_std", "clim_speed_mean"})
    #: the first step above the energy warning level and the largest energy reached
    table_metrics = {"energy_warn_step": "energy_warn_step", "max_energy": "max_energy"}

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
        return {"n_snapshots": n_snap, "truth_energy_max": e_max,
                "failure": {"energy_max": couple.energy_factor * e_max,
                            "energy_warn": couple.warn_factor * e_max,
                            "clim_ke": float(clim["ke"].mean()),
                            "clim_pe": float(clim["pe"].mean()),
                            "clim_h_std": float(clim["h_std"].mean()),
                            "clim_speed_mean": float(clim["mean_speed"].mean())},
                "bias_variable": "bias_ke",
                "bias_label": "relative bias of kinetic energy vs the truth climatology"}

    def training_pairs(self, truth: Path, host: "HostConfig",
                       validation_fraction: float) -> dict[str, np.ndarray]:
        data, _ = read_truth(truth)
        cut = split_in_time(data["u"].shape[0], validation_fraction, truth)
        xt, yt = training_pairs({k: v[:cut] for k, v in data.items()})
        xv, yv = training_pairs({k: v[cut:] for k, v in data.items()})
        return {"x_train": xt, "y_train": yt, "x_val": xv, "y_val": yv}
