"""Censoring-aware statistics (harness/survival.py, lifelines): they find a planted relation,
and with too little data they say why they are absent instead of giving a number."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.survival import (concordance, cox_hazard_ratios, km_groups, logrank_by_group,
                              spearman_bootstrap, survival_data)

BUDGET = 10_000


def _study(n: int, seed: int = 0, censor_all: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """Candidates whose steps to failure shrink with validation MSE (plus noise); those that
    reach the budget are censored."""
    rng = np.random.default_rng(seed)
    mse = 10 ** rng.uniform(-3, -1, n)
    steps = np.minimum(BUDGET, 2e4 * np.exp(-30 * mse) * rng.lognormal(0, 0.3, n))
    if censor_all:
        steps[:] = BUDGET
    df = pd.DataFrame({"name": [f"c{i}" for i in range(n)], "val_mse": mse,
                       "steps_to_failure": steps, "optimizer": rng.choice(["adam", "sgd"], n),
                       "dropout": np.full(n, 0.1)})
    return df, steps >= BUDGET


def test_a_planted_relation_is_found() -> None:
    df, censored = _study(40)
    data = survival_data(df, censored, BUDGET)
    assert 0 < data.n_events < data.n
    c = concordance(data, -df["val_mse"].to_numpy())
    assert c["c"] > 0.8 and c["low"] <= c["c"] <= c["high"], c
    cox = cox_hazard_ratios(data, {"log10 val_mse": np.log10(df["val_mse"].to_numpy())})[0]
    assert cox["hr"] > 1 and cox["low"] > 1, cox   # higher error: failing sooner
    halves = km_groups(data, df["val_mse"], categorical=False)
    assert logrank_by_group(data, halves)["p"] < 0.05
    sb = spearman_bootstrap(df["val_mse"].to_numpy(), df["steps_to_failure"].to_numpy())
    assert sb["high"] < 0


def test_too_little_data_is_named_not_a_number() -> None:
    df, censored = _study(2)
    data = survival_data(df, censored, BUDGET)
    assert "at least 3" in concordance(data, -df["val_mse"].to_numpy())["note"]
    df, censored = _study(12, censor_all=True)
    data = survival_data(df, censored, BUDGET)
    c = concordance(data, -df["val_mse"].to_numpy())
    assert c["c"] is None and "all censored" in c["note"]
    assert "all censored" in logrank_by_group(data, km_groups(data, df["optimizer"], True))["note"]
    df, censored = _study(20)
    data = survival_data(df, censored, BUDGET)
    single = logrank_by_group(data, km_groups(data, df["dropout"], False))
    assert single["p"] is None and "single value" in single["note"]
    cox = cox_hazard_ratios(data, {"Dropout": df["dropout"].to_numpy()})[0]
    assert cox["hr"] is None and "single value" in cox["note"]
    assert spearman_bootstrap(np.ones(5), np.arange(5.0))["low"] is None
