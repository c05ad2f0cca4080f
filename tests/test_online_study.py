"""The study option training.online_steps: every candidate gets an online-trained twin (its
architecture and initial weights, trained only online by the Fortran host in a truth run),
coupled as NAME-online and compared pair by pair in the report; a host whose plugin cannot
train online, and bad values, are config errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.modelfile import read_model
from harness.study.config import StudyError, config_from_dict
from harness.study.layout import read_json
from harness.study.runner import run_stages
from test_study import TINY, make_study, merged

ONLINE = merged(TINY, training__online_steps=6000, training__online_interval=2,
                couple__ensemble_top_k=0)


def test_online_twins_are_trained_coupled_and_compared(tmp_path: Path) -> None:
    sd = make_study(tmp_path / "online", ONLINE)
    run_stages(sd, executor="local", progress=False)
    table = pd.read_csv(sd.results_dir / "candidates.csv")
    twins = table[table["kind"] == "online"]
    cands = table[table["kind"] == "candidate"]
    assert sorted(twins["name"]) == sorted(f"{n}-online" for n in cands["name"])
    for _, twin in twins.iterrows():
        base = cands[cands["name"] == twin["name"].removesuffix("-online")].iloc[0]
        # the candidate's hyperparameters, its own training
        for h in ("nodes", "layers", "optimizer", "learning_rate", "batch_norm", "dropout"):
            assert twin[h] == base[h], h
        online = read_json(sd.candidate_dir(base["name"]) / "online.json")
        assert online["status"] == "ok", online
        assert online["optimizer_steps"] + online["skipped"] == 3000
        assert twin["n_runs"] == base["n_runs"] > 0
        trained = read_model(sd.candidate_dir(base["name"]) / "online.colnn")
        start = read_model(sd.candidate_dir(base["name"]) / "online0.colnn")
        assert trained.training is not None and start.training is None
        assert any((a.tensors[k] != b.tensors[k]).any() for a, b in
                   zip(trained.layers, start.layers) for k in a.tensors if a.type == "dense")
    report = (sd.root / "report" / "report.md").read_text()
    assert "## Online-trained twins (training.online_steps)" in report
    assert "Pairs: 3 (of 3 twins)" in report
    assert (sd.root / "report" / "fig7_online_vs_offline.png").read_bytes()[:4] == b"\x89PNG"
    # the offline statistics are the candidates' alone
    assert "in the correlations: 3" in report


@pytest.mark.parametrize("change, key", [
    ({"training__online_steps": -1}, "training.online_steps"),
    ({"training__online_steps": 10, "training__online_interval": 0}, "training.online_interval"),
    ({"training__online_steps": 10, "training__online_interval": 20}, "training.online_interval"),
])
def test_bad_online_settings_are_config_errors(change: dict, key: str) -> None:
    with pytest.raises(StudyError, match=key.replace(".", r"\.")):
        config_from_dict(merged(TINY, **change), "study.toml")
