"""2-D shallow-water data for the study: training pairs from a truth run of ``colnn_sw``.

A truth file holds snapshots ``u, v, h`` and the forcing ``theta_u, theta_v, theta_h`` of shape
(time, y, x) on the C-grid; a network column is one cell (see coupler/hosts/sw/README.md).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .errors import HarnessError

__all__ = ["read_truth", "training_pairs", "N_INPUTS", "N_OUTPUTS"]

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
