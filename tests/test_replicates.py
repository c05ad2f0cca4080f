"""Seed replicates: the plan (training.seeds), the intraclass correlation and its bad input."""

from __future__ import annotations

import numpy as np
import pytest

from harness.replicates import icc_oneway, replicate_spread
from harness.study.config import StudyError, config_from_dict
from harness.study.layout import couple_tasks, sample_candidates

BASE = {"host": {"name": "l96"}, "space": {"nodes": [8, 16], "layers": [1, 2]},
        "training": {"candidates": 3}, "couple": {"ensemble_top_k": 0}}


def test_shrout_and_fleiss_example() -> None:
    """Shrout & Fleiss (1979), Table 2: six targets rated by four judges; ICC(1,1) = 0.17."""
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9],
                        [6, 2, 4, 7]], float)
    icc, k0, _, _ = icc_oneway(ratings.ravel(), np.repeat(np.arange(6), 4))
    assert icc == pytest.approx(0.17, abs=0.005) and k0 == pytest.approx(4.0)


def test_icc_is_one_when_seeds_agree_and_near_zero_when_sets_do() -> None:
    rng = np.random.default_rng(1)
    sets = np.repeat(np.arange(20), 3)
    same = np.repeat(rng.normal(size=20), 3) + 1e-9 * rng.normal(size=60)
    assert replicate_spread(same, sets).icc == pytest.approx(1.0, abs=1e-6)
    noise = replicate_spread(rng.normal(size=60), sets)
    assert abs(noise.icc) < 0.3 and noise.icc_low <= noise.icc <= noise.icc_high


def test_unbalanced_sets_use_k0() -> None:
    values = np.array([1.0, 1.1, 2.0, 2.2, 2.1, 3.0, 3.1, 3.05, 2.95])
    groups = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    icc, k0, _, _ = icc_oneway(values, groups)
    assert k0 == pytest.approx((9 - (4 + 9 + 16) / 9) / 2) and icc > 0.9


@pytest.mark.parametrize("values, groups, why", [
    ([1.0, 2.0, 3.0], [0, 1, 2], "0 hyperparameter set(s)"),
    ([1.0, 1.5, 2.0, 2.5], [0, 0, 1, 1], "2 hyperparameter set(s)"),
    ([4.3] * 6, [0, 0, 1, 1, 2, 2], "same value"),
])
def test_too_little_to_say_gives_the_reason(values: list, groups: list, why: str) -> None:
    out = replicate_spread(np.array(values), np.array(groups))
    assert out.icc is None and why in out.reason


def test_seeds_train_each_set_several_times() -> None:
    one = sample_candidates(config_from_dict(BASE))
    cfg = config_from_dict({**BASE, "training": {"candidates": 3, "seeds": 2}})
    two = sample_candidates(cfg)
    assert len(two) == 6 and [c["set"] for c in two] == [0, 0, 1, 1, 2, 2]
    hyper = ("nodes", "layers", "optimizer", "learning_rate", "dropout")
    for a, b in zip(two[0::2], two[1::2]):
        assert all(a[h] == b[h] for h in hyper) and a["seed"] != b["seed"]
    # the sets are the one-seed study's candidates, drawn in the same order
    assert [[c[h] for h in hyper] for c in two[0::2]] == [[c[h] for h in hyper] for c in one]
    assert one[0]["seed"] == two[0]["seed"]
    assert sum(t["kind"] == "candidate" for t in couple_tasks(cfg)) == 6


@pytest.mark.parametrize("seeds", [0, -1])
def test_seeds_below_one_name_the_key(seeds: int) -> None:
    with pytest.raises(StudyError, match="training.seeds"):
        config_from_dict({**BASE, "training": {"candidates": 3, "seeds": seeds}})
