"""Running the Fortran toy hosts (``colnn_l96``, ``colnn_sw``) from a TOML configuration.

The TOML file has the sections ``[model]``, ``[run]``, ``[failure]`` (the host's namelist groups
``&<host>_model`` ...) and ``[coupler]`` (the coupler's ``&colnn_coupler``), plus top-level
``host``, ``ranks``, ``threads`` and ``precision``. The harness writes the namelist file that
the host reads; keys left out keep the host's own defaults, which the host itself reports
(``colnn_l96 --defaults``), so the key list and the defaults live in one place, the Fortran.
Key names and value types are checked here before anything runs; ranges are checked by the host
before its first step. A run is reproducible from its namelist (which holds the seed).
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import f90nml

from .errors import HarnessError
from .locate import host_bin_dir, not_found_hint
from .status import RunStatus

__all__ = ["HOSTS", "HostRun", "host_executable", "host_defaults", "load_host_run",
           "host_run_from_dict", "namelist_text", "run_host", "run_host_batch",
           "host_takes_batches", "read_result"]

HOSTS = ("l96", "sw")
SECTIONS = ("model", "run", "failure")
#: keys of the coupler's &colnn_coupler group (coupler/src/colnn_coupler.F90) with their types
COUPLER_KEYS: dict[str, type] = {"model_file": str, "ensemble": str, "noise_sd": float,
                                 "noise_units": str, "noise_seed": int, "check_finite": bool,
                                 "batch_invariant": bool, "online_training": bool, "optimizer": str, "loss": str,
                                 "fallback": bool, "fallback_lower": float, "fallback_upper": float,
                                 "fallback_max_share": float, "fallback_max_steps": int,
                                 "ramp_steps": int}
#: keys whose values are paths: relative ones are taken from the TOML file's directory
PATH_KEYS = {"init_file", "output_dir", "model_file", "ensemble", "run_dirs"}
#: the run group's per-run lists of a batch (docs/host-protocol.md, "Batches"): up to the
#: length of the host's default, one value a run
BATCH_LIST_KEYS = {"init_indices", "seeds", "run_dirs"}
#: the longest run directory the hosts read whole (a Fortran namelist truncates silently)
MAX_RUN_DIR = 511
#: what each run of a batch has of its own in the run group (the rest is the batch's)
OWN_RUN_KEYS = ("init_index", "seed", "inject_nan_step", "inject_nan_column", "inject_value",
                "inject_target", "output_dir")


class HostError(HarnessError):
    """A host configuration is invalid, or a host program could not run."""


_HOST_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def host_executable(host: str, precision: str = "single", executable: str = "") -> Path:
    """The host program: `executable` when given (a host of one's own, following
    docs/host-protocol.md), else for the built-in hosts ``colnn_<host>`` of $COLNN_HOST_BIN (a
    directory), of the installed wheel, or of the build tree (harness.locate.host_bin_dir)."""
    if executable:
        exe = Path(executable)
        if not exe.is_file() or not os.access(exe, os.X_OK):
            raise HostError(f"{exe}: the {host} host program does not exist or is not "
                            f"executable")
        return exe
    if host not in HOSTS:
        raise HostError(f"unknown host {host!r} (built-in hosts: {', '.join(HOSTS)}; a host "
                        f"of your own needs its executable)")
    located = host_bin_dir(precision)  # type: ignore[arg-type]
    exe = located.path / f"colnn_{host}"
    if not exe.is_file():
        hint = not_found_hint("host programs", located, "COLNN_HOST_BIN")
        raise HostError(f"{exe} not found ({precision} precision, from {located.origin}; "
                        f"{hint})")
    return exe


@functools.lru_cache(maxsize=None)
def host_defaults(host: str, precision: str = "single",
                  executable: str = "") -> dict[str, dict[str, Any]]:
    """{group: {key: default}} as the host program reports them."""
    exe = host_executable(host, precision, executable)
    proc = subprocess.run([str(exe), "--defaults"], capture_output=True, text=True,
                          env=_mpi_env(1), timeout=60)
    if proc.returncode != 0:
        raise HostError(f"{exe} --defaults failed: {proc.stderr.strip()}")
    try:
        parsed = f90nml.reads(proc.stdout)
    except ValueError as exc:
        raise HostError(f"{exe} --defaults: not a namelist the harness can read: {exc}") from None
    # Fortran pads character variables with blanks; the host trims them when it reads them
    return {group.lower(): {key.lower(): _rstrip(value) for key, value in values.items()}
            for group, values in parsed.items()}


def _rstrip(value: Any) -> Any:
    if isinstance(value, list):
        return [_rstrip(v) for v in value]
    return value.rstrip() if isinstance(value, str) else value


@dataclass
class HostRun:
    """One host run: its namelist groups and how to launch it."""

    host: str
    output_dir: Path
    #: the host program; empty: colnn_<host> of the build tree (see host_executable)
    executable: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] = field(default_factory=dict)
    coupler: dict[str, Any] = field(default_factory=dict)
    ranks: int = 1
    threads: int = 1
    precision: str = "single"

    def __post_init__(self) -> None:
        # the host runs inside its output directory: a path relative to where the user stands
        # would name another place there (or nothing at all)
        self.output_dir = Path(self.output_dir).absolute()
        for section in (*SECTIONS, "coupler"):
            values = getattr(self, section)
            for key in PATH_KEYS & values.keys():
                if isinstance(values[key], str) and values[key]:
                    values[key] = os.path.abspath(values[key])
                elif isinstance(values[key], list):
                    values[key] = [os.path.abspath(v) if isinstance(v, str) and v else v
                                   for v in values[key]]

    def groups(self) -> dict[str, dict[str, Any]]:
        out = {f"{self.host}_{s}": getattr(self, s) for s in SECTIONS}
        run = dict(out[f"{self.host}_run"])
        run["output_dir"] = str(self.output_dir)
        out[f"{self.host}_run"] = run
        if self.coupler:
            out["colnn_coupler"] = self.coupler
        return out


def _check_type(where: str, value: Any, default: Any, per_run: bool = False) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise HostError(f"{where}: expected true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise HostError(f"{where}: expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HostError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise HostError(f"{where}: must be a finite number, got {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise HostError(f"{where}: expected a string, got {value!r}")
        if "\n" in value or "\0" in value:
            raise HostError(f"{where}: newlines and NUL are not allowed in strings")
    elif isinstance(default, list) and per_run:
        if not isinstance(value, list) or not 1 <= len(value) <= len(default):
            raise HostError(f"{where}: expected a list of 1 to {len(default)} values (one a "
                            f"run), got {value!r}")
        value = [_check_type(f"{where}[{i}]", v, default[0]) for i, v in enumerate(value)]
        if where.endswith("run_dirs") and any(len(v) > MAX_RUN_DIR for v in value):
            raise HostError(f"{where}: a run directory longer than {MAX_RUN_DIR} characters")
    elif isinstance(default, list):
        if not isinstance(value, list) or len(value) != len(default):
            raise HostError(f"{where}: expected a list of {len(default)} values, got {value!r}")
        value = [_check_type(f"{where}[{i}]", v, default[0]) for i, v in enumerate(value)]
    return value


def host_run_from_dict(data: Mapping[str, Any], base_dir: Path, source: str = "config",
                       output_dir: Path | None = None) -> HostRun:
    """Validates a parsed configuration (key names and types) into a HostRun."""
    data = dict(data)
    host = data.pop("host", None)
    executable = data.pop("executable", "") or ""
    if not isinstance(executable, str):
        raise HostError(f"{source}: executable must be a path, got {executable!r}")
    if executable:
        executable = str((base_dir / executable).resolve())
    if not isinstance(host, str) or not _HOST_NAME.match(host):
        raise HostError(f"{source}: host must be one of {', '.join(HOSTS)} or, with "
                        f"executable, a lower-case name of letters, digits and _, got {host!r}")
    if host not in HOSTS and not executable:
        raise HostError(f"{source}: host must be one of {', '.join(HOSTS)}, or give the "
                        f"executable of host {host!r}")
    ranks = data.pop("ranks", 1)
    threads = data.pop("threads", 1)
    precision = data.pop("precision", "single")
    for key, value in (("ranks", ranks), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HostError(f"{source}: {key} must be a positive integer, got {value!r}")
    if precision not in ("single", "double"):
        raise HostError(f"{source}: precision must be 'single' or 'double', got {precision!r}")
    defaults = host_defaults(host, precision, executable)
    missing = [g for g in (f"{host}_{s}" for s in SECTIONS) if g not in defaults]
    if missing:
        raise HostError(f"{host_executable(host, precision, executable)} --defaults: no "
                        f"namelist group {', '.join('&' + g for g in missing)} (the host "
                        f"protocol, docs/host-protocol.md)")
    sections: dict[str, dict[str, Any]] = {}
    for section in (*SECTIONS, "coupler"):
        values = data.pop(section, {})
        if not isinstance(values, dict):
            raise HostError(f"{source}: [{section}] must be a table")
        known = (COUPLER_KEYS if section == "coupler"
                 else defaults.get(f"{host}_{section}", {}))
        checked: dict[str, Any] = {}
        for key, value in values.items():
            where = f"{source}: {section}.{key}"
            if key not in known:
                raise HostError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
            default = known[key]
            if isinstance(default, type):
                default = default() if default is not bool else False
            if (section == "coupler" and key in ("noise_sd", "fallback_lower", "fallback_upper")
                    and isinstance(value, list)):
                # one value per input (noise) or output (bounds) feature
                value = _check_type(where, value, [0.0] * len(value)) if value else \
                    _check_type(where, value, 0.0)
            else:
                value = _check_type(where, value, default,
                                    per_run=section == "run" and key in BATCH_LIST_KEYS)
            if key in PATH_KEYS and isinstance(value, str) and value:
                value = str((base_dir / value).resolve())
            elif key in PATH_KEYS and isinstance(value, list):
                value = [str((base_dir / v).resolve()) if v else v for v in value]
            checked[key] = value
        sections[section] = checked
    if data:
        raise HostError(f"{source}: unknown top-level keys {sorted(data)} (known: host, "
                        f"executable, ranks, threads, precision, model, run, failure, coupler)")
    out = output_dir or Path(sections["run"].pop("output_dir", base_dir / "run"))
    sections["run"].pop("output_dir", None)
    return HostRun(host=host, output_dir=Path(out), executable=executable, ranks=ranks,
                   threads=threads, precision=precision, **sections)


def load_host_run(path: Path | str, output_dir: Path | None = None) -> HostRun:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise HostError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HostError(f"{path}: not valid TOML: {exc}") from None
    return host_run_from_dict(data, path.parent.resolve(), str(path), output_dir)


def namelist_text(run: HostRun) -> str:
    """The host's namelist file, written by f90nml (floats as Python's shortest round-trip
    repr, so the Fortran reads exactly the value given)."""
    groups = f90nml.Namelist()
    for group, values in run.groups().items():
        for key, value in values.items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, float) and not math.isfinite(item):
                    raise HostError(f"{group}.{key}: must be a finite number, got {value!r}")
                if not isinstance(item, (bool, int, float, str)):
                    raise HostError(f"{group}.{key}: cannot write {item!r} to a namelist")
        groups[group] = f90nml.Namelist(values)
    text = io.StringIO()
    groups.write(text)
    exe = run.executable or f"colnn_{run.host}"
    return f"! written by the harness for {exe}; rerun with: {exe} run.nml\n{text.getvalue()}"


#: what mpirun (or srun, for a job step) puts into its ranks' environment; a host started from
#: such a rank (the mpi4py task farm, a task under `srun apptainer exec`) would take it for its
#: own: Open MPI's singleton start sees SLURM_STEP_ID and waits for srun's PMI as if it had been
#: launched directly, and under mpirun it tries to join the farm's job instead of starting alone
_MPI_JOB_ENV = ("OMPI_", "PMIX_", "PRTE_", "ORTE_", "HYDRA_", "PMI_", "SLURM_STEP",
                "SLURM_PROCID", "SLURM_LOCALID")


#: a host run as one process (no mpirun) is an Open MPI singleton; by default its MPI_Init
#: starts a helper daemon (only needed to spawn processes, which no host does) and probes every
#: point-to-point transport (UCX, OFI) although it only ever talks to itself: 0.34 s per process
#: on this project's machine, 0.03 s with these two (bench/couple_batch.py's per-run overhead)
_SINGLETON_ENV = {"OMPI_MCA_ess_singleton_isolated": "1", "OMPI_MCA_pml": "ob1"}


def _mpi_env(threads: int, ranks: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_MPI_JOB_ENV) or k.startswith("OMPI_ALLOW_RUN_AS_ROOT")}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    if ranks == 1:
        env.update(_SINGLETON_ENV)
    return env


#: result.json's required fields (docs/host-protocol.md) and their types
RESULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": int, "host": str, "steps": int, "max_steps": int,
    "failure_step": (int, type(None)), "reason": (str, type(None)),
    "variable": (str, type(None)), "message": str, "wall_time_s": (int, float), "extra": dict}
RESULT_STATUSES = tuple(RunStatus)


def read_result(output_dir: Path | str) -> dict[str, Any]:
    """result.json of a host run, checked against the protocol's required fields."""
    path = Path(output_dir) / "result.json"
    try:
        result = json.loads(path.read_text())
    except OSError as exc:
        raise HostError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HostError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(result, dict):
        raise HostError(f"{path}: not a JSON object")
    if result.get("status") not in RESULT_STATUSES:
        raise HostError(f"{path}: status must be one of {', '.join(RESULT_STATUSES)}, got "
                        f"{result.get('status')!r}")
    if result["status"] != RunStatus.ERROR:
        for key, tp in RESULT_FIELDS.items():
            value = result.get(key)
            if key not in result or isinstance(value, bool) or not isinstance(value, tp):
                names = " or ".join("null" if t is type(None) else t.__name__
                                    for t in (tp if isinstance(tp, tuple) else (tp,)))
                raise HostError(f"{path}: field {key!r} missing or not {names} (got {value!r})")
    return result


def run_host(run: HostRun, timeout: float | None = None) -> dict[str, Any]:
    """Writes run.nml into the output directory, runs the host, returns its result.json.

    A run that fails its criteria is a result (status 'failed'), not an exception; a host that
    cannot start (status 'error') raises HostError with the host's message."""
    stale = run.output_dir / "result.json"
    exe = _launch(run, [stale], timeout)
    result = read_result(run.output_dir)
    if result.get("status") == RunStatus.ERROR:
        raise HostError(f"{exe.name}: {result.get('message')}"
                        f"{_space_note(run.output_dir)}")
    return result


def host_takes_batches(host: str, precision: str = "single", executable: str = "") -> bool:
    """Whether the host program runs batches (its run group has n_runs; the protocol's
    optional extension)."""
    return "n_runs" in host_defaults(host, precision, executable).get(f"{host}_run", {})


def run_host_batch(runs: list[HostRun], timeout: float | None = None,
                   batch_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """Runs `runs` as one batch: one namelist (batch_dir/run.nml; by default the first run's
    output directory with the suffix .batch) with n_runs and the per-run lists, one host
    process, each run's result.json in its own output_dir. The runs must agree on everything
    but their own keys (OWN_RUN_KEYS: initial condition, seed, fault injection, output
    directory); at most one may inject a fault.

    Returns each run's result in the order of `runs`: completed, failed, or an error of that
    run alone (status 'error', its message naming the run). Raises HostError when the batch as
    a whole cannot run (its configuration, the program, the memory it would need)."""
    if not runs:
        raise HostError("a batch needs at least one run")
    first = runs[0]
    defaults = host_defaults(first.host, first.precision, first.executable)
    run_defaults = defaults.get(f"{first.host}_run", {})
    if "n_runs" not in run_defaults:
        raise HostError(f"{host_executable(first.host, first.precision, first.executable)}: "
                        f"the host takes no batches (no n_runs in &{first.host}_run)")
    if len(runs) > len(run_defaults["init_indices"]):
        raise HostError(f"{len(runs)} runs: a batch holds at most "
                        f"{len(run_defaults['init_indices'])}")

    def shared(run: HostRun) -> tuple:
        return (run.host, run.executable, run.model, run.failure, run.coupler, run.ranks,
                run.threads, run.precision,
                {k: v for k, v in run.run.items() if k not in OWN_RUN_KEYS})

    for i, run in enumerate(runs[1:], start=2):
        if shared(run) != shared(first):
            raise HostError(f"run {i} of the batch differs from run 1 in more than its own "
                            f"keys ({', '.join(OWN_RUN_KEYS)})")
    dirs = [run.output_dir for run in runs]
    if len(set(dirs)) != len(dirs):
        raise HostError("every run of a batch needs an output directory of its own")
    injected = [i for i, run in enumerate(runs) if run.run.get("inject_nan_step", -1) != -1]
    if len(injected) > 1:
        raise HostError(f"runs {', '.join(str(i + 1) for i in injected)} inject a fault: a "
                        f"batch takes one")
    keys = {k: v for k, v in first.run.items() if k not in OWN_RUN_KEYS}
    if injected:
        source = runs[injected[0]].run
        keys.update({k: source[k] for k in ("inject_nan_step", "inject_nan_column",
                                            "inject_value", "inject_target") if k in source})
        keys["inject_nan_run"] = injected[0] + 1
    keys.update(n_runs=len(runs),
                init_indices=[run.run.get("init_index", run_defaults["init_index"])
                              for run in runs],
                seeds=[run.run.get("seed", run_defaults["seed"]) for run in runs],
                run_dirs=[str(d) for d in dirs])
    too_long = [str(d) for d in dirs if len(str(d)) > MAX_RUN_DIR]
    if too_long:
        raise HostError(f"{too_long[0]}: a run directory longer than {MAX_RUN_DIR} characters")
    if batch_dir is None:
        batch_dir = first.output_dir.with_name(first.output_dir.name + ".batch")
    batch = HostRun(host=first.host, output_dir=Path(batch_dir), executable=first.executable,
                    model=first.model, run=keys, failure=first.failure, coupler=first.coupler,
                    ranks=first.ranks, threads=first.threads, precision=first.precision)
    results_at = [d / "result.json" for d in dirs]
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostError(f"cannot create {d}: {exc.strerror or exc}") from None
    batch_result = batch.output_dir / "result.json"
    exe = _launch(batch, [batch_result, *results_at], timeout)
    # a configuration the host refused as a whole: one error result, in the batch's directory
    if batch_result.exists():
        result = read_result(batch.output_dir)
        if result.get("status") == RunStatus.ERROR:
            raise HostError(f"{exe.name}: {result.get('message')}"
                            f"{_space_note(batch.output_dir)}")
    results = []
    for i, (run, path) in enumerate(zip(runs, results_at), start=1):
        if not path.exists():
            raise HostError(f"{exe.name} {batch.output_dir / 'run.nml'} wrote no result.json "
                            f"for run {i} ({run.output_dir}; see "
                            f"{batch.output_dir / 'host.log'}){_space_note(run.output_dir)}")
        results.append(read_result(run.output_dir))
    return results


def _launch(run: HostRun, stale: list[Path], timeout: float | None) -> Path:
    """Writes run.nml into the run's output directory, removes the `stale` result files,
    runs the host there (under mpirun for ranks > 1) and keeps its output in host.log.
    Returns the program's path."""
    exe = host_executable(run.host, run.precision, run.executable)
    nml = run.output_dir / "run.nml"
    try:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        for path in stale:
            path.unlink(missing_ok=True)
        nml.write_text(namelist_text(run))
    except OSError as exc:
        raise HostError(f"cannot write {exc.filename or nml}: {exc.strerror or exc}"
                        f"{_space_note(run.output_dir)}") from None
    cmd = [str(exe), str(nml)]
    if run.ranks > 1:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise HostError("ranks > 1 needs mpirun on PATH (openmpi-bin)")
        cmd = [mpirun, "-np", str(run.ranks), "--oversubscribe", "--bind-to", "none", *cmd]
    try:
        # in the output directory: a namelist too broken to name its output_dir still leaves
        # its result.json ('error') where the harness looks
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=_mpi_env(run.threads, run.ranks), timeout=timeout,
                              cwd=run.output_dir)
    except subprocess.TimeoutExpired:
        raise HostError(f"{exe.name} ran past {timeout} s ({nml})") from None
    log = run.output_dir / "host.log"
    try:
        log.write_text(proc.stdout + proc.stderr)
    except OSError as exc:
        log.unlink(missing_ok=True)
        raise HostError(f"cannot write {log}: {exc.strerror or exc}"
                        f"{_space_note(run.output_dir)}; the host said: "
                        f"{proc.stderr.strip()[-2000:]}") from None
    if not any(path.exists() for path in stale):
        raise HostError(f"{exe.name} {nml} wrote no result.json (exit {proc.returncode}):"
                        f" {proc.stderr.strip()[-2000:]}{_space_note(run.output_dir)}")
    return exe


def _space_note(directory: Path) -> str:
    """' (the file system of DIR is full ...)' when it is (near) full, else ''."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    if free >= 1 << 20:
        return ""
    return f" (the file system holding {directory} is full: {free} bytes free)"
