"""A paired comparison of two studies that trained the same candidates two ways.

Two study directories planned from one configuration that differs in a training option (e.g.
``training.mass_constraint`` 0 and 10, the same study seed): the random search draws the same
hyperparameter sets and seeds, the truth runs are the same, so candidate cNNNN of one study and
of the other differ only in that option. This module checks that (the plans' candidate tables
must be identical; the configurations' differences are listed), then pairs them:

* per candidate: steps to failure (median over its initial conditions, as in the study's
  table; a candidate whose median is the budget is censored), the difference B - A, and which
  lasted longer. With censoring the sign of a difference is still known when one side failed;
  its size is a lower bound. Two censored runs are a tie;
* over pairs: the count of B longer / shorter / equal, a two-sided sign test over the untied
  pairs (exact binomial, valid under censoring: only signs), and the Wilcoxon signed-rank test
  of the differences (censored steps counted as the budget, so the ranks of those pairs are
  lower bounds; scipy's exact or normal approximation as it chooses);
* the same per run (candidate x initial condition);
* energy and mass from each run's diagnostics.h5, compared at the last record both runs of a
  pair reached (a run that failed early had less time to drift): the domain-mean thickness
  drift mean_h(t) - mean_h(0) (m), and the largest energy up to then over the truth maximum
  (for hosts whose diagnostics.h5 has ``energy`` and ``mean_h`` and whose calibration has
  ``truth_energy_max``: sw; otherwise that part is left out).

``harness paired A B -o DIR`` writes DIR/paired.md, paired.json, paired_candidates.csv,
paired_runs.csv and two PNGs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from scipy import stats

from .atomic import atomic_path, atomic_write_text
from .errors import HarnessError
from .study.config import host_plugin
from .study.layout import StudyDir

__all__ = ["PairedError", "PairTest", "PairedComparison", "compare_paired", "write_paired",
           "config_differences", "pair_test"]

#: the candidate fields of plan.json that must agree (the random search's draw and the seeds)
PLAN_FIELDS = ("name", "index", "seed", "set", "replicate", "batch_norm", "dropout",
               "leaky_relu", "learning_rate", "nodes", "layers", "optimizer")
DPI = 100


class PairedError(HarnessError):
    """The two studies cannot be paired."""


@dataclass
class PairTest:
    """Paired outcomes of B against A over n pairs and the tests where they are defined."""
    n: int
    longer: int
    shorter: int
    equal: int
    #: pairs where at least one side is censored (the difference is a bound)
    censored_pairs: int
    median_difference: float
    sign_p: float | None
    wilcoxon_statistic: float | None
    wilcoxon_p: float | None
    note: str = ""


def pair_test(a: np.ndarray, b: np.ndarray, censored_a: np.ndarray, censored_b: np.ndarray
              ) -> PairTest:
    """Sign test and Wilcoxon signed-rank test of b - a (censored values at the budget)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ca, cb = np.asarray(censored_a, bool), np.asarray(censored_b, bool)
    d = b - a
    both = ca & cb
    longer = int(np.sum((d > 0) & ~both))
    shorter = int(np.sum((d < 0) & ~both))
    equal = int(d.size - longer - shorter)
    untied = longer + shorter
    notes = []
    sign_p = float(stats.binomtest(longer, untied, 0.5).pvalue) if untied else None
    if not untied:
        notes.append("every pair tied: no test")
    w_stat = w_p = None
    if untied:
        nonzero = d[(d != 0) & ~both]
        res = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
        w_stat, w_p = float(res.statistic), float(res.pvalue)
        if untied < 6:
            notes.append(f"only {untied} untied pairs: the Wilcoxon test cannot reach p < 0.05")
    return PairTest(n=int(d.size), longer=longer, shorter=shorter, equal=equal,
                    censored_pairs=int(np.sum(ca | cb)),
                    median_difference=float(np.median(d)) if d.size else math.nan,
                    sign_p=sign_p, wilcoxon_statistic=w_stat, wilcoxon_p=w_p,
                    note="; ".join(notes))


def config_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two study.json dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            path = f"{prefix}.{key}" if prefix else key
            if key not in a or key not in b:
                out.append(path)
            else:
                out += config_differences(a[key], b[key], path)
        return out
    return [] if a == b else [prefix]


@dataclass
class PairedComparison:
    a: Path
    b: Path
    label_a: str
    label_b: str
    budget: int
    differences: dict[str, tuple[Any, Any]]
    candidates: pd.DataFrame
    runs: pd.DataFrame
    by_candidate: PairTest
    by_run: PairTest
    #: B - A over the runs' pairs: |mean-h drift| and max energy / truth max at the common step
    drift: dict[str, Any] = field(default_factory=dict)
    #: the host's mass output (its plugin's mass_output_name), for the report
    mass_output: str = ""


def _dotted(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _run_diagnostics(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "diagnostics.h5"
    try:
        with h5py.File(path, "r") as f:
            return pd.DataFrame({k: np.asarray(f[k][...], dtype=float)
                                 for k in ("step", "energy", "mean_h")})
    except (OSError, KeyError):
        return None


def _at_common_step(da: pd.DataFrame, db: pd.DataFrame, e_truth: float
                    ) -> dict[str, float]:
    """Mass drift and energy growth of two runs at the last step both recorded."""
    common = np.intersect1d(da["step"].to_numpy(), db["step"].to_numpy())
    if common.size == 0:
        return {}
    s = float(common.max())
    out: dict[str, float] = {"common_step": s}
    for tag, d in (("a", da), ("b", db)):
        upto = d[d["step"] <= s]
        out[f"h_drift_{tag}"] = float(upto["mean_h"].iloc[-1] - upto["mean_h"].iloc[0])
        out[f"energy_ratio_{tag}"] = float(upto["energy"].max() / e_truth)
    return out


def compare_paired(a: Path | str, b: Path | str, label_a: str = "", label_b: str = ""
                   ) -> PairedComparison:
    sa, sb = StudyDir.open(a), StudyDir.open(b)
    ca, cb = sa.plan["candidates"], sb.plan["candidates"]
    rows_a = [{k: c.get(k) for k in PLAN_FIELDS} for c in ca]
    rows_b = [{k: c.get(k) for k in PLAN_FIELDS} for c in cb]
    if rows_a != rows_b:
        bad = next((i for i, (x, y) in enumerate(zip(rows_a, rows_b)) if x != y),
                   min(len(rows_a), len(rows_b)))
        raise PairedError(f"{sa.root} and {sb.root} planned different candidates (first "
                          f"difference at candidate {bad}; {len(rows_a)} vs {len(rows_b)}): "
                          f"the same study seed and [space]/[training] counts draw the same")
    ja = json.loads((sa.root / "study.json").read_text())
    jb = json.loads((sb.root / "study.json").read_text())
    diffs = {k: (_dotted(ja, k), _dotted(jb, k)) for k in config_differences(ja, jb)
             if k != "name"}
    budget = int(sa.config.couple.steps)
    if int(sb.config.couple.steps) != budget or \
            sa.config.couple.initial_conditions != sb.config.couple.initial_conditions:
        raise PairedError("the studies' couple.steps or couple.initial_conditions differ: "
                          "their runs cannot be paired")
    ta = _table(sa)
    tb = _table(sb)
    names = [c["name"] for c in ca]
    cand = pd.DataFrame({"name": names}).merge(ta, on="name", how="left") \
        .merge(tb, on="name", how="left", suffixes=("_a", "_b"))
    for k in ("batch_norm", "dropout", "leaky_relu", "learning_rate", "nodes", "layers",
              "optimizer"):
        cand[k] = [c[k] for c in ca]
    cand = cand[[c for c in ["name", "nodes", "layers", "optimizer", "learning_rate",
                             "batch_norm", "dropout", "leaky_relu"] if c in cand]
                + [c for c in cand if c.endswith(("_a", "_b"))]]
    cand["censored_a"] = cand["steps_a"] >= budget
    cand["censored_b"] = cand["steps_b"] >= budget
    cand["difference"] = cand["steps_b"] - cand["steps_a"]
    cand["outcome"] = _outcome(cand)
    ok = cand["steps_a"].notna() & cand["steps_b"].notna()
    by_cand = pair_test(cand.loc[ok, "steps_a"], cand.loc[ok, "steps_b"],
                        cand.loc[ok, "censored_a"], cand.loc[ok, "censored_b"])
    cal = _read(sa.root / "data" / "calibration.json") or {}
    e_truth = float(cal.get("truth_energy_max", math.nan))
    runs = []
    for name in names:
        for ic in range(sa.config.couple.initial_conditions):
            ra = _result(sa.run_dir(name, ic))
            rb = _result(sb.run_dir(name, ic))
            if ra is None or rb is None:
                continue
            row = {"name": name, "ic": ic, "steps_a": ra["steps"], "steps_b": rb["steps"],
                   "reason_a": ra.get("reason") or "", "reason_b": rb.get("reason") or "",
                   "censored_a": ra.get("status") == "completed",
                   "censored_b": rb.get("status") == "completed"}
            da, db = _run_diagnostics(sa.run_dir(name, ic)), _run_diagnostics(sb.run_dir(name, ic))
            if da is not None and db is not None and math.isfinite(e_truth):
                row.update(_at_common_step(da, db, e_truth))
            runs.append(row)
    rt = pd.DataFrame(runs)
    if rt.empty:
        raise PairedError(f"no pair of coupled runs with result.json in {sa.root}/runs and "
                          f"{sb.root}/runs: run the couple stage of both")
    rt["difference"] = rt["steps_b"] - rt["steps_a"]
    rt["outcome"] = _outcome(rt)
    by_run = pair_test(rt["steps_a"], rt["steps_b"], rt["censored_a"], rt["censored_b"])
    drift: dict[str, Any] = {}
    if "h_drift_a" in rt:
        abs_a, abs_b = rt["h_drift_a"].abs(), rt["h_drift_b"].abs()
        ea, eb = rt["energy_ratio_a"], rt["energy_ratio_b"]
        drift = {"median_abs_h_drift_a": float(abs_a.median()),
                 "median_abs_h_drift_b": float(abs_b.median()),
                 "abs_h_drift_b_smaller": int((abs_b < abs_a).sum()),
                 "abs_h_drift_b_larger": int((abs_b > abs_a).sum()),
                 "abs_h_drift_wilcoxon_p": _wilcoxon_p(abs_b - abs_a),
                 "median_energy_ratio_a": float(ea.median()),
                 "median_energy_ratio_b": float(eb.median()),
                 "energy_b_lower": int((eb < ea).sum()), "energy_b_higher": int((eb > ea).sum()),
                 "energy_wilcoxon_p": _wilcoxon_p(eb - ea)}
    # the paths as given (a report written for a repository names no machine's absolute path)
    return PairedComparison(Path(a), Path(b), label_a or sa.config.name,
                            label_b or sb.config.name, budget, diffs, cand, rt, by_cand, by_run,
                            drift, _mass_output(sa))


def _mass_output(sd: StudyDir) -> str:
    """The name of the host's mass output (its plugin's mass_output_name), or ''."""
    try:
        return str(getattr(host_plugin(sd.config), "mass_output_name", "") or "")
    except HarnessError:
        return ""


def _wilcoxon_p(d: pd.Series) -> float | None:
    d = d[np.isfinite(d) & (d != 0)]
    return float(stats.wilcoxon(d).pvalue) if len(d) else None


def _outcome(t: pd.DataFrame) -> list[str]:
    out = []
    for r in t.itertuples():
        if r.censored_a and r.censored_b:
            out.append("equal (both censored)")
        elif r.difference > 0:
            out.append("B longer" + (" (B censored: at least)" if r.censored_b else ""))
        elif r.difference < 0:
            out.append("B shorter" + (" (A censored: at least)" if r.censored_a else ""))
        elif np.isfinite(r.difference):
            out.append("equal")
        else:
            out.append("missing")
    return out


def _result(run_dir: Path) -> dict[str, Any] | None:
    return _read(run_dir / "result.json")


def _table(sd: StudyDir) -> pd.DataFrame:
    path = sd.results_dir / "candidates.csv"
    if not path.is_file():
        raise PairedError(f"{path}: missing (run `harness collect {sd.root}`)")
    t = pd.read_csv(path)
    t = t[t["name"].str.match(r"^c\d+$")]
    keep = {"name": "name", "steps_to_failure": "steps", "val_mse": "val_mse",
            "failure_reason": "reason"}
    out = t[[c for c in keep if c in t]].rename(columns=keep)
    mass = []
    for name in out["name"]:
        train = _read(sd.candidate_dir(name) / "train.json")
        mass.append(train.get("val_mass_rms_error", np.nan) if train else np.nan)
    out["val_mass_rms"] = mass
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------------- output
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _test_line(label: str, t: PairTest, what: str) -> str:
    return (f"| {label} | {t.n} | {t.longer} | {t.shorter} | {t.equal} | {t.censored_pairs} | "
            f"{_fmt(t.median_difference)} | {_fmt(t.sign_p)} | {_fmt(t.wilcoxon_statistic)} | "
            f"{_fmt(t.wilcoxon_p)} | {t.note or what} |")


def _markdown(pc: PairedComparison) -> str:
    a, b = pc.label_a, pc.label_b
    lines = [f"# Paired comparison: {b} (B) against {a} (A)", "",
             f"- A: `{pc.a}`", f"- B: `{pc.b}`",
             f"- budget: {pc.budget} steps; a run that reaches it is censored",
             "- configurations differ in: " + (", ".join(
                 f"`{k}` ({_fmt(v[0])} vs {_fmt(v[1])})" for k, v in pc.differences.items())
                 or "nothing (apart from the name)"),
             "- the candidates (hyperparameter sets and seeds) of both plans are identical", "",
             "## Steps to failure, B against A", "",
             "| pairs of | n | B longer | B shorter | equal | with censoring | median B - A | "
             "sign test p | Wilcoxon W | Wilcoxon p | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             _test_line("candidates (median over ICs)", pc.by_candidate, ""),
             _test_line("runs (candidate x IC)", pc.by_run, ""), "",
             "Sign test: exact binomial over the untied pairs (only signs, valid with "
             "censoring). Wilcoxon signed-rank: censored steps counted as the budget (a pair "
             "with one censored side has a difference that is a lower bound). Both censored: "
             "a tie.", ""]
    if pc.drift:
        d = pc.drift
        lines += ["## Mass and energy at the last step both runs of a pair reached", "",
                  "| | A | B | B smaller | B larger | Wilcoxon p (B - A) |", "|---|---|---|---|---|---|",
                  f"| median \\|mean-h drift\\| (m) | {_fmt(d['median_abs_h_drift_a'])} | "
                  f"{_fmt(d['median_abs_h_drift_b'])} | {d['abs_h_drift_b_smaller']} | "
                  f"{d['abs_h_drift_b_larger']} | {_fmt(d['abs_h_drift_wilcoxon_p'])} |",
                  f"| median max energy / truth max | {_fmt(d['median_energy_ratio_a'])} | "
                  f"{_fmt(d['median_energy_ratio_b'])} | {d['energy_b_lower']} | "
                  f"{d['energy_b_higher']} | {_fmt(d['energy_wilcoxon_p'])} |", ""]
    lines += ["## Per candidate", "",
              "| name | nodes x layers | optimizer | lr | val MSE A | val MSE B | "
              "val mass rms A | val mass rms B | steps A | steps B | B - A | outcome |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in pc.candidates.itertuples():
        lines.append(f"| {r.name} | {r.nodes} x {r.layers} | {r.optimizer} | "
                     f"{r.learning_rate:.2g} | {_fmt(r.val_mse_a)} | {_fmt(r.val_mse_b)} | "
                     f"{_fmt(r.val_mass_rms_a)} | {_fmt(r.val_mass_rms_b)} | "
                     f"{_fmt(r.steps_a, 6)}{'+' if r.censored_a else ''} | "
                     f"{_fmt(r.steps_b, 6)}{'+' if r.censored_b else ''} | "
                     f"{_fmt(r.difference, 6)} | {r.outcome} |")
    mass = f" ({pc.mass_output}, physical units)" if pc.mass_output else ""
    lines += ["", "`+`: censored (reached the budget). val mass rms: the rms over validation "
              f"snapshots of the domain-mean error of the host's mass output{mass}, "
              "recorded with training.snapshot_batches.", "",
              "## Per run", "",
              "| name | IC | steps A | reason A | steps B | reason B | common step | "
              "mean-h drift A (m) | B (m) | max E / truth A | B |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in pc.runs.itertuples():
        g = r._asdict()
        lines.append(f"| {r.name} | {r.ic} | {r.steps_a} | {r.reason_a or '-'} | {r.steps_b} | "
                     f"{r.reason_b or '-'} | {_fmt(g.get('common_step'), 6)} | "
                     f"{_fmt(g.get('h_drift_a'))} | {_fmt(g.get('h_drift_b'))} | "
                     f"{_fmt(g.get('energy_ratio_a'))} | {_fmt(g.get('energy_ratio_b'))} |")
    lines += ["", "Figures: [steps](paired_steps.png), [mass and energy](paired_drift.png).", ""]
    return "\n".join(lines)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _fig_steps(pc: PairedComparison, path: Path) -> None:
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot()
    r = pc.runs
    cens = r["censored_a"] | r["censored_b"]
    ax.scatter(r.loc[~cens, "steps_a"], r.loc[~cens, "steps_b"], s=30, label="both failed")
    ax.scatter(r.loc[cens, "steps_a"], r.loc[cens, "steps_b"], s=30, marker="^",
               label="at least one censored")
    ax.plot([0, pc.budget], [0, pc.budget], color="0.5", lw=1, ls="--")
    ax.set_xlim(0, pc.budget * 1.04)
    ax.set_ylim(0, pc.budget * 1.04)
    ax.set_xlabel(f"steps to failure, A: {pc.label_a}")
    ax.set_ylabel(f"steps to failure, B: {pc.label_b}")
    ax.set_title("each run (candidate x IC): above the line B lasted longer", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def _fig_drift(pc: PairedComparison, path: Path) -> bool:
    r = pc.runs
    if "h_drift_a" not in r:
        return False
    fig = _figure(9.0, 4.2)
    for ax, (col, label, log) in zip(fig.subplots(1, 2), (
            ("h_drift", "|mean-h drift| (m) at the common step", True),
            ("energy_ratio", "max energy / truth max up to the common step", True))):
        xa, xb = r[f"{col}_a"].abs(), r[f"{col}_b"].abs()
        ax.scatter(xa, xb, s=30)
        vals = np.concatenate([xa[xa > 0], xb[xb > 0]])
        if log and vals.size:
            lo, hi = vals.min() / 2, vals.max() * 2
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--")
        ax.set_xlabel(f"A: {pc.label_a}")
        ax.set_ylabel(f"B: {pc.label_b}")
        ax.set_title(label, fontsize=9)
    _save(fig, path)
    return True


def write_paired(pc: PairedComparison, out: Path | str) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pc.candidates.to_csv(out / "paired_candidates.csv", index=False)
    pc.runs.to_csv(out / "paired_runs.csv", index=False)
    summary = {"a": str(pc.a), "b": str(pc.b), "label_a": pc.label_a, "label_b": pc.label_b,
               "budget": pc.budget,
               "differences": {k: list(v) for k, v in pc.differences.items()},
               "by_candidate": asdict(pc.by_candidate), "by_run": asdict(pc.by_run),
               "drift": pc.drift}
    atomic_write_text(out / "paired.json", json.dumps(summary, indent=2) + "\n")
    _fig_steps(pc, out / "paired_steps.png")
    _fig_drift(pc, out / "paired_drift.png")
    report = out / "paired.md"
    atomic_write_text(report, _markdown(pc))
    return report
