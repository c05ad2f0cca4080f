"""Bring your own host: a third host that lives outside the built-in ones (examples/hosts/scm,
a single-column toy) built against the *installed* library with pkg-config only, registered
with [host] plugin = "module:Class", and a whole study run on it; plus what happens when a
plugin or a host program misbehaves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.plugins import PluginError, load_plugin
from harness.study.config import STAGES, StudyError, config_from_dict
from harness.study.layout import StudyDir
from harness.study.runner import run_stages

SCM = Path(__file__).resolve().parent.parent / "examples" / "hosts" / "scm"


@pytest.fixture(scope="module")
def scm_host(tmp_path_factory: pytest.TempPathFactory, installed: Path) -> Path:
    """colnn_scm built by its own Makefile against an installed prefix, pkg-config only."""
    prefix = installed
    src = tmp_path_factory.mktemp("scm")
    for name in ("scm_host.f90", "Makefile"):
        shutil.copy(SCM / name, src / name)
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))
    proc = subprocess.run(["make"], cwd=src, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return src / "colnn_scm"


@pytest.fixture()
def plugin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's directory on sys.path here and, for the study's worker processes, on
    PYTHONPATH."""
    monkeypatch.syspath_prepend(str(SCM))
    old = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", str(SCM) + (os.pathsep + old if old else ""))


def scm_study(root: Path, exe: Path, **changes) -> StudyDir:
    data = {"name": "scm-tiny", "seed": 3,
            "host": {"name": "scm", "plugin": "scm_plugin:SCMPlugin", "executable": str(exe),
                     "model": {"n_columns": 8}},
            "data": {"steps": 6000, "spinup_steps": 500, "sample_interval": 10},
            "space": {"nodes": [16], "layers": [2, 2], "optimizer": ["adam"],
                      "learning_rate": [1e-3, 3e-3]},
            "training": {"candidates": 3, "epochs": 3, "batch_size": 128},
            "couple": {"steps": 1500, "initial_conditions": 2, "ensemble_top_k": 2},
            "executor": {"workers": 2}}
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value}
    cfg = config_from_dict(data, "scm study")
    return StudyDir.create(root, cfg)


def test_the_host_builds_with_pkg_config_and_follows_the_protocol(scm_host: Path,
                                                                  tmp_path: Path) -> None:
    from harness.hosts import host_defaults, host_run_from_dict, run_host
    groups = host_defaults("scm", executable=str(scm_host))
    assert {"scm_model", "scm_run", "scm_failure"} <= set(groups)
    run = host_run_from_dict({"host": "scm", "executable": str(scm_host),
                              "run": {"mode": "truth", "n_steps": 200, "sample_interval": 10}},
                             tmp_path, output_dir=tmp_path / "truth")
    result = run_host(run)
    assert result["status"] == "completed" and result["steps"] == 200
    assert (tmp_path / "truth" / "truth.bin").is_file()
    # an NaN injected into one column fails the run at that step, as the protocol records it
    bad = host_run_from_dict({"host": "scm", "executable": str(scm_host),
                              "run": {"mode": "coarse", "closure": "none", "n_steps": 100,
                                      "inject_nan_step": 37, "inject_nan_column": 2}},
                             tmp_path, output_dir=tmp_path / "nan")
    result = run_host(bad)
    assert (result["status"], result["failure_step"], result["reason"]) == \
        ("failed", 37, "nonfinite")


def test_a_study_runs_on_a_host_of_ones_own(scm_host: Path, plugin_path: None,
                                            tmp_path: Path) -> None:
    sd = scm_study(tmp_path / "study", scm_host)
    run_stages(sd, STAGES, "local", progress=False)
    for stage in STAGES:
        counts = sd.counts(stage)
        assert counts["error"] == 0 and counts["pending"] == 0, (stage, counts)
    t = pd.read_csv(sd.results_dir / "candidates.csv").set_index("name")
    assert list(t.index) == ["c0000", "c0001", "c0002", "baseline-none", "ensemble-top2"]
    assert (t["n_runs"] == 2).all()
    # the plugin's own table column (its table_metrics), and no other host's
    assert t["mean_t"].notna().all() and "drift_z_mean" not in t.columns
    cal = json.loads((sd.root / "data" / "calibration.json").read_text())
    assert cal["failure"]["max_abs"] == pytest.approx(3 * cal["truth_max_abs_t"])
    runs = pd.read_csv(sd.results_dir / "runs.csv")
    assert set(runs["status"]) <= {"completed", "failed"}
    # every coupled run went through the coupler with the study's model file
    for rdir in (sd.root / "runs").glob("c0000*/ic*"):
        nml = (rdir / "run.nml").read_text()
        assert "&colnn_coupler" in nml and "model.colnn" in nml
    summary = json.loads((sd.results_dir / "summary.json").read_text())
    assert summary["host"] == "scm"
    assert summary["inputs"] == "the column's temperatures (all levels)"
    assert (sd.root / "report" / "report.md").is_file()


@pytest.mark.parametrize("spec, message", [
    ("no_such_module:X", "cannot import no_such_module"),
    ("scm_plugin:Nope", "module scm_plugin has no Nope"),
    ("scm_plugin", 'expected "module:Class"'),
    ("scm_plugin:read_truth", "read_truth is not a class"),
    ("harness.sw:SWPlugin", "it is for host 'sw'"),
])
def test_a_bad_plugin_is_one_line_naming_it(plugin_path: None, spec: str, message: str) -> None:
    with pytest.raises(PluginError, match=message) as info:
        load_plugin("scm", spec)
    assert "\n" not in str(info.value) and spec in str(info.value)


def test_a_plugin_without_its_methods_is_refused(plugin_path: None, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "half_plugin.py").write_text(
        "from harness.plugins import HostPlugin\n"
        "class Half(HostPlugin):\n    name = 'half'\n"
        "    def calibrate(self, first, last, couple):\n        return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="lacks training_pairs"):
        load_plugin("half", "half_plugin:Half")
    with pytest.raises(PluginError, match="host 'unknown': no plugin"):
        load_plugin("unknown")
    with pytest.raises(StudyError, match="host: host 'unknown': no plugin"):
        config_from_dict({"host": {"name": "unknown"}}, "cfg")


def test_a_host_writing_a_malformed_result_is_an_error_of_its_task(scm_host: Path,
                                                                  plugin_path: None,
                                                                  tmp_path: Path) -> None:
    """A host program that writes a result.json without the protocol's fields (here: a
    wrapper that runs the real host, then truncates its result to {"status": "completed"}):
    the couple tasks record an error naming the file; the study itself goes on and finishes."""
    wrapper = tmp_path / "broken_scm"
    wrapper.write_text(f"#!/bin/bash\n{scm_host} \"$@\"; rc=$?\n"
                       "if grep -q \"mode = 'coarse'\" \"$1\" 2>/dev/null; then\n"
                       "  echo '{\"status\": \"completed\"}' > result.json\nfi\nexit $rc\n")
    wrapper.chmod(0o755)
    sd = scm_study(tmp_path / "study", wrapper, training={"candidates": 1, "epochs": 1},
                   couple={"steps": 50, "initial_conditions": 1, "ensemble_top_k": 0})
    run_stages(sd, STAGES, "local", progress=False)
    couple = sd.counts("couple")
    assert couple["error"] == sd.n_tasks("couple") and couple["pending"] == 0
    marker = json.loads(sd.marker("couple", 0).read_text())
    assert "result.json: field 'schema' missing" in marker["message"]
    assert sd.counts("report")["error"] == 0
