"""The study report (harness.report) on small synthetic STUDY/results/ directories.

Each test writes what `harness collect` would write (candidates.csv with empty cells for the
baselines' hyperparameters, runs.csv, curves.csv, summary.json) with a relation known in
advance, so the numbers in the report can be checked, not just its existence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.report import (FIGURES, best_candidate, ensemble_comparison, load_study,
                            optimizer_summary, overall_spearman, spearman_table, write_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_STEPS = 1000
OPTIMIZERS = ("adam", "rmsprop", "sgd")


def _candidate(i: int, val_mse: float, steps: float, *, survived: bool, n_runs: int = 3,
               train_status: str = "ok", convert_status: str = "ok",
               batch_norm: bool = True) -> dict:
    failed = not survived and n_runs > 0
    return {
        "name": f"c{i:04d}", "kind": "candidate", "batch_norm": batch_norm,
        "dropout": round(0.01 * (i % 5), 3), "leaky_relu": round(0.1 * (i % 4), 2),
        "learning_rate": 10.0 ** (-2 - (i % 3)), "nodes": (128, 256, 512)[i % 3],
        "layers": 4 + i % 8, "optimizer": OPTIMIZERS[i % 3], "n_params": 1000 + 37 * i,
        "val_mse": val_mse, "train_status": train_status, "epochs": 25,
        "convert_status": convert_status, "verify_max_abs_err": 1e-7 if n_runs else None,
        "n_runs": n_runs, "n_failed": 3 if failed else 0, "n_steps": N_STEPS,
        "steps_to_failure": steps, "steps_min": steps, "survived": survived if n_runs else None,
        "failure_reason": "drift" if failed else "",
        "mean_abs_bias": val_mse * 10 if n_runs else None, "members": "",
    }


def _other(name: str, kind: str, steps: float, *, survived: bool, bias: float,
           members: str = "", val_mse: float | None = None) -> dict:
    return {"name": name, "kind": kind, "val_mse": val_mse, "n_runs": 3,
            "n_failed": 0 if survived else 3, "n_steps": N_STEPS, "steps_to_failure": steps,
            "steps_min": steps, "survived": survived,
            "failure_reason": "" if survived else "bounds", "mean_abs_bias": bias,
            "members": members, "train_status": "", "convert_status": ""}


def _monotone(n: int = 20) -> list[dict]:
    """val_mse rising, steps falling; the four best fits survive (censored at N_STEPS)."""
    rows = []
    for i in range(n):
        mse = 10.0 ** (-3 + 2 * i / (n - 1))
        survived = i < 4
        steps = N_STEPS if survived else N_STEPS - 40 * i
        rows.append(_candidate(i, mse, float(steps), survived=survived))
    return rows


def _write_study(root: Path, rows: list[dict], *, curves: bool = True,
                 summary: dict | None = None) -> Path:
    """A study directory as `harness collect` leaves it."""
    results = root / "results"
    results.mkdir(parents=True)
    df = pd.DataFrame(rows)
    df.to_csv(results / "candidates.csv", index=False)
    runs, curve_rows = [], []
    for r in rows:
        for ic in range(3 if r["n_runs"] else 0):
            runs.append({"name": r["name"], "kind": r["kind"], "ic": ic,
                         "status": "completed" if r["survived"] else "failed",
                         "steps": r["steps_to_failure"],
                         "failure_step": None if r["survived"] else r["steps_to_failure"],
                         "reason": r["failure_reason"], "wall_s": 1.5, "nn_s": 0.5})
            if curves:
                t = np.linspace(0.0, 0.01 * r["steps_to_failure"], 30)
                scale = r["mean_abs_bias"] if r["mean_abs_bias"] else 0.1
                for tt, b in zip(t, scale * (1 + ic * 0.1) * np.tanh(t)):
                    curve_rows.append({"name": r["name"], "ic": ic, "time": tt, "bias": b})
    pd.DataFrame(runs, columns=["name", "kind", "ic", "status", "steps", "failure_step",
                                "reason", "wall_s", "nn_s"]).to_csv(results / "runs.csv",
                                                                    index=False)
    if curves:
        pd.DataFrame(curve_rows).to_csv(results / "curves.csv", index=False)
        # each run's mean window pdf (16 bins) and acf (3 lags), as hosts write them
        climate = [{"name": r["name"], "ic": 0, "statistic": "pdf", "index": b, "x": b + 1,
                    "value": 1 / 16} for r in rows for b in range(16)]
        climate += [{"name": r["name"], "ic": 0, "statistic": "acf", "index": i,
                     "x": 0.5 * (i + 1), "value": 0.5 - 0.2 * i} for r in rows for i in range(3)]
        pd.DataFrame(climate).to_csv(results / "climate.csv", index=False)
    summ = {"study": "synthetic", "host": "l96", "n_steps": N_STEPS, "dt": 0.01,
            "bias_label": "bias of mean X", "inputs": "stencil",
            "failure": {"drift": {"threshold": 3.0, "window": 50}, "bounds": 40.0},
            "calibration": {"false_alarm_rates": {"3.0": 0.01, "2.0": 0.08},
                            "truth_runs": 20,
                            "climate": {"pdf_edges": list(np.linspace(-3, 11, 15)),
                                        "clim_pdf": [1 / 16] * 16,
                                        "clim_acf": [0.4, 0.1, -0.1]}},
            "candidates": sum(r["kind"] == "candidate" for r in rows)}
    summ.update(summary or {})
    (results / "summary.json").write_text(json.dumps(summ))
    return root


def _full_rows() -> list[dict]:
    rows = _monotone()
    rows += [_other("baseline-none", "baseline", 120.0, survived=False, bias=0.9),
             _other("baseline-cubic", "baseline", float(N_STEPS), survived=True, bias=0.05),
             _other("ensemble-top3", "ensemble", 700.0, survived=False, bias=0.02,
                    members="c0000 c0001 c0002")]
    return rows


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert path.stat().st_size > 2000


def _assert_no_nan(text: str) -> None:
    assert not re.search(r"\bnan\b", text, flags=re.IGNORECASE), \
        [line for line in text.splitlines() if re.search(r"\bnan\b", line, re.I)]


def test_monotone_study_negative_rho_and_full_report(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "s", _full_rows())
    df = load_study(study).candidates

    overall = overall_spearman(df)
    assert overall["defined"] and overall["n"] == 20
    assert overall["rho"] < -0.9 and overall["p"] < 1e-6
    assert overall["n_survived"] == 4 and overall["survived_fraction"] == pytest.approx(0.2)

    path = write_report(study)
    assert path == study / "report" / "report.md"
    text = path.read_text()
    _assert_no_nan(text)
    assert "# Study report: synthetic" in text
    assert "**l96**" in text and "stencil" in text and "1,000" in text
    assert f"Spearman(val_mse, steps_to_failure) = {overall['rho']:+.3f}" in text
    assert "the same sign as the paper" in text and "-0.73" in text
    assert "4 of 20 candidates (20 %) survived" in text
    assert "Spearman(val_mse, mean |bias|) = +1.000" in text
    # header: counts, criteria and calibration from summary.json
    assert "training ok: 20" in text and "coupled: 20" in text
    assert "`drift.threshold`: 3" in text and "| 2.0 | 0.08 |" in text
    # the runs each criterion stopped: 16 candidates (drift) and 2 others (bounds), 3 runs each
    assert "| drift | 48 |" in text and "| bounds | 6 |" in text
    assert "**ensemble-top3** (members: c0000, c0001, c0002)" in text
    # Table 2: constant BatchNorm is undefined, the paper's values are there
    bn = next(line for line in text.splitlines() if line.startswith("| BatchNorm"))
    assert "undefined (constant" in bn and "+0.086" in bn
    opt_line = next(line for line in text.splitlines() if line.startswith("| Optimizer"))
    assert "-0.700" in opt_line and "adam = 0, rmsprop = 1, sgd = 2" in opt_line
    # ensemble (700 steps) vs best single (c0000, survived): did not beat
    assert ("The ensemble did not beat the best single candidate: 700 steps for "
            "ensemble-top3 vs 1,000 for c0000.") in text
    assert "| best single candidate | c0000 |" in text
    # baselines, top 10, nothing excluded
    assert "| baseline-none | 120 | no | bounds |" in text
    assert "| 1 | c0000 | 1,000 |" in text
    assert "None: every candidate trained and was coupled." in text
    # Fig. 5: the longest-running candidates' climate against the truth's
    assert "## Climate of the best candidates (Fig. 5)" in text
    assert "c0000, c0001, c0002" in text and "baseline-cubic" in text
    assert re.search(r"truth about 2/\d+ of it", text)
    # every figure but the online twins' (this study has none)
    for key, name in FIGURES.items():
        if key == "online":
            assert not (study / "report" / name).exists()
            continue
        assert f"]({name})" in text
        _assert_png(study / "report" / name)
    assert not [p for p in (study / "report").iterdir() if p.name.startswith(".")]


def test_false_alarm_rates_per_criterion(tmp_path: Path) -> None:
    rates = {"mean/std": {"3.0": 0.0, "5.0": 0.0}, "distribution": {"3.0": 0.05, "5.0": 0.0},
             "any": {"3.0": 0.05, "5.0": 0.0}}
    study = _write_study(tmp_path / "s", _full_rows(),
                         summary={"calibration": {"false_alarm_rates": rates}})
    text = write_report(study).read_text()
    assert "| threshold | mean/std | distribution | any |" in text
    assert "| 3.0 | 0 | 0.05 | 0.05 |" in text


def test_spearman_table_values(tmp_path: Path) -> None:
    df = load_study(_write_study(tmp_path / "s", _full_rows())).candidates
    table = spearman_table(df).set_index("column")
    assert list(table.index) == ["batch_norm", "dropout", "leaky_relu", "learning_rate",
                                 "nodes", "layers", "optimizer", "n_params"]
    assert np.isnan(table.loc["batch_norm", "rho_steps"])
    assert "constant" in table.loc["batch_norm", "note_steps"]
    # n_params rises with the index, steps fall with it: rho = -1 over the failed ones' ranks
    assert table.loc["n_params", "rho_steps"] < -0.9
    assert table.loc["n_params", "rho_val_mse"] == pytest.approx(1.0)
    assert table.loc["optimizer", "paper_rho"] == pytest.approx(-0.6998)
    assert table.loc["nodes", "n_steps"] == 20
    opt = optimizer_summary(df).set_index("optimizer")
    assert list(opt.index) == ["adam", "rmsprop", "sgd"]
    assert opt.loc["adam", "n"] == 7 and opt.loc["sgd", "paper_rho_one_vs_rest"] == -0.667


def test_no_candidate_failed_rho_undefined(tmp_path: Path) -> None:
    rows = [_candidate(i, 10.0 ** (-3 + i / 10), float(N_STEPS), survived=True)
            for i in range(12)]
    study = _write_study(tmp_path / "s", rows)
    # collect writes a header-only curves.csv when no run left diagnostics
    (study / "results" / "curves.csv").write_text("name,ic,time,bias\n")
    overall = overall_spearman(load_study(study).candidates)
    assert not overall["defined"] and overall["rho"] is None and overall["p"] is None
    assert "no candidate failed" in overall["note"]
    text = write_report(study).read_text()
    _assert_no_nan(text)
    assert "is undefined: no candidate failed within the budget of 1,000 steps" in text
    assert "12 of 12 candidates (100 %) survived" in text
    assert "No ensemble row in candidates.csv." in text
    assert "No baseline rows in candidates.csv." in text
    assert "results/curves.csv has no finite (time, bias) points" in text
    _assert_png(study / "report" / FIGURES["mse_vs_steps"])
    assert not (study / "report" / FIGURES["bias_curves"]).exists()


def test_all_failed_at_same_step(tmp_path: Path) -> None:
    rows = [_candidate(i, 10.0 ** (-3 + i / 10), 250.0, survived=False) for i in range(6)]
    overall = overall_spearman(load_study(_write_study(tmp_path / "s", rows)).candidates)
    assert not overall["defined"]
    assert "all 6 candidates failed at the same step (250)" in overall["note"]


def test_diverged_candidates_listed_and_excluded(tmp_path: Path) -> None:
    rows = _full_rows()
    rows += [_candidate(20, float("nan"), float("nan"), survived=False, n_runs=0,
                        train_status="diverged", convert_status="missing"),
             _candidate(21, float("nan"), float("nan"), survived=False, n_runs=0,
                        train_status="diverged", convert_status=""),
             _candidate(22, 0.02, float("nan"), survived=False, n_runs=0,
                        convert_status="verify_failed")]
    study = _write_study(tmp_path / "s", rows)
    df = load_study(study).candidates
    assert overall_spearman(df)["n"] == 20
    assert spearman_table(df).set_index("column").loc["dropout", "n_val_mse"] == 21
    text = write_report(study).read_text()
    _assert_no_nan(text)
    assert "training diverged: 2" in text and "conversion failed: 1" in text
    assert "in the correlations: 20" in text
    section = text.split("## Candidates left out of the correlations")[1]
    assert "| c0020 | diverged | missing | – | 0 | – | training diverged |" in section
    assert "| c0021 | diverged |" in section
    assert "| c0022 | ok | verify_failed | 0.02 | 0 | – | conversion verify failed |" in section
    assert "c0005" not in section


def test_missing_curves_and_stale_figure(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "s", _full_rows(), curves=False)
    stale = study / "report" / FIGURES["bias_curves"]
    stale.parent.mkdir()
    stale.write_bytes(PNG_MAGIC)
    text = write_report(study).read_text()
    assert "results/curves.csv is absent: no bias curves drawn." in text
    assert FIGURES["bias_curves"] not in text
    assert not stale.exists()
    _assert_png(study / "report" / FIGURES["by_hyperparameter"])


def test_ensemble_that_beats_best(tmp_path: Path) -> None:
    rows = [r for r in _full_rows() if r["kind"] != "ensemble"]
    rows.append(_other("ensemble-top3", "ensemble", float(N_STEPS), survived=True,
                       bias=1e-5, members=""))  # members from the name: top 3 by val_mse
    df = load_study(_write_study(tmp_path / "s", rows, curves=False)).candidates
    assert best_candidate(df)["name"] == "c0000"
    [comp] = ensemble_comparison(df)
    assert comp["members"] == ["c0000", "c0001", "c0002"] and not comp["members_recorded"]
    assert comp["beat"] is True and "beat the best single candidate on bias" in comp["verdict"]


def test_user_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="no such study"):
        write_report(tmp_path / "nope")
    study = _write_study(tmp_path / "s", _monotone(5), curves=False)
    (study / "results" / "candidates.csv").unlink()
    with pytest.raises(HarnessError, match=r"candidates\.csv missing: run `harness collect"):
        write_report(study)

    study = _write_study(tmp_path / "t", _monotone(5), curves=False)
    (study / "results" / "summary.json").unlink()
    with pytest.raises(HarnessError, match=r"summary\.json missing: run `harness collect"):
        write_report(study)

    study = _write_study(tmp_path / "u", _monotone(5), curves=False)
    path = study / "results" / "candidates.csv"
    pd.read_csv(path).drop(columns="val_mse").to_csv(path, index=False)
    with pytest.raises(HarnessError, match=r"candidates\.csv: missing column\(s\) val_mse"):
        write_report(study)

    study = _write_study(tmp_path / "v", _monotone(5), curves=False)
    path = study / "results" / "candidates.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[2, "steps_to_failure"] = "lots"
    df.to_csv(path, index=False)
    with pytest.raises(HarnessError, match=r"'steps_to_failure', line 4 \(name c0002\)"):
        write_report(study)


def test_seed_replicates_show_within_and_between_set_spread(tmp_path: Path) -> None:
    """Six hyperparameter sets x three seeds: sets differ much more than their seeds do."""
    rows, rng = [], np.random.default_rng(4)
    for s in range(6):
        for r in range(3):
            i = 3 * s + r
            steps = float(min(N_STEPS, 100 * (s + 1) + rng.integers(-10, 10)))
            row = _candidate(i, 0.1 * (s + 1) + 0.01 * r, steps, survived=steps >= N_STEPS)
            row.update(set=s, replicate=r)
            rows.append(row)
    text = write_report(_write_study(tmp_path / "s", rows)).read_text()
    assert "## Seed replicates (training.seeds)" in text
    icc = float(re.search(r"ICC\(1\) of log10 steps to failure: \*\*([0-9.]+)\*\*", text)[1])
    assert icc > 0.9
    assert "6 sets" in text and "n = 6 sets" in text


def test_seed_replicates_too_few_sets_say_why(tmp_path: Path) -> None:
    rows = []
    for i in range(4):
        row = _candidate(i, 0.1 * i + 0.1, 300.0 + 10 * i, survived=False)
        row.update(set=i // 2, replicate=i % 2)
        rows.append(row)
    text = write_report(_write_study(tmp_path / "s", rows)).read_text()
    assert "Intraclass correlation: absent: 2 hyperparameter set(s)" in text
    _assert_no_nan(text)


def test_no_replicate_section_with_one_seed(tmp_path: Path) -> None:
    text = write_report(_write_study(tmp_path / "s", _full_rows())).read_text()
    assert "Seed replicates" not in text
