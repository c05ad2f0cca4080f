#!/usr/bin/env python3
"""Run a study with and without a training option and compare the two pair by pair.

The configuration is run as it is (arm A, e.g. training.mass_constraint = 0) and once per
--weights value with only ``training.mass_constraint`` (and the name) rewritten (arms B): the
same study seed draws the same candidates and the same truth runs, so candidate cNNNN of A and
of B differ in the loss alone. Each B is then compared with A by `harness paired`:

  python scripts/paired_compare.py examples/study/sw-brajard.toml --weights 10 100 \\
      -o studies/sw-brajard

writes DIR/free (A), DIR/mass-W (B) and DIR/paired-W/paired.md for each weight W, and prints
each study's wall time and the paired summary. A study that is already complete is reused.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.paired import compare_paired, config_differences, write_paired  # noqa: E402
from harness.study.config import STAGES, config_from_dict, config_to_dict  # noqa: E402
from harness.study.layout import StudyDir  # noqa: E402
from harness.study.runner import run_stages  # noqa: E402

_KEY = re.compile(r"^(\s*mass_constraint\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", re.M)
_NAME = re.compile(r'^(name\s*=\s*)"([^"]*)"', re.M)


def variant_text(text: str, weight: float) -> str:
    """The configuration's text with training.mass_constraint = weight and the name suffixed,
    comments and everything else kept; refuses a file without one such line."""
    if len(_KEY.findall(text)) != 1 or len(_NAME.findall(text)) < 1:
        raise SystemExit("the configuration needs exactly one 'mass_constraint = ...' line (in "
                         "[training]) and a top-level name = \"...\"")
    text = _KEY.sub(lambda m: f"{m.group(1)}{weight!r}{m.group(3)}", text)
    return _NAME.sub(lambda m: f'{m.group(1)}"{m.group(2)}-mass{weight:g}"', text, count=1)


def run_study(root: Path, text: str, source: str) -> tuple[StudyDir, float]:
    cfg = config_from_dict(tomllib.loads(text), source)
    sd = StudyDir.create(root, cfg, text)
    start = time.perf_counter()
    run_stages(sd, STAGES, "local", progress=False)
    return sd, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path, help="study TOML with a training.mass_constraint line")
    p.add_argument("--weights", type=float, nargs="+", required=True,
                   help="training.mass_constraint of the B arms (each > 0)")
    p.add_argument("-o", "--output", type=Path, required=True, help="directory of all studies")
    args = p.parse_args(argv)
    text = args.config.read_text()
    base = config_from_dict(tomllib.loads(text), str(args.config))
    if base.training.mass_constraint != 0:
        raise SystemExit(f"{args.config}: arm A needs training.mass_constraint = 0")
    free, wall = run_study(args.output / "free", text, str(args.config))
    print(f"A {free.root}: {wall:.0f} s")
    for w in args.weights:
        vtext = variant_text(text, w)
        vcfg = config_from_dict(tomllib.loads(vtext), f"{args.config} (mass {w:g})")
        diffs = [k for k in config_differences(config_to_dict(base), config_to_dict(vcfg))
                 if k != "name"]
        if diffs != ["training.mass_constraint"]:
            raise SystemExit(f"the B arm differs in {diffs}, not only training.mass_constraint")
        sd, wall = run_study(args.output / f"mass-{w:g}", vtext, f"{args.config} (mass {w:g})")
        print(f"B {sd.root}: {wall:.0f} s")
        pc = compare_paired(args.output / "free", args.output / f"mass-{w:g}", "no constraint",
                            f"mass constraint {w:g}")
        report = write_paired(pc, args.output / f"paired-{w:g}")
        t = pc.by_candidate
        print(f"  weight {w:g}: {t.n} candidate pairs, B longer {t.longer}, shorter "
              f"{t.shorter}, equal {t.equal}; sign test p {t.sign_p}; Wilcoxon p "
              f"{t.wilcoxon_p}; {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
