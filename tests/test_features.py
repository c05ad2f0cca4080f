"""Which variable, level and unit sits at each input and output position: recorded by `harness
convert --inputs-meta/--outputs-meta` as meta lines, printed by `harness info`, kept by the
library, and bad descriptions refused with the file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.features import Feature, features_of
from harness.modelfile import read_model, write_model
from harness.native import NativeModel

from test_ensemble import member


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("name,level,units\n" + "".join(r + "\n" for r in rows))
    return path


INPUTS = ["ta,850,K", "ta,500,K", "qv,850,kg/kg", "qv,500,kg/kg", "ps,,Pa", "solin,-,W/m2"]
OUTPUTS = ["dtdt,850,K/s", "dtdt,500,K/s", "dqdt,850,kg/kg/s", "dqdt,500,kg/kg/s"]


def test_convert_records_and_info_prints_the_features(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "m.colnn"
    write_model(member(np.random.default_rng(0)), src)
    out = tmp_path / "described.colnn"
    assert main(["convert", str(src), "-o", str(out),
                 "--inputs-meta", str(_csv(tmp_path / "in.csv", INPUTS)),
                 "--outputs-meta", str(_csv(tmp_path / "out.csv", OUTPUTS))]) == 0
    spec = read_model(out)
    assert features_of(spec, "input")[4] == Feature("ps", "-", "Pa")
    assert [f.text() for f in features_of(spec, "output")][:2] == ["dtdt 850 K/s",
                                                                  "dtdt 500 K/s"]
    assert "meta input_feature 3 qv 850 kg/kg" in out.read_text()
    # the library reads the file and keeps the lines when it saves the model again
    with NativeModel(out) as m:
        m.save(tmp_path / "again.colnn")
    assert features_of(read_model(tmp_path / "again.colnn"), "input") == \
        features_of(spec, "input")
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "inputs (name level units):" in text and "solin" in text and "dqdt" in text
    assert main(["info", str(src)]) == 0
    assert "inputs: not described" in capsys.readouterr().out


@pytest.mark.parametrize("rows, header, message", [
    (INPUTS[:5], True, "5 input features described, the model has 6"),
    (INPUTS[:5] + ["t a,850,K"], True, "in.csv:7: name 't a' must be one token"),
    (INPUTS[:5] + ["ta,850"], True, "in.csv:7: expected name,level,units"),
    (INPUTS, False, "in.csv:1: the header must be 'name,level,units'"),
])
def test_bad_descriptions_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                      rows: list[str], header: bool, message: str) -> None:
    src = tmp_path / "m.colnn"
    write_model(member(np.random.default_rng(0)), src)
    csv_path = tmp_path / "in.csv"
    if header:
        _csv(csv_path, rows)
    else:
        csv_path.write_text("".join(r + "\n" for r in rows))
    assert main(["convert", str(src), "-o", str(tmp_path / "o.colnn"),
                 "--inputs-meta", str(csv_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.colnn").exists()
