#!/usr/bin/env python3
"""Run one variant of a study configuration and print how informative its verdict is.

How the README's main job (examples/study/l96-small.toml) got its host settings, budget and
criteria: each variant is the configuration with some keys replaced, run as a whole study on
the local executor, then summarised by the share of censored candidates (median steps at the
budget) and by where the failures fall (all at the first check says little; spread over the
budget is what a survival analysis can use).

  .venv/bin/python scripts/study_variants.py examples/study/l96-small.toml /tmp/variants/full \\
      host.inputs='"full"' space.learning_rate='[1e-4, 1e-2]'

Each KEY=VALUE takes a TOML value (strings in double quotes). The variant's TOML, the study
and a summary line (also appended to DIR/../summary.txt) are written under DIR. To run several
variants and compare their statistics in one report: `harness compare --config CONFIG
--variant NAME:KEY=VALUE[;KEY=VALUE...] ... -o OUT` (README, "Comparing studies").
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd

from harness.study.config import StudyError
from harness.study.variants import apply_settings, parse_setting, toml_text


def summary(study: Path, budget: int) -> str:
    cand = pd.read_csv(study / "results/candidates.csv")
    cand = cand[cand.kind == "candidate"]
    runs = pd.read_csv(study / "results/runs.csv")
    runs = runs[runs.kind == "candidate"]
    failed = sorted(int(s) for s in cand.steps_to_failure if s < budget)
    return (f"censored (median at the budget) {(cand.steps_to_failure >= budget).mean():.0%}, "
            f"survived every initial state {cand.survived.mean():.0%}, n = {len(cand)}; "
            f"candidates' median failure steps {failed}; "
            f"runs stopped by {runs.reason.value_counts().to_dict()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path, help="the study TOML the variant starts from")
    ap.add_argument("directory", type=Path, help="where the variant's TOML and study go")
    ap.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                    help="dotted key and TOML value, e.g. host.stencil_halfwidth=3")
    args = ap.parse_args()
    try:
        cfg = apply_settings(tomllib.loads(args.config.read_text()),
                             [parse_setting(item, strict=True) for item in args.settings])
    except StudyError as exc:
        raise SystemExit(str(exc)) from None
    cfg["name"] = args.directory.name
    args.directory.mkdir(parents=True, exist_ok=True)
    variant = args.directory / "variant.toml"
    variant.write_text(toml_text(cfg))
    start = time.monotonic()
    with open(args.directory / "study.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "harness", "study", str(variant), "-o",
                             str(args.directory / "study"), "-q"], stdout=log,
                            stderr=subprocess.STDOUT).returncode
    line = (f"{args.directory.name} [{' '.join(args.settings)}]: rc {rc}, "
            f"{time.monotonic() - start:.0f} s")
    if rc == 0:
        line += "; " + summary(args.directory / "study", int(cfg["couple"]["steps"]))
    print(line)
    with open(args.directory.parent / "summary.txt", "a") as out:
        out.write(line + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
