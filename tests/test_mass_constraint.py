"""Brajard et al. (2018)'s mass constraint on the shallow-water host and the paired comparison
of two studies: the penalty's formula (numpy and the Keras loss), whole-snapshot sampling, the
configuration's checks (host-aware, bad values name the key), training with the constraint
(a smaller snapshot-mean theta_h error than without), and `harness paired` on two tiny sw
studies that differ only in training.mass_constraint."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.cli import main as harness_main
from harness.paired import PairedError, compare_paired, pair_test, write_paired
from harness.study.config import STAGES, StudyError, config_from_dict
from harness.study.constraint import (mass_constrained_loss, mass_penalty, pick_snapshots,
                                      snapshot_batching)
from harness.study.layout import StudyDir
from harness.study.runner import run_stages
from test_study import TINY, make_study, merged

WEIGHT = 100.0
#: tests/test_study.py's tiny sw study, whole-snapshot batches (16 x 16 = 256 columns a batch)
SW_TINY: dict[str, Any] = {
    "name": "sw-tiny", "seed": 2,
    "host": {"name": "sw", "model": {"nx": 16, "ny": 16}, "run": {"wind_scale": 2.0}},
    "data": {"steps": 1920, "spinup_steps": 480, "sample_interval": 24},
    "space": {"nodes": [8], "layers": [1, 1]},
    "training": {"candidates": 2, "epochs": 2, "batch_size": 256, "snapshot_batches": True},
    "couple": {"steps": 96, "initial_conditions": 2, "ensemble_top_k": 0},
    "executor": {"workers": 2}}


# ---------------------------------------------------------------------------------------------
def test_penalty_is_the_squared_snapshot_mean_error() -> None:
    y_true = np.zeros((8, 3))
    y_pred = np.zeros((8, 3))
    y_pred[:, 2] = [1, 1, 3, 3, 0, 0, 0, 2]         # snapshot means 2 and 0.5
    y_pred[:, 0] = 100.0                             # other outputs do not enter
    assert mass_penalty(y_true, y_pred, 2, 4) == pytest.approx((2 ** 2 + 0.5 ** 2) / 2)
    # one snapshot of 8 columns: the mean over all of them
    assert mass_penalty(y_true, y_pred, 2, 8) == pytest.approx(1.25 ** 2)


def test_keras_loss_is_mse_plus_weight_times_penalty() -> None:
    from harness.study.tasks import _keras
    keras = _keras(1)
    rng = np.random.default_rng(5)
    y_true = rng.normal(size=(12, 3)).astype(np.float32)
    y_pred = rng.normal(size=(12, 3)).astype(np.float32)
    loss = mass_constrained_loss(keras, 7.5, 2, 4)
    got = float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))
    mse = float(np.mean((y_pred.astype(float) - y_true) ** 2))
    want = mse + 7.5 * mass_penalty(y_true, y_pred, 2, 4)
    assert got == pytest.approx(want, rel=1e-5)
    assert 7.5 * mass_penalty(y_true, y_pred, 2, 4) > 1e-3 * want   # the term is not negligible
    assert float(keras.ops.convert_to_numpy(
        mass_constrained_loss(keras, 0.0, 2, 4)(y_true, y_pred))) == pytest.approx(mse, rel=1e-5)


def test_snapshot_sampling_keeps_whole_snapshots() -> None:
    rng = np.random.default_rng(0)
    rows = pick_snapshots(10 * 4, 4, 9, rng)            # 9 samples -> 2 whole snapshots
    assert rows.size == 8 and np.all(rows.reshape(-1, 4) % 4 == np.arange(4))
    assert np.all(np.diff(rows.reshape(-1, 4)[:, 0]) > 0)       # in time order
    assert np.array_equal(pick_snapshots(40, 4, 0, rng), np.arange(40))
    assert pick_snapshots(40, 4, 2, rng).size == 4       # at least one snapshot
    with pytest.raises(ValueError, match="whole snapshots"):
        pick_snapshots(41, 4, 8, rng)
    assert snapshot_batching(256, 1000).batch_size == 768
    assert snapshot_batching(1024, 256).per_batch == 1


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    (merged(TINY, training__mass_constraint=1.0),
     "training.mass_constraint: the l96 host's plugin names no mass-tendency output"),
    (merged(TINY, training__snapshot_batches=True),
     "training.snapshot_batches: the l96 host's plugin does not group"),
    (merged(SW_TINY, training__mass_constraint=-1.0), "training.mass_constraint: must be >= 0"),
    (merged(SW_TINY, training__mass_constraint="10"),
     "training.mass_constraint: expected a number"),
    (merged(SW_TINY, training__mass_constraint=True),
     "training.mass_constraint: expected a number"),
    (merged(SW_TINY, training__mass_constraint=math.inf),
     "training.mass_constraint: must be finite"),
    (merged(SW_TINY, training__mass_constraint=10.0, training__snapshot_batches=False),
     "training.mass_constraint: needs training.snapshot_batches = true"),
])
def test_config_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(StudyError) as err:
        config_from_dict(data, "study.toml")
    assert message in str(err.value) and str(err.value).startswith("study.toml: ")


def test_config_accepts_the_constraint_on_sw_and_keeps_it_off_by_default() -> None:
    assert config_from_dict(TINY).training.mass_constraint == 0.0
    assert config_from_dict(merged(TINY, training__mass_constraint=0)).training.mass_constraint \
        == 0.0                                            # 0 = off: every host takes it
    cfg = config_from_dict(merged(SW_TINY, training__mass_constraint=10))
    assert cfg.training.mass_constraint == 10.0 and cfg.training.snapshot_batches


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyDir, StudyDir]:
    root = tmp_path_factory.mktemp("paired")
    out = []
    for name, weight in (("free", 0.0), ("mass", WEIGHT)):
        sd = make_study(root / name, merged(SW_TINY, name=f"sw-{name}",
                                            training__mass_constraint=weight))
        run_stages(sd, STAGES, "local", progress=False)
        assert all(sd.counts(s)["error"] == 0 for s in STAGES)
        out.append(sd)
    return out[0], out[1]


def test_constraint_changes_training_towards_the_true_snapshot_mean(
        pair: tuple[StudyDir, StudyDir]) -> None:
    free, mass = pair
    assert free.plan["candidates"] == mass.plan["candidates"]
    for cand in free.plan["candidates"]:
        a = json.loads((free.candidate_dir(cand["name"]) / "train.json").read_text())
        b = json.loads((mass.candidate_dir(cand["name"]) / "train.json").read_text())
        assert a["snapshot_batches"] == b["snapshot_batches"] == \
            {"columns": 256, "per_batch": 1, "batch_size": 256}
        assert a["samples"] == b["samples"]               # the same snapshots
        assert "mass_constraint" not in a and b["mass_constraint"] == WEIGHT
        assert a["val_mass_output"] == b["val_mass_output"] == "theta_h"
        assert a["history"]["loss"] != b["history"]["loss"]
        # the validation snapshots' domain-mean theta_h error is smaller with the penalty
        assert b["val_mass_rms_error"] < 0.7 * a["val_mass_rms_error"], (a, b)


def test_paired_comparison_of_two_tiny_studies(pair: tuple[StudyDir, StudyDir],
                                               tmp_path: Path) -> None:
    free, mass = pair
    pc = compare_paired(free.root, mass.root, "free", "mass")
    assert pc.differences == {"training.mass_constraint": (0.0, WEIGHT)}
    assert list(pc.candidates["name"]) == ["c0000", "c0001"]
    t = pc.by_candidate
    assert t.n == 2 and t.longer + t.shorter + t.equal == 2
    assert pc.by_run.n == 4 and len(pc.runs) == 4
    # 96 steps: nothing fails, every pair is a tie of two censored runs
    assert t.equal == 2 and t.sign_p is None and "tied" in t.note
    assert set(pc.runs["common_step"]) == {96.0}
    assert pc.drift["median_abs_h_drift_a"] > 0 and np.isfinite(pc.drift["median_energy_ratio_b"])
    report = write_paired(pc, tmp_path / "out")
    text = report.read_text()
    assert "training.mass_constraint" in text and "| c0001 |" in text
    assert "mass output (theta_h, physical units)" in text
    assert (tmp_path / "out" / "paired_steps.png").stat().st_size > 1000
    assert (tmp_path / "out" / "paired_drift.png").stat().st_size > 1000
    assert len(pd.read_csv(tmp_path / "out" / "paired_runs.csv")) == 4
    # the CLI
    assert harness_main(["paired", str(free.root), str(mass.root), "-o",
                         str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "paired.json").read_text())["by_run"]["n"] == 4


def test_paired_refuses_studies_of_different_candidates(pair: tuple[StudyDir, StudyDir],
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    free, mass = pair
    other = tmp_path / "other"
    shutil.copytree(mass.root, other)
    plan = json.loads((other / "plan.json").read_text())
    plan["candidates"][1]["learning_rate"] *= 2
    (other / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(PairedError, match="planned different candidates.*candidate 1"):
        compare_paired(free.root, other)
    assert harness_main(["paired", str(free.root), str(other), "-o", str(tmp_path / "x")]) == 2
    assert "different candidates" in capsys.readouterr().err


def test_pair_test_counts_and_censoring() -> None:
    a = np.array([100, 200, 500, 500, 300, 50, 60, 70])
    b = np.array([150, 100, 500, 400, 500, 90, 95, 99])
    t = pair_test(a, b, a >= 500, b >= 500)
    # 500/500: both censored (tie); 500 -> 400: A censored, B shorter; 300 -> 500: B longer
    assert (t.longer, t.shorter, t.equal, t.censored_pairs) == (5, 2, 1, 3)
    assert t.sign_p == pytest.approx(0.453125)              # binomial(5 of 7, 1/2), two-sided
    from scipy import stats
    d = (b - a)[[0, 1, 3, 4, 5, 6, 7]]
    assert t.wilcoxon_p == pytest.approx(stats.wilcoxon(d).pvalue)
    tie = pair_test(a[:1], a[:1], [False], [False])
    assert tie.sign_p is None and tie.wilcoxon_p is None and tie.equal == 1
