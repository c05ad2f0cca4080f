"""Coverage-guided fuzzing of the Fortran model readers with AFL++, compared with the random
mutation of tests/fuzz_model_reader.py on the same instrumented build.

    python tests/fuzz/afl_model_reader.py --seconds 600 --work build/afl

The library (gfortran) and tests/fuzz/load_model.c are built with GCC's
-fsanitize-coverage=trace-pc, whose calls tests/fuzz/afl_trace_pc.c turns into AFL++ edge
counters (apt: afl++), linked statically, and run with COLNN_FUZZ_ABORT so that what
the random fuzzer classifies as a finding (an invalid model accepted, an error without a
message or not naming the file, an allocation failure) is a crash AFL++ can see. Afterwards
the edges covered by AFL++'s queue and by as many random mutants are counted with
afl-showmap on the same binary, and every crash or hang AFL++ saved is listed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))

import fuzz_model_reader as fz  # noqa: E402

RUNTIME = Path("/usr/lib/afl/afl-compiler-rt-64.o")
AFL_ENV = {"AFL_SKIP_CPUFREQ": "1", "AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES": "1",
           "AFL_NO_UI": "1", "AFL_NO_AFFINITY": "1", "COLNN_FUZZ_ABORT": "1",
           "COLNN_FUZZ_NO_FORWARD": "", "GFORTRAN_ERROR_BACKTRACE": "0",
           "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def build(work: Path) -> Path:
    """The library and the loader compiled with -fsanitize-coverage=trace-pc (gfortran and
    gcc), linked statically with the edge hook and AFL++'s runtime (fork server, map)."""
    for tool in ("afl-fuzz", "afl-showmap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install afl++)")
    if not RUNTIME.is_file():
        raise SystemExit(f"{RUNTIME} not found (apt-get install afl++)")
    bdir = work / "build"
    cov = "-fsanitize-coverage=trace-pc"
    _run(["cmake", "-S", str(REPO), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release",
          "-DBUILD_SHARED_LIBS=OFF", "-DCOLNN_BUILD_TESTS=OFF", "-DCOLNN_OPENMP=OFF",
          "-DCOLNN_USE_BLAS=OFF", "-DCMAKE_TRY_COMPILE_TARGET_TYPE=STATIC_LIBRARY",
          f"-DCMAKE_Fortran_FLAGS=-O1 -g {cov}",
          f"-DCMAKE_C_FLAGS=-O1 -g {cov}"])
    _run(["cmake", "--build", str(bdir), "--target", "colnn", "-j2"])
    lib = next(bdir.rglob("libcolnn.a"))
    hook = work / "afl_trace_pc.o"
    _run(["gcc", "-O2", "-c", "-o", str(hook), str(HERE / "afl_trace_pc.c")])
    exe = work / "load_model_afl"
    _run(["gcc", "-std=c11", "-O1", "-g", cov, "-o", str(exe), str(fz.LOADER_SOURCE),
          f"-I{fz.INCLUDE_DIR}", str(lib), str(hook), str(RUNTIME), "-lgfortran", "-lm",
          "-ldl", "-lpthread", "-lrt"])
    return exe


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    scratch = directory.parent / "seed-scratch"
    scratch.mkdir(exist_ok=True)
    for seed in fz.make_seeds(scratch):
        (directory / f"{seed.name}.{seed.fmt}").write_bytes(seed.data)


def random_corpus(directory: Path, count: int, run_seed: int) -> int:
    """``count`` mutants of the random fuzzer as files (the kinds that are files)."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = fz.make_seeds(directory.parent / "seed-scratch")
    written = 0
    for index in range(count):
        m = fz.make_mutant(seeds, run_seed, index)
        if m.data is None:
            continue
        (directory / f"m{index:06d}").write_bytes(m.data)
        written += 1
    return written


def edges(exe: Path, corpus: Path, work: Path, name: str) -> int:
    out = work / f"{name}.map"
    proc = subprocess.run(["afl-showmap", "-C", "-i", str(corpus), "-o", str(out), "-t", "5000",
                           "-m", "1024", "--", str(exe), "@@"], capture_output=True, text=True,
                          env={**os.environ, **AFL_ENV})
    text = proc.stdout + proc.stderr
    found = re.search(r"Captured (\d+) tuples", text)
    if found is None:
        raise SystemExit(f"afl-showmap on {corpus} gave no count:\n{text[-3000:]}")
    return int(found.group(1))


def fuzzer_stats(path: Path) -> dict[str, str]:
    stats = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        stats[key.strip()] = value.strip()
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600, help="AFL++ run time")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "afl")
    ap.add_argument("--seed", type=int, default=1, help="random fuzzer seed for the baseline")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    if (work / "out").exists():
        raise SystemExit(f"{work}/out exists: give a new --work directory")
    work.mkdir(parents=True, exist_ok=True)
    exe = build(work)
    write_seeds(work / "in")
    env = {**os.environ, **AFL_ENV}
    afl = subprocess.run(["afl-fuzz", "-i", str(work / "in"), "-o", str(work / "out"),
                          "-V", str(args.seconds), "-t", "5000", "-m", "1024", "--", str(exe),
                          "@@"], capture_output=True, text=True, env=env)
    (work / "afl-fuzz.log").write_text(afl.stdout + afl.stderr)
    out = work / "out" / "default"
    if not (out / "fuzzer_stats").is_file():
        raise SystemExit(f"afl-fuzz did not run; see {work / 'afl-fuzz.log'}")
    stats = fuzzer_stats(out / "fuzzer_stats")
    execs = int(stats["execs_done"])
    n_random = min(execs, 20000)
    random.seed(args.seed)
    written = random_corpus(work / "random", n_random, args.seed)
    crashes = sorted(p.name for p in (out / "crashes").glob("id:*"))
    hangs = sorted(p.name for p in (out / "hangs").glob("id:*"))
    details = []
    for name in crashes + hangs:
        kind = "crashes" if name in crashes else "hangs"
        res = fz.run_child(exe, str(out / kind / name))
        details.append(f"{kind}/{name}: {res.outcome}: {res.detail[:200]}")
    report = {
        "seconds": args.seconds, "afl_execs": execs, "afl_corpus": int(stats["corpus_count"]),
        "afl_crashes": len(crashes), "afl_hangs": len(hangs),
        "afl_edges": edges(exe, out / "queue", work, "afl"),
        "random_mutants": written, "random_edges": edges(exe, work / "random", work, "random"),
        "seed_edges": edges(exe, work / "in", work, "seeds"), "findings": details}
    text = json.dumps(report, indent=2)
    (work / "afl-report.json").write_text(text + "\n")
    print(text)
    return 0 if not crashes and not hangs else 1


if __name__ == "__main__":
    sys.exit(main())
