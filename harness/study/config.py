"""The study configuration: a TOML file read into dataclasses and checked before anything runs.

Every key has a default here (the paper's Table-1 search space, the prototypes' host set-ups),
so a study file names only what it changes. Unknown keys, wrong types and impossible values are
errors that name the key's path (``couple.steps``). The host's own namelist keys
(``[host.model]``, ``[host.failure]``) are checked against the host program's ``--defaults``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..climate import MAX_ACF_LAGS, MAX_PDF_BINS
from ..errors import HarnessError
from ..plugins import HostPlugin, PluginError, load_plugin

__all__ = ["StudyError", "StudyConfig", "HostConfig", "DataConfig", "SpaceConfig",
           "TrainingConfig", "CoupleConfig", "ExecutorConfig", "SlurmConfig", "ContainerConfig",
           "MpiConfig",
           "load_config", "config_from_dict", "config_to_dict", "host_plugin", "STAGES",
           "OPTIMIZERS"]

STAGES = ("data", "train", "convert", "couple", "collect", "report")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
EXECUTORS = ("local", "slurm", "mpi")
#: &<host>_run keys of the host protocol that the study sets on every run (docs/host-protocol.md)
PROTOCOL_RUN_KEYS = frozenset({"mode", "closure", "n_steps", "dt", "seed", "init_file",
                               "init_index", "output_dir", "spinup_steps", "sample_interval",
                               "inject_nan_step", "inject_nan_column", "inject_value"})


class StudyError(HarnessError):
    """A study configuration or study directory is invalid."""


@dataclass
class HostConfig:
    """The host program and the namelist values shared by its truth and coupled runs."""

    name: str = "l96"
    #: the host's study plugin, "module:Class" (empty: a built-in host or an entry point of
    #: group colnn.hosts with this name; see harness/plugins.py)
    plugin: str = ""
    #: the host program (empty: colnn_<name> of the build tree or $COLNN_HOST_BIN)
    executable: str = ""
    #: &<host>_model keys (e.g. k, f for l96; nx, wind_scale is in run for sw)
    model: dict[str, Any] = field(default_factory=dict)
    #: &<host>_run keys applied to every run (truth and coupled), e.g. wind_scale for sw
    run: dict[str, Any] = field(default_factory=dict)
    #: &<host>_failure keys for coupled runs (e.g. max_abs); calibrated keys are filled in
    failure: dict[str, Any] = field(default_factory=dict)
    #: what a network column sees, for hosts that offer a choice (l96: 'local' (X_k),
    #: 'stencil' (X_{k-w}..X_{k+w}), 'full'); the host's plugin checks it
    inputs: str = "stencil"
    stencil_halfwidth: int = 1


@dataclass
class DataConfig:
    """Truth runs of the host: the first trains the networks and calibrates the failure test;
    the last gives the coupled runs' initial states and an independent false-alarm check."""

    runs: int = 2
    steps: int | None = None
    dt: float | None = None
    spinup_steps: int | None = None
    sample_interval: int | None = None


@dataclass
class SpaceConfig:
    """The hyperparameter space (default: the paper's Table 1). Ranges are [low, high]."""

    batch_norm: list[bool] = field(default_factory=lambda: [False, True])
    dropout: list[float] = field(default_factory=lambda: [0.0, 0.25])
    leaky_relu: list[float] = field(default_factory=lambda: [0.0, 0.4])
    learning_rate: list[float] = field(default_factory=lambda: [1e-5, 1e-2])   # log-uniform
    nodes: list[int] = field(default_factory=lambda: [128, 256, 512])
    layers: list[int] = field(default_factory=lambda: [4, 11])
    optimizer: list[str] = field(default_factory=lambda: list(OPTIMIZERS))


@dataclass
class TrainingConfig:
    #: hyperparameter sets drawn by the random search
    candidates: int = 100
    #: replicates: each hyperparameter set is trained this many times with different seeds
    #: (weights, dropout, sample order), each a candidate of its own. Networks of nearly equal
    #: offline skill can behave very differently online (Mansfield & Sheshadri 2024); with
    #: seeds > 1 the report separates the spread within a set from the spread between sets
    seeds: int = 1
    epochs: int = 20
    #: early stopping: epochs without a better validation loss before training stops
    patience: int = 3
    batch_size: int = 1024
    #: the last fraction of the training truth run (in time) is the validation set
    validation_fraction: float = 0.2
    #: at most this many training samples, drawn with the candidate's seed (0: all)
    max_samples: int = 0
    #: TensorFlow threads per training task; results are reproducible for a fixed value
    threads: int = 1
    #: verification tolerance (relative) of the Fortran model against Keras
    verify_tol: float = 1e-4
    #: online-trained twins (Rasp 2020's coupled online learning, done by the Fortran host):
    #: with online_steps > 0 every candidate also gets a network of its architecture and its
    #: initial weights that is trained only online, in a truth run of online_steps host steps
    #: from the training truth's first snapshot, one optimizer step (the candidate's optimizer
    #: and learning rate, MSE) on all columns every online_interval steps. It is coupled as
    #: NAME-online and compared with its offline twin, pair by pair, in the report. 0: none
    online_steps: int = 0
    online_interval: int = 1
    #: every training and validation batch is whole snapshots of the truth run (as many as
    #: fit in batch_size, at least one; the batch is that many times the snapshot's columns),
    #: the snapshots shuffled each epoch, and max_samples draws whole snapshots. For hosts
    #: whose plugin groups its training pairs by snapshot (sw). Needed by mass_constraint;
    #: set it in both arms of a comparison with and without the constraint, so that they
    #: differ in the loss alone
    snapshot_batches: bool = False
    #: Brajard et al. (2018)'s mass constraint: the Keras loss becomes MSE + weight x the mean
    #: over the batch's snapshots of (snapshot mean of the predicted mass tendency - snapshot
    #: mean of the true one)^2, on standardized targets (the output the host's plugin names,
    #: sw: theta_h). 0: off (plain MSE). Needs snapshot_batches and a host with a mass output
    mass_constraint: float = 0.0


@dataclass
class CoupleConfig:
    steps: int | None = None
    dt: float | None = None
    #: coupled runs per model, from snapshots spread over the last truth run
    initial_conditions: int = 2
    #: at most this many of a model's runs (its initial conditions) share one host process and
    #: one coupler call per stage (a couple task); each run keeps its own result. 1: a process
    #: per run. A task killed half-way is redone whole.
    batch_runs: int = 10
    baselines: list[str] | None = None
    #: ensemble of the k candidates with the lowest validation MSE (0: none)
    ensemble_top_k: int = 3
    ensemble_noise_sd: float = 0.0
    #: the windowed climate tests (calibrated on the first truth run): window and sampling in
    #: model time (the host's defaults: l96 5.0 and 0.05 time units, sw 10 days and 12 h)
    drift: bool = True
    drift_window_time: float | None = None
    drift_sample_time: float | None = None
    drift_sigma: float = 5.0
    #: in the same windows and with the same drift_sigma: the window's distribution (l96: X;
    #: sw: h over the grid) against the truth's, as a Hellinger distance on this many
    #: equal-probability bins of the truth (0: off), and (l96) its autocorrelation at these
    #: lags, as fractions of the window (empty: off; sw compares its kinetic-energy spectrum
    #: instead), each a one-sided z-score against the spread of the same distance over truth
    #: windows. A run locked onto a regular wave keeps a plausible mean and std but not these.
    #: Why these defaults (l96, K = 8, 5-unit windows of 100 samples; tests/
    #: test_climate_criteria.py): 16 bins keep ~50 of a window's 800 values a bin; on an
    #: independent 300-unit truth run no window fails either criterion at 3, 4 or 5 sigma,
    #: while a wave with the truth's mean and std (the one-scale model at F = 3.5, rescaled)
    #: reaches z = 7.0 (distribution) and 3.8 (autocorrelation) in its second window. Lags of
    #: 0.1-0.5 windows gave no false alarm at 3 sigma; 0.05-0.4 gave 1 of 60 truth windows.
    #: A window needs at least 20 values a bin (harness.climate.MIN_VALUES_PER_BIN): shorter
    #: windows need fewer bins, and the calibration says how many.
    drift_pdf_bins: int = 16
    drift_acf_lags: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])
    #: sw: a run fails when its energy exceeds energy_factor x the truth maximum; the first
    #: step above warn_factor x the truth maximum is recorded as a graded metric
    energy_factor: float = 10.0
    warn_factor: float = 2.0
    output_interval: int = 0            # 0: the host's default
    #: wall-clock limit of one coupled run (s); a batch of R runs gets R times it
    timeout: float = 3600.0


@dataclass
class ContainerConfig:
    """Run every Slurm task inside an Apptainer image (containers/colnn.def):
    ``srun RUNTIME exec --bind STUDY_DIR [--bind ..] [OPTIONS] IMAGE harness task ...``."""
    #: absolute path of the image (.sif) on a file system the compute nodes see; empty: tasks
    #: run with the Python of the harness that submits them
    image: str = ""
    #: the container runtime on the compute nodes: apptainer, singularity, or a path
    runtime: str = "apptainer"
    #: further host paths to bind, as the runtime's --bind takes them (SRC[:DST[:ro]])
    bind: list[str] = field(default_factory=list)
    #: further options of `RUNTIME exec`, e.g. ["--cleanenv"] or ["--nv"]
    options: list[str] = field(default_factory=list)
    #: start the task as a job step (srun): its own accounting, signals and cgroup
    srun: bool = True


@dataclass
class SlurmConfig:
    partition: str = ""
    account: str = ""
    qos: str = ""
    #: the % throttle of every job array: at most this many tasks of a stage run at once
    throttle: int = 50
    #: tasks per array task, run one after the other: Slurm spends about a second starting
    #: each array task, so bundle tasks that take only seconds (scale time.<stage> with it)
    bundle: int = 1
    cpus_per_task: int = 1
    mem: str = "2G"
    #: time limit per task for each stage (Slurm's [D-]HH:MM:SS)
    time: dict[str, str] = field(default_factory=lambda: {
        "data": "01:00:00", "train": "02:00:00", "convert": "00:20:00", "couple": "02:00:00",
        "collect": "00:20:00", "report": "00:20:00"})
    #: seconds before the time limit at which a task is told (USR1) to stop and requeue
    signal_seconds: int = 60
    max_requeues: int = 2
    #: extra '#SBATCH' directives, e.g. ["--constraint=skylake"]
    extra: list[str] = field(default_factory=list)
    poll_seconds: float = 5.0
    container: ContainerConfig = field(default_factory=ContainerConfig)


@dataclass
class MpiConfig:
    #: ranks of the task farm (rank 0 hands out tasks, the others run them)
    ranks: int = 3
    #: 'mpirun' (here, now) or 'sbatch' (one Slurm allocation running srun)
    launcher: str = "mpirun"


@dataclass
class ExecutorConfig:
    kind: str = "local"
    #: local: tasks at once (process pool)
    workers: int = 2
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    mpi: MpiConfig = field(default_factory=MpiConfig)


@dataclass
class StudyConfig:
    name: str = "study"
    seed: int = 1
    host: HostConfig = field(default_factory=HostConfig)
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    couple: CoupleConfig = field(default_factory=CoupleConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """``value`` as the annotated type ``tp``, or a StudyError naming ``path``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None       # study.json's "not set for this host" (TOML has no null)
        return _coerce(path, value, args[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise StudyError(f"{path}: expected a table, got {value!r}")
        return _build(tp, value, path)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise StudyError(f"{path}: expected a list, got {value!r}")
        return [_coerce(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise StudyError(f"{path}: expected a table, got {value!r}")
        _, item = typing.get_args(tp)
        if item is Any:
            return dict(value)
        return {k: _coerce(f"{path}.{k}", v, item) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise StudyError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise StudyError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StudyError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise StudyError(f"{path}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise StudyError(f"{path}: expected a string, got {value!r}")
        if "\n" in value or "\0" in value:
            raise StudyError(f"{path}: newlines and NUL are not allowed")
        return value
    raise StudyError(f"{path}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise StudyError(f"{path}: unknown key (known here: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(path, value, hints[key])
    return cls(**kwargs)


def _range(path: str, values: list, lo: float, hi: float, ordered: bool = True) -> None:
    if len(values) != 2:
        raise StudyError(f"{path}: expected [low, high], got {values!r}")
    a, b = values
    if not (lo <= a <= hi and lo <= b <= hi):
        raise StudyError(f"{path}: values must lie in [{lo}, {hi}], got {values!r}")
    if ordered and a > b:
        raise StudyError(f"{path}: low > high in {values!r}")


def _positive(path: str, value: float | int | None, zero_ok: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not zero_ok):
        raise StudyError(f"{path}: must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


_SLURM_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$")
_SAFE_DIRECTIVE = re.compile(r"^--[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:=/@+%-]+)?$")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_.,-]*$")


def _check(cfg: StudyConfig) -> None:
    """Values each key can take, and the host-specific defaults filled in."""
    host = cfg.host
    plugin = host_plugin(cfg)
    for dotted, value in plugin.study_defaults.items():
        section, key = dotted.split(".")
        obj = getattr(cfg, section)
        if getattr(obj, key) is None:
            setattr(obj, key, value)
    if not cfg.name.strip():
        raise StudyError("name: must not be empty")
    try:
        plugin.check(host)
    except ValueError as exc:
        raise StudyError(str(exc)) from None
    _positive("host.stencil_halfwidth", host.stencil_halfwidth)
    d = cfg.data
    if d.runs < 2:
        raise StudyError(f"data.runs: at least 2 truth runs (one to train and calibrate, one "
                         f"for initial states), got {d.runs}")
    for key in ("steps", "dt", "sample_interval"):
        _positive(f"data.{key}", getattr(d, key))
    _positive("data.spinup_steps", d.spinup_steps, zero_ok=True)
    if d.steps // d.sample_interval < 10:
        raise StudyError(f"data.steps / data.sample_interval = {d.steps // d.sample_interval} "
                         f"snapshots: too few to train on (>= 10)")
    s = cfg.space
    if not s.batch_norm or any(not isinstance(v, bool) for v in s.batch_norm):
        raise StudyError("space.batch_norm: a non-empty list of true/false")
    _range("space.dropout", s.dropout, 0.0, 0.95)
    _range("space.leaky_relu", s.leaky_relu, 0.0, 1.0)
    _range("space.learning_rate", s.learning_rate, 1e-12, 10.0)
    if not s.nodes or any(n < 1 for n in s.nodes):
        raise StudyError(f"space.nodes: a non-empty list of positive integers, got {s.nodes!r}")
    _range("space.layers", s.layers, 1, 64)
    if not s.optimizer or any(o not in OPTIMIZERS for o in s.optimizer):
        raise StudyError(f"space.optimizer: a non-empty list of {', '.join(OPTIMIZERS)}, "
                         f"got {s.optimizer!r}")
    t = cfg.training
    for key in ("candidates", "seeds", "epochs", "batch_size", "threads"):
        _positive(f"training.{key}", getattr(t, key))
    _positive("training.patience", t.patience, zero_ok=True)
    _positive("training.max_samples", t.max_samples, zero_ok=True)
    _positive("training.verify_tol", t.verify_tol)
    _positive("training.online_steps", t.online_steps, zero_ok=True)
    _positive("training.online_interval", t.online_interval)
    if t.online_steps and t.online_interval > t.online_steps:
        raise StudyError(f"training.online_interval: {t.online_interval} > training.online_steps "
                         f"{t.online_steps} (no optimizer step would be taken)")
    if t.online_steps and not plugin.trains_online:
        raise StudyError(f"training.online_steps: the {host.name} host does not train online "
                         f"(its plugin's trains_online is false)")
    if not 0 < t.validation_fraction < 1:
        raise StudyError(f"training.validation_fraction: must lie in (0, 1), got "
                         f"{t.validation_fraction}")
    _check_mass_constraint(t, plugin)
    c = cfg.couple
    for key in ("steps", "dt", "initial_conditions", "batch_runs", "drift_window_time",
                "drift_sample_time",
                "drift_sigma", "energy_factor", "warn_factor", "timeout"):
        _positive(f"couple.{key}", getattr(c, key))
    if c.drift_pdf_bins != 0 and not 2 <= c.drift_pdf_bins <= MAX_PDF_BINS:
        raise StudyError(f"couple.drift_pdf_bins: must be 0 (off) or in 2..{MAX_PDF_BINS}, got "
                         f"{c.drift_pdf_bins}")
    lags = c.drift_acf_lags
    if len(lags) > MAX_ACF_LAGS or len(set(lags)) != len(lags) or \
            not all(0 < lag < 1 for lag in lags):
        raise StudyError(f"couple.drift_acf_lags: at most {MAX_ACF_LAGS} distinct fractions of "
                         f"the window, each in (0, 1), got {lags!r}")
    _positive("couple.ensemble_top_k", c.ensemble_top_k, zero_ok=True)
    _positive("couple.ensemble_noise_sd", c.ensemble_noise_sd, zero_ok=True)
    _positive("couple.output_interval", c.output_interval, zero_ok=True)
    if c.ensemble_top_k > t.candidates * t.seeds:
        raise StudyError(f"couple.ensemble_top_k: {c.ensemble_top_k} > training.candidates "
                         f"{t.candidates} x training.seeds {t.seeds}")
    for i, b in enumerate(c.baselines):
        if b not in plugin.baselines:
            raise StudyError(f"couple.baselines[{i}]: the {host.name} host's baselines are "
                             f"{', '.join(plugin.baselines)}, got {b!r}")
    if len(set(c.baselines)) != len(c.baselines):
        raise StudyError(f"couple.baselines: duplicates in {c.baselines!r}")
    e = cfg.executor
    if e.kind not in EXECUTORS:
        raise StudyError(f"executor.kind: must be one of {', '.join(EXECUTORS)}, got {e.kind!r}")
    _positive("executor.workers", e.workers)
    sl = e.slurm
    _positive("executor.slurm.throttle", sl.throttle)
    _positive("executor.slurm.bundle", sl.bundle)
    _positive("executor.slurm.cpus_per_task", sl.cpus_per_task)
    _positive("executor.slurm.signal_seconds", sl.signal_seconds, zero_ok=True)
    _positive("executor.slurm.max_requeues", sl.max_requeues, zero_ok=True)
    _positive("executor.slurm.poll_seconds", sl.poll_seconds)
    if not _SLURM_MEM.match(sl.mem):
        raise StudyError(f"executor.slurm.mem: a Slurm memory size like 2G or 500M, got "
                         f"{sl.mem!r}")
    for key in ("partition", "account", "qos"):
        if not _SAFE_WORD.match(getattr(sl, key)):
            raise StudyError(f"executor.slurm.{key}: letters, digits and _ . , - only, got "
                             f"{getattr(sl, key)!r}")
    unknown = set(sl.time) - set(STAGES)
    if unknown:
        raise StudyError(f"executor.slurm.time: unknown stages {sorted(unknown)} (stages: "
                         f"{', '.join(STAGES)})")
    sl.time = {**SlurmConfig().time, **sl.time}
    for stage, value in sl.time.items():
        if not _SLURM_TIME.match(value):
            raise StudyError(f"executor.slurm.time.{stage}: a Slurm time like 01:30:00 or "
                             f"1-00:00:00, got {value!r}")
    _check_options("executor.slurm.extra", sl.extra, _SAFE_DIRECTIVE)
    _check_container(sl.container)
    _positive("executor.mpi.ranks", e.mpi.ranks)
    if e.mpi.launcher not in ("mpirun", "sbatch"):
        raise StudyError(f"executor.mpi.launcher: 'mpirun' or 'sbatch', got {e.mpi.launcher!r}")


def _check_mass_constraint(t: TrainingConfig, plugin: HostPlugin) -> None:
    """training.snapshot_batches and training.mass_constraint against what the host's plugin
    offers (its snapshot grouping, its mass-tendency output)."""
    if t.snapshot_batches and not getattr(plugin, "snapshot_pairs", False):
        raise StudyError(f"training.snapshot_batches: the {plugin.name} host's plugin does not "
                         f"group its training pairs by snapshot")
    _positive("training.mass_constraint", t.mass_constraint, zero_ok=True)
    if t.mass_constraint == 0:
        return
    if getattr(plugin, "mass_output", None) is None:
        raise StudyError(f"training.mass_constraint: the {plugin.name} host's plugin names no "
                         f"mass-tendency output (only such hosts, e.g. sw, take the "
                         f"constraint); remove the key or set it to 0")
    if not t.snapshot_batches:
        raise StudyError("training.mass_constraint: needs training.snapshot_batches = true (the "
                         "penalty is on each snapshot's domain mean)")


_EXEC_OPTION = re.compile(r"^--?[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:=/@+%-]+)?$")


def _check_container(ct: ContainerConfig) -> None:
    """Values that end up in every array task's command line (quoted there as well)."""
    path = "executor.slurm.container"
    if not ct.image:
        return
    if not ct.image.startswith("/"):
        raise StudyError(f"{path}.image: an absolute path (compute nodes start elsewhere), "
                         f"got {ct.image!r}")
    if not (_SAFE_WORD.match(ct.runtime) and ct.runtime) and not ct.runtime.startswith("/"):
        raise StudyError(f"{path}.runtime: a command name (apptainer, singularity) or an "
                         f"absolute path, got {ct.runtime!r}")
    for i, bind in enumerate(ct.bind):
        if not bind.startswith("/") or "," in bind:
            raise StudyError(f"{path}.bind[{i}]: one absolute SRC[:DST[:OPTS]] without commas "
                             f"(one entry per path), got {bind!r}")
    _check_options(f"{path}.options", ct.options, _EXEC_OPTION)


def _check_options(path: str, options: list[str], pattern: re.Pattern[str]) -> None:
    """Command-line options written into scripts: one option each, nothing a shell acts on."""
    for i, option in enumerate(options):
        if not pattern.match(option):
            raise StudyError(f"{path}[{i}]: one '--option[=value]' without spaces, quotes or "
                             f"shell characters, got {option!r}")


def host_plugin(cfg: StudyConfig) -> HostPlugin:
    """The plugin of the study's host (cached per name and spec)."""
    try:
        return _plugin(cfg.host.name, cfg.host.plugin)
    except PluginError as exc:
        raise StudyError(f"host: {exc}") from None


@functools.lru_cache(maxsize=None)
def _plugin(name: str, spec: str) -> HostPlugin:
    return load_plugin(name, spec)


def _check_host_keys(cfg: StudyConfig) -> None:
    """The [host.*] namelist keys against the host program's own list (names and types)."""
    from ..hosts import HostError, host_run_from_dict

    plugin = host_plugin(cfg)
    owned = PROTOCOL_RUN_KEYS | set(plugin.run_keys(cfg.host)) | plugin.study_run_keys
    taken = sorted(owned & set(cfg.host.run))
    if taken:
        raise StudyError(f"host.run: {', '.join(taken)} are set by the study (see [data] and "
                         f"[couple]); remove them from [host.run]")
    taken = sorted(plugin.calibrated_keys & set(cfg.host.failure))
    if taken:
        raise StudyError(f"host.failure: {', '.join(taken)} are calibrated on the truth runs "
                         f"by the study (see [couple]); remove them from [host.failure]")
    try:
        host_run_from_dict({"host": cfg.host.name, "executable": cfg.host.executable,
                            "model": cfg.host.model, "run": cfg.host.run,
                            "failure": cfg.host.failure},
                           Path.cwd(), source="host", output_dir=Path("."))
    except HostError as exc:
        raise StudyError(str(exc)) from None


def config_from_dict(data: Mapping[str, Any], source: str = "config",
                     check_host: bool = True) -> StudyConfig:
    """A validated StudyConfig; errors name ``source`` and the key's path."""
    try:
        cfg = _build(StudyConfig, data, "")
        _check(cfg)
        if check_host:
            _check_host_keys(cfg)
    except StudyError as exc:
        raise StudyError(f"{source}: {exc}") from None
    return cfg


def read_study_toml(path: Path | str) -> dict[str, Any]:
    """A study file as a dict, with a relative ``host.executable`` made absolute: the study
    directory (or a variant written elsewhere) keeps the configuration, and a path relative to
    the study file would name another place from there."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise StudyError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML: {exc}") from None
    host = data.get("host")
    if isinstance(host, dict) and isinstance(host.get("executable"), str) and host["executable"]:
        host["executable"] = str((path.parent / host["executable"]).resolve())
    return data


def load_config(path: Path | str, check_host: bool = True) -> StudyConfig:
    return config_from_dict(read_study_toml(path), str(path), check_host)


def config_to_dict(cfg: StudyConfig) -> dict[str, Any]:
    """The complete configuration (every default filled in), as written to the study dir."""
    return dataclasses.asdict(cfg)
