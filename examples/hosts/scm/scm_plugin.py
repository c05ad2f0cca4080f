"""The study plugin of the single-column toy host (colnn_scm): defaults, calibration of its
failure bound and training pairs from its truth file. It lives outside the harness and reaches
it only through harness.plugins.HostPlugin (docs/host-protocol.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.plugins import HostPlugin, split_in_time

MAGIC = 1396919601   # 'SCM1', the first int64 of truth.bin


def read_truth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(T, Q) of a truth.bin, each (snapshots, columns, levels)."""
    try:
        header = np.fromfile(path, dtype="<i8", count=4)
        if header.size != 4 or header[0] != MAGIC:
            raise HarnessError(f"{path}: not a colnn_scm truth file (no SCM1 header)")
        n_levels, n_columns, n_snap = (int(v) for v in header[1:])
        values = np.fromfile(path, dtype="<f8", offset=32)
    except OSError as exc:
        raise HarnessError(f"cannot read {path}: {exc.strerror}") from None
    size = n_levels * n_columns * n_snap
    if values.size != 2 * size:
        raise HarnessError(f"{path}: {values.size} values, the header promises {2 * size}")
    shape = (n_snap, n_columns, n_levels)
    return values[:size].reshape(shape), values[size:].reshape(shape)


class SCMPlugin(HostPlugin):
    """Columns of n_levels temperatures; the network replaces the convective adjustment."""

    name = "scm"
    baselines = ("none",)
    truth_file = "truth.bin"
    study_defaults = {"data.dt": 0.05, "data.steps": 20_000, "data.spinup_steps": 1_000,
                      "data.sample_interval": 10, "couple.dt": 0.05, "couple.steps": 4_000,
                      "couple.baselines": ["none"]}
    calibrated_keys = frozenset({"max_abs"})
    #: the candidates table's column: the run's mean temperature (result.json extra "mean_t")
    table_metrics = {"mean_t": "mean_t"}
    #: a coarse run fails when |T| exceeds this multiple of the truth's largest |T|
    bound_factor = 3.0

    def inputs_label(self, host: Any) -> str:
        return "the column's temperatures (all levels)"

    def calibrate(self, first: Path, last: Path, couple: Any) -> dict[str, Any]:
        t, q = read_truth(first)
        t_last, _ = read_truth(last)
        bound = self.bound_factor * float(np.abs(t).max())
        return {"failure": {"max_abs": bound}, "n_snapshots": int(t_last.shape[0]),
                "truth_max_abs_t": float(np.abs(t).max()),
                "truth_mean_t": float(t.mean()),
                "bias_variable": "bias", "bias_label": "none (this host writes no diagnostics)"}

    def training_pairs(self, truth: Path, host: Any,
                       validation_fraction: float) -> dict[str, np.ndarray]:
        t, q = read_truth(truth)
        cut = split_in_time(t.shape[0], validation_fraction, truth)
        n_levels = t.shape[2]
        return {"x_train": t[:cut].reshape(-1, n_levels), "y_train": q[:cut].reshape(-1, n_levels),
                "x_val": t[cut:].reshape(-1, n_levels), "y_val": q[cut:].reshape(-1, n_levels)}
