"""`harness compare`: two variants of the tests' tiny L96 study (local inputs against the full
state) run by one command on the local executor and compared; the report's table against
statistics computed here from the studies' own tables, the figures, a rerun that runs nothing,
the default labels, and the errors and notes for input that cannot be compared."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.study.config import StudyError
from harness.study.variants import Setting, apply_settings, parse_setting, parse_variant
from test_study import TINY, make_study, toml_text

PNG = b"\x89PNG\r\n\x1a\n"
VARIANTS = ("local:host.inputs=local", "full:host.inputs=full")


def harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=600)


def table_rows(report: str) -> dict[str, list[str]]:
    """The main table of a comparison report: study label -> its cells."""
    section = report.split("## Offline error against steps to failure", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in row.strip("|").split(" | ")] for row in rows]
    return {c[0]: c[1:] for c in cells if not c[0].startswith("---")}


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """(the tiny study file, the comparison directory, seconds the command took)."""
    root = tmp_path_factory.mktemp("compare")
    config = root / "tiny.toml"
    config.write_text(toml_text(TINY))
    out = root / "out"
    start = time.monotonic()
    args = ["compare", "--config", str(config), "-o", str(out), "-q"]
    for v in VARIANTS:
        args += ["--variant", v]
    proc = harness(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return config, out, time.monotonic() - start


def _censored_share(study: Path) -> tuple[int, float, float]:
    """(n, censored share, Spearman rho) from the study's candidates.csv, computed here."""
    cand = pd.read_csv(study / "results" / "candidates.csv")
    cand = cand[(cand["kind"] == "candidate") & cand["val_mse"].notna()
                & (cand["n_runs"] > 0)]
    budget = json.loads((study / "results" / "summary.json").read_text())["n_steps"]
    censored = (cand["steps_to_failure"] >= budget) | cand["survived"].astype(bool)
    rho = stats.spearmanr(cand["val_mse"], cand["steps_to_failure"]).statistic
    return len(cand), float(censored.mean()), float(rho)


def test_one_command_runs_the_variants_and_compares_them(compared: tuple[Path, Path, float]
                                                         ) -> None:
    _, out, _ = compared
    report = (out / "report.md").read_text()
    rows = table_rows(report)
    assert list(rows) == ["local", "full"]
    for name in ("local", "full"):
        study = out / "studies" / name
        cfg = json.loads((study / "study.json").read_text())
        assert cfg["host"]["inputs"] == name and cfg["name"] == name
        n, share, rho = _censored_share(study)
        cells = rows[name]
        assert cells[0] == str(n)
        assert cells[2] == f"{100 * share:.0f}%"
        if np.isfinite(rho):
            assert cells[3].startswith(f"{rho:+.2f} (p")
        else:
            assert cells[3] == "–" and f"{name}, Spearman: undefined" in report
    assert rows["local"][-1] == "reference"
    assert not re.search(r"\bnan\b", report, re.IGNORECASE)
    assert "Log-rank test over all 2 studies" in report
    # a link to each study's own report, relative to the comparison
    assert "[studies/local](studies/local/report/report.md)" in report
    record = json.loads((out / "variants.json").read_text())
    assert set(record) == {"local", "full"} and record["full"]["wall_s"] > 0


def test_figures_are_png(compared: tuple[Path, Path, float]) -> None:
    _, out, _ = compared
    report = (out / "report.md").read_text()
    from harness.compare import FIGURES
    for name in FIGURES.values():
        assert (out / name).read_bytes()[:8] == PNG, name
        assert f"]({name})" in report


def test_a_rerun_runs_no_study_again(compared: tuple[Path, Path, float]) -> None:
    config, out, first = compared
    marker = out / "studies" / "full" / "tasks" / "couple" / "0.json"
    before = marker.stat().st_mtime_ns
    args = ["compare", "--config", str(config), "-o", str(out), "-q",
            "--label", "full=whole state"]
    for v in VARIANTS:
        args += ["--variant", v]
    proc = harness(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("finished earlier") == 2
    assert marker.stat().st_mtime_ns == before
    rows = table_rows((out / "report.md").read_text())
    assert list(rows) == ["local", "whole state"]
    # the wall times of the runs that made the studies are kept
    head = (out / "report.md").read_text().split("## Offline")[0]
    assert len(re.findall(r"\| \d+ s \|", head)) == 2


def test_default_labels_are_the_differing_keys(compared: tuple[Path, Path, float],
                                               tmp_path: Path) -> None:
    _, out, _ = compared
    studies = [out / "studies" / "local", out / "studies" / "full"]
    proc = harness("compare", *map(str, studies), "-o", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    assert list(table_rows((tmp_path / "cmp" / "report.md").read_text())) == [
        "host.inputs=local", "host.inputs=full"]
    proc = harness("compare", *map(str, studies), "-o", str(tmp_path / "cmp"),
                   "--label", f"{studies[1]}=all of X")
    assert proc.returncode == 0, proc.stderr
    assert list(table_rows((tmp_path / "cmp" / "report.md").read_text())) == [
        "host.inputs=local", "all of X"]


def _copy(study: Path, dst: Path) -> Path:
    """A study's configuration and results (what compare reads) under another name."""
    (dst / "results").mkdir(parents=True)
    shutil.copy(study / "study.json", dst / "study.json")
    for f in ("summary.json", "candidates.csv", "runs.csv"):
        shutil.copy(study / "results" / f, dst / "results" / f)
    return dst


def _edit_summary(study: Path, **changes: object) -> None:
    path = study / "results" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_input_that_cannot_be_compared_is_refused(compared: tuple[Path, Path, float],
                                                  tmp_path: Path) -> None:
    _, out, _ = compared
    full = out / "studies" / "full"
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = harness("compare", str(full), str(empty), "-o", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert str(empty) in proc.stderr and "harness study" in proc.stderr
    planned = make_study(tmp_path / "planned", TINY).root
    proc = harness("compare", str(full), str(planned), "-o", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert f"harness collect {planned}" in proc.stderr
    proc = harness("compare", str(full), "-o", str(tmp_path / "x"))
    assert proc.returncode == 2 and "at least two studies" in proc.stderr
    other = _copy(full, tmp_path / "sw-like")
    _edit_summary(other, host="sw")
    proc = harness("compare", str(full), str(other), "-o", str(tmp_path / "x"))
    assert proc.returncode == 2 and "different hosts" in proc.stderr
    assert str(other) in proc.stderr
    proc = harness("compare", str(full), "-o", str(tmp_path / "x"), "--variant", "a")
    assert proc.returncode == 2 and "--config and --variant go together" in proc.stderr
    assert not (tmp_path / "x").exists()
    proc = harness("compare", str(full), str(out / "studies" / "local"), "-o",
                   str(tmp_path / "x"), "--label", "nowhere=x")
    assert proc.returncode == 2 and "no study given is nowhere" in proc.stderr


def test_different_budgets_are_a_note_and_absent_statistics_say_why(
        compared: tuple[Path, Path, float], tmp_path: Path) -> None:
    """A study whose candidates all survived: no concordance, Spearman or hazard ratio, each
    with its reason; a study with another budget: compared, with a note saying so."""
    _, out, _ = compared
    full = out / "studies" / "full"
    survived = _copy(full, tmp_path / "all-survived")
    cand = pd.read_csv(survived / "results" / "candidates.csv")
    budget = int(json.loads((full / "results" / "summary.json").read_text())["n_steps"])
    cand["steps_to_failure"] = budget
    cand["survived"] = True
    cand.to_csv(survived / "results" / "candidates.csv", index=False)
    longer = _copy(full, tmp_path / "longer")
    _edit_summary(longer, n_steps=2 * budget)
    from harness.compare import compare_studies
    path, cmp = compare_studies([full, survived, longer], tmp_path / "cmp")
    text = path.read_text()
    rows = table_rows(text)
    assert list(rows) == ["full", "all-survived", "longer"]   # same configs: directory names
    assert rows["all-survived"][2] == "100%"
    assert rows["all-survived"][3] == "–" and rows["all-survived"][5] == "–"
    assert "all-survived, concordance: absent: no candidate failed within the budget" in text
    assert "all-survived, hazard ratio: absent" in text
    assert "all-survived, Spearman: undefined" in text
    assert "The studies' step budgets differ" in text and f"longer: {2 * budget:,}" in text
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    stat = cmp.stats[1]
    assert stat.concordance["c"] is None and stat.n_failed == 0


def test_variant_settings_parse_and_apply() -> None:
    v = parse_variant('s2:host.inputs=stencil; host.stencil_halfwidth=2;space.nodes=[8, 16]')
    assert v.name == "s2"
    assert v.settings == [Setting("host.inputs", "stencil"), Setting("host.stencil_halfwidth", 2),
                          Setting("space.nodes", [8, 16])]
    assert parse_variant("base").settings == []
    data = apply_settings(TINY, v.settings)
    assert data["host"]["stencil_halfwidth"] == 2 and TINY["host"].get("stencil_halfwidth") is None
    assert parse_setting('host.inputs="full"').value == "full"
    for bad in ("no name:x=1", ":x=1", "a:x", "a:x=[1,", "a:=3", "a:x y=1"):
        with pytest.raises(StudyError):
            parse_variant(bad)
    with pytest.raises(StudyError):
        parse_setting("host.inputs=local", strict=True)
    with pytest.raises(StudyError):
        apply_settings({"host": "l96"}, [Setting("host.name", "x")])


def test_an_invalid_variant_runs_nothing(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(toml_text(TINY))
    proc = harness("compare", "--config", str(config), "-o", str(tmp_path / "out"),
                   "--variant", "ok:host.inputs=local", "--variant", "bad:couple.stepz=3")
    assert proc.returncode == 2
    assert "variant bad" in proc.stderr and "couple.stepz: unknown key" in proc.stderr
    assert not (tmp_path / "out" / "studies").exists()

