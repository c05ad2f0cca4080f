"""Fuzzer of the Fortran model readers (colnn model files and FKB text files) through the C API.

Every mutant is loaded by a child process (``tests/fuzz/load_model.c``, compiled here against
the library) under a time limit and an address-space limit, and classified:

  ok                the file loaded and is still a valid model: the child's checks passed
                    (sizes, layer chain, finite parameters, save + reload round trip) and the
                    project's strict Python reader (``harness.modelfile.read_model`` or
                    ``harness.fkb.read_fkb``) accepts it too
  error             colnn_load refused it with a status and a message naming the file
and the findings:
  crash             killed by a signal (SIGSEGV, SIGABRT from a Fortran runtime error ...)
  exit              nonzero exit (a Fortran runtime error, ``stop``) or no result line
  hang              still running after the time limit
  memory            an allocation failure, or COLNN_ERR_MEMORY: a huge declared size must be
                    refused from what the file can hold, before anything is allocated
  no_message        an error without a message
  unnamed           an error whose message does not name the file
  accepted_invalid  loaded although the model is not valid (the child's checks or the Python
                    reader refuse it)

    python tests/fuzz_model_reader.py --mutants 10000 --seed 1 [--lib PATH] [--save DIR]
    python tests/fuzz_model_reader.py --seed 1 --only 1234      # re-run one mutant, verbosely

Mutant ``i`` of seed ``s`` is a pure function of (s, i), so any finding can be reproduced alone.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LOADER_SOURCE = REPO_ROOT / "tests" / "fuzz" / "load_model.c"
INCLUDE_DIR = REPO_ROOT / "fortran" / "include"
DEFAULT_LIB = REPO_ROOT / "build" / "single" / "fortran" / "libcolnn.so"
TIMEOUT_S = 5.0
# Address-space limit of a child. A valid tiny model loads in about 100 MiB of address space
# with OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1 (no thread stacks); 1 GiB leaves room for every
# allocation a legitimate file of these sizes needs and refuses the multi-GiB ones a huge
# declared size would ask for.
MEMORY_LIMIT = 1 << 30
CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "GFORTRAN_ERROR_BACKTRACE": "0",
             "LC_ALL": "C"}

GOOD = ("ok", "error")
BAD = ("crash", "exit", "hang", "memory", "no_message", "unnamed", "accepted_invalid")
OUTCOMES = GOOD + BAD
COLNN_ERR_MEMORY = 6
_MEMORY_RE = re.compile(r"Error allocating|Cannot allocate memory|Allocation would exceed|"
                        r"out of memory|bad_alloc", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# child process


def build_loader(lib: Path | str, out_dir: Path | str) -> Path:
    """Compiles the child program against ``lib`` (rpath to its directory); returns its path."""
    lib = Path(lib).resolve()
    if not lib.exists():
        raise FileNotFoundError(f"{lib}: colnn library not found (build it, or pass --lib)")
    exe = Path(out_dir) / "load_model"
    cmd = ["gcc", "-std=c11", "-O1", "-Wall", "-o", str(exe),
           str(LOADER_SOURCE), f"-I{INCLUDE_DIR}", str(lib), f"-Wl,-rpath,{lib.parent}", "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cannot compile {LOADER_SOURCE}:\n{' '.join(cmd)}\n{proc.stderr}")
    return exe


def _limit_child(memory_limit: int | None) -> Callable[[], None] | None:
    if memory_limit is None:
        return None

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return preexec


@dataclasses.dataclass
class Result:
    outcome: str
    detail: str          # the child's line, or what went wrong
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def classify(returncode: int | None, stdout: str, stderr: str, path: str,
             timed_out: bool = False) -> tuple[str, str]:
    """(outcome, detail) of one child run; ``path`` is the file it was given. The Python
    validity check of an 'ok' load is separate (``oracle_refuses``)."""
    if timed_out:
        return "hang", f"no answer within {TIMEOUT_S:g} s"
    if _MEMORY_RE.search(stderr):
        return "memory", stderr.strip()[-300:]
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return "crash", f"{name}: {stderr.strip()[-300:]}"
    if returncode != 0:
        return "exit", f"exit {returncode}: {(stdout + stderr).strip()[-300:]}"
    lines = stdout.split("\n")   # not splitlines(): a message may hold \v, \f, \x1c ...
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != 1:
        return "exit", f"expected one result line, got {len(lines)}: {stdout[-300:]!r}"
    line = lines[0]
    if line.startswith("ok "):
        return "ok", line
    if line.startswith("invalid "):
        return "accepted_invalid", line
    m = re.match(r"error (-?\d+): ?(.*)\Z", line)
    if m is None:
        return "exit", f"unexpected result line {line[:300]!r}"
    stat, message = int(m.group(1)), m.group(2).strip()
    if stat == 0:
        return "exit", f"error line with status 0: {line[:300]!r}"
    if stat == COLNN_ERR_MEMORY:
        return "memory", line[:300]
    if not message:
        return "no_message", line[:300]
    if path not in message:
        return "unnamed", line[:300]
    return "error", line[:300]


def run_child(loader: Sequence[str] | str | Path, path: str, resave: str | None = None,
              timeout: float = TIMEOUT_S, memory_limit: int | None = MEMORY_LIMIT) -> Result:
    """Runs the child on ``path`` under the limits and classifies what it did."""
    cmd = [str(loader)] if isinstance(loader, (str, Path)) else [str(c) for c in loader]
    cmd.append(path)
    if resave is not None:
        cmd.append(resave)
    env = dict(os.environ)
    env.update(CHILD_ENV)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env,
                              preexec_fn=_limit_child(memory_limit), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        return Result("hang", f"no answer within {timeout:g} s", None, out, err,
                      time.monotonic() - t0)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    outcome, detail = classify(proc.returncode, out, err, path)
    return Result(outcome, detail, proc.returncode, out, err, time.monotonic() - t0)


# Objections of the Python reader that are deliberate leniencies of the library, not findings:
# the Fortran reader defaults a missing batch-normalization momentum to 0.99 (it only matters
# for training), where harness.modelfile requires the attribute; and it skips blank and comment
# lines before 'colnn 1', where harness.modelfile wants it on line 1 (the oracle only calls
# read_model when the first token of the file is 'colnn', so nothing else gives this message).
KNOWN_DIFFERENCES = (re.compile(r"batch_normalization block lacks attribute\(s\): momentum\Z"),
                     re.compile(r":1: not a colnn model file \(line 1 must be 'colnn 1'\)\Z"))


def oracle_refuses(path: str) -> str | None:
    """The strict Python reader's objection to a file the library loaded, or None."""
    from harness.errors import HarnessError
    from harness.fkb import read_fkb
    from harness.modelfile import read_model
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
        first = head.split(None, 1)[0] if head.split() else b""
        if first == b"colnn":
            read_model(path)
        else:
            read_fkb(path, precision="float64")  # the library reads FKB values as float64
    except HarnessError as exc:
        if any(k.search(str(exc)) for k in KNOWN_DIFFERENCES):
            return None
        return str(exc)
    except Exception as exc:  # the Python reader must not crash either, but that is not ours
        return f"python reader raised {type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------------------------
# seeds


@dataclasses.dataclass
class Seed:
    name: str
    fmt: str            # 'colnn' or 'fkb'
    data: bytes


def _fkb_as_fortran_saves(text: str) -> str:
    """An FKB file re-laid as FKB's own Fortran `save` writes it (gfortran list-directed
    output): the count right-aligned, names padded to 100 characters, every number a padded
    real, sizes included ('   5.00000000    ')."""
    lines = text.splitlines()
    n = int(lines[0])
    out = [f"{n:12d}"]
    for line in lines[1:n + 1]:
        kind, value = line.split()
        out.append(f" {kind:<100s}{float(value):17.8f}    ")
    for line in lines[n + 1:]:
        out.append("".join(f"{float(v):17.8f}" for v in line.split()) + "    ")
    return "\n".join(out) + "\n"


def _fkb_with_repeats(text: str) -> str:
    """An FKB file with its vectors as Intel's list-directed output writes them: runs of equal
    values as R*C (a vector's first value always, so every vector has one), wrapped at 80
    columns."""
    import textwrap
    lines = text.splitlines()
    n = int(lines[0])
    out = lines[:n + 2]
    for line in lines[n + 2:]:
        tokens = line.split()
        runs: list[str] = []
        i = 0
        while i < len(tokens):
            j = i
            while j < len(tokens) and tokens[j] == tokens[i]:
                j += 1
            runs.append(f"{j - i}*{tokens[i]}" if j - i > 1 or i == 0 else tokens[i])
            i = j
        out += textwrap.wrap(" ".join(runs), 80)
    return "\n".join(out) + "\n"


def make_seeds(work: Path, lib: Path | str | None = None) -> list[Seed]:
    """Valid model files of both formats, written by the harness's own writers (and, with
    ``lib``, a checkpoint with a training block written by the library)."""
    import numpy as np

    from harness.fkb import write_fkb
    from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model

    rng = np.random.default_rng(12345)

    def arr(*shape: int, positive: bool = False) -> np.ndarray:
        a = rng.normal(size=shape)
        return np.abs(a) + 0.1 if positive else a

    def dense(name: str, n_in: int, units: int, act: Activation, bias: bool = True) -> LayerSpec:
        tensors = {"kernel": arr(n_in, units)}
        if bias:
            tensors["bias"] = arr(units)
        return LayerSpec("dense", name, {"units": units, "use_bias": bias, "activation": act},
                         tensors)

    def bn(name: str, n: int, eps: float = 0.001, center: bool = True,
           scale: bool = True) -> LayerSpec:
        t = {"moving_mean": arr(n), "moving_variance": arr(n, positive=True)}
        if center:
            t["beta"] = arr(n)
        if scale:
            t["gamma"] = arr(n)
        return LayerSpec("batch_normalization", name, {"epsilon": eps, "momentum": 0.99,
                                                       "center": center, "scale": scale}, t)

    specs = {
        "dense32": ModelSpec("float32", 3, [
            dense("d0", 3, 4, Activation.make("relu")),
            dense("d1", 4, 2, Activation.make("linear"))]),
        "mixed64": ModelSpec("float64", 3, [
            LayerSpec("normalization", "norm", {"epsilon": 1e-7, "invert": False},
                      {"mean": arr(3), "variance": arr(3, positive=True)}),
            dense("d0", 3, 5, Activation.make("tanh")),
            bn("bn", 5),
            LayerSpec("dropout", "drop", {"rate": 0.25}, {}),
            LayerSpec("activation", "act", {"activation": Activation.make(
                "leaky_relu", negative_slope=0.3)}, {}),
            dense("d1", 5, 2, Activation.make("linear"), bias=False)],
            meta=[("source", "fuzz seed"), ("learning_rate", "0.001")]),
        "params32": ModelSpec("float32", 2, [
            dense("a", 2, 3, Activation.make("relu", max_value=6.5, threshold=0.1)),
            bn("b", 3, eps=1e-5, center=False, scale=True),
            dense("c", 3, 3, Activation.make("elu", alpha=0.7)),
            LayerSpec("normalization", "n", {"epsilon": 0.0, "invert": True},
                      {"mean": arr(3), "variance": arr(3, positive=True)}),
            dense("e", 3, 2, Activation.make("softmax"))]),
    }
    fkb_specs = {
        "fkb_dense": ModelSpec("float64", 3, [
            dense("d0", 3, 4, Activation.make("leaky_relu", negative_slope=0.3)),
            dense("d1", 4, 2, Activation.make("linear"))]),
        "fkb_bn": ModelSpec("float64", 2, [
            dense("d0", 2, 3, Activation.make("elu", alpha=1.0)),
            bn("bn", 3),
            LayerSpec("dropout", "drop", {"rate": 0.1}, {}),
            dense("d1", 3, 3, Activation.make("tanh")),
            dense("d2", 3, 1, Activation.make("sigmoid"))]),
    }
    seeds: list[Seed] = []
    for name, spec in specs.items():
        path = work / f"{name}.colnn"
        write_model(spec, path)
        seeds.append(Seed(name, "colnn", path.read_bytes()))
    for name, spec in fkb_specs.items():
        path = work / f"{name}.fkb"
        write_fkb(spec, path)
        seeds.append(Seed(name, "fkb", path.read_bytes()))
    path = work / "fkb_fortran_saved.fkb"
    path.write_text(_fkb_as_fortran_saves((work / "fkb_bn.fkb").read_text()))
    seeds.append(Seed("fkb_fortran_saved", "fkb", path.read_bytes()))
    path = work / "fkb_intel_repeats.fkb"
    path.write_text(_fkb_with_repeats((work / "fkb_dense.fkb").read_text()))
    seeds.append(Seed("fkb_intel_repeats", "fkb", path.read_bytes()))
    if lib is not None:
        from harness.native import NativeModel
        src = work / "dense32.colnn"
        with NativeModel(src, library=lib) as model:
            model.configure_training("adam learning_rate=0.01", "mse")
            x = rng.normal(size=(8, model.n_inputs)).astype(model.dtype)
            t = rng.normal(size=(8, model.n_outputs)).astype(model.dtype)
            model.train_step(x, t)
            ckpt = work / "checkpoint.colnn"
            model.save_checkpoint(ckpt)
        seeds.append(Seed("checkpoint", "colnn", ckpt.read_bytes()))
    return seeds


# ---------------------------------------------------------------------------------------------
# mutations

HUGE_NUMBERS = ["1e30", "-1e30", str(2**31), str(2**31 - 1), str(-2**31), str(2**32),
                str(2**63), str(2**63 - 1), str(-2**63), str(2**64), "99999999999",
                "-99999999999", "0", "-0", "-1", "-2", "1e308", "3.5e38", "1e39", "1e-320",
                "1e-46", "00000000000000000000003", "+3"]
NONFINITE = ["nan", "NaN", "-nan", "inf", "-inf", "Inf", "-Inf", "+inf", "Infinity",
             "-Infinity", "1e999", "-1e400", "NAN(0x1)"]
NON_NUMERIC = ["abc", "1,2", "/", "3*1.0", "1.0.0", ".", "+", "-", "e", "1e", "1d5", "1+5",
               "1-2", "--1", "true", "T", "0x1F", "1_000", "\u0661", "\u00e9", "'1'", '"1"',
               "(1,2)", "1.5q0", "#", "!", ";", "&"]
_NUM_TOKEN = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][+-]?\d+)?")


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _token_spans(data: bytes, numeric_only: bool = False) -> list[tuple[int, int]]:
    spans = [(m.start(), m.end()) for m in re.finditer(rb"[^ \t\r\n]+", data)]
    if numeric_only:
        spans = [(a, b) for a, b in spans if _NUM_TOKEN.fullmatch(data[a:b])]
    return spans


def _replace_token(rng: random.Random, data: bytes, words: Sequence[str],
                   numeric_only: bool = True, count: int = 1) -> bytes:
    for _ in range(count):
        spans = _token_spans(data, numeric_only) or _token_spans(data)
        if not spans:
            return data + rng.choice(words).encode()
        a, b = rng.choice(spans)
        data = data[:a] + rng.choice(words).encode() + data[b:]
    return data


def m_truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))]


def m_bitflip(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


_INSERT_ALPHABET = b"0123456789+-.eEdD \t\r\n#/,*abcxyz\x00\xff"


def m_insert(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    n = rng.choice([1, 1, 2, 3, 8, 16])
    if rng.random() < 0.5:
        ins = bytes(rng.choice(_INSERT_ALPHABET) for _ in range(n))
    else:
        ins = bytes(rng.randrange(256) for _ in range(n))
    return data[:i] + ins + data[i:]


def m_delete(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    n = rng.choice([1, 1, 2, 3, 8, 16, 64])
    return data[:i] + data[i + n:]


def m_token_swap(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    tok = [(li, m.start(), m.end()) for li, line in enumerate(lines)
           for m in re.finditer(rb"[^ \t\r]+", line)]
    if len(tok) < 2:
        return data
    (l1, a1, b1), (l2, a2, b2) = rng.sample(tok, 2)
    if l1 == l2:
        if a1 > a2:
            a1, b1, a2, b2 = a2, b2, a1, b1
        line = lines[l1]
        lines[l1] = line[:a1] + line[a2:b2] + line[b1:a2] + line[a1:b1] + line[b2:]
    else:
        t1, t2 = lines[l1][a1:b1], lines[l2][a2:b2]
        lines[l1] = lines[l1][:a1] + t2 + lines[l1][b1:]
        lines[l2] = lines[l2][:a2] + t1 + lines[l2][b2:]
    return b"\n".join(lines)


def m_huge_number(rng: random.Random, data: bytes) -> bytes:
    # prefer the integers (sizes, counts) half of the time: they drive allocations
    if rng.random() < 0.5:
        spans = [(a, b) for a, b in _token_spans(data, True) if data[a:b].isdigit()]
        if spans:
            a, b = rng.choice(spans)
            return data[:a] + rng.choice(HUGE_NUMBERS).encode() + data[b:]
    return _replace_token(rng, data, HUGE_NUMBERS)


def m_nonfinite(rng: random.Random, data: bytes) -> bytes:
    return _replace_token(rng, data, NONFINITE, count=rng.choice([1, 1, 3]))


def m_non_numeric(rng: random.Random, data: bytes) -> bytes:
    return _replace_token(rng, data, NON_NUMERIC, numeric_only=rng.random() < 0.8)


def m_layer_count(rng: random.Random, data: bytes) -> bytes:
    """Change the declared number of layers (colnn 'layers N', FKB line 1, the 'units')."""
    lines = _lines(data)
    targets = [i for i, line in enumerate(lines)
               if re.match(rb"\s*(layers|inputs|outputs|units)\s", line)]
    if not targets:  # FKB: first line, or a 'dense N' / 'input N' line
        targets = [i for i, line in enumerate(lines)
                   if re.fullmatch(rb"\s*\d+\s*", line) or re.match(rb"\s*(dense|input)\s", line)]
    if not targets:
        return data
    i = rng.choice(targets)
    m = re.search(rb"-?\d+", lines[i])
    if m is None:
        return data
    n = int(m.group())
    new = rng.choice([n + 1, n - 1, n + 2, max(n - 2, 0), 0, -1, 2 * n, n + 100, 2**31 - 1,
                      2**31, 10**12])
    lines[i] = lines[i][:m.start()] + str(new).encode() + lines[i][m.end():]
    return b"\n".join(lines)


def m_dup_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    j = rng.randrange(len(lines) + 1)
    lines.insert(j, lines[i])
    return b"\n".join(lines)


def m_remove_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    for _ in range(rng.choice([1, 1, 2])):
        if len(lines) > 1:
            del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def m_long_line(rng: random.Random, data: bytes) -> bytes:
    size = rng.choice([1 << 20, (1 << 20) + 7, 8191, 8192, 8193, 4097, 65536])
    style = rng.randrange(4)
    if style == 0:
        line = b"1 " * (size // 2)
    elif style == 1:
        line = b"a" * size
    elif style == 2:
        line = b"9" * size
    else:
        line = b" " * (size - 1) + b"x"
    lines = _lines(data)
    i = rng.randrange(len(lines))
    if rng.random() < 0.5:
        lines[i] = lines[i] + b" " + line   # extend an existing line (a row, a key)
    else:
        lines.insert(i, line)
    return b"\n".join(lines)


def m_garbage(rng: random.Random, data: bytes) -> bytes:
    n = rng.choice([1, 16, 256, 4096, 65536])
    garbage = bytes(rng.randrange(256) for _ in range(min(n, 4096)))
    garbage = (garbage * (n // len(garbage) + 1))[:n]
    if rng.random() < 0.3:   # a plausible first line followed by garbage
        return data.split(b"\n", 1)[0] + b"\n" + garbage
    return garbage


def m_nul(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 8])):
        i = rng.randrange(len(buf) + 1)
        if rng.random() < 0.5 and i < len(buf):
            buf[i] = 0
        else:
            buf[i:i] = b"\x00"
    return bytes(buf)


def m_line_ends(rng: random.Random, data: bytes) -> bytes:
    """Variations the Python reader accepts: CRLF, tabs, blank lines, no final newline. The
    library loads CRLF files and files without a final newline, and refuses (cleanly) tabs after
    a key and blank lines between tensor rows."""
    choice = rng.randrange(4)
    if choice == 0:
        return data.replace(b"\n", b"\r\n")
    if choice == 1:
        return data.replace(b" ", b"\t")
    if choice == 2:
        return data.rstrip(b"\n")
    return data.replace(b"\n", b"\n\n")


def m_splice(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """Head of this file, tail of another (layers of one model in another's header)."""
    a, b = _lines(data), _lines(other)
    return b"\n".join(a[:rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1):])


# kind -> (weight, function or None for the special paths)
MUTATIONS: dict[str, tuple[float, Callable | None]] = {
    "truncate": (1.0, m_truncate),
    "bitflip": (1.0, m_bitflip),
    "insert_bytes": (1.0, m_insert),
    "delete_bytes": (1.0, m_delete),
    "token_swap": (1.0, m_token_swap),
    "huge_number": (1.5, m_huge_number),
    "nonfinite": (1.0, m_nonfinite),
    "non_numeric": (1.0, m_non_numeric),
    "layer_count": (1.0, m_layer_count),
    "dup_line": (1.0, m_dup_line),
    "remove_line": (1.0, m_remove_line),
    "long_line": (0.3, m_long_line),
    "garbage": (0.5, m_garbage),
    "nul_bytes": (0.5, m_nul),
    "line_ends": (0.3, m_line_ends),
    "splice": (0.5, None),
    "empty": (0.05, None),
    "directory": (0.05, None),
    "nonexistent": (0.05, None),
}


@dataclasses.dataclass
class Mutant:
    index: int
    kind: str
    seed_name: str
    data: bytes | None     # None: a special path (directory, nonexistent)


def make_mutant(seeds: Sequence[Seed], run_seed: int, index: int) -> Mutant:
    rng = random.Random(f"{run_seed}:{index}")
    kinds = list(MUTATIONS)
    kind = rng.choices(kinds, weights=[MUTATIONS[k][0] for k in kinds])[0]
    seed = rng.choice(seeds)
    if kind in ("directory", "nonexistent"):
        return Mutant(index, kind, seed.name, None)
    if kind == "empty":
        return Mutant(index, kind, seed.name, rng.choice([b"", b"\n", b"  \n\t\n", b"# c\n"]))
    if kind == "splice":
        return Mutant(index, kind, seed.name, m_splice(rng, seed.data, rng.choice(seeds).data))
    data = seed.data
    # now and then stack two mutations: the second often hits what the first exposed
    for _ in range(2 if rng.random() < 0.15 else 1):
        data = MUTATIONS[kind][1](rng, data) if data else data
    return Mutant(index, kind, seed.name, data)


# ---------------------------------------------------------------------------------------------
# driver


@dataclasses.dataclass
class Finding:
    mutant: Mutant
    result: Result
    path: str


@dataclasses.dataclass
class Summary:
    n: int = 0
    seconds: float = 0.0
    by_kind: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(
        collections.Counter))
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    findings: list = dataclasses.field(default_factory=list)
    slowest: float = 0.0

    @property
    def bad(self) -> int:
        return sum(self.outcomes[o] for o in BAD)


def _mutant_path(work: Path, mutant: Mutant, seeds_by_name: dict[str, Seed]) -> str:
    ext = "fkb" if seeds_by_name[mutant.seed_name].fmt == "fkb" else "colnn"
    path = work / f"m{mutant.index:06d}.{ext}"
    if mutant.kind == "directory":
        path = work / f"m{mutant.index:06d}.dir.{ext}"
        path.mkdir()
    elif mutant.kind == "nonexistent":
        path = work / f"m{mutant.index:06d}.missing.{ext}"
    else:
        path.write_bytes(mutant.data or b"")
    return str(path)


def check_one(loader: Path, work: Path, mutant: Mutant, seeds_by_name: dict[str, Seed],
              memory_limit: int | None = MEMORY_LIMIT, keep: bool = False) -> tuple[Result, str]:
    path = _mutant_path(work, mutant, seeds_by_name)
    resave = path + ".resave.colnn"
    res = run_child(loader, path, resave=resave, memory_limit=memory_limit)
    if res.outcome == "ok":
        objection = oracle_refuses(path)
        if objection is not None:
            res.outcome, res.detail = "accepted_invalid", f"python reader: {objection}"
    if not keep:
        for p in (path, resave, resave + ".tmp"):
            try:
                if os.path.isdir(p):
                    os.rmdir(p)
                else:
                    os.unlink(p)
            except FileNotFoundError:
                pass
    return res, path


def save_finding(save_dir: Path, finding: Finding, run_seed: int, lib: Path) -> Path:
    save_dir.mkdir(parents=True, exist_ok=True)
    m = finding.mutant
    stem = f"{finding.result.outcome}-{m.kind}-{m.index:06d}"
    ext = Path(finding.path).suffix
    target = save_dir / (stem + ext)
    if m.data is not None:
        target.write_bytes(m.data)
    elif m.kind == "directory":
        target.mkdir(exist_ok=True)
    r = finding.result
    (save_dir / (stem + ".txt")).write_text(
        f"mutant {m.index} of seed {run_seed}: kind {m.kind}, from seed file {m.seed_name}\n"
        f"outcome: {r.outcome}\ndetail: {r.detail}\nreturn code: {r.returncode}\n"
        f"seconds: {r.seconds:.2f}\n"
        f"reproduce: python tests/fuzz_model_reader.py --seed {run_seed} --only {m.index} "
        f"--lib {lib}\n   or: load_model {target}\n"
        f"--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}\n")
    return target


def fuzz(n_mutants: int, run_seed: int, lib: Path | str, workers: int = 2,
         save_dir: Path | None = None, memory_limit: int | None = MEMORY_LIMIT,
         keep_per_outcome: int = 5, progress: bool = False) -> Summary:
    lib = Path(lib).resolve()
    summary = Summary()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="colnn-fuzz-") as tmp:
        work = Path(tmp)
        loader = build_loader(lib, work)
        seed_dir = work / "seeds"
        seed_dir.mkdir()
        seeds = make_seeds(seed_dir, lib)
        seeds_by_name = {s.name: s for s in seeds}
        # every seed must load, or the run measures nothing
        for s in seeds:
            p = seed_dir / f"{s.name}.{s.fmt}"
            p.write_bytes(s.data)
            res = run_child(loader, str(p), memory_limit=memory_limit)
            if res.outcome != "ok":
                raise RuntimeError(f"seed {s.name} does not load: {res.detail}")
        mdir = work / "mutants"
        mdir.mkdir()

        def task(i: int) -> tuple[Mutant, Result, str]:
            mutant = make_mutant(seeds, run_seed, i)
            res, path = check_one(loader, mdir, mutant, seeds_by_name, memory_limit)
            return mutant, res, path

        saved: collections.Counter = collections.Counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, 2))) as pool:
            for done, (mutant, res, path) in enumerate(pool.map(task, range(n_mutants)), 1):
                summary.n += 1
                summary.by_kind[mutant.kind][res.outcome] += 1
                summary.outcomes[res.outcome] += 1
                summary.slowest = max(summary.slowest, res.seconds)
                if res.outcome in BAD:
                    finding = Finding(mutant, res, path)
                    summary.findings.append(finding)
                    if save_dir is not None and saved[res.outcome] < keep_per_outcome:
                        saved[res.outcome] += 1
                        save_finding(save_dir, finding, run_seed, lib)
                if progress and done % 500 == 0:
                    print(f"  {done}/{n_mutants} mutants, {summary.bad} findings, "
                          f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    summary.seconds = time.monotonic() - t0
    if save_dir is not None and summary.findings:
        with open(save_dir / "findings.tsv", "w") as handle:
            for f in summary.findings:
                detail = f.result.detail.replace("\t", " ").replace("\n", " ")
                handle.write(f"{f.mutant.index}\t{f.mutant.kind}\t{f.mutant.seed_name}\t"
                             f"{f.result.outcome}\t{detail[:300]}\n")
    return summary


def format_summary(summary: Summary, run_seed: int, lib: Path | str) -> str:
    cols = list(OUTCOMES)
    width = max(len(k) for k in MUTATIONS) + 2
    out = [f"colnn model-reader fuzz: {summary.n} mutants, seed {run_seed}, library {lib}",
           f"wall time {summary.seconds:.1f} s, slowest child {summary.slowest:.2f} s, "
           f"{os.cpu_count()} CPUs", ""]
    out.append("kind".ljust(width) + "tried".rjust(7) + "".join(c.rjust(c_w(c)) for c in cols))
    for kind in MUTATIONS:
        row = summary.by_kind.get(kind, collections.Counter())
        out.append(kind.ljust(width) + str(sum(row.values())).rjust(7)
                   + "".join(str(row[c]).rjust(c_w(c)) for c in cols))
    out.append("total".ljust(width) + str(summary.n).rjust(7)
               + "".join(str(summary.outcomes[c]).rjust(c_w(c)) for c in cols))
    out.append("")
    labels = {"ok": "ok-loads (valid models)", "error": "clean errors",
              "crash": "crashes (signal)", "exit": "nonzero exits / no result",
              "hang": f"hangs (> {TIMEOUT_S:g} s)", "memory": "memory-limit hits",
              "no_message": "errors without a message", "unnamed": "errors not naming the file",
              "accepted_invalid": "invalid models accepted"}
    for c in cols:
        out.append(f"  {labels[c]:<30} {summary.outcomes[c]}")
    if summary.findings:
        out.append("")
        out.append("first findings:")
        seen: collections.Counter = collections.Counter()
        for f in summary.findings:
            if seen[f.result.outcome] >= 3:
                continue
            seen[f.result.outcome] += 1
            out.append(f"  #{f.mutant.index} {f.mutant.kind} ({f.mutant.seed_name}): "
                       f"{f.result.outcome}: {f.result.detail[:200]}")
    return "\n".join(out)


def c_w(name: str) -> int:
    return max(len(name), 5) + 2


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lib", type=Path, default=Path(os.environ.get("COLNN_LIB", DEFAULT_LIB)))
    ap.add_argument("--workers", type=int, default=2, help="parallel children (at most 2)")
    ap.add_argument("--save", type=Path, default=Path("fuzz-findings"),
                    help="directory for offending mutants (first few of each outcome)")
    ap.add_argument("--memory-limit-mib", type=int, default=MEMORY_LIMIT >> 20,
                    help="address-space limit of a child; 0: none")
    ap.add_argument("--no-forward", action="store_true",
                    help="skip the child's forward pass (e.g. for a -fcheck=all library)")
    ap.add_argument("--only", type=int, default=None, help="run mutant N alone and show it")
    args = ap.parse_args(argv)
    mem = args.memory_limit_mib << 20 if args.memory_limit_mib > 0 else None
    if args.no_forward:
        CHILD_ENV["COLNN_FUZZ_NO_FORWARD"] = "1"
    if args.only is not None:
        with tempfile.TemporaryDirectory(prefix="colnn-fuzz-") as tmp:
            work = Path(tmp)
            loader = build_loader(args.lib, work)
            (work / "seeds").mkdir()
            seeds = make_seeds(work / "seeds", args.lib)
            mutant = make_mutant(seeds, args.seed, args.only)
            res, path = check_one(loader, work, mutant, {s.name: s for s in seeds}, mem,
                                  keep=True)
            print(f"mutant {args.only}: kind {mutant.kind}, seed file {mutant.seed_name}")
            if mutant.data is not None:
                print(f"--- file ({len(mutant.data)} bytes, first 2000):")
                print(mutant.data[:2000].decode(errors="replace"))
            print(f"--- outcome: {res.outcome}: {res.detail}")
            print(f"--- stdout:\n{res.stdout}--- stderr:\n{res.stderr}")
            if res.outcome in BAD:
                target = save_finding(args.save, Finding(mutant, res, path), args.seed,
                                      args.lib)
                print(f"saved to {target}")
            return 1 if res.outcome in BAD else 0
    summary = fuzz(args.mutants, args.seed, args.lib, args.workers, args.save, mem,
                   progress=True)
    print(format_summary(summary, args.seed, args.lib))
    if summary.bad:
        print(f"\noffending mutants (first 5 of each outcome) saved in {args.save.resolve()}")
    return 1 if summary.bad else 0


if __name__ == "__main__":
    sys.exit(main())
