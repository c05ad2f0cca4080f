"""`harness convert` + `harness verify` on the paper architecture, in both precisions, and the
command line's handling of bad input (one line, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.convert import convert
from harness.verify import verify

from paper_model import paper_model


@pytest.fixture(scope="module")
def paper_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("paper")
    files = {}
    for dtype in ("float32", "float64"):
        model = paper_model(dtype)
        files[f"{dtype}.keras"] = d / f"paper_{dtype}.keras"
        model.save(files[f"{dtype}.keras"])
        files[f"{dtype}.colnn"] = d / f"paper_{dtype}.colnn"
        convert(files[f"{dtype}.keras"], files[f"{dtype}.colnn"])
    model = paper_model("float32")
    files["float32.h5"] = d / "paper.h5"
    model.save(files["float32.h5"])
    return files


def test_paper_architecture_single(paper_files: dict[str, Path]) -> None:
    r = verify(paper_files["float32.keras"], paper_files["float32.colnn"], columns=2048, seed=1)
    print(r.report())
    assert r.library_precision == "float32"
    assert r.n_outputs == 65 and r.n_columns == 2048
    assert r.rel_error <= 1e-5, r.report()
    assert r.passed


def test_paper_architecture_double(paper_files: dict[str, Path]) -> None:
    r = verify(paper_files["float64.keras"], paper_files["float64.colnn"], columns=1024, seed=2)
    print(r.report())
    assert r.library_precision == "float64"
    assert r.rel_error <= 1e-12, r.report()


def test_legacy_h5_converts_and_verifies(paper_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "from_h5.colnn"
    convert(paper_files["float32.h5"], out)
    r = verify(paper_files["float32.h5"], out, columns=256)
    assert r.passed, r.report()


def test_verify_with_user_inputs(paper_files: dict[str, Path], tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-3, 3, (100, 94)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = verify(paper_files["float32.keras"], paper_files["float32.colnn"], inputs=tmp_path / "x.npy")
    assert r.n_columns == 100 and r.passed
    np.save(tmp_path / "bad.npy", x[:, :10])
    rc = main(["verify", str(paper_files["float32.keras"]), str(paper_files["float32.colnn"]),
               "--inputs", str(tmp_path / "bad.npy")])
    assert rc == 2


def test_verify_fails_outside_tolerance(paper_files: dict[str, Path], capsys) -> None:
    rc = main(["verify", str(paper_files["float32.keras"]), str(paper_files["float32.colnn"]),
               "--columns", "64", "--tol", "1e-12"])
    assert rc == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_detects_a_wrong_model(paper_files: dict[str, Path], tmp_path: Path) -> None:
    """The check can fail: perturb one weight of the converted file and verification fails."""
    from harness.modelfile import read_model, write_model
    spec = read_model(paper_files["float32.colnn"])
    spec.layers[0].tensors["kernel"][3, 7] += 0.05
    write_model(spec, tmp_path / "perturbed.colnn")
    r = verify(paper_files["float32.keras"], tmp_path / "perturbed.colnn", columns=256)
    assert not r.passed and r.rel_error > 1e-4


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.keras").write_bytes(b"PK\x03\x04 not really a zip")
    proc = subprocess.run([sys.executable, "-m", "harness", "convert", str(tmp_path / "junk.keras"),
                           "-o", str(tmp_path / "x.colnn")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("harness: error:") and "junk.keras" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "harness", "verify", str(tmp_path / "none.keras"),
                           str(tmp_path / "none.colnn")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "none.colnn" in proc.stderr


def test_cli_help_lists_subcommands() -> None:
    proc = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for cmd in ("convert", "verify", "info", "demo"):
        assert cmd in proc.stdout


def test_fkb_text_file_of_the_paper_architecture(paper_files: dict[str, Path],
                                                 tmp_path: Path) -> None:
    """Keras -> FKB text file -> the Fortran library's FKB reader, which keeps the layer order
    (Dense, BatchNorm, LeakyReLU): within float32 tolerance of Keras."""
    fkb = tmp_path / "paper.fkb"
    convert(paper_files["float32.keras"], fkb)
    head = fkb.read_text().splitlines()[:6]
    assert head[0].strip().isdigit() and head[1].split()[0] == "input"
    r = verify(paper_files["float32.keras"], fkb, columns=512)
    assert r.passed, r.report()
    back = tmp_path / "from_fkb.colnn"
    assert main(["convert", str(fkb), "-o", str(back), "--from", "fkb"]) == 0
    assert verify(paper_files["float32.keras"], back, columns=256).passed


def test_float32_keras_model_on_the_double_library(paper_files: dict[str, Path],
                                                   lib_double: Path) -> None:
    """The tolerance comes from the less precise side: a float32 Keras model run by the double
    library agrees to float32 rounding (it once failed at ~3e-6 against 1e-12)."""
    r = verify(paper_files["float32.keras"], paper_files["float32.colnn"], columns=256,
               library=lib_double)
    assert (r.library_precision, r.keras_precision, r.tol) == ("float64", "float32", 1e-5)
    assert r.passed, r.report()
    assert str(lib_double) in r.report() and "float32 Keras model" in r.report()


def test_verify_output_holds_no_tensorflow_log_lines(paper_files: dict[str, Path]) -> None:
    proc = subprocess.run([sys.executable, "-m", "harness", "verify",
                           str(paper_files["float32.keras"]), str(paper_files["float32.colnn"]),
                           "--columns", "64"], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert proc.stdout.rstrip().endswith("PASS")
