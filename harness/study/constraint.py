"""Training with whole-snapshot batches and Brajard et al. (2018)'s mass constraint.

A per-column network cannot see the domain, so a constraint on the domain-mean mass tendency
goes into the loss, not the network: nothing changes on the Fortran side. With
``training.snapshot_batches`` every batch is whole snapshots of the truth run (each snapshot's
columns together, in the plugin's order), so the mean over a snapshot's rows of an output is its
domain mean; ``training.mass_constraint = w`` then trains on

    loss = MSE + w * mean over the batch's snapshots s of (mean_s pred_m - mean_s true_m)^2

with m the host plugin's mass output (sw: theta_h), all on the standardized targets the network
learns (so the penalty is in units of theta_h's standard deviation, squared, like the MSE).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["SnapshotBatching", "snapshot_batching", "pick_snapshots", "mass_penalty",
           "mass_constrained_loss", "snapshot_dataset"]


@dataclass(frozen=True)
class SnapshotBatching:
    """How a training run groups its rows: ``columns`` rows a snapshot, ``per_batch``
    snapshots a batch (``batch_size`` = their product)."""
    columns: int
    per_batch: int

    @property
    def batch_size(self) -> int:
        return self.columns * self.per_batch

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "batch_size": self.batch_size}


def snapshot_batching(columns: int, batch_size: int) -> SnapshotBatching:
    """As many whole snapshots as fit in ``batch_size``, at least one."""
    if columns < 1:
        raise ValueError(f"a snapshot needs at least one column, got {columns}")
    return SnapshotBatching(columns, max(1, batch_size // columns))


def pick_snapshots(n_rows: int, columns: int, max_samples: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """Row indices of whole snapshots: all of them (max_samples 0 or not fewer rows than
    max_samples), else max(1, max_samples // columns) snapshots drawn without replacement, in
    time order."""
    if n_rows % columns:
        raise ValueError(f"{n_rows} rows are not whole snapshots of {columns} columns")
    n_snap = n_rows // columns
    if not max_samples or n_rows <= max_samples:
        return np.arange(n_rows)
    keep = np.sort(rng.choice(n_snap, max(1, max_samples // columns), replace=False))
    return (keep[:, None] * columns + np.arange(columns)[None, :]).ravel()


def mass_penalty(y_true: np.ndarray, y_pred: np.ndarray, output: int, columns: int) -> float:
    """The penalty term (without its weight) in numpy, the formula the Keras loss computes:
    the mean over snapshots of the squared difference of the snapshot means of `output`."""
    d = (np.asarray(y_pred, np.float64)[:, output]
         - np.asarray(y_true, np.float64)[:, output]).reshape(-1, columns)
    return float(np.mean(d.mean(axis=1) ** 2))


def mass_constrained_loss(keras: Any, weight: float, output: int, columns: int) -> Any:
    """The Keras loss MSE + weight * mass_penalty (a batch must be whole snapshots)."""
    ops = keras.ops

    def mse_mass(y_true: Any, y_pred: Any) -> Any:
        mse = ops.mean(ops.square(y_pred - y_true))
        d = ops.reshape(y_pred[:, output] - y_true[:, output], (-1, columns))
        return mse + weight * ops.mean(ops.square(ops.mean(d, axis=1)))

    return mse_mass


def snapshot_dataset(x: np.ndarray, y: np.ndarray, batching: SnapshotBatching,
                     shuffle_seed: int | None) -> Any:
    """A tf.data pipeline of whole-snapshot batches (x, y: (rows, features), rows snapshot by
    snapshot); the snapshots' order reshuffled every epoch from `shuffle_seed` (None: kept)."""
    import tensorflow as tf

    c = batching.columns
    xs = x.reshape(-1, c, x.shape[1]).astype(np.float32)
    ys = y.reshape(-1, c, y.shape[1]).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((xs, ys))
    if shuffle_seed is not None:
        ds = ds.shuffle(xs.shape[0], seed=shuffle_seed, reshuffle_each_iteration=True)
    n_in, n_out = x.shape[1], y.shape[1]
    return ds.batch(batching.per_batch).map(
        lambda a, b: (tf.reshape(a, (-1, n_in)), tf.reshape(b, (-1, n_out))))
