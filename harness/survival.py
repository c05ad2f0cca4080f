"""Censoring-aware statistics of steps to failure, with lifelines.

A candidate whose median run reached the budget is right-censored: it survived at least that
long, not exactly that long. Rank correlations treat all such candidates as tied at the budget;
the statistics here use the censoring instead:

- Kaplan-Meier curves of the survival fraction per hyperparameter value (the paper's Fig. 4
  panels, as survival curves);
- a log-rank test per hyperparameter: do the groups' survival curves differ?
- Harrell's concordance index between offline error and steps to failure, with a bootstrap
  confidence interval: the probability that of two comparable candidates the one with the
  lower validation MSE survives longer (0.5: offline error says nothing);
- univariate Cox models with hazard ratios and 95% confidence intervals;
- a bootstrap confidence interval for the paper's Spearman rho.

Every statistic that cannot be computed (too few candidates, no failure, one group) comes with
the reason instead of a number, never NaN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["SurvivalData", "survival_data", "concordance", "logrank_by_group",
           "cox_hazard_ratios", "spearman_bootstrap", "km_groups", "MIN_N", "BOOTSTRAP"]

MIN_N = 3            # below this no statistic says anything
BOOTSTRAP = 1000     # resamples for the confidence intervals
CONFIDENCE = 0.95


@dataclass
class SurvivalData:
    """Per candidate: its median steps to failure, whether that is censored, and covariates."""

    durations: np.ndarray
    events: np.ndarray           # True: failed within the budget; False: censored
    frame: pd.DataFrame          # the candidates (same order)
    n_steps: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.durations.size)

    @property
    def n_events(self) -> int:
        return int(self.events.sum())

    @property
    def censored_fraction(self) -> float | None:
        return None if self.n == 0 else 1.0 - self.n_events / self.n


def survival_data(use: pd.DataFrame, censored: np.ndarray, n_steps: int | None) -> SurvivalData:
    durations = use["steps_to_failure"].to_numpy(dtype=float)
    keep = np.isfinite(durations)
    return SurvivalData(durations=durations[keep], events=~np.asarray(censored, bool)[keep],
                        frame=use[keep].reset_index(drop=True), n_steps=n_steps)


def _why_not(data: SurvivalData, need_censoring_mix: bool = False) -> str | None:
    if data.n < MIN_N:
        return f"absent: {data.n} candidates, at least {MIN_N} needed"
    if data.n_events == 0:
        return ("absent: no candidate failed within the budget (all censored): nothing "
                "distinguishes them; a longer budget or stricter criteria are needed")
    return None


def concordance(data: SurvivalData, score: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Harrell's C of `score` (higher: expected to survive longer) with a bootstrap CI."""
    from lifelines.utils import concordance_index
    why = _why_not(data)
    score = np.asarray(score, dtype=float)
    ok = np.isfinite(score)
    if why is None and ok.sum() < MIN_N:
        why = f"absent: {int(ok.sum())} candidates with a finite score, at least {MIN_N} needed"
    if why is not None:
        return {"c": None, "low": None, "high": None, "n": int(ok.sum()), "note": why}
    d, e, s = data.durations[ok], data.events[ok], score[ok]
    try:
        c = float(concordance_index(d, s, e))
    except ZeroDivisionError:
        return {"c": None, "low": None, "high": None, "n": int(ok.sum()),
                "note": "absent: no two candidates are comparable (censoring hides every order)"}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, d.size, d.size)
        try:
            boot.append(concordance_index(d[i], s[i], e[i]))
        except ZeroDivisionError:
            continue
    low, high = _interval(boot)
    return {"c": c, "low": low, "high": high, "n": int(d.size), "note": ""}


def _interval(values: list[float]) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size < BOOTSTRAP // 2:
        return None, None
    a = (1 - CONFIDENCE) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))


def km_groups(data: SurvivalData, values: pd.Series, categorical: bool
              ) -> list[tuple[str, np.ndarray]]:
    """Candidate groups for one hyperparameter: its values, or (continuous ones) halves at the
    median; each as (label, index array)."""
    v = values.reset_index(drop=True)
    ok = v.notna().to_numpy()
    if categorical or v[ok].nunique() <= 3:
        return [(_label(g), np.flatnonzero(ok & (v == g).to_numpy()))
                for g in sorted(v[ok].unique(), key=lambda x: (str(type(x)), x))]
    x = v.astype(float).to_numpy()
    med = float(np.nanmedian(x))
    return [(f"<= {med:.3g}", np.flatnonzero(ok & (x <= med))),
            (f"> {med:.3g}", np.flatnonzero(ok & (x > med)))]


def _label(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def logrank_by_group(data: SurvivalData, groups: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """Multivariate log-rank test over the groups (p, test statistic) or why not."""
    from lifelines.statistics import multivariate_logrank_test
    why = _why_not(data)
    groups = [(label, idx) for label, idx in groups if idx.size > 0]
    if why is None and len(groups) < 2:
        why = "absent: a single value of this hyperparameter among the candidates"
    if why is not None:
        return {"p": None, "statistic": None, "note": why}
    idx = np.concatenate([i for _, i in groups])
    labels = np.concatenate([[label] * i.size for label, i in groups])
    res = multivariate_logrank_test(data.durations[idx], labels, data.events[idx])
    return {"p": float(res.p_value), "statistic": float(res.test_statistic), "note": ""}


def cox_hazard_ratios(data: SurvivalData, covariates: dict[str, np.ndarray]
                      ) -> list[dict[str, Any]]:
    """One univariate Cox model per covariate (standardized): the hazard ratio per standard
    deviation with its 95% CI and p, or why it is absent. HR > 1: failing sooner."""
    from lifelines import CoxPHFitter
    out = []
    why_all = _why_not(data)
    for name, x in covariates.items():
        x = np.asarray(x, dtype=float)
        ok = np.isfinite(x)
        row: dict[str, Any] = {"covariate": name, "hr": None, "low": None, "high": None,
                               "p": None, "n": int(ok.sum()), "note": ""}
        if why_all is not None:
            row["note"] = why_all
        elif ok.sum() < MIN_N:
            row["note"] = f"absent: {int(ok.sum())} candidates with a value"
        elif np.unique(x[ok]).size < 2:
            row["note"] = "absent: a single value among the candidates"
        else:
            z = (x[ok] - x[ok].mean()) / x[ok].std()
            df = pd.DataFrame({"z": z, "T": data.durations[ok], "E": data.events[ok]})
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cph = CoxPHFitter(penalizer=0.0).fit(df, "T", "E")
                s = cph.summary.loc["z"]
                row.update(hr=float(s["exp(coef)"]), low=float(s["exp(coef) lower 95%"]),
                           high=float(s["exp(coef) upper 95%"]), p=float(s["p"]))
                if not all(np.isfinite([row["hr"], row["low"], row["high"]])):
                    raise ValueError("non-finite estimate")
                if row["high"] / max(row["low"], 1e-300) > 1e3:
                    row.update(hr=None, low=None, high=None, p=None,
                               note="absent: no bounded estimate (the covariate nearly "
                                    "separates failed from censored candidates; too few "
                                    "failures to say how much it matters)")
            except Exception as exc:  # noqa: BLE001 - lifelines raises several kinds
                row.update(hr=None, low=None, high=None, p=None,
                           note=f"absent: the Cox model does not converge ({type(exc).__name__}"
                                "; e.g. the covariate separates failed from censored)")
        out.append(row)
    return out


def spearman_bootstrap(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """A percentile bootstrap 95% CI of Spearman's rho (resampling candidates)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < MIN_N or np.unique(x).size < 2 or np.unique(y).size < 2:
        return {"low": None, "high": None,
                "note": "absent: too few candidates or no variation to resample"}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, x.size, x.size)
        if np.unique(x[i]).size < 2 or np.unique(y[i]).size < 2:
            continue
        boot.append(stats.spearmanr(x[i], y[i]).statistic)
    low, high = _interval(boot)
    if low is None:
        return {"low": None, "high": None,
                "note": "absent: most resamples have no variation (ties at the budget)"}
    return {"low": low, "high": high, "note": ""}
