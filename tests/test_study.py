"""The study end to end on a tiny L96 set-up: the configuration's checks, the local executor
(tables, report, a rerun that redoes nothing), the same study through real sbatch job arrays on
the local Slurm and through the mpi4py farm under mpirun (the same results table each time), a
candidate whose training diverges and one whose conversion fails, and coupled tasks killed by
scancel or requeued, then resumed without lost or duplicated rows."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.study.collect import TIMING_COLUMNS
from harness.study.config import STAGES, StudyError, config_from_dict
from harness.study.layout import StudyDir, sample_candidates
from harness.study.runner import run_stages
from sweep_faults import queue_of, release, run_with_faults

TINY: dict[str, Any] = {
    "name": "tiny", "seed": 3,
    "host": {"name": "l96", "inputs": "stencil", "failure": {"max_abs": 50.0}},
    "data": {"steps": 30000},
    "space": {"nodes": [8, 16], "layers": [1, 2]},
    "training": {"candidates": 3, "epochs": 2, "batch_size": 256},
    "couple": {"steps": 2000, "drift_window_time": 1.0, "drift_pdf_bins": 8,
               "ensemble_top_k": 2},
    "executor": {"workers": 2, "slurm": {"throttle": 4, "poll_seconds": 1.0}},
}


def toml_text(data: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the test configurations (tables, scalars, lists)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)
    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{prefix}{k}]")
            lines.append(toml_text(v, f"{prefix}{k}."))
    return "\n".join(lines) + "\n"


def merged(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for dotted, v in changes.items():
        node = out
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = v
    return out


def make_study(root: Path, data: dict[str, Any]) -> StudyDir:
    cfg = config_from_dict(data, "test")
    return StudyDir.create(root, cfg, toml_text(data))


def table(sd: StudyDir) -> pd.DataFrame:
    return pd.read_csv(sd.results_dir / "candidates.csv").drop(columns=list(TIMING_COLUMNS))


def assert_scripts_pass_shellcheck(study_root: Path) -> None:
    """Every generated sbatch script is shellcheck-clean (shellcheck: installed by setup.sh)."""
    for path in (study_root / "slurm").glob("*.sbatch"):
        proc = subprocess.run(["shellcheck", "-S", "warning", str(path)], capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stdout


def harness_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def local_study(tmp_path_factory: pytest.TempPathFactory) -> StudyDir:
    sd = make_study(tmp_path_factory.mktemp("study") / "local", TINY)
    run_stages(sd, STAGES, "local", progress=False)
    return sd


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"couple__stepz": 5}, "couple.stepz: unknown key"),
    ({"training__epochs": "ten"}, "training.epochs: expected an integer"),
    ({"space__dropout": [0.3, 0.1]}, "space.dropout: low > high"),
    ({"space__learning_rate": [1e-5]}, "space.learning_rate: expected [low, high]"),
    ({"space__optimizer": ["adamw"]}, "space.optimizer"),
    ({"data__runs": 1}, "data.runs: at least 2"),
    ({"couple__baselines": ["truth"]}, "couple.baselines[0]: the l96 host's baselines"),
    ({"couple__ensemble_top_k": 9}, "couple.ensemble_top_k: 9 > training.candidates"),
    ({"host__model": {"kk": 8}}, "model.kk: unknown key"),
    ({"host__model": {"k": 8.5}}, "model.k: expected an integer"),
    ({"host__model": {"f": math.nan}}, "model.f: must be a finite number, got nan"),
    ({"host__failure": {"max_abs": math.inf}}, "failure.max_abs: must be a finite number"),
    ({"host__failure": {"clim_mean": 1.0}}, "host.failure: clim_mean are calibrated"),
    ({"host__run": {"n_steps": 3}}, "host.run: n_steps are set by the study"),
    ({"executor__kind": "pbs"}, "executor.kind: must be one of"),
    ({"executor__slurm__extra": ["--comment=x; rm -rf /"]}, "executor.slurm.extra[0]"),
    ({"executor__slurm__time": {"train": "2 hours"}}, "executor.slurm.time.train"),
    ({"executor__slurm__partition": "a b"}, "executor.slurm.partition"),
])
def test_invalid_configurations_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(StudyError) as err:
        config_from_dict(merged(TINY, **change), "study.toml")
    assert message in str(err.value) and str(err.value).startswith("study.toml: ")


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples" / "study").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_example_studies_are_valid(path: Path) -> None:
    """The README and docs/results run these files as they are: each must pass validation."""
    from harness.study.config import load_config
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_the_main_job_and_the_reference_study_differ_only_in_size() -> None:
    """docs/results/l96-medium is read as the main job at the paper's size."""
    from harness.study.config import config_to_dict, load_config
    small, medium = (config_to_dict(load_config(Path(__file__).resolve().parent.parent /
                                                 "examples" / "study" / f"{n}.toml"))
                     for n in ("l96-small", "l96-medium"))
    for cfg in (small, medium):
        cfg.pop("name")
        cfg.pop("executor")
        cfg["training"].pop("candidates")
        cfg["training"].pop("seeds")
    assert small == medium


def test_invalid_configuration_writes_and_submits_nothing(tmp_path: Path) -> None:
    bad = merged(TINY, executor__kind="slurm", training__candidates=0)
    (tmp_path / "bad.toml").write_text(toml_text(bad))
    proc = harness_cli("study", "bad.toml", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "training.candidates: must be > 0" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["with\nnewline", "tab\there", "bell\x07"])
def test_a_study_directory_with_control_characters_is_refused(tmp_path: Path, bad: str) -> None:
    """Quotes, spaces, $() and backticks are quoted safely (test_slurm_study_equals_local);
    a newline cannot be, in line-based scripts, logs and namelists: refused, nothing written."""
    with pytest.raises(StudyError, match="must not contain newlines or other control"):
        make_study(tmp_path / bad / "study", TINY)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StudyError, match="newlines and NUL are not allowed"):
        config_from_dict(merged(TINY, name="two\nlines"), "study.toml")


def test_defaults_are_the_papers_table_1() -> None:
    cfg = config_from_dict({}, "empty")
    s = cfg.space
    assert s.batch_norm == [False, True] and s.dropout == [0.0, 0.25]
    assert s.leaky_relu == [0.0, 0.4] and s.learning_rate == [1e-5, 1e-2]
    assert s.nodes == [128, 256, 512] and s.layers == [4, 11]
    assert s.optimizer == ["adam", "rmsprop", "sgd"]
    assert cfg.couple.baselines == ["none", "cubic"] and cfg.couple.drift
    assert config_from_dict({"host": {"name": "sw"}}).couple.baselines == ["none", "truth"]


def test_random_search_is_reproducible_from_the_seed() -> None:
    cfg = config_from_dict(TINY)
    a, b = sample_candidates(cfg), sample_candidates(cfg)
    assert a == b and len(a) == 3
    other = sample_candidates(config_from_dict(merged(TINY, seed=4)))
    assert [c["learning_rate"] for c in other] != [c["learning_rate"] for c in a]
    for c in a:
        assert 1e-5 <= c["learning_rate"] <= 1e-2 and c["nodes"] in (8, 16)
        assert 1 <= c["layers"] <= 2 and c["optimizer"] in ("adam", "rmsprop", "sgd")


def test_workers_take_the_most_expensive_tasks_first(tmp_path: Path) -> None:
    sd = make_study(tmp_path / "s", merged(TINY, training__candidates=6,
                                           space={"nodes": [8, 64], "layers": [1, 4]}))
    size = {c["name"]: c["nodes"] ** 2 * c["layers"] for c in sd.plan["candidates"]}
    assert len(set(size.values())) > 1
    order = [sd.plan["candidates"][i]["name"] for i in sd.pending("train")]
    assert [size[n] for n in order] == sorted(size.values(), reverse=True)
    todo = sd.pending("couple")
    costs = [sd.expected_cost("couple", i) for i in todo]
    assert costs == sorted(costs, reverse=True)
    by_name = {sd.plan["couple"][i]["name"]: c for i, c in zip(todo, costs)}
    runs = len(sd.plan["couple"][0]["ics"])
    # an ensemble's members are chosen later: it counts as two (ensemble_top_k) median networks
    median = sorted(size.values())[len(size) // 2]
    assert by_name["ensemble-top2"] == 2 * median * runs
    assert by_name["baseline-none"] == by_name["baseline-cubic"] == 0.0
    assert {sd.plan["couple"][i]["kind"] for i in todo[-2:]} == {"baseline"}
    assert sd.pending("data") == list(range(sd.n_tasks("data")))


def test_a_single_process_host_starts_mpi_without_its_daemon() -> None:
    from harness.hosts import _mpi_env
    assert _mpi_env(1, ranks=1)["OMPI_MCA_ess_singleton_isolated"] == "1"
    assert _mpi_env(1, ranks=1)["OMPI_MCA_pml"] == "ob1"
    # mpirun's ranks choose their transports themselves (a cluster's fabric needs UCX)
    assert "OMPI_MCA_pml" not in _mpi_env(1, ranks=2)


def test_a_changed_configuration_needs_a_new_directory(local_study: StudyDir) -> None:
    with pytest.raises(StudyError, match="different configuration.*couple.steps"):
        make_study(local_study.root, merged(TINY, couple__steps=4000))


# ---------------------------------------------------------------------------------------------
def test_local_study_tables_and_report(local_study: StudyDir) -> None:
    sd = local_study
    t = pd.read_csv(sd.results_dir / "candidates.csv")
    assert list(t["name"]) == ["c0000", "c0001", "c0002", "baseline-none", "baseline-cubic",
                               "ensemble-top2"]
    cands = t[t["kind"] == "candidate"]
    assert (cands["train_status"] == "ok").all() and (cands["convert_status"] == "ok").all()
    assert (cands["val_mse"] > 0).all() and (cands["n_params"] > 0).all()
    assert (t["n_runs"] == 2).all() and (t["n_steps"] == 2000).all()
    assert ((t["steps_to_failure"] > 0) & (t["steps_to_failure"] <= 2000)).all()
    # the ensemble holds the two candidates with the lowest validation MSE
    best = cands.sort_values("val_mse")["name"].head(2).tolist()
    assert t.loc[t["kind"] == "ensemble", "members"].item().split() == best
    # no closure at all drifts away from the truth climatology: the drift test catches it
    none = t[t["name"] == "baseline-none"].iloc[0]
    assert none["n_failed"] == 2 and none["failure_reason"] == "drift"
    runs = pd.read_csv(sd.results_dir / "runs.csv")
    assert len(runs) == 12 and runs[["name", "ic"]].duplicated().sum() == 0
    assert set(runs["status"]) <= {"completed", "failed"}
    parquet = pd.read_parquet(sd.results_dir / "candidates.parquet")
    assert list(parquet["name"]) == list(t["name"])
    cal = json.loads((sd.root / "data" / "calibration.json").read_text())
    assert cal["failure"]["drift_window"] == 200 and len(cal["init_indices"]) == 2
    report = (sd.root / "report" / "report.md").read_text()
    assert "Spearman" in report and "val_mse" in report
    for png in ("fig4_mse_vs_steps.png", "fig3_bias_curves.png", "fig4_by_hyperparameter.png"):
        assert (sd.root / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in report
    # the verification of each candidate against Keras is on record
    conv = json.loads((sd.candidate_dir("c0000") / "convert.json").read_text())
    assert conv["verify"]["passed"] and conv["rel_error"] < 1e-4
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    storage = JournalStorage(JournalFileBackend(str(sd.results_dir / "optuna.journal")))
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert len(trials) == 3 and all(tr.values is not None for tr in trials)


def test_rerun_skips_finished_tasks(local_study: StudyDir) -> None:
    markers = sorted((local_study.root / "tasks").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in markers}
    run_stages(StudyDir.open(local_study.root), STAGES, "local", progress=False)
    assert {p: p.stat().st_mtime_ns for p in markers} == before
    # no task ran again: no run directory or model file was rewritten either
    outputs = sorted((local_study.root / "runs").rglob("result.json"))
    assert all(p.stat().st_mtime_ns < max(before.values()) for p in outputs)


def test_status_from_disk(local_study: StudyDir) -> None:
    proc = harness_cli("status", str(local_study.root))
    assert proc.returncode == 0, proc.stderr
    # 6 models x 2 initial conditions, one task per model (batched runs)
    assert "couple 6/6 done" in proc.stdout and "train ok: 3" in proc.stdout
    for stage_cmd in (["train"], ["convert"], ["couple"]):
        proc = harness_cli(*stage_cmd, str(local_study.root), "-q")
        assert proc.returncode == 0, proc.stderr
        assert "tasks done" in proc.stdout
    proc = harness_cli("task", "couple", "99", "--study", str(local_study.root))
    assert proc.returncode == 2 and "couple has tasks 0..5, got 99" in proc.stderr
    proc = harness_cli("status", str(local_study.root / "candidates"))
    assert proc.returncode == 2 and "is not a study directory" in proc.stderr


# ---------------------------------------------------------------------------------------------
def test_slurm_study_equals_local(local_slurm: Path, local_study: StudyDir,
                                  tmp_path: Path) -> None:
    """Real sbatch arrays chained by dependencies, with a study name and a directory that
    would break or inject into badly quoted scripts."""
    canary = tmp_path / "injected"
    name = f"it's a \"test\" $(touch {canary}) `touch {canary}`"
    root = tmp_path / "dir with 'quotes' and spaces" / "study"
    sd = make_study(root, merged(TINY, name=name, executor__kind="slurm",
                                 executor__slurm__bundle=2))
    run_stages(sd, STAGES, progress=False)
    assert not canary.exists()
    pd.testing.assert_frame_equal(table(sd), table(local_study))
    jobs = json.loads((root / "slurm" / "jobs.json").read_text())
    assert [j["stage"] for j in jobs] == list(STAGES)
    assert jobs[1]["dependency"] == f"afterok:{jobs[0]['job_id']}"
    assert jobs[3]["dependency"] == f"afterany:{jobs[2]['job_id']}"
    # 6 couple tasks (a model's 2 initial conditions share one), 2 tasks per array task
    assert jobs[3]["array"] == "0-2" and jobs[3]["tasks"] == "0-5"
    script = (root / "slurm" / "couple.sbatch").read_text()
    for directive in ("#SBATCH --array=0-2%4", "#SBATCH --requeue",
                      "#SBATCH --signal=B:USR1@60", "#SBATCH --job-name=colnn-it_s_a_test"):
        assert directive in script
    assert_scripts_pass_shellcheck(root)
    markers = [json.loads(p.read_text()) for p in (root / "tasks" / "couple").glob("*.json")]
    assert len(markers) == 6 and all(m["slurm_job"] for m in markers)


def test_mpi_farm_equals_local(local_study: StudyDir, tmp_path: Path) -> None:
    sd = make_study(tmp_path / "mpi", merged(TINY, executor__kind="mpi"))
    run_stages(sd, STAGES, progress=False)
    pd.testing.assert_frame_equal(table(sd), table(local_study))
    ranks = {json.loads(p.read_text())["pid"] for p in (sd.root / "tasks" / "couple").glob("*")}
    assert len(ranks) == 2       # two worker ranks ran the coupled runs


# ---------------------------------------------------------------------------------------------
def test_diverged_training_and_failed_conversion_are_recorded(tmp_path: Path) -> None:
    """Seed 4 draws learning rates 6.3 (SGD diverges to NaN), 0.01 and 0.004; the second
    candidate's Keras file is then damaged before conversion. The study goes on."""
    data = merged(TINY, seed=4, space__learning_rate=[1e-3, 8.0], space__optimizer=["sgd"],
                  space__batch_norm=[False], couple__ensemble_top_k=0)
    sd = make_study(tmp_path / "faults", data)
    assert [round(c["learning_rate"], 3) for c in sd.plan["candidates"]] == [6.259, 0.01, 0.004]
    run_stages(sd, ["data", "train"], "local", progress=False)
    keras_file = sd.candidate_dir("c0001") / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[:300])
    run_stages(sd, STAGES, "local", progress=False)
    t = pd.read_csv(sd.results_dir / "candidates.csv").set_index("name")
    assert t.loc["c0000", "train_status"] == "diverged" and pd.isna(t.loc["c0000", "val_mse"])
    assert t.loc["c0001", "train_status"] == "ok" and t.loc["c0001", "convert_status"] == "failed"
    assert t.loc["c0002", "convert_status"] == "ok" and t.loc["c0002", "n_runs"] == 2
    assert t.loc["c0000", "n_runs"] == 0 and t.loc["c0001", "n_runs"] == 0
    conv = json.loads((sd.candidate_dir("c0001") / "convert.json").read_text())
    assert "model.keras" in conv["message"]
    train = json.loads((sd.candidate_dir("c0000") / "train.json").read_text())
    assert "non-finite" in train["message"]
    runs = pd.read_csv(sd.results_dir / "runs.csv")
    assert set(runs.loc[runs["name"].isin(["c0000", "c0001"]), "status"]) == {"skipped"}
    report = (sd.root / "report" / "report.md").read_text()
    assert "c0000" in report and "diverged" in report and "c0001" in report
    assert all(sd.counts(s)["error"] == 0 for s in STAGES)


# ---------------------------------------------------------------------------------------------
def _copy_finished(src: StudyDir, dst: StudyDir, stages: tuple[str, ...]) -> None:
    """The finished stages of one study into another of the same configuration."""
    for part in ("data", "candidates", *(f"tasks/{s}" for s in stages)):
        shutil.copytree(src.root / part, dst.root / part, dirs_exist_ok=True)
    (dst.root / "data" / "calibration.json").unlink()    # init_file points at the copy


def test_seed_replicates_end_to_end(local_study: StudyDir, tmp_path: Path) -> None:
    """training.seeds = 2: every hyperparameter set trained twice with its own seeds, coupled,
    tabled with its set and replicate, and the report's replicate section."""
    sd = make_study(tmp_path / "seeds", merged(TINY, training__seeds=2, training__epochs=1,
                                               couple__ensemble_top_k=0))
    for part in ("data", "tasks/data"):      # the truth runs of the same configuration
        shutil.copytree(local_study.root / part, sd.root / part, dirs_exist_ok=True)
    (sd.root / "data" / "calibration.json").unlink()
    run_stages(sd, STAGES, "local", progress=False)
    assert all(sd.counts(s)["error"] == 0 and sd.counts(s)["pending"] == 0 for s in STAGES)
    t = pd.read_csv(sd.results_dir / "candidates.csv")
    cands = t[t["kind"] == "candidate"]
    assert len(cands) == 6 and list(cands["set"]) == [0, 0, 1, 1, 2, 2]
    assert list(cands["replicate"]) == [0, 1] * 3
    for _, pair in cands.groupby("set"):
        assert pair["nodes"].nunique() == 1 and pair["learning_rate"].nunique() == 1
    summary = json.loads((sd.results_dir / "summary.json").read_text())
    assert summary["candidates"] == 6 and summary["seeds"] == 2
    text = (sd.root / "report" / "report.md").read_text()
    assert "## Seed replicates (training.seeds)" in text and "3 hyperparameter sets" in text


def test_cancelled_and_requeued_tasks_leave_no_gap_or_duplicate(
        local_slurm: Path, local_study: StudyDir, tmp_path: Path) -> None:
    """Longer coupled runs of the local study's candidates (training reused): one running task
    is requeued by Slurm (it runs again by itself), one is killed with scancel; --resume
    reruns the killed one only. Every run appears exactly once."""
    # every window-climate criterion off (the mean/std drift test too): they stop most of
    # these runs within 0.02 s, and a task must still be running when it is requeued or
    # cancelled (with them on, the cancelled task had sometimes finished: CI, 2026-12-07);
    # a million steps make a task last seconds
    data = merged(TINY, couple__steps=1000000, executor__kind="slurm",
                  executor__slurm__throttle=2, couple__drift=False, couple__drift_pdf_bins=0,
                  couple__drift_acf_lags=[])
    sd = make_study(tmp_path / "cancel", data)
    _copy_finished(local_study, sd, ("data", "train", "convert"))
    from harness.study.executors import SlurmExecutor
    jobs = SlurmExecutor(progress=False).submit(sd, ["couple"])
    job = jobs[0]["job_id"]
    acted: dict[str, str] = {}
    deadline = time.time() + 240
    while len(acted) < 2 and time.time() < deadline:
        running = [j for j, state in queue_of([job]) if state == "RUNNING" and j not in acted]
        if running:
            task = running[0]
            action = "requeue" if not acted else "cancel"
            cmd = ["scontrol", "requeue", task] if action == "requeue" else ["scancel", task]
            if subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0:
                acted[task] = action
                if action == "requeue":   # Slurm holds a requeued job back ~2 min: not here
                    release(task)
        time.sleep(0.2)
    assert len(acted) == 2, acted
    while queue_of([job]):
        time.sleep(0.5)
    cancelled = int(next(t for t, a in acted.items() if a == "cancel").split("_")[1])
    requeued = int(next(t for t, a in acted.items() if a == "requeue").split("_")[1])
    assert sd.pending("couple") == [cancelled]
    assert sd.task_state("couple", requeued) == "ok"
    run_stages(StudyDir.open(sd.root), STAGES, progress=False)      # --resume
    assert all(sd.counts(s)["pending"] == 0 and sd.counts(s)["error"] == 0 for s in STAGES)
    resubmitted = json.loads((sd.root / "slurm" / "jobs.json").read_text())[1:]
    assert [j["stage"] for j in resubmitted] == ["couple", "collect", "report"]
    assert resubmitted[0]["array"] == str(cancelled)
    runs = pd.read_csv(sd.results_dir / "runs.csv")
    assert len(runs) == 12 and runs[["name", "ic"]].duplicated().sum() == 0
    assert set(runs["status"]) <= {"completed", "failed"}


def test_tasks_after_a_cancelled_training_wait_for_it(local_study: StudyDir,
                                                      tmp_path: Path) -> None:
    """A training task killed before it wrote anything: the later stages still run (as after
    Slurm's afterany), but what needs that candidate records 'waiting', not a result;
    --resume then trains it and reruns exactly those tasks, and the table is the undisturbed
    one."""
    sd = make_study(tmp_path / "waiting", TINY)
    _copy_finished(local_study, sd, ("data", "train"))
    shutil.rmtree(sd.candidate_dir("c0001"))
    (sd.root / "tasks" / "train" / "1.json").unlink()
    run_stages(sd, ["convert", "couple", "collect", "report"], "local", progress=False)
    waiting = {stage: [i for i in range(sd.n_tasks(stage))
                       if sd.task_state(stage, i) == "waiting"] for stage in STAGES}
    blocked = [i for i, t in enumerate(sd.plan["couple"])
               if t["name"] in ("c0001", "ensemble-top2")]
    assert waiting == {"data": [], "train": [], "convert": [1], "couple": blocked,
                       "collect": [0], "report": [0]}
    assert sd.pending("train") == [1] and sd.counts("couple")["waiting"] == len(blocked)
    marker = json.loads(sd.marker("convert", 1).read_text())
    assert marker["message"] == "waiting for train task(s) 1 (not finished)"
    proc = harness_cli("status", str(sd.root))
    n = sd.n_tasks("couple")
    assert f"couple {n - len(blocked)}/{n} done, {len(blocked)} waiting" in proc.stdout
    proc = harness_cli("study", "--resume", str(sd.root), "--executor", "local", "-q")
    assert proc.returncode == 0, proc.stderr
    assert all(sd.counts(s)["ok"] == sd.n_tasks(s) for s in STAGES)
    pd.testing.assert_frame_equal(table(sd), table(local_study))


def test_sweep_with_cancelled_requeued_tasks_and_a_slurmd_restart_resumes_to_the_same_table(
        local_slurm: Path, local_study: StudyDir, tmp_path: Path) -> None:
    """tests/sweep_faults.py on the tiny study: 20% of the array tasks seen running are
    cancelled, one coupled run is requeued, slurmd restarts once, two collects run at once
    over and over while a reader checks every results file it sees; --resume completes."""
    config = tmp_path / "tiny.toml"
    config.write_text(toml_text(TINY))
    report = run_with_faults(config, tmp_path / "disturbed", local_slurm,
                                          local_study.root)
    summary = json.dumps(asdict(report), indent=1)
    assert report.sweep_rc == 0, summary
    # train 3 + convert 3 + couple 6 (one task per model: its 2 initial conditions batched)
    assert report.array_tasks == 12 and report.seen_running >= 8, summary
    assert len(report.cancelled) == math.ceil(0.2 * report.seen_running), summary
    assert report.cancelled_lost_work >= 1 and report.waiting_after_sweep >= 1, summary
    assert len(report.requeued) == 1 and report.requeued_attempt == 2, summary
    assert report.slurmd_restarts == 1 and report.running_at_restart >= 1, summary
    assert report.collect_calls >= 2 and not report.collect_failures, summary
    assert report.reads > 0 and not report.partial_reads, summary
    assert report.resume_rc == 0 and report.lost == 0 and report.duplicated == 0, summary
    assert not report.stray_temp_files, summary
    assert report.table_equal, report.table_difference


def test_shallow_water_study_end_to_end(tmp_path: Path) -> None:
    """The sw host through every stage: 15 stencil inputs -> 3 forcing outputs per cell, the
    energy criterion calibrated on the truth run, the 'none' and 'truth' baselines."""
    data = {"name": "sw-tiny", "seed": 2, "host": {"name": "sw", "model": {"nx": 16, "ny": 16},
                                                   "run": {"wind_scale": 2.0}},
            "data": {"steps": 1920, "spinup_steps": 480, "sample_interval": 24},
            "space": {"nodes": [8], "layers": [1, 1]},
            "training": {"candidates": 2, "epochs": 2, "batch_size": 256},
            "couple": {"steps": 96, "initial_conditions": 2, "ensemble_top_k": 2},
            "executor": {"workers": 2}}
    sd = make_study(tmp_path / "sw", data)
    run_stages(sd, STAGES, "local", progress=False)
    assert all(sd.counts(s)["error"] == 0 and sd.counts(s)["pending"] == 0 for s in STAGES)
    t = pd.read_csv(sd.results_dir / "candidates.csv").set_index("name")
    assert list(t.index) == ["c0000", "c0001", "baseline-none", "baseline-truth",
                             "ensemble-top2"]
    assert (t["n_runs"] == 2).all()
    assert (t.loc[["c0000", "c0001"], "n_params"] > 0).all()
    cal = json.loads((sd.root / "data" / "calibration.json").read_text())
    assert cal["failure"]["energy_max"] == pytest.approx(10 * cal["truth_energy_max"])
    # the truth forcing as a closure reproduces the truth: it cannot fail the energy test
    assert t.loc["baseline-truth", "n_failed"] == 0
    curves = pd.read_csv(sd.results_dir / "curves.csv")
    assert set(curves["name"]) == set(t.index)
    assert (sd.root / "report" / "report.md").is_file()


# ---------------------------------------------------------------------------------------------
STANDIN_RUNTIME = """#!/bin/bash
# Stand-in for `apptainer exec [OPTIONS] IMAGE COMMAND...`: Apptainer cannot be installed where
# these tests run. It records its arguments and the job step it runs in, checks that the image
# and every bound path exist, and runs COMMAND with the harness of the tests ("the image's").
set -eu
[ "$1" = exec ] || {{ echo "stand-in: only 'exec'" >&2; exit 64; }}
printf '%s\\0' "$@" "step=${{SLURM_STEP_ID:-none}}" > "{log}/call.$$"
shift
while [ $# -gt 0 ]; do
  case $1 in
    --bind) [ -e "${{2%%:*}}" ] || {{ echo "stand-in: no $2" >&2; exit 65; }}; shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ -f "$1" ] || {{ echo "stand-in: no image $1" >&2; exit 66; }}
shift
PATH={bin}:$PATH exec "$@"
"""


def test_slurm_tasks_run_inside_the_container_image(local_slurm: Path, local_study: StudyDir,
                                                   tmp_path: Path) -> None:
    """executor.slurm.container: every array task is `srun RUNTIME exec --bind STUDY ... IMAGE
    harness task ...`, quoted; RUNTIME here is a recording stand-in for apptainer (see above),
    so this checks the generated command and the job steps, not Apptainer itself."""
    calls = tmp_path / "calls"
    calls.mkdir()
    runtime = tmp_path / "bin" / "apptainer"
    runtime.parent.mkdir()
    runtime.write_text(STANDIN_RUNTIME.format(log=calls, bin=Path(sys.executable).parent))
    runtime.chmod(0o755)
    image = tmp_path / "images dir" / "colnn 'v1'.sif"
    image.parent.mkdir()
    image.write_bytes(b"SIF stand-in")
    data_dir = tmp_path / "shared data"
    data_dir.mkdir()
    container = {"image": str(image), "runtime": str(runtime), "options": ["--cleanenv"],
                 "bind": [f"{data_dir}:/data:ro"]}
    sd = make_study(tmp_path / "study $(x)", merged(TINY, executor__kind="slurm",
                                                    executor__slurm__bundle=4,
                                                    executor__slurm__container=container))
    run_stages(sd, STAGES, progress=False)
    pd.testing.assert_frame_equal(table(sd), table(local_study))
    recorded = [p.read_bytes().split(b"\0")[:-1] for p in calls.iterdir()]
    n_array_tasks = sum(-(-sd.n_tasks(s) // 4) for s in STAGES)
    assert len(recorded) == n_array_tasks
    for call in recorded:
        words = [w.decode() for w in call]
        assert words[:3] == ["exec", "--bind", str(sd.root)]
        assert words[3:8] == ["--bind", f"{data_dir}:/data:ro", "--cleanenv", str(image),
                              "harness"]
        assert words[8] == "task" and words[-1] != "step=none"   # a job step of srun
    script = (sd.root / "slurm" / "couple.sbatch").read_text()
    assert "srun --ntasks=1 --cpus-per-task=1 " in script
    assert_scripts_pass_shellcheck(sd.root)
    assert "'" + str(image).replace("'", "'\"'\"'") + "' harness task couple" in script


@pytest.mark.parametrize("container, message", [
    ({"image": "colnn.sif"}, "executor.slurm.container.image: an absolute path"),
    ({"image": "/x.sif", "options": ["--bind x; rm"]}, "executor.slurm.container.options[0]"),
    ({"image": "/x.sif", "bind": ["/a,/b"]}, "executor.slurm.container.bind[0]"),
    ({"image": "/x.sif", "runtime": "apptainer exec"}, "executor.slurm.container.runtime"),
    ({"image": "/x.sif", "imagee": 1}, "executor.slurm.container.imagee: unknown key"),
])
def test_invalid_container_settings_name_the_key(container: dict, message: str) -> None:
    with pytest.raises(StudyError, match=re.escape(message)):
        config_from_dict(merged(TINY, executor__slurm__container=container), "test")


def test_a_missing_image_stops_the_submission(local_slurm: Path, tmp_path: Path) -> None:
    sd = make_study(tmp_path / "s", merged(TINY, executor__kind="slurm",
                                           executor__slurm__container={"image": "/nonexistent.sif"}))
    with pytest.raises(StudyError, match="/nonexistent.sif: no such file here"):
        run_stages(sd, ["data"], progress=False)
    assert not (sd.root / "slurm" / "jobs.json").exists()
