"""The study report: offline validation error against online stability, as in Ott et al. 2020.

A study trains many candidate networks (random search over hyperparameters), couples each to a
toy host (Lorenz-96 or shallow water) from a few initial conditions, and records how many steps
each coupled run survives. `harness collect STUDY` gathers the results into ``STUDY/results/``;
this module turns them into ``STUDY/report/report.md`` with PNG figures beside it:

- the overall Spearman correlation of offline validation MSE with steps to failure (the paper
  found -0.73, p = 4.961e-19), with the share of right-censored candidates, because a candidate
  that never failed is tied at the step budget and such ties weaken any rank correlation;
- the per-hyperparameter Spearman table (the paper's Table 2) and a per-optimizer summary;
- Figure-4-style scatters (overall and by hyperparameter) and Figure-3-style bias curves;
- the best single candidate against the ensemble of the top models, the baselines, the ten best
  candidates and the candidates that never reached coupling.

Whatever sign the data give is reported as it is. A correlation that cannot be computed (too
few candidates, a constant column, no candidate failed) is reported as undefined with the
reason; "nan" is never printed as a finding.

Figures use matplotlib's object API (``matplotlib.figure.Figure`` rendered by Agg) and never
import pyplot, so writing a report changes no global backend and leaks no figure, whatever
process it runs in.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .atomic import atomic_path, atomic_write_text
from .errors import HarnessError
from .status import ConvertStatus, RunStatus, TrainStatus

__all__ = [
    "Study",
    "load_study",
    "usable_candidates",
    "survival_inputs",
    "overall_spearman",
    "bias_spearman",
    "spearman_table",
    "optimizer_summary",
    "best_candidate",
    "ensemble_comparison",
    "write_report",
    "HYPERPARAMETERS",
    "OPTIMIZER_CODES",
    "PAPER_OVERALL",
    "PAPER_TABLE2",
    "PAPER_OPTIMIZER_ONE_VS_REST",
    "FIGURES",
]

# The paper's numbers (Ott et al. 2020, Scientific Programming; /work/shared/reference/).
PAPER_OVERALL: dict[str, float] = {"rho": -0.73, "p": 4.961e-19, "n": 108}
# Table 2: Spearman correlation of each hyperparameter with online performance, and p-value.
PAPER_TABLE2: dict[str, tuple[float, float]] = {
    "batch_norm": (0.0859, 3.7896e-01),
    "dropout": (0.1919, 4.7591e-02),
    "leaky_relu": (0.0055, 9.5465e-01),
    "learning_rate": (-0.2087, 3.0923e-02),
    "nodes": (0.1427, 1.4249e-01),
    "layers": (0.0410, 6.7491e-01),
    "optimizer": (-0.6998, 5.0177e-17),
    "n_params": (0.1528, 1.1609e-01),
}
# The paper's text: "SGD, Adam, and RMSProp have Spearman values of -0.6670, 0.5936, 0.0586".
PAPER_OPTIMIZER_ONE_VS_REST: dict[str, float] = {"sgd": -0.6670, "adam": 0.5936,
                                                 "rmsprop": 0.0586}

# Optimizers as ranks for the Table-2 correlation; the paper does not state its coding.
OPTIMIZER_CODES: dict[str, int] = {"adam": 0, "rmsprop": 1, "sgd": 2}

# (column, label as in the paper's Table 2, coding, categorical in the figures)
HYPERPARAMETERS: tuple[tuple[str, str, str, bool], ...] = (
    ("batch_norm", "BatchNorm", "no = 0, yes = 1", True),
    ("dropout", "Dropout", "rate", False),
    ("leaky_relu", "Leaky ReLU", "negative slope", False),
    ("learning_rate", "Learning rate", "value", False),
    ("nodes", "Dense nodes", "nodes per layer", True),
    ("layers", "Layers", "count", True),
    ("optimizer", "Optimizer", "adam = 0, rmsprop = 1, sgd = 2", True),
    ("n_params", "Parameters", "count", False),
)

FIGURES: dict[str, str] = {
    "mse_vs_steps": "fig4_mse_vs_steps.png",
    "by_hyperparameter": "fig4_by_hyperparameter.png",
    "bias_curves": "fig3_bias_curves.png",
    "survival": "fig4_survival.png",
    "climate": "fig5_climate.png",
    "failures": "fig6_failures.png",
    "online": "fig7_online_vs_offline.png",
}

DPI = 120
MIN_N_SPEARMAN = 3          # below this a rank correlation says nothing
TOP_N_TABLE = 10
MAX_CURVE_POINTS = 4000     # longer curves are thinned by a stride before plotting
SIGNIFICANCE = 0.05
CENSORED_MARKER = "^"

_COLLECT_HINT = "run `harness collect {study}` first"
_REQUIRED_CANDIDATE_COLUMNS = ("name", "kind", "val_mse", "steps_to_failure", "n_runs")
_FLOAT_COLUMNS = ("dropout", "leaky_relu", "learning_rate", "nodes", "layers", "n_params",
                  "val_mse", "epochs", "verify_max_abs_err", "n_runs", "n_failed", "n_steps",
                  "steps_to_failure", "steps_min", "mean_abs_bias")
_BOOL_COLUMNS = ("batch_norm", "survived")
_STR_COLUMNS = ("name", "kind", "optimizer", "train_status", "convert_status", "failure_reason",
                "members")
_TRUE = frozenset({"true", "1", "1.0", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "0.0", "no", "n", "f"})
_MISSING = frozenset({"", "nan", "none", "null", "na", "<na>", "n/a"})


@dataclass
class Study:
    """Everything `harness collect` wrote, read and normalised once.

    ``candidates`` has the schema of results/candidates.csv with numbers as floats (NaN when
    empty), ``batch_norm``/``survived`` as pandas' nullable boolean and text columns as str
    ('' when empty). ``runs`` and ``curves`` are None when their file is absent. ``notes``
    collects what the reader had to tolerate, so the report can say it.
    """

    study_dir: Path
    summary: dict[str, Any]
    candidates: pd.DataFrame
    runs: pd.DataFrame | None
    curves: pd.DataFrame | None
    notes: list[str] = field(default_factory=list)
    #: results/climate.csv: each run's mean window pdf and acf (hosts that write them)
    climate: pd.DataFrame | None = None

    @property
    def n_steps(self) -> int | None:
        """The step budget of every coupled run (summary.json, else the candidates table)."""
        value = self.summary.get("n_steps")
        if _finite(value):
            return int(value)
        col = self.candidates.get("n_steps")
        if col is not None and col.notna().any():
            return int(np.nanmax(col.to_numpy(dtype=float)))
        return None


# ----------------------------------------------------------------------------------- reading

def load_study(study_dir: Path | str) -> Study:
    """Read STUDY/results/ as `harness collect` leaves it.

    candidates.csv and summary.json are required (HarnessError naming the file otherwise);
    runs.csv and curves.csv are optional because the report is still useful without them.
    """
    study_dir = Path(study_dir)
    results = study_dir / "results"
    hint = _COLLECT_HINT.format(study=study_dir)
    if not study_dir.is_dir():
        raise HarnessError(f"{study_dir}: no such study directory")

    summary_path = results / "summary.json"
    if not summary_path.is_file():
        raise HarnessError(f"{summary_path} missing: {hint}")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{summary_path}: not readable JSON ({exc}); {hint}") from exc
    if not isinstance(summary, dict):
        raise HarnessError(f"{summary_path}: expected a JSON object, found "
                           f"{type(summary).__name__}; {hint}")

    cand_path = results / "candidates.csv"
    if not cand_path.is_file():
        raise HarnessError(f"{cand_path} missing: {hint}")
    raw = _read_csv(cand_path, hint)
    notes: list[str] = []
    candidates = _normalize_candidates(raw, source=str(cand_path), notes=notes)

    runs: pd.DataFrame | None = None
    runs_path = results / "runs.csv"
    if runs_path.is_file():
        runs = _read_csv(runs_path, hint)
        missing = [c for c in ("name", "status") if c not in runs.columns]
        if missing:
            raise HarnessError(f"{runs_path}: missing column(s) {', '.join(missing)}; {hint}")
        for col in ("steps", "failure_step", "wall_s", "nn_s"):
            if col in runs.columns:
                runs[col] = _to_float(runs[col], col, str(runs_path), runs)
        runs["status"] = runs["status"].astype(str).str.strip().str.lower()
    else:
        notes.append("results/runs.csv is absent: run statuses are not summarised.")

    curves: pd.DataFrame | None = None
    curves_path = results / "curves.csv"
    if curves_path.is_file():
        curves = _read_curves(curves_path, hint)

    climate: pd.DataFrame | None = None
    climate_path = results / "climate.csv"
    if climate_path.is_file():
        raw_climate = _read_csv(climate_path, hint)
        if {"name", "statistic", "index", "x", "value"} <= set(raw_climate.columns):
            climate = raw_climate
            for col in ("index", "x", "value"):
                climate[col] = pd.to_numeric(climate[col], errors="coerce")
        else:
            notes.append(f"{climate_path}: not the expected columns; no climate figure.")

    return Study(study_dir=study_dir, summary=summary, candidates=candidates, runs=runs,
                 curves=curves, notes=notes, climate=climate)


def _read_csv(path: Path, hint: str) -> pd.DataFrame:
    """All columns as text, empty cells as '', so that parsing (and its errors) is ours."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise HarnessError(f"{path}: empty file; {hint}") from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise HarnessError(f"{path}: not a readable CSV file ({exc}); {hint}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _read_curves(path: Path, hint: str) -> pd.DataFrame:
    """curves.csv can be millions of rows: let pandas parse the numbers, then check them."""
    try:
        curves = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame({"name": [], "ic": [], "time": [], "bias": []})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise HarnessError(f"{path}: not a readable CSV file ({exc}); {hint}") from exc
    curves.columns = [str(c).strip() for c in curves.columns]
    missing = [c for c in ("name", "ic", "time", "bias") if c not in curves.columns]
    if missing:
        raise HarnessError(f"{path}: missing column(s) {', '.join(missing)} "
                           "(expected name, ic, time, bias)")
    curves["name"] = curves["name"].astype(str)
    for col in ("ic", "time", "bias"):
        curves[col] = pd.to_numeric(curves[col], errors="coerce")
    return curves


def _normalize_candidates(df: pd.DataFrame, source: str = "candidates",
                          notes: list[str] | None = None) -> pd.DataFrame:
    """Typed copy of a candidates table, raw (all text) or already typed; idempotent.

    Public helpers call this too, so they accept ``pd.read_csv(candidates.csv)`` as well as
    ``load_study(...).candidates``.
    """
    missing = [c for c in _REQUIRED_CANDIDATE_COLUMNS if c not in df.columns]
    if missing:
        raise HarnessError(f"{source}: missing column(s) {', '.join(missing)}; "
                           "was it written by `harness collect`?")
    out = df.copy()
    absent = [c for c in _FLOAT_COLUMNS + _BOOL_COLUMNS + _STR_COLUMNS if c not in out.columns]
    if absent and notes is not None:
        notes.append(f"{Path(source).name} lacks column(s) {', '.join(absent)}: "
                     "treated as empty.")
    for col in _STR_COLUMNS:
        if col not in out.columns:
            out[col] = ""
        out[col] = out[col].map(lambda v: "" if _is_missing(v) else str(v).strip())
    for col in ("kind", "optimizer", "train_status", "convert_status"):
        out[col] = out[col].str.lower()
    for col in _FLOAT_COLUMNS:
        out[col] = np.nan if col not in out.columns else _to_float(out[col], col, source, out)
    for col in _BOOL_COLUMNS:
        out[col] = (pd.NA if col not in out.columns
                    else _to_bool(out[col], col, source, out))
        out[col] = out[col].astype("boolean")
    out["n_runs"] = out["n_runs"].fillna(0.0)
    return out.reset_index(drop=True)


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING


def _to_float(col: pd.Series, name: str, source: str, frame: pd.DataFrame) -> pd.Series:
    """Numbers as float; empty -> NaN; anything else unreadable is the user's error."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        return col.astype(float)
    values = []
    for i, v in enumerate(col.tolist()):
        if _is_missing(v):
            values.append(np.nan)
            continue
        if isinstance(v, bool):
            values.append(float(v))
            continue
        try:
            values.append(float(str(v).strip()))
        except ValueError:
            raise HarnessError(
                f"{source}: column '{name}', line {i + 2}{_row_name(frame, i)}: "
                f"cannot read {v!r} as a number") from None
    return pd.Series(values, index=col.index, dtype=float)


def _to_bool(col: pd.Series, name: str, source: str, frame: pd.DataFrame) -> pd.Series:
    """True/False/1/0/yes/no (any case); empty -> NA; anything else is the user's error."""
    values: list[Any] = []
    for i, v in enumerate(col.tolist()):
        if _is_missing(v):
            values.append(pd.NA)
        elif isinstance(v, (bool, np.bool_)):
            values.append(bool(v))
        elif isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1):
            values.append(bool(v))
        elif str(v).strip().lower() in _TRUE:
            values.append(True)
        elif str(v).strip().lower() in _FALSE:
            values.append(False)
        else:
            raise HarnessError(f"{source}: column '{name}', line {i + 2}{_row_name(frame, i)}: "
                               f"cannot read {v!r} as true/false")
    return pd.Series(values, index=col.index, dtype="boolean")


def _row_name(frame: pd.DataFrame, i: int) -> str:
    if "name" in frame.columns:
        return f" (name {frame['name'].iloc[i]!s})"
    return ""


# ----------------------------------------------------------------------------------- statistics

@dataclass
class _Rank:
    """One Spearman correlation, or the reason it is undefined (rho and p then None)."""

    rho: float | None
    p: float | None
    n: int
    note: str = ""

    @property
    def defined(self) -> bool:
        return self.rho is not None


def _spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
              x_name: str = "x", y_name: str = "y") -> _Rank:
    """Spearman over the pairs where both are finite; undefined (with why) instead of NaN."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < MIN_N_SPEARMAN:
        return _Rank(None, None, n, f"undefined (only {n} usable pair{'s' * (n != 1)}; "
                                    f"need at least {MIN_N_SPEARMAN})")
    if np.unique(x).size < 2:
        return _Rank(None, None, n, f"undefined (constant: {x_name} is the same for all {n})")
    if np.unique(y).size < 2:
        return _Rank(None, None, n, f"undefined (constant: {y_name} is the same for all {n})")
    res = stats.spearmanr(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    if not math.isfinite(rho):
        return _Rank(None, None, n, "undefined (scipy returned no value)")
    return _Rank(rho, p if math.isfinite(p) else None, n)


def _candidates_only(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["kind"] == "candidate"]


def _coupled(df: pd.DataFrame) -> pd.Series:
    """Rows that have at least one coupled run with a result."""
    return (df["n_runs"] > 0) & np.isfinite(df["steps_to_failure"].to_numpy(dtype=float))


def usable_candidates(df: pd.DataFrame) -> pd.DataFrame:
    """Candidates that enter the correlations: finite val_mse and at least one coupled run.

    Diverged or failed trainings (val_mse NaN) and candidates never coupled have no point on
    either axis, so they are excluded here and listed separately in the report.
    """
    df = _candidates_only(_normalize_candidates(df))
    finite_mse = np.isfinite(df["val_mse"].to_numpy(dtype=float))
    return df[finite_mse & _coupled(df)].reset_index(drop=True)


def _budget(df: pd.DataFrame, n_steps: int | None) -> int | None:
    if n_steps is not None:
        return int(n_steps)
    if df["n_steps"].notna().any():
        return int(np.nanmax(df["n_steps"].to_numpy(dtype=float)))
    return None


def _censored(df: pd.DataFrame, n_steps: int | None) -> np.ndarray:
    """A candidate whose median steps_to_failure is at the budget (every run or most survived)."""
    survived = df["survived"].fillna(False).to_numpy(dtype=bool)
    if n_steps is None:
        return survived
    return survived | (df["steps_to_failure"].to_numpy(dtype=float) >= n_steps)


def overall_spearman(df: pd.DataFrame, n_steps: int | None = None) -> dict[str, Any]:
    """Spearman(val_mse, steps_to_failure) over `usable_candidates`, as in the paper's Fig. 4a.

    Returns rho, p (None when undefined), n, defined, note (why undefined), the number and
    fraction of survivors (every IC reached the budget) and of censored medians, and the
    paper's rho and p. Censoring matters: every censored candidate is tied at the budget, and
    the more ties the weaker any rank correlation can be.
    """
    use = usable_candidates(df)
    n_steps = _budget(_normalize_candidates(df), n_steps)
    steps = use["steps_to_failure"].to_numpy(dtype=float)
    r = _spearman(use["val_mse"], steps, "val_mse", "steps_to_failure")
    n = len(use)
    survived = int(use["survived"].fillna(False).sum())
    censored = int(_censored(use, n_steps).sum())
    note = r.note
    if not r.defined and n >= MIN_N_SPEARMAN and np.unique(steps).size < 2:
        note = _constant_steps_note(use, n_steps)
    return {
        "rho": r.rho, "p": r.p, "n": n, "defined": r.defined, "note": note,
        "n_survived": survived, "survived_fraction": survived / n if n else None,
        "n_censored": censored, "censored_fraction": censored / n if n else None,
        "n_steps": n_steps,
        "paper_rho": PAPER_OVERALL["rho"], "paper_p": PAPER_OVERALL["p"],
    }


def _constant_steps_note(use: pd.DataFrame, n_steps: int | None) -> str:
    """Why steps_to_failure has no variance, in words a reader can act on."""
    value = float(use["steps_to_failure"].iloc[0])
    if bool(use["survived"].fillna(False).all()):
        return (f"undefined: no candidate failed within the budget of {_steps(n_steps)} steps, "
                "so every steps_to_failure is the budget (all right-censored); a longer budget "
                "or stricter failure criteria are needed to rank them")
    if n_steps is not None and value >= n_steps:
        return (f"undefined: every candidate's median run reached the budget of "
                f"{_steps(n_steps)} steps (all censored)")
    return (f"undefined: all {len(use)} candidates failed at the same step ({_steps(value)}), "
            "so steps_to_failure has no variance")


def bias_spearman(df: pd.DataFrame) -> dict[str, Any]:
    """Spearman(val_mse, mean_abs_bias): an online metric that censoring does not cap.

    Uses candidates with finite val_mse, at least one coupled run and a finite mean_abs_bias.
    Note that a run that fails early has a bias averaged over a shorter time.
    """
    use = usable_candidates(df)
    r = _spearman(use["val_mse"], use["mean_abs_bias"], "val_mse", "mean_abs_bias")
    return {"rho": r.rho, "p": r.p, "n": r.n, "defined": r.defined, "note": r.note}


def _coded(df: pd.DataFrame, col: str) -> pd.Series:
    """A hyperparameter as numbers for a rank correlation (see HYPERPARAMETERS for codings)."""
    if col == "optimizer":
        return df["optimizer"].map(lambda s: OPTIMIZER_CODES.get(s, np.nan)).astype(float)
    if col == "batch_norm":
        return df["batch_norm"].astype("Float64").astype(float)
    return df[col].astype(float)


def spearman_table(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2 for this study: each hyperparameter against steps_to_failure and
    against val_mse, with the paper's values alongside.

    Against steps_to_failure over `usable_candidates`; against val_mse over every candidate
    with a finite val_mse (coupled or not: the offline fit does not need coupling). Columns:
    hyperparameter, column, coding, rho_steps, p_steps, n_steps, note_steps, rho_val_mse,
    p_val_mse, n_val_mse, note_val_mse, paper_rho, paper_p. An undefined rho is NaN with the
    reason in the note column (e.g. "undefined (constant: ...)").
    """
    norm = _normalize_candidates(df)
    use = usable_candidates(norm)
    trained = _candidates_only(norm)
    trained = trained[np.isfinite(trained["val_mse"].to_numpy(dtype=float))]
    rows = []
    for col, label, coding, _ in HYPERPARAMETERS:
        a = _spearman(_coded(use, col), use["steps_to_failure"], col, "steps_to_failure")
        b = _spearman(_coded(trained, col), trained["val_mse"], col, "val_mse")
        paper = PAPER_TABLE2.get(col)
        rows.append({
            "hyperparameter": label, "column": col, "coding": coding,
            "rho_steps": _nan(a.rho), "p_steps": _nan(a.p), "n_steps": a.n,
            "note_steps": a.note,
            "rho_val_mse": _nan(b.rho), "p_val_mse": _nan(b.p), "n_val_mse": b.n,
            "note_val_mse": b.note,
            "paper_rho": paper[0] if paper else np.nan, "paper_p": paper[1] if paper else np.nan,
        })
    return pd.DataFrame(rows)


def optimizer_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer: how many candidates, how far they ran, how well they fit.

    Also the one-vs-rest Spearman of "uses this optimizer" with steps_to_failure, which the
    paper quotes (SGD -0.667, Adam 0.594, RMSProp 0.059; SGD never ran past 1,000 steps).
    """
    norm = _normalize_candidates(df)
    cands = _candidates_only(norm)
    use = usable_candidates(norm)
    names = [o for o in OPTIMIZER_CODES if (cands["optimizer"] == o).any()]
    names += sorted(set(cands["optimizer"]) - set(OPTIMIZER_CODES) - {""})
    rows = []
    for opt in names:
        group = cands[cands["optimizer"] == opt]
        coupled = group[_coupled(group)]
        steps = coupled["steps_to_failure"].to_numpy(dtype=float)
        mse = group["val_mse"].to_numpy(dtype=float)
        mse = mse[np.isfinite(mse)]
        r = _spearman((use["optimizer"] == opt).astype(float), use["steps_to_failure"],
                      f"optimizer == {opt}", "steps_to_failure")
        rows.append({
            "optimizer": opt, "n": len(group), "n_trained": int(mse.size),
            "n_coupled": len(coupled),
            "n_survived": int(coupled["survived"].fillna(False).sum()),
            "median_steps": float(np.median(steps)) if steps.size else np.nan,
            "max_steps": float(np.max(steps)) if steps.size else np.nan,
            "median_val_mse": float(np.median(mse)) if mse.size else np.nan,
            "rho_one_vs_rest": _nan(r.rho), "p_one_vs_rest": _nan(r.p), "note": r.note,
            "paper_rho_one_vs_rest": PAPER_OPTIMIZER_ONE_VS_REST.get(opt, np.nan),
        })
    return pd.DataFrame(rows)


def _rank_by_steps(df: pd.DataFrame) -> pd.DataFrame:
    """Coupled candidates, longest-lived first; ties broken by lower val_mse (NaN last)."""
    cands = _candidates_only(df)
    cands = cands[_coupled(cands)].copy()
    cands["_mse"] = cands["val_mse"].fillna(np.inf)
    cands = cands.sort_values(["steps_to_failure", "_mse", "name"],
                              ascending=[False, True, True], kind="mergesort")
    return cands.drop(columns="_mse").reset_index(drop=True)


def best_candidate(df: pd.DataFrame) -> pd.Series | None:
    """The coupled candidate with the most steps to failure (ties -> lower val_mse)."""
    ranked = _rank_by_steps(_normalize_candidates(df))
    return None if ranked.empty else ranked.iloc[0]


def _members(df: pd.DataFrame, ens: pd.Series) -> list[str]:
    """The ensemble's members: its `members` column, else the top k by val_mse (k from the
    name, e.g. ensemble-top3, else 3) -- collect leaves members empty when the ensemble's
    coupling never ran."""
    members = ens["members"].split()
    if members:
        return members
    m = re.search(r"top(\d+)", ens["name"])
    k = int(m.group(1)) if m else 3
    cands = _candidates_only(df)
    cands = cands[np.isfinite(cands["val_mse"].to_numpy(dtype=float))]
    return cands.sort_values(["val_mse", "name"]).head(k)["name"].tolist()


def ensemble_comparison(df: pd.DataFrame) -> list[dict[str, Any]]:
    """For each ensemble row: the best single candidate, the members, the ensemble, a verdict.

    The ensemble "beat" the best single candidate when it ran more steps, or the same number
    (typically both at the budget) with a lower mean |bias|. The paper found it did not.
    Each item: name, members, members_recorded (False when inferred as the top k by
    val_mse), table (DataFrame with role, name, val_mse, steps_to_failure, survived,
    mean_abs_bias), beat (True/False/None when not comparable), verdict (a sentence).
    """
    norm = _normalize_candidates(df)
    best = best_candidate(norm)
    by_name = norm.drop_duplicates("name").set_index("name", drop=False)
    out = []
    for _, ens in norm[norm["kind"] == "ensemble"].iterrows():
        members = _members(norm, ens)
        rows = []
        if best is not None:
            rows.append(("best single candidate", best))
        for m in members:
            if m in by_name.index:
                rows.append(("member", by_name.loc[m]))
            else:
                rows.append(("member (not in candidates.csv)", pd.Series({"name": m})))
        rows.append(("ensemble", ens))
        table = pd.DataFrame([{
            "role": role, "name": r.get("name", ""), "val_mse": r.get("val_mse", np.nan),
            "steps_to_failure": r.get("steps_to_failure", np.nan),
            "survived": r.get("survived", pd.NA),
            "mean_abs_bias": r.get("mean_abs_bias", np.nan),
        } for role, r in rows])
        beat, verdict = _verdict(ens, best)
        member_rows = [by_name.loc[m] for m in members if m in by_name.index]
        fit = [r for r in member_rows if _finite(r["val_mse"])]
        if fit:
            best_fit = min(fit, key=lambda r: r["val_mse"])
            if best is None or best_fit["name"] != best["name"]:
                _, v2 = _verdict(ens, best_fit, who="the best-fitting member")
                verdict += " " + v2
        out.append({"name": ens["name"], "members": members,
                    "members_recorded": bool(ens["members"].split()), "table": table,
                    "beat": beat, "verdict": verdict})
    return out


#: mean |bias| values closer than this fraction count as a tie in the ensemble verdict
BIAS_TIE_FRACTION = 0.05


def _verdict(ens: pd.Series, best: pd.Series | None,
             who: str = "the best single candidate") -> tuple[bool | None, str]:
    """Did the ensemble beat ``best``? (more steps, or as many with a lower mean |bias|)."""
    name = ens["name"]
    if best is None:
        return None, f"No candidate was coupled, so {name} cannot be compared with one."
    if ens["n_runs"] <= 0 or not _finite(ens["steps_to_failure"]):
        return None, f"{name} produced no coupled run, so it cannot be compared with {who}."
    if best["n_runs"] <= 0 or not _finite(best["steps_to_failure"]):
        return None, f"{who.capitalize()} ({best['name']}) has no coupled run to compare with."
    se, sb = float(ens["steps_to_failure"]), float(best["steps_to_failure"])
    cmp = f"{_steps(se)} steps for {name} vs {_steps(sb)} for {best['name']}"
    if se > sb:
        return True, f"The ensemble beat {who}: {cmp}."
    if se < sb:
        return False, f"The ensemble did not beat {who}: {cmp}."
    be, bb = ens["mean_abs_bias"], best["mean_abs_bias"]
    if _finite(be) and _finite(bb):
        bias = f"mean |bias| {_num(be)} vs {_num(bb)}"
        # two initial conditions cannot separate biases a few per cent apart
        if abs(be - bb) <= BIAS_TIE_FRACTION * max(abs(be), abs(bb)):
            return None, (f"The ensemble tied with {who}: {cmp}, {bias} (within "
                          f"{BIAS_TIE_FRACTION:.0%}).")
        if be < bb:
            return True, (f"The ensemble beat {who} on bias at equal steps: {cmp}, {bias}.")
        if be > bb:
            return False, (f"The ensemble did not beat {who}: equal steps ({cmp}) "
                           f"but larger {bias}.")
        return None, f"The ensemble tied with {who}: {cmp}, {bias}."
    return None, f"The ensemble tied with {who} on steps ({cmp}); no bias to separate them."


# ----------------------------------------------------------------------------------- figures

def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    """A Figure rendered by Agg without pyplot (no global backend, nothing to close)."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout=layout)


def _save(fig: Any, path: Path) -> None:
    """Atomic PNG write: a reader never sees half a figure."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _log_ok(values: np.ndarray) -> bool:
    values = values[np.isfinite(values)]
    return values.size > 0 and bool(np.all(values > 0))


def _steps_axis(ax: Any, steps: np.ndarray, n_steps: int | None) -> None:
    """Log y when the steps span more than two decades (most fail early, few survive)."""
    steps = steps[np.isfinite(steps)]
    if steps.size and np.all(steps > 0) and steps.max() / steps.min() > 100:
        ax.set_yscale("log")
    ax.set_ylabel("steps to failure (median over ICs)")
    if n_steps is not None:
        ax.axhline(n_steps, color="0.4", lw=1, ls="--", zorder=0)


def _fig_mse_vs_steps(use: pd.DataFrame, ensembles: pd.DataFrame, n_steps: int | None,
                      overall: dict[str, Any], path: Path) -> None:
    """Figure 4a: offline val MSE against steps to failure, censored points marked."""
    fig = _new_figure(6.4, 4.6)
    ax = fig.add_subplot()
    mse = use["val_mse"].to_numpy(dtype=float)
    steps = use["steps_to_failure"].to_numpy(dtype=float)
    cens = _censored(use, n_steps)
    if (~cens).any():
        ax.scatter(mse[~cens], steps[~cens], s=28, color="tab:blue", label="failed (median run)")
    if cens.any():
        ax.scatter(mse[cens], steps[cens], s=44, marker=CENSORED_MARKER, facecolors="none",
                   edgecolors="tab:green", linewidths=1.3, label="censored at the step budget")
    for _, e in ensembles.iterrows():
        if _finite(e["val_mse"]) and _finite(e["steps_to_failure"]):
            ax.scatter([e["val_mse"]], [e["steps_to_failure"]], marker="*", s=160,
                       color="magenta", label=e["name"], zorder=5)
    if _log_ok(np.concatenate([mse, ensembles["val_mse"].to_numpy(dtype=float)])):
        ax.set_xscale("log")
    _steps_axis(ax, steps, n_steps)
    if n_steps is not None:
        ax.text(0.99, n_steps, f"budget {_steps(n_steps)} ", transform=ax.get_yaxis_transform(),
                va="bottom", ha="right", fontsize=8, color="0.3")
    ax.set_xlabel("offline validation MSE (standardised targets)")
    if overall["defined"]:
        title = (f"Spearman rho = {overall['rho']:+.3f} ({_p_is(overall['p'])}, "
                 f"n = {overall['n']}); paper -0.73")
    else:
        title = f"Spearman undefined (n = {overall['n']}); paper -0.73"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def _fig_by_hyperparameter(use: pd.DataFrame, n_steps: int | None, path: Path) -> None:
    """Figure 4b-i: the same scatter once per hyperparameter, coloured by it."""
    from matplotlib import cm, colormaps, colors
    from matplotlib.ticker import NullLocator
    panels = len(HYPERPARAMETERS) + 1
    ncols = 3
    nrows = math.ceil(panels / ncols)
    # fixed spacing: constrained layout over nine panels and their colour bars costs seconds
    fig = _new_figure(4.4 * ncols, 3.5 * nrows, layout=None)
    fig.subplots_adjust(left=0.06, right=0.95, bottom=0.06, top=0.93, wspace=0.5,
                        hspace=0.42)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    mse = use["val_mse"].to_numpy(dtype=float)
    steps = use["steps_to_failure"].to_numpy(dtype=float)
    cens = _censored(use, n_steps)
    logx = _log_ok(mse)

    def frame(ax: Any, title: str) -> None:
        if logx:
            ax.set_xscale("log")
        _steps_axis(ax, steps, n_steps)
        # no minor ticks: on nine log panels they cost most of the drawing time
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("validation MSE")
        ax.set_title(title, fontsize=10)

    ax = axes[0]
    ax.scatter(mse[~cens], steps[~cens], s=16, color="tab:blue")
    ax.scatter(mse[cens], steps[cens], s=22, marker=CENSORED_MARKER, color="tab:green")
    frame(ax, "(a) all candidates")
    for k, (col, label, _, categorical) in enumerate(HYPERPARAMETERS, start=1):
        ax = axes[k]
        title = f"({chr(ord('a') + k)}) {label}"
        raw = use[col]
        values = _coded(use, col).to_numpy(dtype=float)
        finite = np.isfinite(values)
        if not finite.any():
            frame(ax, title)
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        if categorical or np.unique(values[finite]).size < 2:
            if col == "optimizer":
                cats = [o for o in OPTIMIZER_CODES if (raw == o).any()]
                keys = raw.to_numpy()
            elif col == "batch_norm":
                cats = [c for c in (False, True) if (raw == c).any()]
                keys = raw.to_numpy(dtype=object, na_value=None)
            else:
                cats = sorted(np.unique(values[finite]).tolist())
                keys = values
            palette = colormaps["tab10"] if len(cats) <= 10 else colormaps["tab20"]
            for j, c in enumerate(cats):
                sel = keys == c
                colour = palette(j % palette.N)
                name = _category_label(col, c)
                ax.scatter(mse[sel & ~cens], steps[sel & ~cens], s=16, color=colour,
                           label=name)
                ax.scatter(mse[sel & cens], steps[sel & cens], s=22, marker=CENSORED_MARKER,
                           color=colour)
            ax.legend(fontsize=7, title=label, title_fontsize=7, loc="best",
                      ncol=2 if len(cats) > 4 else 1)
        else:
            lo, hi = np.min(values[finite]), np.max(values[finite])
            wide = col in ("learning_rate", "n_params") and lo > 0 and hi / lo > 10
            norm = colors.LogNorm(lo, hi) if wide else colors.Normalize(lo, hi)
            cmap = colormaps["viridis"]
            for sel, marker, size in ((finite & ~cens, "o", 16),
                                      (finite & cens, CENSORED_MARKER, 22)):
                ax.scatter(mse[sel], steps[sel], c=values[sel], cmap=cmap, norm=norm, s=size,
                           marker=marker)
            fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)
        frame(ax, title)
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle("Offline MSE vs steps to failure by hyperparameter "
                 f"(triangles: censored at the budget{_budget_text(n_steps)})", fontsize=11)
    _save(fig, path)


def _category_label(col: str, value: Any) -> str:
    if col == "batch_norm":
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _budget_text(n_steps: int | None) -> str:
    return "" if n_steps is None else f" of {_steps(n_steps)} steps"


def _smoothing_time(summary: dict[str, Any], curves: pd.DataFrame) -> float:
    """The running-mean window of the bias curves: the drift test's window where there is one
    (what the failure test sees), else a twentieth of the longest run."""
    drift = (summary.get("calibration") or {}).get("drift") or {}
    window = drift.get("window_time")
    if isinstance(window, (int, float)) and window > 0:
        return float(window)
    span = float(curves["time"].max() - curves["time"].min()) if len(curves) else 0.0
    return span / 20 if span > 0 else 0.0


def _fig_bias_curves(curves: pd.DataFrame, cands: pd.DataFrame, label: str,
                     path: Path, smooth_time: float = 0.0) -> dict[str, Any]:
    """Figure 3: bias over model time, one line per model (its first IC), candidates coloured
    by val_mse, baselines grey/black dashed, ensembles magenta. Returns caption facts."""
    from matplotlib import cm, colormaps, colors
    curves = curves[np.isfinite(curves["time"]) & np.isfinite(curves["bias"])]
    first_ic = curves.groupby("name")["ic"].min()
    curves = curves[curves["ic"] == curves["name"].map(first_ic)]
    kinds = dict(zip(cands["name"], cands["kind"]))
    mses = dict(zip(cands["name"], cands["val_mse"]))
    fig = _new_figure(7.6, 4.6)
    ax = fig.add_subplot()

    groups = {name: g.sort_values("time") for name, g in curves.groupby("name", sort=True)}
    coloured = [n for n in groups if kinds.get(n) == "candidate"
                and _finite(mses.get(n)) and mses[n] > 0]
    norm = None
    cmap = colormaps["viridis"]
    if coloured:
        vals = np.array([mses[n] for n in coloured])
        lo, hi = float(vals.min()), float(vals.max())
        if lo == hi:
            lo, hi = lo / 1.5, hi * 1.5
        norm = colors.LogNorm(lo, hi)

    def thin(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        bias = g["bias"]
        if smooth_time > 0 and len(g) > 1:
            step = float(np.median(np.diff(g["time"].to_numpy())))
            points = int(round(smooth_time / step)) if step > 0 else 1
            if points > 1:    # the instantaneous bias of a chaotic state is mostly weather
                bias = bias.rolling(points, min_periods=1).mean()
        stride = max(1, math.ceil(len(g) / MAX_CURVE_POINTS))
        return g["time"].to_numpy()[::stride], bias.to_numpy()[::stride]

    # worst fits first, so the best ones are drawn on top
    for n in sorted(coloured, key=lambda n: -mses[n]):
        t, b = thin(groups[n])
        ax.plot(t, b, color=cmap(norm(mses[n])), lw=0.9, alpha=0.85)
    plain = [n for n in groups if kinds.get(n) == "candidate" and n not in coloured]
    for n in plain:
        t, b = thin(groups[n])
        ax.plot(t, b, color="0.75", lw=0.7)
    baselines = [n for n in groups if kinds.get(n) == "baseline"]
    styles = [("black", "--"), ("0.45", "--"), ("0.2", ":"), ("0.6", "-.")]
    for j, n in enumerate(baselines):
        t, b = thin(groups[n])
        colour, ls = styles[j % len(styles)]
        ax.plot(t, b, color=colour, ls=ls, lw=1.8, label=n, zorder=4)
    for n in [n for n in groups if kinds.get(n) == "ensemble"]:
        t, b = thin(groups[n])
        ax.plot(t, b, color="magenta", ls="--", lw=2.2, label=n, zorder=5)
    others = [n for n in groups if n not in kinds]
    for n in others:
        t, b = thin(groups[n])
        ax.plot(t, b, color="0.5", ls=":", lw=1.0, label=f"{n} (not in candidates.csv)")

    symlog = _robust_yscale(ax, groups)
    if norm is not None:
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                     label="offline validation MSE")
    ax.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("model time")
    ax.set_ylabel(label)
    if baselines or others or any(kinds.get(n) == "ensemble" for n in groups):
        ax.legend(fontsize=8, loc="best")
    ax.set_title("Bias over time, coloured by offline error", fontsize=10)
    _save(fig, path)
    return {"n_models": len(groups), "symlog": symlog, "smooth_time": smooth_time,
            "first_ics": sorted({int(v) for v in first_ic.to_numpy() if np.isfinite(v)})}


def _robust_yscale(ax: Any, groups: dict[str, pd.DataFrame]) -> bool:
    """Keep a few runs that blow up before failing from flattening every other curve: when
    the largest |bias| exceeds 20 times the typical curve's largest |bias| (median over
    curves), switch to a symmetric-log axis, linear up to that typical value. Nothing is cut
    off. Returns whether it switched."""
    peaks = np.array([np.nanmax(np.abs(g["bias"].to_numpy(dtype=float))) for g in groups.values()
                      if len(g)])
    peaks = peaks[np.isfinite(peaks)]
    if peaks.size == 0:
        return False
    typical = float(np.median(peaks))
    if typical > 0 and peaks.max() > 20 * typical:
        ax.set_yscale("symlog", linthresh=typical)
        return True
    return False


# ----------------------------------------------------------------------------------- Markdown

def _finite(value: Any) -> bool:
    try:
        return value is not None and value is not pd.NA and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _nan(value: float | None) -> float:
    return np.nan if value is None else float(value)


def _num(value: Any) -> str:
    """A measured number in 3 significant digits; '–' when absent (never 'nan')."""
    if not _finite(value):
        return "–"
    v = float(value)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.2e}"
    return f"{v:.3g}"


def _rho(value: Any) -> str:
    return f"{float(value):+.3f}" if _finite(value) else "–"


def _pval(value: Any) -> str:
    if not _finite(value):
        return "–"
    v = float(value)
    if v == 0.0:
        return "< 1e-300"     # scipy's p for a perfect rank correlation underflows to 0
    return f"{v:.1e}" if v < 1e-3 else f"{v:.3f}"


def _p_is(value: Any) -> str:
    """'p = 0.012' or 'p < 1e-300', for running text."""
    text = _pval(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _steps(value: Any) -> str:
    return f"{int(round(float(value))):,}" if _finite(value) else "–"


def _yesno(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "yes" if bool(value) else "no"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f} %" if whole else "–"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        out: list[tuple[str, Any]] = []
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, d)]


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return _num(v) if not math.isfinite(v) or not v.is_integer() else f"{v:g}"
    if isinstance(v, (list, tuple)):
        if len(v) > 8:
            return f"[{len(v)} values]"
        return ", ".join(_value_text(x) for x in v)
    return json.dumps(v) if v is None or isinstance(v, bool) else str(v)


def _header(study: Study, failures_fig: str | None = None) -> list[str]:
    s = study.summary
    df = study.candidates
    cands = _candidates_only(df)
    n_steps = study.n_steps
    name = s.get("study") or study.study_dir.name
    lines = [f"# Study report: {name}", ""]
    host = s.get("host", "unknown")
    facts = [f"- Host: **{host}**" + (f" (NN inputs: {s['inputs']})" if s.get("inputs") else "")]
    budget = f"- Step budget of every coupled run: **{_steps(n_steps)}** steps"
    if _finite(s.get("dt")) and n_steps is not None:
        budget += f" (dt = {_value_text(s['dt'])}, {_num(n_steps * float(s['dt']))} model time)"
    facts.append(budget)
    ts = cands["train_status"]
    cs = cands["convert_status"]
    counts = [f"{len(cands)} candidates"]
    for status in TrainStatus:
        k = int((ts == status).sum())
        if k or status in (TrainStatus.OK, TrainStatus.DIVERGED):
            counts.append(f"training {status}: {k}")
    conv_failed = int(cs.isin([ConvertStatus.FAILED, ConvertStatus.VERIFY_FAILED]).sum())
    counts.append(f"conversion failed: {conv_failed}")
    counts.append(f"coupled: {int(_coupled(cands).sum())}")
    counts.append(f"in the correlations: {len(usable_candidates(df))}")
    facts.append("- Candidates: " + "; ".join(counts))
    declared = s.get("candidates")
    if _finite(declared) and int(declared) != len(cands):
        facts.append(f"- Note: summary.json declares {int(declared)} candidates; "
                     f"candidates.csv has {len(cands)}.")
    others = df[~df["kind"].isin(("candidate", "online"))]
    twins = int((df["kind"] == "online").sum())
    if twins:
        facts.append(f"- Online-trained twins (training.online_steps): {twins}, compared pair "
                     "by pair below")
    if len(others):
        facts.append("- Other coupled models: " + ", ".join(
            f"{n} ({k})" for n, k in zip(others["name"], others["kind"])))
    if study.runs is not None and len(study.runs):
        vc = study.runs["status"].value_counts()
        facts.append("- Coupled runs: " + ", ".join(f"{k} {v}" for k, v in vc.items()))
        if "wall_s" in study.runs and study.runs["wall_s"].notna().any():
            wall = float(study.runs["wall_s"].sum())
            text = f"- Wall time of coupled runs: {_num(wall)} s"
            if "nn_s" in study.runs and study.runs["nn_s"].notna().any():
                text += f", of which NN inference {_pct(float(study.runs['nn_s'].sum()), wall)}"
            facts.append(text)
    lines += facts + [""]

    failure = s.get("failure")
    lines.append("**Failure criteria** (summary.json):")
    if isinstance(failure, dict) and failure:
        lines += [f"- `{k}`: {_value_text(v)}" for k, v in _flatten(failure)]
    else:
        lines.append("- not recorded")
    lines.append("")
    calib = s.get("calibration")
    if isinstance(calib, dict) and calib:
        lines.append("**Calibration of the criteria** (summary.json):")
        rates = calib.get("false_alarm_rates")
        rest = {k: v for k, v in calib.items() if k != "false_alarm_rates"}
        lines += [f"- `{k}`: {_value_text(v)}" for k, v in _flatten(rest)]
        if isinstance(rates, dict) and rates:
            lines += ["", "False-alarm rates: the fraction of test windows of a truth run not "
                      "used for calibration that the criterion would flag, per threshold "
                      "('any': one of them, as a run meets them). A coupled run is tested in "
                      "many windows, so its chance of a false failure is higher than the "
                      "per-window rate.", ""]
            lines += _false_alarm_table(rates)
        lines.append("")
    lines += _failures_by_criterion(study)
    if failures_fig:
        lines += [f"![when and why runs were stopped]({failures_fig})", ""]
    if study.notes:
        lines += ["**Notes on the inputs:**"] + [f"- {n}" for n in study.notes] + [""]
    return lines


def _false_alarm_table(rates: dict[str, Any]) -> list[str]:
    """{criterion: {threshold: rate}}, or (older studies) {threshold: rate} for one criterion."""
    if not all(isinstance(v, dict) for v in rates.values()):
        return _md_table(["threshold", "false-alarm rate per window"],
                         [[k, _num(v)] for k, v in rates.items()])
    criteria = list(rates)
    thresholds = sorted({t for r in rates.values() for t in r}, key=float)
    return _md_table(["threshold", *criteria],
                     [[t, *(_num(rates[c].get(t)) for c in criteria)] for t in thresholds])


def _failures_by_criterion(study: Study) -> list[str]:
    """How many coupled runs each criterion stopped, and when (the runs table's reasons)."""
    runs = study.runs
    if runs is None or "status" not in runs or "reason" not in runs:
        return []
    failed = runs[runs["status"] == RunStatus.FAILED]
    lines = ["**Coupled runs stopped, by criterion** (runs.csv):", ""]
    if failed.empty:
        return lines + [f"- none of the {len(runs)} runs failed", ""]
    rows = []
    for reason, group in failed.groupby(failed["reason"].fillna("").replace("", "unknown")):
        steps = group["failure_step"].astype(float)
        rows.append([reason, len(group), _steps(int(round(float(steps.median())))),
                     f"{_steps(int(steps.min()))}-{_steps(int(steps.max()))}"])
    rows.sort(key=lambda r: -r[1])
    return lines + _md_table(["criterion (reason)", "runs", "median failure step",
                              "range"], rows) + [f"- of {len(runs)} runs", ""]


def _fig_failures(study: Study, path: Path) -> bool:
    """When and by which criterion the candidates' coupled runs were stopped: a stacked
    histogram of failure steps over the budget, the runs that reached it as a last bar."""
    runs = study.runs
    n_steps = study.n_steps
    if runs is None or not n_steps or not {"status", "reason", "kind"} <= set(runs.columns):
        return False
    cand = runs[runs["kind"] == "candidate"]
    failed = cand[cand["status"] == RunStatus.FAILED]
    finished = int((cand["status"] == RunStatus.COMPLETED).sum())
    if failed.empty and finished == 0:
        return False
    edges = np.linspace(0, n_steps, 21)
    reasons = failed["reason"].fillna("").replace("", "unknown")
    groups = sorted(reasons.unique(), key=lambda r: -int((reasons == r).sum()))
    fig = _new_figure(8.0, 3.6)
    ax = fig.subplots()
    ax.hist([failed.loc[reasons == r, "failure_step"].astype(float) for r in groups],
            bins=edges, stacked=True, label=[f"{r} ({int((reasons == r).sum())})"
                                              for r in groups])
    width = edges[1] - edges[0]
    ax.bar(n_steps + width, finished, width=width, color="lightgrey", edgecolor="grey",
           label=f"ran the whole budget ({finished})")
    ax.set_xlabel("failure step of a candidate's coupled run")
    ax.set_ylabel("runs")
    ax.set_title(f"When and why the {len(cand)} candidate runs were stopped", fontsize=11)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def _overall_section(study: Study, overall: dict[str, Any], bias: dict[str, Any],
                     fig: str | None) -> list[str]:
    lines = ["## Offline validation error vs steps to failure (paper Fig. 4a)", ""]
    n = overall["n"]
    n_steps = overall["n_steps"]
    if overall["defined"]:
        rho, p = overall["rho"], overall["p"]
        sig = ("significant at 5 %" if p is not None and p < SIGNIFICANCE
               else "not significant at 5 %")
        if rho < 0:
            sense = ("lower offline error goes with more steps before failure, "
                     "the same sign as the paper")
        elif rho > 0:
            sense = ("lower offline error goes with *fewer* steps before failure, "
                     "the opposite sign to the paper")
        else:
            sense = "no rank relation"
        lines.append(f"**Spearman(val_mse, steps_to_failure) = {rho:+.3f}** "
                     f"({_p_is(p)}, n = {n}; {sig}): {sense}.")
    else:
        lines.append(f"**Spearman(val_mse, steps_to_failure) is {overall['note']}** "
                     f"(n = {n}).")
    lines += ["", f"Paper (Ott et al. 2020, 108 candidates in SPCAM3): rho = "
              f"{PAPER_OVERALL['rho']:+.2f}, p = {_pval(PAPER_OVERALL['p'])}.", ""]
    if n:
        lines.append(
            f"Censoring: {overall['n_survived']} of {n} candidates "
            f"({_pct(overall['n_survived'], n)}) survived every initial condition to the budget"
            f"{_budget_text(n_steps)}, and {overall['n_censored']} of {n} "
            f"({_pct(overall['n_censored'], n)}) have a median steps_to_failure at the budget. "
            "Right-censored candidates are all tied at the budget, which weakens any rank "
            "correlation; the more of them, the less the rho above can say.")
        lines.append("")
    if bias["defined"]:
        lines.append(f"Uncensored online metric: Spearman(val_mse, mean |bias|) = "
                     f"{bias['rho']:+.3f} ({_p_is(bias['p'])}, n = {bias['n']}); a positive "
                     "value means better offline fits drift less. Runs that fail early average "
                     "their bias over a shorter time.")
    else:
        lines.append(f"Spearman(val_mse, mean |bias|) is {bias['note']}.")
    lines.append("")
    if fig:
        lines += [f"![offline MSE vs steps to failure]({fig})", "",
                  "Circles: the median run failed; open triangles: censored at the budget "
                  "(dashed line).", ""]
    else:
        lines += ["No candidate has both a val_mse and a coupled run: no scatter drawn.", ""]
    return lines


def _table2_section(table: pd.DataFrame, fig: str | None) -> list[str]:
    lines = ["## Hyperparameters vs online and offline performance (paper Table 2)", "",
             "Spearman rho (p) of each hyperparameter against steps_to_failure (coupled "
             "candidates) and against val_mse (all trained candidates). Codings: BatchNorm "
             "no = 0 / yes = 1; Optimizer adam = 0, rmsprop = 1, sgd = 2 (the paper does not "
             "state its coding; with ours a negative rho means the later optimizers in that "
             "order ran fewer steps); Parameters = trainable parameter count.", ""]
    rows = []
    for _, r in table.iterrows():
        steps = (f"{_rho(r['rho_steps'])} ({_pval(r['p_steps'])})" if _finite(r["rho_steps"])
                 else r["note_steps"])
        mse = (f"{_rho(r['rho_val_mse'])} ({_pval(r['p_val_mse'])})"
               if _finite(r["rho_val_mse"]) else r["note_val_mse"])
        paper = (f"{_rho(r['paper_rho'])} ({_pval(r['paper_p'])})" if _finite(r["paper_rho"])
                 else "-")
        rows.append([r["hyperparameter"], r["coding"], steps, int(r["n_steps"]), mse,
                     int(r["n_val_mse"]), paper])
    lines += _md_table(["hyperparameter", "coding", "rho vs steps (p)", "n", "rho vs val_mse (p)",
                        "n", "paper rho vs online (p)"], rows)
    lines.append("")
    defined = table[np.isfinite(table["rho_steps"].to_numpy(dtype=float))]
    if len(defined):
        top = defined.iloc[int(np.argmax(np.abs(defined["rho_steps"].to_numpy(dtype=float))))]
        lines += [f"Largest |rho| with steps_to_failure: **{top['hyperparameter']}** "
                  f"({_rho(top['rho_steps'])}); in the paper it was the optimizer (-0.700).", ""]
    if fig:
        lines += [f"![offline MSE vs steps by hyperparameter]({fig})", ""]
    return lines


def _optimizer_section(opt: pd.DataFrame, n_steps: int | None) -> list[str]:
    lines = ["## By optimizer", ""]
    if opt.empty:
        return lines + ["No optimizer recorded for any candidate.", ""]
    rows = []
    for _, r in opt.iterrows():
        one = (f"{_rho(r['rho_one_vs_rest'])} ({_pval(r['p_one_vs_rest'])})"
               if _finite(r["rho_one_vs_rest"]) else r["note"])
        rows.append([r["optimizer"], r["n"], r["n_trained"], r["n_coupled"], r["n_survived"],
                     _steps(r["median_steps"]), _steps(r["max_steps"]),
                     _num(r["median_val_mse"]), one, _rho(r["paper_rho_one_vs_rest"])])
    lines += _md_table(["optimizer", "candidates", "trained", "coupled", "survived",
                        "median steps", "max steps", "median val_mse",
                        "rho(uses it, steps) (p)", "paper rho"], rows)
    lines += ["", "Paper: networks trained with SGD never ran past 1,000 steps; Adam did best.",
              ""]
    sgd = opt[opt["optimizer"] == "sgd"]
    if len(sgd) and _finite(sgd["max_steps"].iloc[0]):
        mx = float(sgd["max_steps"].iloc[0])
        text = f"Here SGD candidates ran at most {_steps(mx)} steps"
        if n_steps is not None and n_steps <= 1000:
            text += (f"; the budget is only {_steps(n_steps)} steps, so the paper's 1,000-step "
                     "observation cannot be tested")
        else:
            text += f" ({'within' if mx <= 1000 else 'beyond'} the paper's 1,000)"
        lines += [text + ".", ""]
    return lines


def _curves_section(study: Study, fig: str | None, facts: dict[str, Any] | None) -> list[str]:
    lines = ["## Bias over time (paper Fig. 3)", ""]
    if study.curves is None:
        return lines + ["results/curves.csv is absent: no bias curves drawn.", ""]
    if not fig or facts is None:
        return lines + ["results/curves.csv has no finite (time, bias) points: no bias curves "
                        "drawn.", ""]
    label = study.summary.get("bias_label") or "bias"
    ics = ", ".join(str(i) for i in facts["first_ics"])
    lines += [f"![bias over time]({fig})", "",
              f"Curves: {label} over model time for {facts['n_models']} models, first initial "
              f"condition of each (IC {ics}). Candidates are coloured by offline validation MSE "
              "(log scale); baselines dashed black/grey, ensembles magenta dashed."
              + (f" Running mean over {facts['smooth_time']:.3g} model time units (trailing)."
                 if facts.get("smooth_time") else "")]
    if facts["symlog"]:
        lines.append("Some runs blow up before they fail, so the y axis is symmetric-log "
                     "(linear near zero).")
    return lines + [""]


def _ensemble_section(df: pd.DataFrame) -> list[str]:
    lines = ["## Best single candidate vs ensemble of the top models", ""]
    comps = ensemble_comparison(df)
    if not comps:
        best = best_candidate(df)
        lines.append("No ensemble row in candidates.csv.")
        if best is not None:
            lines.append(f"Best single candidate: {best['name']} "
                         f"({_steps(best['steps_to_failure'])} steps).")
        return lines + [""]
    for c in comps:
        how = "" if c["members_recorded"] else ", not recorded: taken as the top by val_mse"
        lines += [f"**{c['name']}** (members{how}: {', '.join(c['members']) or 'none'})", ""]
        rows = [[r["role"], r["name"], _num(r["val_mse"]), _steps(r["steps_to_failure"]),
                 _yesno(r["survived"]), _num(r["mean_abs_bias"])]
                for _, r in c["table"].iterrows()]
        lines += _md_table(["role", "name", "val_mse", "steps to failure", "survived",
                            "mean abs bias"], rows)
        lines += ["", c["verdict"], ""]
    lines += ["Paper: coupling the ensemble mean of a few top models did not beat the single "
              "best model.", ""]
    return lines


def _baselines_section(df: pd.DataFrame) -> list[str]:
    lines = ["## Baselines", ""]
    base = df[df["kind"] == "baseline"]
    if base.empty:
        return lines + ["No baseline rows in candidates.csv.", ""]
    rows = [[r["name"], _steps(r["steps_to_failure"]), _yesno(r["survived"]),
             r["failure_reason"] or "–", _num(r["mean_abs_bias"])] for _, r in base.iterrows()]
    return lines + _md_table(["name", "steps to failure", "survived", "failure reason",
                              "mean abs bias"], rows) + [""]


def _top_section(df: pd.DataFrame) -> list[str]:
    lines = [f"## The {TOP_N_TABLE} best candidates by steps to failure", ""]
    ranked = _rank_by_steps(df).head(TOP_N_TABLE)
    if ranked.empty:
        return lines + ["No candidate was coupled.", ""]
    rows = []
    for i, (_, r) in enumerate(ranked.iterrows(), start=1):
        rows.append([i, r["name"], _steps(r["steps_to_failure"]), _steps(r["steps_min"]),
                     _yesno(r["survived"]), r["failure_reason"] or "–", _num(r["val_mse"]),
                     _num(r["mean_abs_bias"]), r["optimizer"] or "–",
                     _steps(r["layers"]), _steps(r["nodes"]), _yesno(r["batch_norm"])])
    return lines + _md_table(["#", "name", "steps (median)", "steps (min)", "survived",
                              "failure reason", "val_mse", "mean abs bias", "optimizer",
                              "layers", "nodes", "batch norm"], rows) + [""]


def _excluded_section(study: Study) -> list[str]:
    """Candidates that are not in the correlations, and why, from their statuses and runs."""
    df = study.candidates
    cands = _candidates_only(df)
    used = set(usable_candidates(df)["name"])
    left = cands[~cands["name"].isin(used)]
    lines = ["## Candidates left out of the correlations", ""]
    if left.empty:
        return lines + ["None: every candidate trained and was coupled.", ""]
    run_status: dict[str, str] = {}
    if study.runs is not None:
        for name, g in study.runs.groupby("name"):
            vc = g["status"].value_counts()
            run_status[str(name)] = ", ".join(f"{v} {k}" for k, v in vc.items())
    rows = []
    for _, r in left.iterrows():
        rows.append([r["name"], r["train_status"] or "–", r["convert_status"] or "–",
                     _num(r["val_mse"]), _steps(r["n_runs"]), run_status.get(r["name"], "–"),
                     _why_excluded(r)])
    return lines + _md_table(["name", "training", "conversion", "val_mse", "runs with result",
                              "runs (runs.csv)", "why"], rows) + [""]


def _why_excluded(r: pd.Series) -> str:
    if r["train_status"] and r["train_status"] != TrainStatus.OK:
        return f"training {r['train_status']}"
    if not _finite(r["val_mse"]):
        return "no validation MSE"
    if r["convert_status"] and r["convert_status"] != ConvertStatus.OK:
        return f"conversion {r['convert_status'].replace('_', ' ')}"
    return "no coupled run produced a result"


# ------------------------------------------------------------------------- survival statistics

def survival_inputs(df: pd.DataFrame, n_steps: int | None) -> Any:
    """The usable candidates as survival data (harness.survival.SurvivalData): median steps
    to failure, censored at the budget."""
    from .survival import survival_data
    use = usable_candidates(df)
    return survival_data(use, _censored(use, n_steps), n_steps)


def _fig_survival(data: Any, path: Path) -> None:
    """Kaplan-Meier survival fraction per hyperparameter value (the paper's Fig. 4 panels as
    survival curves): one panel per hyperparameter, continuous ones split at the median."""
    from lifelines import KaplanMeierFitter
    from .survival import km_groups
    panels = [h for h in HYPERPARAMETERS if h[0] != "n_params"]
    ncols = 4
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure(4.0 * ncols, 3.2 * nrows, layout=None)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.09, top=0.9, wspace=0.3, hspace=0.45)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (col, label, _, categorical) in zip(axes, panels):
        for group, idx in km_groups(data, data.frame[col], categorical):
            if idx.size == 0:
                continue
            kmf = KaplanMeierFitter().fit(data.durations[idx], data.events[idx])
            sf = kmf.survival_function_
            ax.step(sf.index.to_numpy(), sf.iloc[:, 0].to_numpy(), where="post",
                    label=f"{group} (n={idx.size})")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("steps")
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].set_ylabel("fraction not yet failed")
    fig.suptitle("Kaplan-Meier: fraction of candidates still stable, per hyperparameter value "
                 "(censored at the budget)", fontsize=11)
    _save(fig, path)


def _best_candidates(df: pd.DataFrame, n: int = 3) -> list[str]:
    """The n candidates that ran longest, the lower offline error first among equals."""
    use = usable_candidates(df)
    if use.empty:
        return []
    order = use.assign(_s=-use["steps_to_failure"].astype(float),
                       _m=use["val_mse"].astype(float)).sort_values(["_s", "_m"])
    return list(order["name"][:n])


def _fig_climate(study: Study, path: Path) -> dict[str, Any] | None:
    """Figure 5: the distribution (density on the truth's interior bins) and the lag
    autocorrelation of the best candidates' runs, averaged over their windows and initial
    conditions, against the truth's (the calibration). None when there is nothing to draw."""
    from matplotlib.figure import Figure
    clim = (study.summary.get("calibration") or {}).get("climate") or {}
    edges = np.asarray(clim.get("pdf_edges") or [], float)
    truth_pdf = np.asarray(clim.get("clim_pdf") or [], float)
    truth_acf = np.asarray(clim.get("clim_acf") or [], float)
    best = _best_candidates(study.candidates)
    baselines = [n for n in study.candidates.loc[study.candidates["kind"] == "baseline", "name"]]
    names = best + [b for b in baselines if b.endswith("cubic")]
    data = study.climate[study.climate["name"].isin(names)]
    if data.empty or (truth_pdf.size < 3 and truth_acf.size == 0):
        return None
    mean = data.groupby(["name", "statistic", "index"])[["x", "value"]].mean().reset_index()
    fig = Figure(figsize=(10, 4), dpi=DPI)
    ax_pdf, ax_acf = fig.subplots(1, 2)
    width = np.diff(edges) if edges.size >= 2 else np.array([])
    tails: dict[str, float] = {}
    lags: np.ndarray | None = None
    if width.size and truth_pdf.size == edges.size + 1:
        ax_pdf.stairs(truth_pdf[1:-1] / width, edges, color="black", lw=2.2, label="truth")
        tails["truth"] = truth_pdf[0] + truth_pdf[-1]
    for name in names:
        m = mean[(mean["name"] == name) & (mean["statistic"] == "pdf")].sort_values("index")
        style = {"ls": "--", "color": "grey"} if name in baselines else {}
        if width.size and len(m) == edges.size + 1:
            v = m["value"].to_numpy()
            ax_pdf.stairs(v[1:-1] / width, edges, label=name, **style)
            tails[name] = v[0] + v[-1]
        a = mean[(mean["name"] == name) & (mean["statistic"] == "acf")].sort_values("index")
        if len(a):
            ax_acf.plot(a["x"], a["value"], marker="o", label=name, **style)
            lags = a["x"].to_numpy()
    if truth_acf.size and lags is not None and lags.size == truth_acf.size:
        ax_acf.plot(lags, truth_acf, marker="s", color="black", lw=2.2, label="truth")
    ax_pdf.set_xlabel("value (interior bins of the truth's equal-probability bins)")
    ax_pdf.set_ylabel("probability density")
    ax_pdf.set_title("distribution over the windows")
    ax_acf.set_xlabel("lag (model time)")
    ax_acf.set_ylabel("autocorrelation")
    ax_acf.axhline(0, color="grey", lw=0.5)
    ax_acf.set_title("lag autocorrelation over the windows")
    for ax in (ax_pdf, ax_acf):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return {"names": names, "tails": tails, "n_bins": int(truth_pdf.size)}


def _climate_section(facts: dict[str, Any] | None, fig: str | None) -> list[str]:
    if facts is None or fig is None:
        return []
    tails = ", ".join(f"{n} {_share(v)}" for n, v in facts["tails"].items())
    return ["## Climate of the best candidates (Fig. 5)", "",
            f"![climate]({fig})", "",
            f"The distribution and lag autocorrelation of X in the failure tests' windows, "
            f"averaged over every window and initial condition of {', '.join(facts['names'])} "
            "(the longest-running candidates, and the cubic baseline dashed), against the "
            "truth's from the calibration. The density is drawn on the truth's interior "
            "equal-probability bins; the two open tail bins hold "
            f"{tails or 'no data'} of the mass (truth about 2/{facts['n_bins']} of it, as each "
            "equal-probability bin).", ""]


def _replicates_section(df: pd.DataFrame, n_steps: int | None) -> list[str]:
    """Seed replicates (training.seeds > 1): the spread of steps to failure within a
    hyperparameter set against between sets, and the set-level correlation."""
    from .replicates import replicate_spread, set_level_spearman
    use = usable_candidates(df)
    if "set" not in use or use.empty or use.groupby("set").size().max() < 2:
        return []
    budget = _budget(use, n_steps)
    steps = use["steps_to_failure"].to_numpy(dtype=float)
    log_steps = np.log10(np.maximum(steps, 1.0))
    spread = replicate_spread(log_steps, use["set"].to_numpy())
    censored = float(np.mean(steps >= budget)) if budget is not None else float("nan")
    lines = ["## Seed replicates (training.seeds)", ""]
    lines.append(f"{int(use['set'].nunique())} hyperparameter sets, {len(use)} trained and "
                 f"coupled networks ({_num(len(use) / use['set'].nunique())} a set on average); "
                 f"{_share(censored)} of them censored at the budget.")
    lines.append("")
    if spread.reason:
        lines += [f"- Intraclass correlation: absent: {spread.reason}.", ""]
    else:
        lines.append(
            f"- Intraclass correlation ICC(1) of log10 steps to failure: **{spread.icc:.2f}** "
            f"(95% bootstrap CI over sets {spread.icc_low:.2f} to {spread.icc_high:.2f}; "
            f"{spread.n_sets} sets, k0 = {spread.k0:.2f}): the share of the spread that lies "
            "between hyperparameter sets; the rest is between seeds of one set. "
            f"SD within a set {spread.sd_within:.2f}, between sets {spread.sd_between:.2f} "
            "(log10 steps). Near 0: the seed decides as much as the hyperparameters, and a "
            "single training of a set says little about it. Censored networks count at the "
            "budget, which shrinks both spreads; with many censored, read it as a rough "
            "indication.")
    rho, p, n = set_level_spearman(use, "val_mse", "steps_to_failure")
    if np.isfinite(rho):
        lines.append(f"- With the set as the unit (medians over its replicates): "
                     f"Spearman(val_mse, steps_to_failure) = {rho:+.3f} ({_p_is(p)}, n = {n} "
                     "sets). Replicates of one set are not independent observations of what "
                     "its hyperparameters do, so this is the correlation to read for them.")
    else:
        lines.append(f"- Set-level Spearman(val_mse, steps_to_failure): absent ({n} sets with "
                     "values, or no variation in one of them).")
    return lines + [""]


def _survival_section(df: pd.DataFrame, n_steps: int | None, fig: str | None) -> list[str]:
    from .survival import (concordance, cox_hazard_ratios, km_groups, logrank_by_group,
                           spearman_bootstrap)
    data = survival_inputs(df, n_steps)
    lines = ["## Survival statistics (censoring-aware)", ""]
    cens = data.censored_fraction
    lines.append(f"{data.n} candidates, {data.n_events} failed within the budget, "
                 f"{data.n - data.n_events} censored ({_share(cens)}). A censored candidate "
                 "survived at least the budget; these statistics use that, where Spearman's rho "
                 "counts all of them as tied at the budget. With more than half censored, or "
                 "fewer than ~10 failures, read every number below as a rough indication.")
    lines.append("")
    c = concordance(data, -data.frame["val_mse"].to_numpy(dtype=float))
    if c["c"] is None:
        lines.append(f"- **Concordance** (Harrell's C, offline error vs steps to failure): "
                     f"{c['note']}.")
    else:
        ci = (f"95% bootstrap CI {c['low']:.2f} to {c['high']:.2f}" if c["low"] is not None
              else "no bootstrap CI (too few comparable resamples)")
        lines.append(f"- **Concordance** (Harrell's C, offline error vs steps to failure): "
                     f"**{c['c']:.3f}** ({ci}, n = {c['n']}): the probability that of two "
                     "comparable candidates the one with the lower validation MSE stays stable "
                     "longer; 0.5 means offline error says nothing about stability, 1 that it "
                     "orders them perfectly.")
    use = usable_candidates(df)
    sb = spearman_bootstrap(use["val_mse"].to_numpy(dtype=float),
                            use["steps_to_failure"].to_numpy(dtype=float))
    if sb["low"] is None:
        lines.append(f"- **Spearman's rho**, bootstrap CI: {sb['note']}.")
    else:
        lines.append(f"- **Spearman's rho** (the paper's statistic, val_mse vs steps), 95% "
                     f"bootstrap CI **{sb['low']:+.2f} to {sb['high']:+.2f}**: its ties at the "
                     "budget make it weaker the more candidates are censored.")
    lines += ["", "**Log-rank tests** (do the survival curves of a hyperparameter's values "
              "differ? continuous ones split at the median; p < 0.05: the groups fail at "
              "different rates):", ""]
    rows = []
    for col, label, _, categorical in HYPERPARAMETERS:
        if col == "n_params":
            continue
        groups = km_groups(data, data.frame[col], categorical)
        r = logrank_by_group(data, groups)
        sizes = ", ".join(f"{g}: {i.size}" for g, i in groups if i.size)
        rows.append([label, sizes or "–", _p_is(r["p"]) if r["p"] is not None else r["note"]])
    lines += _md_table(["hyperparameter", "groups (n)", "log-rank p"], rows)
    covariates = {"log10 val_mse": np.log10(data.frame["val_mse"].to_numpy(dtype=float))}
    for col, label, _, _ in HYPERPARAMETERS:
        covariates[label] = _coded(data.frame, col).to_numpy(dtype=float)
    lines += ["", "**Cox proportional hazards**, one covariate at a time, standardized "
              "(hazard ratio per standard deviation; HR > 1: candidates with a higher value "
              "fail sooner; a CI that contains 1 says the data do not decide):", ""]
    rows = []
    for r in cox_hazard_ratios(data, covariates):
        if r["hr"] is None:
            rows.append([r["covariate"], "–", "–", r["note"]])
        else:
            rows.append([r["covariate"], f"{r['hr']:.2f}", f"{r['low']:.2f} to {r['high']:.2f}",
                         _p_is(r["p"])])
    lines += _md_table(["covariate", "hazard ratio", "95% CI", "p"], rows)
    if fig:
        lines += ["", f"![Kaplan-Meier survival curves per hyperparameter]({fig})"]
    else:
        lines += ["", "No survival curves drawn: no candidate was coupled."]
    return lines + [""]


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


# ----------------------------------------------------------------------------------- entry point

def online_pairs(df: pd.DataFrame, n_steps: int | None) -> pd.DataFrame:
    """Each candidate and its online-trained twin (training.online_steps) where both have
    coupled runs: steps to failure (median over initial conditions), censoring, val_mse."""
    df = _normalize_candidates(df)
    if "online" not in set(df["kind"]):
        return pd.DataFrame()
    cand = df[(df["kind"] == "candidate") & _coupled(df)].set_index("name")
    twin = df[(df["kind"] == "online") & _coupled(df)].copy()
    twin["candidate"] = twin["name"].str.removesuffix("-online")
    twin = twin[twin["candidate"].isin(cand.index)].set_index("candidate")
    if twin.empty:
        return pd.DataFrame()
    off = cand.loc[twin.index]
    return pd.DataFrame({
        "candidate": twin.index, "optimizer": off["optimizer"].to_numpy(),
        "steps_offline": off["steps_to_failure"].to_numpy(dtype=float),
        "steps_online": twin["steps_to_failure"].to_numpy(dtype=float),
        "censored_offline": _censored(off, n_steps),
        "censored_online": _censored(twin, n_steps),
        "val_mse_offline": off["val_mse"].to_numpy(dtype=float),
        "val_mse_online": twin["val_mse"].to_numpy(dtype=float)}).reset_index(drop=True)


def _fig_online(pairs: pd.DataFrame, n_steps: int | None, path: Path) -> None:
    """Left: steps to failure of each pair (offline x, online y; censored marked). Right:
    Kaplan-Meier of the two groups."""
    from lifelines import KaplanMeierFitter
    fig = _new_figure(10.0, 4.2)
    left, right = fig.subplots(1, 2)
    x, y = pairs["steps_offline"].to_numpy(), pairs["steps_online"].to_numpy()
    both = pairs["censored_offline"].to_numpy() & pairs["censored_online"].to_numpy()
    left.scatter(x[~both], y[~both], s=22, label="pair (not both censored)")
    left.scatter(x[both], y[both], s=40, marker=CENSORED_MARKER,
                 label="both ran the whole budget")
    lo, hi = max(1.0, float(np.nanmin([x.min(), y.min()])) * 0.8), float(np.nanmax([x.max(), y.max()])) * 1.2
    left.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="equal")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("offline-trained: steps to failure")
    left.set_ylabel("online-trained twin: steps to failure")
    left.legend(fontsize=8)
    for label, steps, cens in (("offline", x, pairs["censored_offline"].to_numpy()),
                               ("online", y, pairs["censored_online"].to_numpy())):
        kmf = KaplanMeierFitter().fit(steps, ~cens)
        sf = kmf.survival_function_
        right.step(sf.index.to_numpy(), sf.iloc[:, 0].to_numpy(), where="post",
                   label=f"{label} (n={len(steps)})")
    right.set_ylim(-0.03, 1.03)
    right.set_xlabel("steps")
    right.set_ylabel("fraction not yet failed")
    right.legend(fontsize=8)
    fig.suptitle("Online-trained twins against their offline-trained candidates "
                 f"(budget{_budget_text(n_steps)})", fontsize=11)
    _save(fig, path)


def _online_section(df: pd.DataFrame, pairs: pd.DataFrame, n_steps: int | None,
                    fig: str | None) -> list[str]:
    """The paired comparison of online- and offline-trained networks of one architecture and
    initial weights (training.online_steps)."""
    if "online" not in set(_normalize_candidates(df)["kind"]):
        return []
    from scipy.stats import wilcoxon
    lines = ["## Online-trained twins (training.online_steps)", ""]
    lines.append("Each candidate's architecture and initial weights, trained only online in a "
                 "truth run by the Fortran host (one optimizer step on all columns at a time, "
                 "the candidate's optimizer and learning rate), then coupled like the "
                 "candidate: the same network family with offline and online training, pair "
                 "by pair.")
    lines.append("")
    twins = df[df["kind"] == "online"]
    if pairs.empty:
        lines += [f"No pair to compare: {len(twins)} twins, none coupled beside its "
                  "candidate (see the candidates table's train_status of the *-online rows).", ""]
        return lines
    diff = np.log10(np.maximum(pairs["steps_online"], 1)) - \
        np.log10(np.maximum(pairs["steps_offline"], 1))
    longer, shorter = int((diff > 0).sum()), int((diff < 0).sum())
    equal = int(len(pairs) - longer - shorter)
    both = int((pairs["censored_offline"] & pairs["censored_online"]).sum())
    lines.append(f"- Pairs: {len(pairs)} (of {len(twins)} twins); the online twin lasted longer "
                 f"in **{longer}**, shorter in **{shorter}**, as long in {equal} ({both} pair{'' if both == 1 else 's'} "
                 f"both ran the whole budget{_budget_text(n_steps)}).")
    if longer + shorter >= 6:
        test = wilcoxon(diff[diff != 0])
        lines.append(f"- Wilcoxon signed-rank test of log10 steps (online - offline), ties "
                     f"dropped: statistic {test.statistic:.1f}, {_p_is(test.pvalue)} "
                     f"(n = {longer + shorter}). A censored run counts at the budget, so a "
                     "difference involving one is a lower bound.")
    else:
        lines.append(f"- Wilcoxon signed-rank test: absent: {longer + shorter} pairs differ "
                     "(it needs at least 6 to say anything at the 5 % level).")
    med_off = float(np.nanmedian(pairs["val_mse_offline"]))
    med_on = float(np.nanmedian(pairs["val_mse_online"]))
    lines.append(f"- Offline validation MSE (standardized targets), median: offline-trained "
                 f"{_num(med_off)}, online-trained {_num(med_on)}.")
    rows = [[r.candidate, r.optimizer, _steps(r.steps_offline) + (" (censored)" if r.censored_offline else ""),
             _steps(r.steps_online) + (" (censored)" if r.censored_online else ""),
             _num(r.val_mse_offline), _num(r.val_mse_online)] for r in pairs.itertuples()]
    lines += [""] + _md_table(["candidate", "optimizer", "steps offline", "steps online",
                               "val_mse offline", "val_mse online"], rows)
    if fig:
        lines += ["", f"![online vs offline]({fig})"]
    return lines + [""]


def write_report(study_dir: Path | str) -> Path:
    """Write STUDY/report/report.md and its figures; returns the path of report.md.

    Figures that cannot be drawn this time (no coupled candidate, no curves.csv) are removed
    if an earlier report left them, so the directory never shows a stale figure.
    """
    study = load_study(study_dir)
    df = study.candidates
    out_dir = study.study_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    n_steps = study.n_steps
    use = usable_candidates(df)
    overall = overall_spearman(df, n_steps)
    bias = bias_spearman(df)
    table = spearman_table(df)
    opt = optimizer_summary(df)
    made: dict[str, str] = {}

    if len(use):
        _fig_mse_vs_steps(use, df[df["kind"] == "ensemble"], n_steps, overall,
                          out_dir / FIGURES["mse_vs_steps"])
        made["mse_vs_steps"] = FIGURES["mse_vs_steps"]
        _fig_by_hyperparameter(use, n_steps, out_dir / FIGURES["by_hyperparameter"])
        made["by_hyperparameter"] = FIGURES["by_hyperparameter"]
        _fig_survival(survival_inputs(df, n_steps), out_dir / FIGURES["survival"])
        made["survival"] = FIGURES["survival"]
    facts = None
    if study.curves is not None and len(study.curves):
        label = study.summary.get("bias_label") or "bias"
        finite = np.isfinite(study.curves["time"]) & np.isfinite(study.curves["bias"])
        if finite.any():
            facts = _fig_bias_curves(study.curves, df, label, out_dir / FIGURES["bias_curves"],
                                     _smoothing_time(study.summary, study.curves))
            made["bias_curves"] = FIGURES["bias_curves"]
    climate_facts = None
    if study.climate is not None and len(study.climate):
        climate_facts = _fig_climate(study, out_dir / FIGURES["climate"])
        if climate_facts is not None:
            made["climate"] = FIGURES["climate"]
    if _fig_failures(study, out_dir / FIGURES["failures"]):
        made["failures"] = FIGURES["failures"]
    pairs = online_pairs(df, n_steps)
    if len(pairs) >= 1:
        _fig_online(pairs, n_steps, out_dir / FIGURES["online"])
        made["online"] = FIGURES["online"]
    for key, name in FIGURES.items():
        if key not in made:
            (out_dir / name).unlink(missing_ok=True)

    lines = _header(study, made.get("failures"))
    lines += _overall_section(study, overall, bias, made.get("mse_vs_steps"))
    lines += _table2_section(table, made.get("by_hyperparameter"))
    lines += _survival_section(df, n_steps, made.get("survival"))
    lines += _replicates_section(df, n_steps)
    lines += _optimizer_section(opt, n_steps)
    lines += _curves_section(study, made.get("bias_curves"), facts)
    lines += _climate_section(climate_facts, made.get("climate"))
    lines += _online_section(df, pairs, n_steps, made.get("online"))
    lines += _ensemble_section(df)
    lines += _baselines_section(df)
    lines += _top_section(df)
    lines += _excluded_section(study)
    text = "\n".join(lines).rstrip() + "\n"

    path = out_dir / "report.md"
    atomic_write_text(path, text)
    return path
