"""Bad model files never crash, hang or over-allocate the Fortran reader (a bounded fuzz run of
tests/fuzz_model_reader.py), and the fuzzer's classification does catch such children."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

import fuzz_model_reader as fz

N_MUTANTS = int(os.environ.get("COLNN_FUZZ_MUTANTS", "400"))


@pytest.fixture(scope="module")
def loader(lib_single: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fz.build_loader(lib_single, tmp_path_factory.mktemp("fuzz-loader"))


def _c_child(tmp_path: Path, body: str) -> Path:
    src = tmp_path / "child.c"
    src.write_text(textwrap.dedent(f"""
        #include <signal.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <unistd.h>
        int main(int argc, char **argv) {{
          (void)argc; (void)argv;
          {body}
          return 0;
        }}
        """))
    exe = tmp_path / "child"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    return exe


def test_classifier_catches_crashes_hangs_and_bad_messages(tmp_path: Path) -> None:
    path = str(tmp_path / "model.colnn")
    script = tmp_path / "child.sh"

    def outcome(body: str, timeout: float = fz.TIMEOUT_S, memory_limit: int | None = None) -> str:
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(0o755)
        return fz.run_child(script, path, timeout=timeout, memory_limit=memory_limit).outcome

    assert outcome("kill -SEGV $$") == "crash"
    assert outcome("sleep 20", timeout=1) == "hang"
    assert outcome("echo 'Fortran runtime error: Substring out of bounds' >&2; exit 2") == "exit"
    assert outcome("echo \"Error allocating 8589934588 bytes: Cannot allocate memory\" >&2; "
                   "exit 1") == "memory"
    assert outcome("exit 0") == "exit"                                 # no result line
    assert outcome("echo 'error 2: '") == "no_message"
    assert outcome("echo 'error 3: optimizer adam: bad value'") == "unnamed"
    assert outcome(f"echo 'error 6: {path}: cannot allocate tensor'") == "memory"
    assert outcome("echo 'invalid non-finite trainable value'") == "accepted_invalid"
    assert outcome(f"echo 'error 2: {path}:3: bad value'") == "error"
    assert outcome("echo 'ok inputs=1 outputs=1 layers=1 params=2 forward=0'") == "ok"
    # real programs: abort() and a NULL dereference, and an allocation over the address limit
    assert fz.run_child(_c_child(tmp_path, "abort();"), path).outcome == "crash"
    assert fz.run_child(_c_child(tmp_path, "volatile int *p = NULL; *p = 1;"),
                        path).outcome == "crash"
    big = _c_child(tmp_path, 'char *p = malloc((size_t)4 << 30); if (!p) { '
                   'fputs("out of memory\\n", stderr); return 1; } memset(p, 1, 1); '
                   'printf("ok x\\n");')
    assert fz.run_child(big, path, memory_limit=1 << 30).outcome == "memory"


def test_loader_reports_ok_and_errors(loader: Path, tmp_path: Path) -> None:
    seeds = fz.make_seeds(tmp_path)
    for seed in seeds:
        p = tmp_path / f"{seed.name}.{seed.fmt}"
        res = fz.run_child(loader, str(p), resave=str(p) + ".re.colnn")
        assert res.outcome == "ok", (seed.name, res.detail, res.stderr)
    missing = str(tmp_path / "missing.colnn")
    res = fz.run_child(loader, missing)
    assert res.outcome == "error" and res.stdout.startswith("error 1: "), res.detail
    res = fz.run_child(loader, str(tmp_path))
    assert res.outcome == "error", res.detail


def test_nonfinite_and_huge_sizes_are_refused(loader: Path, tmp_path: Path) -> None:
    """NaN/Inf weights and sizes the file cannot hold give a clean, located error."""
    seeds = {s.name: s for s in fz.make_seeds(tmp_path)}
    text = seeds["dense32"].data.decode()
    fkb = seeds["fkb_dense"].data.decode()
    lines = text.split("\n")
    row = next(i for i, line in enumerate(lines) if line.startswith("tensor kernel")) + 1
    cases = {
        "nan.colnn": "\n".join(lines[:row] + ["nan " + lines[row].split(None, 1)[1]]
                               + lines[row + 1:]),
        "inf.colnn": "\n".join(lines[:row] + ["-inf " + lines[row].split(None, 1)[1]]
                               + lines[row + 1:]),
        "overflow.colnn": "\n".join(lines[:row] + ["1e39 " + lines[row].split(None, 1)[1]]
                                    + lines[row + 1:]),
        "exponent.colnn": "\n".join(lines[:row] + ["1-2 " + lines[row].split(None, 1)[1]]
                                    + lines[row + 1:]),
        "huge_tensor.colnn": text.replace("tensor kernel 3 4", "tensor kernel 3 2147483647"),
        "huge_layers.colnn": text.replace("layers 2", "layers 2147483647"),
        "huge_units.fkb": fkb.replace("dense\t4", "dense\t2147483647"),
        "huge_input_bn.fkb": "2\ninput\t2000000000\nbatchnormalization\t0\n0.1\n1\n1\n1\n1\n",
        "trailing.fkb": fkb + "1 2 3\n",
    }
    for name, content in cases.items():
        p = tmp_path / name
        p.write_text(content)
        res = fz.run_child(loader, str(p))
        assert res.outcome == "error", (name, res.outcome, res.detail, res.stderr[-500:])
        assert str(p) in res.stdout, (name, res.stdout)


def test_bounded_fuzz_run(lib_single: Path, tmp_path: Path) -> None:
    """A seeded run of N_MUTANTS mutants (about 10 s on 2 cores): no findings at all."""
    save = tmp_path / "findings"
    summary = fz.fuzz(N_MUTANTS, run_seed=20240917, lib=lib_single, workers=2, save_dir=save)
    report = fz.format_summary(summary, 20240917, lib_single)
    assert summary.n == N_MUTANTS
    assert summary.bad == 0, report
    # the run exercised both outcomes, and most mutation kinds
    assert summary.outcomes["ok"] > 0 and summary.outcomes["error"] > N_MUTANTS // 2, report
    assert len(summary.by_kind) >= 12, report
