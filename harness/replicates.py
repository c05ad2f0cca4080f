"""Seed replicates of hyperparameter sets (``training.seeds``): how much of the spread of steps
to failure lies between hyperparameter sets and how much between seeds of one set.

The one-way random-effects intraclass correlation ICC(1) (Shrout & Fleiss 1979; McGraw & Wong
1996) with the unbalanced-design group size k0 (some replicates may not train), and a
percentile bootstrap over sets for its confidence interval. The few lines of ANOVA are written
here rather than adding pingouin for one formula (its intraclass_corr is built for designs of
raters x targets, not groups of unequal size)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass
class ReplicateSpread:
    """What the replicates say, or why they cannot say it (``reason``; the numbers then None)."""

    n_sets: int                     # sets with at least two usable replicates
    n_networks: int
    k0: float | None = None         # the mean replicates a set (unbalanced designs: k0)
    icc: float | None = None        # between-set share of the variance of the outcome
    icc_low: float | None = None
    icc_high: float | None = None
    sd_within: float | None = None  # of the outcome, pooled over sets
    sd_between: float | None = None
    reason: str = ""


def icc_oneway(values: np.ndarray, groups: np.ndarray) -> tuple[float, float, float, float]:
    """(ICC(1), k0, pooled within-group SD, between-group SD of the group effects) from a
    one-way ANOVA; groups with one value are left out by the caller."""
    frame = pd.DataFrame({"y": values, "g": groups})
    sizes = frame.groupby("g")["y"].size().to_numpy(float)
    means = frame.groupby("g")["y"].mean()
    n, g = float(len(frame)), float(len(sizes))
    grand = frame["y"].mean()
    ss_between = float((sizes * (means.to_numpy() - grand) ** 2).sum())
    ss_within = float(((frame["y"] - frame["g"].map(means)) ** 2).sum())
    ms_between = ss_between / (g - 1)
    ms_within = ss_within / (n - g)
    k0 = (n - (sizes ** 2).sum() / n) / (g - 1)
    sigma2_between = max((ms_between - ms_within) / k0, 0.0)
    denom = ms_between + (k0 - 1) * ms_within
    icc = (ms_between - ms_within) / denom if denom > 0 else float("nan")
    return float(icc), float(k0), float(np.sqrt(ms_within)), float(np.sqrt(sigma2_between))


def replicate_spread(values: np.ndarray, groups: np.ndarray, n_boot: int = 2000,
                     seed: int = 0) -> ReplicateSpread:
    """ICC(1) of values (e.g. log10 steps to failure) over groups (hyperparameter sets)."""
    frame = pd.DataFrame({"y": np.asarray(values, float), "g": np.asarray(groups)})
    frame = frame[np.isfinite(frame["y"])]
    counts = frame.groupby("g")["y"].size()
    frame = frame[frame["g"].isin(counts[counts >= 2].index)]
    sets = frame["g"].unique()
    out = ReplicateSpread(n_sets=len(sets), n_networks=len(frame))
    if len(sets) < 3:
        out.reason = (f"{len(sets)} hyperparameter set(s) with at least two usable replicates; "
                      "the intraclass correlation needs at least 3")
        return out
    if frame["y"].nunique() < 2:
        out.reason = "every replicate has the same value (all censored at the budget?)"
        return out
    icc, k0, sd_w, sd_b = icc_oneway(frame["y"].to_numpy(), frame["g"].to_numpy())
    rng = np.random.default_rng(seed)
    by_set = {s: frame.loc[frame["g"] == s, "y"].to_numpy() for s in sets}
    boot = []
    for _ in range(n_boot):
        pick = rng.choice(len(sets), len(sets), replace=True)
        ys = np.concatenate([by_set[sets[i]] for i in pick])
        gs = np.concatenate([np.full(by_set[sets[i]].size, j) for j, i in enumerate(pick)])
        if np.unique(ys).size > 1:
            boot.append(icc_oneway(ys, gs)[0])
    low, high = (np.nanpercentile(boot, [2.5, 97.5]) if boot else (np.nan, np.nan))
    out.k0, out.icc, out.sd_within, out.sd_between = k0, icc, sd_w, sd_b
    out.icc_low, out.icc_high = float(low), float(high)
    return out


def set_level_spearman(frame: pd.DataFrame, x: str, y: str) -> tuple[float, float, int]:
    """Spearman between the sets' median x and median y (the set as the unit: replicates of
    one set are not independent observations of the hyperparameters' effect)."""
    sets = frame.groupby("set")[[x, y]].median().dropna()
    if len(sets) < 3 or sets[x].nunique() < 2 or sets[y].nunique() < 2:
        return float("nan"), float("nan"), len(sets)
    rho, p = stats.spearmanr(sets[x], sets[y])
    return float(rho), float(p), len(sets)
