"""``harness collect``: the study's results table from what the tasks left on disk.

One row per coupled model (candidate, baseline, ensemble) in ``results/candidates.csv`` and
``.parquet``; one row per coupled run in ``results/runs.csv``; the bias curves in
``results/curves.csv``; study facts in ``results/summary.json``; and an Optuna journal
(``results/optuna.journal``) of the candidates with (validation MSE, steps to failure) for
Optuna's own tools. Rows are keyed by the planned task, so a task that ran twice (requeued)
still gives one row; a task with no marker is reported as 'missing', never dropped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..status import ConvertStatus, RunOutcome, RunStatus, TaskState, TrainStatus
from .config import host_plugin
from .layout import (StudyDir, atomic_write_json, atomic_write_text, read_json, task_ics,
                     search_distributions)

__all__ = ["collect", "table_columns", "TIMING_COLUMNS"]

HYPER = ("batch_norm", "dropout", "leaky_relu", "learning_rate", "nodes", "layers", "optimizer")
#: the candidates table's columns for every host; the host's plugin adds its own metrics
#: (HostPlugin.table_metrics) before the timings
TABLE_COLUMNS = ("name", "kind", "set", "replicate", *HYPER, "n_params", "val_mse", "train_status", "epochs",
                 "convert_status", "verify_max_abs_err", "n_runs", "n_failed", "n_steps",
                 "steps_to_failure", "steps_min", "survived", "failure_reason",
                 "mean_abs_bias", "members")
#: the columns that depend on where and how fast the study ran (the rest must not)
TIMING_COLUMNS = ("train_s", "couple_wall_s")
INT_COLUMNS = ("set", "replicate", "nodes", "layers", "n_params", "epochs", "n_runs", "n_failed", "n_steps")


def table_columns(metrics: dict[str, str]) -> tuple[str, ...]:
    """The candidates table's columns with a host's metric columns."""
    return (*TABLE_COLUMNS, *metrics, *TIMING_COLUMNS)


def _marker(sd: StudyDir, stage: str, index: int) -> dict[str, Any] | None:
    return read_json(sd.marker(stage, index))


def _bias_curve(path: Path, variable: str, dt: float) -> tuple[np.ndarray, np.ndarray] | None:
    import h5py
    try:
        with h5py.File(path, "r") as f:
            bias = np.asarray(f[variable][...], dtype=np.float64)
            steps = np.asarray(f["step"][...], dtype=np.float64) if "step" in f else \
                np.asarray(f["time"][...], dtype=np.float64) / dt
    except (OSError, KeyError):
        return None
    return steps * dt, bias


def _climate_profile(path: Path) -> list[dict[str, Any]]:
    """A run's climate over its windows, where its host writes it (docs/host-protocol.md):
    the mean of ``window_pdf`` (windows, bins) and of ``window_acf`` (windows, lags, with the
    lags' model time in ``acf_lag``); rows of (statistic, index, x, value)."""
    import h5py
    rows: list[dict[str, Any]] = []
    try:
        with h5py.File(path, "r") as f:
            if "window_pdf" in f and f["window_pdf"].shape[0]:
                pdf = np.nanmean(np.asarray(f["window_pdf"][...], np.float64), axis=0)
                rows += [{"statistic": "pdf", "index": i, "x": float(i + 1), "value": float(v)}
                         for i, v in enumerate(pdf)]
            if "window_acf" in f and f["window_acf"].shape[0]:
                acf = np.nanmean(np.asarray(f["window_acf"][...], np.float64), axis=0)
                lags = np.asarray(f["acf_lag"][...], np.float64) if "acf_lag" in f else \
                    np.arange(1, acf.size + 1, dtype=np.float64)
                rows += [{"statistic": "acf", "index": i, "x": float(x), "value": float(v)}
                         for i, (x, v) in enumerate(zip(lags, acf))]
    except (OSError, KeyError, ValueError):
        return []
    return rows


def _couple_runs(sd: StudyDir):
    """(task index, task, initial condition, that run's marker record or None) of every planned
    coupled run; a finished task's record is its marker with the run's own outcome (markers
    written before batched runs hold one run at the top level)."""
    for index, task in enumerate(sd.plan["couple"]):
        marker = _marker(sd, "couple", index)
        per_run = {r.get("ic"): r for r in (marker or {}).get("runs", [])}
        for ic in task_ics(task):
            if marker is None or "runs" not in marker:
                yield index, task, ic, marker
            else:
                yield index, task, ic, {**{k: v for k, v in marker.items() if k != "runs"},
                                        **per_run.get(ic, {"run_status": "missing"})}


def collect(sd: StudyDir) -> list[dict[str, Any]]:
    """Builds and writes the tables; returns the candidates table's rows."""
    import pandas as pd

    cfg = sd.config
    n_steps = cfg.couple.steps
    metrics = host_plugin(cfg).table_metrics
    columns = table_columns(metrics)
    cal = read_json(sd.root / "data" / "calibration.json") or {}
    bias_var = cal.get("bias_variable", "bias")
    runs: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    climate: list[dict[str, Any]] = []
    for _, task, ic, marker in _couple_runs(sd):
        rdir = sd.run_dir(task["name"], ic)
        row: dict[str, Any] = {"name": task["name"], "kind": task["kind"], "ic": ic,
                               "status": RunOutcome.MISSING, "steps": np.nan, "failure_step": np.nan,
                               "reason": "", "variable": "", "wall_s": np.nan, "nn_s": np.nan,
                               "message": ""}
        if marker is None:
            pass
        elif marker.get("status") != TaskState.OK:
            row.update(status=RunOutcome.ERROR, message=marker.get("message", ""))
        elif marker.get("run_status") == RunOutcome.SKIPPED:
            row.update(status=RunOutcome.SKIPPED, message=marker.get("message", ""))
        else:
            result = read_json(rdir / "result.json") or {}
            row.update(status=result.get("status", RunOutcome.MISSING), steps=result.get("steps", np.nan),
                       reason=result.get("reason", "") or "",
                       variable=result.get("variable", "") or "",
                       wall_s=result.get("wall_time_s", np.nan),
                       nn_s=result.get("nn_time_s", np.nan),
                       message=result.get("message", "") or "")
            for key, value in (result.get("extra") or {}).items():
                if isinstance(value, (int, float)):
                    if key.endswith("_step") and value < 0:
                        value = n_steps     # the protocol's "never happened": censored
                    row[f"extra_{key}"] = value
            if result.get("status") == RunStatus.FAILED:
                row["failure_step"] = result.get("failure_step", np.nan)
            diagnostics = result.get("diagnostics")
            curve = _bias_curve(rdir / diagnostics, bias_var, cfg.couple.dt) \
                if isinstance(diagnostics, str) and diagnostics else None
            if curve is not None:
                row["mean_abs_bias"] = float(np.nanmean(np.abs(curve[1]))) \
                    if curve[1].size else np.nan
                curves += [{"name": task["name"], "ic": ic, "time": t, "bias": b}
                           for t, b in zip(*curve)]
            if isinstance(diagnostics, str) and diagnostics:
                climate += [{"name": task["name"], "ic": ic, **r}
                            for r in _climate_profile(rdir / diagnostics)]
        runs.append(row)
    runs_df = pd.DataFrame(runs)
    if "mean_abs_bias" not in runs_df:
        runs_df["mean_abs_bias"] = np.nan

    models: dict[str, dict[str, Any]] = {}
    for cand in sd.plan["candidates"]:
        cdir = sd.candidate_dir(cand["name"])
        train = read_json(cdir / "train.json")
        conv = read_json(cdir / "convert.json")
        train_marker = _marker(sd, "train", cand["index"])
        if train is not None:
            train_status = train.get("status", TrainStatus.ERROR)
        elif train_marker is not None and train_marker.get("status") == TaskState.ERROR:
            train_status = TrainStatus.ERROR
        else:
            train_status = TrainStatus.MISSING
        models[cand["name"]] = {
            "name": cand["name"], "kind": "candidate",
            # plans written before replicates: every candidate its own set
            "set": cand.get("set", cand["index"]), "replicate": cand.get("replicate", 0),
            **{h: cand[h] for h in HYPER},
            "n_params": (train or {}).get("n_params", np.nan),
            "val_mse": ((train or {}).get("val_mse", np.nan) if train_status == TrainStatus.OK
                        else np.nan),
            "train_status": train_status, "epochs": (train or {}).get("epochs", np.nan),
            "convert_status": (conv or {}).get("status", ConvertStatus.MISSING
                                               if train_status == TrainStatus.OK
                                               else ""),
            "verify_max_abs_err": (conv or {}).get("max_abs_error", np.nan),
            "train_s": (train or {}).get("train_s", np.nan), "members": ""}
    for task in sd.plan["couple"]:
        if task["kind"] == "online" and task["name"] not in models:
            # an online twin: the candidate's hyperparameters, its own training and skill
            twin = models[task["candidate"]]
            online = read_json(sd.candidate_dir(task["candidate"]) / "online.json") or {}
            status = online.get("status", ConvertStatus.MISSING)
            models[task["name"]] = {
                **twin, "name": task["name"], "kind": "online",
                "val_mse": online.get("val_mse") if status == ConvertStatus.OK else np.nan,
                "train_status": status, "epochs": np.nan, "convert_status": status,
                "verify_max_abs_err": np.nan, "train_s": online.get("online_s", np.nan),
                "members": ""}
            if models[task["name"]]["val_mse"] is None:
                models[task["name"]]["val_mse"] = np.nan
        if task["name"] not in models:
            models[task["name"]] = {"name": task["name"], "kind": task["kind"],
                                    "set": None, "replicate": None,
                                    **{h: None for h in HYPER}, "n_params": np.nan,
                                    "val_mse": np.nan, "train_status": "", "epochs": np.nan,
                                    "convert_status": "", "verify_max_abs_err": np.nan,
                                    "train_s": np.nan, "members": ""}
    for index, task in enumerate(sd.plan["couple"]):
        marker = _marker(sd, "couple", index) or {}
        if task["kind"] == "ensemble" and marker.get("members"):
            models[task["name"]]["members"] = " ".join(marker["members"])

    rows = []
    for name, model in models.items():
        mine = runs_df[(runs_df["name"] == name) & runs_df["status"].isin((RunStatus.COMPLETED, RunStatus.FAILED))]
        failed = mine[mine["status"] == RunStatus.FAILED]
        stf = np.where(mine["status"] == RunStatus.FAILED, mine["failure_step"], n_steps).astype(float)
        reasons = Counter(r for r in failed["reason"] if r)
        model.update(n_runs=int(len(mine)), n_failed=int(len(failed)), n_steps=n_steps,
                     steps_to_failure=float(np.median(stf)) if stf.size else np.nan,
                     steps_min=float(stf.min()) if stf.size else np.nan,
                     survived=bool(stf.size and len(failed) == 0),
                     failure_reason=reasons.most_common(1)[0][0] if reasons else "",
                     mean_abs_bias=float(mine["mean_abs_bias"].mean()) if len(mine) else np.nan,
                     **{col: float(mine[f"extra_{key}"].mean())
                        if len(mine) and f"extra_{key}" in mine else np.nan
                        for col, key in metrics.items()},
                     couple_wall_s=float(mine["wall_s"].sum()) if len(mine) else np.nan)
        rows.append({c: model.get(c) for c in columns})
    table = pd.DataFrame(rows, columns=list(columns))
    for col in INT_COLUMNS:
        table[col] = pd.to_numeric(table[col]).round().astype("Int64")
    out = sd.results_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "candidates.csv", table.to_csv(index=False))
    _write_parquet(table, out / "candidates.parquet")
    atomic_write_text(out / "runs.csv", runs_df.to_csv(index=False))
    atomic_write_text(out / "curves.csv", pd.DataFrame(
        curves, columns=["name", "ic", "time", "bias"]).to_csv(index=False))
    atomic_write_text(out / "climate.csv", pd.DataFrame(
        climate, columns=["name", "ic", "statistic", "index", "x", "value"]).to_csv(index=False))
    summary = {"study": cfg.name, "host": cfg.host.name, "n_steps": n_steps, "dt": cfg.couple.dt,
               "initial_conditions": cfg.couple.initial_conditions,
               "bias_label": cal.get("bias_label", bias_var),
               "inputs": host_plugin(cfg).inputs_label(cfg.host),
               "candidates": cfg.training.candidates * cfg.training.seeds,
               "hyperparameter_sets": cfg.training.candidates, "seeds": cfg.training.seeds,
               "seed": cfg.seed,
               "failure": {**cfg.host.failure, **cal.get("failure", {})},
               "calibration": {k: v for k, v in cal.items()
                               if k not in ("failure", "init_file", "training_truth")},
               "tasks": {stage: sd.counts(stage) for stage in sd.plan["tasks"]}}
    atomic_write_json(out / "summary.json", summary)
    _write_optuna_journal(sd, table, out / "optuna.journal")
    return rows


def _write_parquet(table: Any, path: Path) -> None:
    frame = table.copy()
    for col in frame.columns:     # mixed None/str and None/bool columns as strings
        if frame[col].dtype == object:
            frame[col] = frame[col].map(lambda v: None if v is None or v != v else str(v))
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _write_optuna_journal(sd: StudyDir, table: Any, path: Path) -> None:
    """The candidates as a finished Optuna study (minimize val MSE, maximize steps)."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = search_distributions(sd.config)
    # built beside the journal and renamed into place: a reader (or a second collect) never
    # sees a journal half written or two studies' trials interleaved
    with atomic_path(path) as tmp:
        try:
            _fill_optuna_journal(sd, table, str(tmp), dists)
        finally:
            Path(f"{tmp}.lock").unlink(missing_ok=True)


def _fill_optuna_journal(sd: StudyDir, table: Any, tmp: str, dists: dict[str, Any]) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from optuna.trial import TrialState, create_trial

    storage = JournalStorage(JournalFileBackend(tmp))
    study = optuna.create_study(storage=storage, study_name=sd.config.name,
                                directions=["minimize", "maximize"])
    cands = {c["name"]: c for c in sd.plan["candidates"]}
    for row in table.itertuples(index=False):
        if row.kind != "candidate":
            continue
        params = {h: cands[row.name][h] for h in HYPER}
        done = np.isfinite(row.val_mse) and np.isfinite(row.steps_to_failure)
        study.add_trial(create_trial(
            params=params, distributions=dists,
            values=[float(row.val_mse), float(row.steps_to_failure)] if done else None,
            state=TrialState.COMPLETE if done else TrialState.FAIL,
            user_attrs={"name": row.name, "train_status": row.train_status,
                        "convert_status": row.convert_status}))
