"""Host plugins: what a study needs to know about a host program, and nothing else does.

A host program follows the host protocol (docs/host-protocol.md): it reads one namelist file
with its groups ``&<name>_model``, ``&<name>_run``, ``&<name>_failure`` and the coupler's
``&colnn_coupler``, reports them with ``--defaults``, and writes ``result.json`` (and its own
diagnostics) in ``output_dir``. A plugin supplies the rest of what a study does with it: the
defaults of its truth and coupled runs, its baselines, the calibration of its failure criteria
on a truth run, the training pairs a truth run gives, and the run keys the study owns.

The built-in hosts are plugins like any other (``harness.l96:L96Plugin``,
``harness.sw:SWPlugin``). A study names another with ``[host] plugin = "module:Class"``, or a
package registers one under the entry-point group ``colnn.hosts``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import HarnessError

if TYPE_CHECKING:
    from .study.config import CoupleConfig, HostConfig

__all__ = ["HostPlugin", "PluginError", "load_plugin", "builtin_hosts", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "colnn.hosts"
BUILTIN: dict[str, str] = {"l96": "harness.l96:L96Plugin", "sw": "harness.sw:SWPlugin"}


class PluginError(HarnessError):
    """A host plugin cannot be found, imported or used."""


class HostPlugin(ABC):
    """The study's view of one host. Subclasses set the class attributes and implement
    `calibrate` and `training_pairs`; the other methods have defaults that fit a host whose
    network columns need no study-owned run keys."""

    #: the host's name: the prefix of its namelist groups
    name: ClassVar[str]
    #: coarse-mode closures the host runs without a network (the study's baselines)
    baselines: ClassVar[tuple[str, ...]] = ("none",)
    #: what the study uses where its file leaves a key out: {"data.dt": ..., "couple.steps": ...}
    study_defaults: ClassVar[dict[str, Any]] = {}
    #: &<name>_failure keys that `calibrate` fills in (a study file must not set them)
    calibrated_keys: ClassVar[frozenset[str]] = frozenset()
    #: the file a truth run (mode = 'truth') writes in its output_dir, read by this plugin
    truth_file: ClassVar[str] = "truth.h5"
    #: the host program trains the coupler's network online in a truth run (&<name>_run
    #: online_interval; training.online_steps needs it)
    trains_online: ClassVar[bool] = False
    #: further &<name>_run keys the study sets (beyond run_keys(), e.g. a baseline's fit)
    study_run_keys: ClassVar[frozenset[str]] = frozenset()
    #: the candidates table's host columns: {column: result.json "extra" key}, each the mean
    #: over a candidate's finished runs (a key a run lacks counts as missing)
    table_metrics: ClassVar[dict[str, str]] = {}
    #: `training_pairs` gives its rows snapshot by snapshot (one truth snapshot's columns
    #: together, in the same order each time, training and validation alike), and
    #: `snapshot_columns` says how many: then training.snapshot_batches can make every
    #: training batch whole snapshots
    snapshot_pairs: ClassVar[bool] = False
    #: the network output (0-based) that is the tendency of a conserved quantity (mass) whose
    #: domain mean the true forcing keeps at (nearly) zero in every snapshot; None: the host
    #: has none, and training.mass_constraint is refused for it. Needs snapshot_pairs.
    mass_output: ClassVar[int | None] = None
    #: that output's name, for messages and reports
    mass_output_name: ClassVar[str] = ""

    def check(self, host: "HostConfig") -> None:
        """Raises ValueError naming the key when the [host] section does not fit this host."""
        if host.inputs != "stencil" or host.stencil_halfwidth != 1:
            raise ValueError(f"host.inputs and host.stencil_halfwidth do not apply to the "
                             f"{self.name} host ({self.inputs_label(host)})")

    def inputs_label(self, host: "HostConfig") -> str:
        """What one network column sees, for the report."""
        return "the host's own column inputs"

    def run_keys(self, host: "HostConfig") -> dict[str, Any]:
        """&<name>_run keys the study sets on every coupled run."""
        return {}

    def baseline_run_keys(self, closure: str, calibration: dict[str, Any]) -> dict[str, Any]:
        """&<name>_run keys of a baseline run with `closure` (e.g. fitted coefficients)."""
        return {}

    def snapshot_columns(self, truth: Path) -> int:
        """Columns (rows of `training_pairs`) per snapshot of the truth run `truth`; only
        asked of a plugin with ``snapshot_pairs``."""
        raise PluginError(f"host {self.name!r}: its training pairs are not grouped by snapshot")

    @abstractmethod
    def calibrate(self, first: Path, last: Path, couple: "CoupleConfig") -> dict[str, Any]:
        """From the first truth run (training, calibration) and the last (initial states, an
        independent false-alarm check): a JSON-able dict with at least ``failure`` (the
        calibrated &<name>_failure keys), ``n_snapshots`` (of `last`), ``bias_variable`` (a
        diagnostics variable over time for the report's curves) and ``bias_label``; anything
        else is kept in calibration.json and shown in the report."""

    @abstractmethod
    def training_pairs(self, truth: Path, host: "HostConfig",
                       validation_fraction: float) -> dict[str, np.ndarray]:
        """{'x_train', 'y_train', 'x_val', 'y_val'}: (samples, features) arrays from a truth
        run, split in time (the last `validation_fraction` validates)."""


def builtin_hosts() -> tuple[str, ...]:
    return tuple(BUILTIN)


_REQUIRED = ("calibrate", "training_pairs", "check", "inputs_label", "run_keys",
             "baseline_run_keys")


def load_plugin(name: str, spec: str = "") -> HostPlugin:
    """The plugin of host `name`: `spec` ("module:Class") when given, else a built-in host or
    an entry point of group colnn.hosts with that name. Every failure is one line naming the
    plugin and what is wrong."""
    where = spec or BUILTIN.get(name, "")
    if not where:
        try:
            eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        except Exception:   # a broken distribution's metadata must not hide the message below
            eps = ()
        found = [ep for ep in eps if ep.name == name]
        if found:
            where = found[0].value
    if not where:
        raise PluginError(f"host {name!r}: no plugin (built-in hosts: "
                          f"{', '.join(BUILTIN)}; give [host] plugin = \"module:Class\" or "
                          f"register an entry point in group {ENTRY_POINT_GROUP})")
    module_name, sep, attr = where.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"host plugin {where!r}: expected \"module:Class\"")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(f"host plugin {where!r}: cannot import {module_name}: "
                          f"{type(exc).__name__}: {exc}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise PluginError(f"host plugin {where!r}: module {module_name} has no {attr}")
    if not inspect.isclass(cls):
        raise PluginError(f"host plugin {where!r}: {attr} is not a class")
    missing = [m for m in _REQUIRED if not callable(getattr(cls, m, None))]
    if missing or getattr(cls, "__abstractmethods__", None):
        missing = sorted(set(missing) | set(getattr(cls, "__abstractmethods__", ())))
        raise PluginError(f"host plugin {where!r}: lacks {', '.join(missing)}")
    try:
        plugin = cls()
    except Exception as exc:
        raise PluginError(f"host plugin {where!r}: could not be created: "
                          f"{type(exc).__name__}: {exc}") from None
    if getattr(plugin, "name", None) != name:
        raise PluginError(f"host plugin {where!r}: it is for host "
                          f"{getattr(plugin, 'name', None)!r}, the study names host {name!r}")
    return plugin


def split_in_time(n_t: int, validation_fraction: float, source: Path) -> int:
    """The first snapshot index of the validation part; an error naming `source` when either
    part would be empty."""
    cut = int(round(n_t * (1 - validation_fraction)))
    if cut < 1 or cut >= n_t:
        raise PluginError(f"{source}: {n_t} snapshots cannot be split with validation_fraction "
                          f"{validation_fraction}")
    return cut
