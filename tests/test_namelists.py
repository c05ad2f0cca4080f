"""The namelist files the harness writes for the hosts (through f90nml): every key of both
hosts goes through the writer and the host's own namelist read unchanged (the host prints what
it read with --print-config), and a non-finite number in a TOML file is refused with its key's
path before anything is written, never turned into another value."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import f90nml
import pytest

from harness.hosts import (HOSTS, HostError, HostRun, host_defaults, host_executable,
                           host_run_from_dict, namelist_text)

# values that the host's validation accepts, for the string keys that name a choice
CHOICES = {"mode": ["truth", "coarse"], "closure": ["cubic", "none"], "inputs": ["local", "full"],
           "inject_value": ["-inf", "inf"], "inject_target": ["state", "nn_input"]}


def _changed(key: str, default: Any, tmp_path: Path) -> Any:
    """A value of the key's type other than its default, with all the digits a double has."""
    if isinstance(default, list) and default and isinstance(default[0], str):
        # a host's per-run paths (run_dirs): one of its own each
        return [f"{_changed(key, d, tmp_path)} {i}" for i, d in enumerate(default)]
    if isinstance(default, list):
        return [_changed(key, d, tmp_path) * (i + 1) for i, d in enumerate(default)]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default * 1.000000000000321 + 0.1234567890123457
    if key in CHOICES:
        return next(c for c in CHOICES[key] if c != default)
    # a path with a space and both quote characters
    return str(tmp_path / f"it's a \"{key}\" file")


@pytest.mark.parametrize("host", HOSTS)
def test_every_host_key_round_trips_through_the_namelist(host: str, tmp_path: Path) -> None:
    defaults = host_defaults(host)
    sections = {group.removeprefix(f"{host}_"): {k: _changed(k, v, tmp_path)
                                                  for k, v in values.items()}
                for group, values in defaults.items()}
    output_dir = Path(sections["run"].pop("output_dir"))
    run = HostRun(host=host, output_dir=output_dir, **sections)
    nml = tmp_path / "run.nml"
    nml.write_text(namelist_text(run))
    proc = subprocess.run([str(host_executable(host)), "--print-config", str(nml)],
                          capture_output=True, text=True, timeout=60)
    # the host's own checks may refuse a combination (its message says why); what it read is
    # printed before them
    assert proc.returncode in (0, 1), proc.stderr
    echoed = f90nml.reads(proc.stdout)
    assert set(echoed) == set(defaults)
    for group, values in run.groups().items():
        if group == "colnn_coupler":
            continue
        for key, value in values.items():
            got = echoed[group][key]
            got = got.rstrip() if isinstance(got, str) else got
            if isinstance(got, list):
                got = [g.rstrip() if isinstance(g, str) else g for g in got]
            assert got == value and type(got) is type(value), f"{group}.{key}: {value!r} -> {got!r}"
            assert got != defaults[group][key] or key == "output_dir"


@pytest.mark.parametrize("text, key", [
    ("[model]\nf = nan\n", "model.f"),
    ("[model]\nf = -inf\n", "model.f"),
    ("[run]\ncubic_coeffs = [-0.6826, inf, -0.0012, 0.0030]\n", "run.cubic_coeffs[1]"),
    ("[failure]\nmax_abs = +nan\n", "failure.max_abs"),
])
def test_non_finite_toml_values_are_refused(text: str, key: str, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('host = "l96"\n' + text)
    proc = subprocess.run([sys.executable, "-m", "harness", "host", "run", "bad.toml",
                           "-o", "out"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert f"bad.toml: {key}: must be a finite number" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_writer_refuses_what_it_cannot_write_exactly(tmp_path: Path) -> None:
    """A HostRun built in code (a study's calibration) gets the same check."""
    run = HostRun(host="l96", output_dir=tmp_path, failure={"clim_mean": math.nan})
    with pytest.raises(HostError, match="l96_failure.clim_mean: must be a finite number"):
        namelist_text(run)
    with pytest.raises(HostError, match=r"run.dt: must be a finite number, got inf"):
        host_run_from_dict({"host": "sw", "run": {"dt": math.inf}}, tmp_path)


def test_coupler_noise_per_feature(tmp_path: Path) -> None:
    run = host_run_from_dict({"host": "l96", "coupler": {
        "ensemble": "ens", "noise_sd": [0.1, 0.2, 0.3], "noise_units": "normalized"}}, tmp_path)
    group = f90nml.reads(namelist_text(run))["colnn_coupler"]
    assert group["noise_sd"] == [0.1, 0.2, 0.3] and group["noise_units"] == "normalized"
    for bad, message in (([], "expected a number"), ([0.1, math.nan], "noise_sd[1]: must be a "
                                                       "finite number")):
        with pytest.raises(HostError, match=re.escape(message)):
            host_run_from_dict({"host": "l96", "coupler": {"noise_sd": bad}}, tmp_path)
