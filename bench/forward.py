#!/usr/bin/env python3
"""Forward-pass benchmark of the "paper architecture" on this machine, in one run.

Keras: Input(94) -> 5 x [Dense(256), BatchNormalization, LeakyReLU(0.3), Dropout(0.1)]
-> Dense(65), 309,313 parameters, random weights and random (non-trivial) BN statistics.

Methods, each timed on the same (columns, 94) float32 batch:
  colnn         the Fortran library, batched, through its C binding (NativeModel.forward_raw on
                preallocated arrays; the ctypes call overhead is measured and printed), with its
                default batch-invariant kernel
  colnn-blas    the same with set_batch_invariant(False): the dense layers call the BLAS
  tf.predict    model.predict_on_batch(x)
  tf.function   tf.function(lambda t: model(t, training=False), jit_compile=False), called on a
                tensor converted once (TensorFlow's best case)
  fkb-loop      an FKB-style loop (bench/fkb_loop.f90, compiled here with gfortran -O3
                -march=native): one column at a time, matmul(transpose(w), a) per dense layer
  numpy         float32 matmuls over the whole batch plus in-place elementwise passes
Every method's output is compared with Keras' on the batch before it is timed (and the
buffers the timed calls wrote are checked again after); a method that does not match aborts the
run. Each measurement: warm-up, then the median of repeated timings (at least 5 repeats and
about --min-time seconds per method and column count), taken in --rounds interleaved rounds so
that the speed drifts of this virtual machine fall on all methods alike; before each round the
script waits for other processes to go idle, redoes a slice another process disturbed, and
marks with '!' any value during which others still used more than 0.1 core.

Thread count (--threads, default: all cores this process may use) applies to OpenMP and
OpenBLAS (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, set before any library loads) and to
TensorFlow's intra- and inter-op pools.

    .venv/bin/python bench/forward.py [--columns 1 64 1024 8192] [--threads N] [--repeats N]
                                      [--min-time S] [--rounds N] [--json FILE]

bench/blas_rates.py compares BLAS libraries for colnn, bench/ablation.py measures what the
forward pass spends outside the GEMMs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

N_INPUTS, WIDTH, N_HIDDEN, N_OUTPUTS = 94, 256, 5, 65
LEAKY_SLOPE, DROPOUT_RATE, BN_EPSILON = 0.3, 0.1, 1e-3
EXPECTED_PARAMS = 309_313
REL_TOL = 1e-4           # max abs error / max |Keras output| allowed before anything is timed

# targets (printed next to the ratios, never asserted): {columns: ratio}
TARGET_VS_TF = {1: 5.0, 64: 1.5, 1024: 1.0, 8192: 1.0}
TARGET_VS_LOOP = {8192: 8.0}

METHODS = ("colnn", "colnn-blas", "tf.predict", "tf.function", "fkb-loop", "numpy")


# --------------------------------------------------------------------------------------------
# arguments and environment (before numpy / TensorFlow / libcolnn load)

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--columns", nargs="+", default=["1", "64", "1024", "8192"],
                   help="column counts (space- or comma-separated; default 1 64 1024 8192)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for OpenMP, OpenBLAS and TensorFlow (default: all usable cores)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per measurement (default: enough for --min-time, >= 5)")
    p.add_argument("--min-time", type=float, default=0.6,
                   help="seconds of timed repeats per method and column count when --repeats "
                        "is not given (default 0.6)")
    p.add_argument("--rounds", type=int, default=5,
                   help="the methods are timed interleaved, in this many rounds (default 5)")
    p.add_argument("--sgemm-size", type=int, default=2048,
                   help="m = n = k of the BLAS sgemm rate measurement (default 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--library", default=None, help="libcolnn.so (default: build/single)")
    p.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                   help="before each measurement wait up to S seconds for other processes to "
                        "go idle (shared machines; default 60)")
    p.add_argument("--retries", type=int, default=2,
                   help="redo a measurement during which other processes used > "
                        f"{BUSY_WARN} cores, at most this many times (default 2)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    cols: list[int] = []
    for item in args.columns:
        for part in item.split(","):
            if part.strip():
                cols.append(int(part))
    if not cols or min(cols) < 1:
        p.error("--columns needs positive integers")
    args.columns = cols
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0))
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def set_thread_env(threads: int) -> None:
    """Must run before numpy, TensorFlow or libcolnn are loaded: OpenBLAS and libgomp read the
    environment once, when they are initialised."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for mod in ("numpy", "tensorflow", "keras"):
        if mod in sys.modules:
            raise RuntimeError(f"{mod} was imported before the thread settings were applied")


# --------------------------------------------------------------------------------------------
# timing

class CpuWatch:
    """CPU time that other processes used (in cores, averaged over the wall time) between
    construction and `others()`: /proc/stat's busy time minus this process' own CPU time. On a
    shared 2-core machine a few tenths of a core from someone else can halve a 2-thread rate."""

    def __init__(self) -> None:
        self.t0 = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            vals = [int(v) for v in fields]
            busy = (vals[0] + vals[1] + vals[2] + vals[5] + vals[6]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system

    def others(self) -> float:
        w1, b1, o1 = self._sample()
        w0, b0, o0 = self.t0
        return max(0.0, ((b1 - b0) - (o1 - o0)) / max(w1 - w0, 1e-9))


BUSY_WARN = 0.1   # cores used by other processes during a measurement that earn it a '!' mark
QUIET = {"wait_s": 60.0, "retries": 2}   # set from --wait-quiet / --retries
SLICE_GAP_S = 0.25   # pause between two timed slices: an idle OpenBLAS pthread pool spins ~0.1 s


def wait_quiet(max_s: float, sample_s: float = 0.25) -> float:
    """Sleeps until other processes used < 0.05 cores for sample_s seconds (at most max_s
    seconds; at least sample_s, which also lets idle spinning thread pools go to sleep).
    Returns the last reading."""
    t_end = time.perf_counter() + max_s
    while True:
        watch = CpuWatch()
        time.sleep(sample_s)
        busy = watch.others()
        if busy < 0.05 or time.perf_counter() >= t_end:
            return busy


def _calibrate(fn) -> tuple[float, int]:
    """Warm-up (>= 2 calls and >= 0.1 s); returns (seconds per call, calls per repeat so that
    a repeat lasts >= ~1 ms and the clock does not dominate)."""
    t_end = time.perf_counter() + 0.1
    n_warm = 0
    while n_warm < 2 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        est = time.perf_counter() - t0
        n_warm += 1
    est = max(est, 1e-7)
    return est, max(1, int(1e-3 / est))


def _timed(fn, inner: int, repeats: int) -> tuple[list[float], float]:
    samples = []
    watch = CpuWatch()
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return samples, watch.others()


def measure_set(fns: dict, repeats: int | None, min_time: float, rounds: int = 1) -> dict:
    """Median seconds per call of each fn() in `fns`, measured interleaved: after a warm-up of
    each, `rounds` rounds, each timing every fn in turn (order rotated) for min_time / rounds
    seconds (or repeats / rounds repeats), so that slow drifts of the machine's speed (this
    is a virtual machine on a shared host) fall on all of them alike. At least 5 repeats each.

    Before each round the machine must be quiet (wait_quiet); a round's slice during which other
    processes used more than BUSY_WARN cores is redone (QUIET['retries'] times at most).
    Result per fn: median_s, min_s, q1_s, q3_s, repeats, calls_per_repeat, others (the most
    CPU, in cores, other processes used during one of its slices), redone (slices redone)."""
    names = list(fns)
    cal = {n: _calibrate(fns[n]) for n in names}
    rounds = max(1, rounds)
    per_round = {}
    for n in names:
        est, inner = cal[n]
        if repeats is not None:
            total = repeats
        else:
            total = min(5000, max(5, math.ceil(min_time / (est * inner))))
        per_round[n] = max(1, math.ceil(total / rounds))
    samples: dict = {n: [] for n in names}
    others: dict = {n: 0.0 for n in names}
    redone: dict = {n: 0 for n in names}
    for r in range(rounds):
        wait_quiet(QUIET["wait_s"])
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            for attempt in range(1 + QUIET["retries"]):
                if attempt:
                    wait_quiet(QUIET["wait_s"])
                got, busy = _timed(fns[n], cal[n][1], per_round[n])
                if busy <= BUSY_WARN:
                    break
                redone[n] += 1
            samples[n] += got
            others[n] = max(others[n], busy)
            time.sleep(SLICE_GAP_S)  # idle pools (OpenBLAS, libgomp, Eigen) stop spinning
    out = {}
    for n in names:
        q = statistics.quantiles(samples[n], n=4) if len(samples[n]) > 1 else samples[n] * 3
        out[n] = {"median_s": statistics.median(samples[n]), "min_s": min(samples[n]),
                  "q1_s": q[0], "q3_s": q[2], "repeats": len(samples[n]),
                  "calls_per_repeat": cal[n][1], "others": others[n], "redone": redone[n]}
    return out


def measure(fn, repeats: int | None, min_time: float, rounds: int = 1) -> dict:
    """measure_set for one function."""
    return measure_set({"fn": fn}, repeats, min_time, rounds)["fn"]


def settle() -> None:
    """Lets the idle thread pools (OpenBLAS, libgomp, Eigen) stop spinning between methods
    (measure() also waits, for a quiet machine)."""
    time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# machine and BLAS

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_identity(path: str) -> str:
    """Which build was measured: the file's sha256 prefix and modification time."""
    import hashlib
    real = os.path.realpath(path)
    digest = hashlib.sha256(Path(real).read_bytes()).hexdigest()[:12]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(real)))
    return f"sha256 {digest}, built {stamp}"


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def resolve_sgemm(libcolnn_path: str, symbol: str = "sgemm_"):
    """The sgemm_ (or `symbol`) that libcolnn's calls bind to: the global scope first
    (LD_PRELOAD, the main program's libraries), else libcolnn's own dependencies, as the dynamic
    linker resolves them. Returns (function, path of the library that defines it)."""
    try:
        fn = getattr(ctypes.CDLL(None), symbol)
    except AttributeError:
        fn = getattr(ctypes.CDLL(libcolnn_path), symbol)
    fn.restype = None
    info = _DlInfo()
    libc = ctypes.CDLL("libc.so.6")
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    path = "unknown"
    if libc.dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(info)) and info.dli_fname:
        path = os.path.realpath(info.dli_fname.decode())
    return fn, path


def blas_description(path: str) -> str:
    """Version / kernel of the BLAS at `path` where it says (OpenBLAS, BLIS)."""
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return ""
    for name in ("openblas_get_config", "bli_info_get_version_str"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            text = fn().decode()
            core = getattr(lib, "openblas_get_corename", None)
            if core is not None:
                core.restype = ctypes.c_char_p
                text += f"; core {core().decode()}; threads {lib.openblas_get_num_threads()}"
            elif name.startswith("bli"):
                text = "BLIS " + text
                if hasattr(lib, "bli_arch_string"):
                    lib.bli_arch_string.restype = ctypes.c_char_p
                    text += f"; kernels {lib.bli_arch_string(lib.bli_arch_query_id()).decode()}"
                if hasattr(lib, "bli_thread_get_num_threads"):
                    text += f"; threads {lib.bli_thread_get_num_threads()}"
            return text
    return ""


def sgemm_rate(sgemm, np, m: int, n: int, k: int, repeats: int | None, min_time: float,
               rounds: int = 1) -> dict:
    """GFLOP/s of C(m,n) = A(m,k) B(k,n), float32, column-major, through the Fortran sgemm_."""
    rng = np.random.default_rng(1)
    a = np.asfortranarray(rng.standard_normal((m, k), dtype=np.float32))
    b = np.asfortranarray(rng.standard_normal((k, n), dtype=np.float32))
    c = np.zeros((m, n), dtype=np.float32, order="F")
    ci = ctypes.c_int
    tr = ctypes.c_char(b"N")
    mm, nn, kk = ci(m), ci(n), ci(k)
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    ap, bp, cp = (ctypes.c_void_p(arr.ctypes.data) for arr in (a, b, c))
    byref = ctypes.byref
    args = (byref(tr), byref(tr), byref(mm), byref(nn), byref(kk), byref(one), ap, byref(mm),
            bp, byref(kk), byref(zero), cp, byref(mm))

    def call() -> None:
        sgemm(*args)

    call()
    i, j = min(3, m - 1), min(5, n - 1)
    want = float(np.dot(a[i, :].astype(np.float64), b[:, j].astype(np.float64)))
    if abs(c[i, j] - want) > 1e-3 * (1 + abs(want)) * math.sqrt(k):
        raise SystemExit(f"sgemm_ check failed: c[{i},{j}] = {c[i, j]}, expected {want}")
    t = measure(call, repeats, min_time, rounds)
    t["gflops"] = 2.0 * m * n * k / t["median_s"] / 1e9
    t["shape"] = [m, n, k]
    return t


def sgemv_time(sgemv, np, m: int, k: int, repeats: int | None, min_time: float) -> dict:
    """Seconds of y(m) = A(m,k) x(k), float32, column-major A, through the Fortran sgemv_."""
    rng = np.random.default_rng(2)
    a = np.asfortranarray(rng.standard_normal((m, k), dtype=np.float32))
    x = rng.standard_normal(k, dtype=np.float32)
    y = np.zeros(m, dtype=np.float32)
    ci = ctypes.c_int
    tr, mm, kk, inc = ctypes.c_char(b"N"), ci(m), ci(k), ci(1)
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    byref = ctypes.byref
    args = (byref(tr), byref(mm), byref(kk), byref(one), ctypes.c_void_p(a.ctypes.data),
            byref(mm), ctypes.c_void_p(x.ctypes.data), byref(inc), byref(zero),
            ctypes.c_void_p(y.ctypes.data), byref(inc))

    def call() -> None:
        sgemv(*args)

    call()
    if not np.allclose(y, a @ x, rtol=1e-3, atol=1e-3 * math.sqrt(k)):
        raise SystemExit("sgemv_ check failed")
    return measure(call, repeats, min_time)


# --------------------------------------------------------------------------------------------
# the model

def build_keras_model(keras, np, seed: int):
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inp = keras.Input(shape=(N_INPUTS,), name="input")
    x = inp
    for i in range(1, N_HIDDEN + 1):
        x = layers.Dense(WIDTH, name=f"dense_{i}")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"batch_norm_{i}")(x)
        x = layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"leaky_relu_{i}")(x)
        x = layers.Dropout(DROPOUT_RATE, name=f"dropout_{i}")(x)
    out = layers.Dense(N_OUTPUTS, name="dense_out")(x)
    model = keras.Model(inp, out, name="paper_architecture")

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.Dense):
            kernel, bias = layer.get_weights()
            bias = rng.uniform(-0.1, 0.1, bias.shape).astype(np.float32)
            layer.set_weights([kernel, bias])
        elif isinstance(layer, layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            gamma = rng.uniform(0.5, 1.5, n).astype(np.float32)
            beta = rng.normal(0.0, 0.2, n).astype(np.float32)
            mean = rng.normal(0.0, 0.3, n).astype(np.float32)
            var = rng.uniform(0.5, 2.0, n).astype(np.float32)
            layer.set_weights([gamma, beta, mean, var])
    if model.count_params() != EXPECTED_PARAMS:
        raise SystemExit(f"the model has {model.count_params()} parameters, expected "
                         f"{EXPECTED_PARAMS}")
    return model


def keras_stages(keras, model):
    """The model as (kind, arrays) stages, in layer order, from the Keras weights."""
    stages = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            stages.append(("dense", kernel, bias))
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            stages.append(("batchnorm", gamma, beta, mean, var, float(layer.epsilon)))
        elif isinstance(layer, keras.layers.LeakyReLU):
            stages.append(("leaky_relu", float(layer.negative_slope)))
        elif isinstance(layer, keras.layers.Dropout):
            stages.append(("identity",))
        elif isinstance(layer, keras.layers.InputLayer):
            continue
        else:
            raise SystemExit(f"unexpected layer {layer.name} ({type(layer).__name__})")
    return stages


def macs_per_column(stages) -> int:
    return sum(int(s[1].shape[0]) * int(s[1].shape[1]) for s in stages if s[0] == "dense")


def write_colnn_file(keras_path: Path, colnn_path: Path) -> str:
    """harness.convert.convert, or (if that module is not there) the Keras reader + writer."""
    try:
        from harness.convert import convert
        convert(keras_path, colnn_path)
        return "harness.convert.convert"
    except ImportError:
        from harness.keras_reader import read_keras
        from harness.modelfile import write_model
        write_model(read_keras(keras_path), colnn_path)
        return "harness.keras_reader.read_keras + harness.modelfile.write_model"


# --------------------------------------------------------------------------------------------
# the FKB-style loop

def build_fkb_loop(workdir: Path, stages, np):
    src = BENCH_DIR / "fkb_loop.f90"
    lib_path = workdir / "libfkb_loop.so"
    cmd = ["gfortran", "-O3", "-march=native", "-fPIC", "-shared", "-J", str(workdir),
           "-o", str(lib_path), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"compiling {src} failed:\n{res.stdout}{res.stderr}")
    lib = ctypes.CDLL(str(lib_path))
    ci, cf, vp = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.fkb_reset.argtypes, lib.fkb_reset.restype = [], None
    lib.fkb_add_dense.argtypes, lib.fkb_add_dense.restype = [ci, ci, vp, vp], ci
    lib.fkb_add_batchnorm.argtypes = [ci, vp, vp, vp, vp, cf]
    lib.fkb_add_batchnorm.restype = ci
    lib.fkb_add_leaky_relu.argtypes, lib.fkb_add_leaky_relu.restype = [ci, cf], ci
    lib.fkb_add_identity.argtypes, lib.fkb_add_identity.restype = [ci], ci
    lib.fkb_forward.argtypes, lib.fkb_forward.restype = [ci, ci, ci, vp, vp], ci
    lib.fkb_reset()
    width = N_INPUTS
    for s in stages:
        if s[0] == "dense":
            w = np.asfortranarray(s[1], dtype=np.float32)     # (in, out), Fortran order
            b = np.ascontiguousarray(s[2], dtype=np.float32)
            stat = lib.fkb_add_dense(w.shape[0], w.shape[1], w.ctypes.data, b.ctypes.data)
            width = w.shape[1]
        elif s[0] == "batchnorm":
            arrs = [np.ascontiguousarray(a, dtype=np.float32) for a in s[1:5]]
            stat = lib.fkb_add_batchnorm(width, *(a.ctypes.data for a in arrs), s[5])
        elif s[0] == "leaky_relu":
            stat = lib.fkb_add_leaky_relu(width, s[1])
        else:
            stat = lib.fkb_add_identity(width)
        if stat < 0:
            raise SystemExit("fkb_loop: too many layers")
    return lib, " ".join(cmd[:4])


# --------------------------------------------------------------------------------------------
# numpy

def make_numpy_forward(np, stages, x):
    """Whole-batch float32: one matmul per dense layer, in-place elementwise passes (the BN
    scale gamma / sqrt(var + eps) precomputed, as Keras does at inference)."""
    nc = x.shape[0]
    plan = []
    for s in stages:
        if s[0] == "dense":
            plan.append(("dense", np.ascontiguousarray(s[1]), s[2],
                         np.empty((nc, s[1].shape[1]), dtype=np.float32)))
        elif s[0] == "batchnorm":
            gamma, beta, mean, var, eps = s[1:]
            scale = (gamma / np.sqrt(var + np.float32(eps))).astype(np.float32)
            plan.append(("batchnorm", mean, scale, beta))
        elif s[0] == "leaky_relu":
            plan.append(("leaky_relu", np.float32(s[1])))
    tmp = np.empty((nc, max(s[1].shape[1] for s in stages if s[0] == "dense")), np.float32)

    def run():
        a = x
        for step in plan:
            if step[0] == "dense":
                out = step[3]
                np.matmul(a, step[1], out=out)
                out += step[2]
                a = out
            elif step[0] == "batchnorm":
                a -= step[1]
                a *= step[2]
                a += step[3]
            else:
                t = tmp[:, :a.shape[1]]
                np.multiply(a, step[1], out=t)
                np.maximum(a, t, out=a)
        return a

    return run


# --------------------------------------------------------------------------------------------
# main

class quiet_stderr:
    """Sends file descriptor 2 to a temporary file inside the block; prints what was captured if
    the block fails."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.tmp = tempfile.TemporaryFile()
        os.dup2(self.tmp.fileno(), 2)
        return self

    def __exit__(self, exc_type, exc, tb):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if exc_type is not None:
            self.tmp.seek(0)
            sys.stderr.write(self.tmp.read().decode(errors="replace"))
        self.tmp.close()
        return False


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads)
    QUIET.update(wait_s=args.wait_quiet, retries=max(0, args.retries))
    sys.path.insert(0, str(REPO_ROOT))

    import numpy as np
    with quiet_stderr():          # TensorFlow's start-up log lines (CUDA probing, oneDNN)
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        import keras
        tf.constant(0.0) + 1.0    # initialises the runtime (and its log) now
    from harness.native import NativeModel, library_path

    lib_path = str(Path(args.library) if args.library else library_path("single"))
    results: dict = {"threads": args.threads, "columns": args.columns, "rows": []}

    with tempfile.TemporaryDirectory(prefix="colnn-bench-") as tmp:
        workdir = Path(tmp)
        model = build_keras_model(keras, np, args.seed)
        stages = keras_stages(keras, model)
        macs = macs_per_column(stages)
        keras_path, colnn_path = workdir / "paper.keras", workdir / "paper.colnn"
        model.save(keras_path)
        how = write_colnn_file(keras_path, colnn_path)
        native = NativeModel(colnn_path, library=lib_path)
        native_blas = NativeModel(colnn_path, library=lib_path)
        native_blas.set_batch_invariant(False)
        if native.dtype != np.float32:
            raise SystemExit(f"{lib_path} is not the single-precision library")
        fkb, fkb_cmd = build_fkb_loop(workdir, stages, np)

        sgemm, blas_path = resolve_sgemm(lib_path)
        blas_info = blas_description(blas_path)
        n = args.sgemm_size
        sg = sgemm_rate(sgemm, np, n, n, n, None, 1.0, rounds=3)
        settle()

        print("== colnn forward benchmark: the paper architecture ==")
        print(f"machine      : {cpu_model()}; {os.cpu_count()} cores online, "
              f"{len(os.sched_getaffinity(0))} usable; Python {platform.python_version()}")
        print(f"threads      : {args.threads} (OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = "
              f"TF intra/inter-op = {args.threads})")
        print(f"model        : {native.n_params:,} parameters ({native.n_layers} layers), "
              f"{macs:,} multiply-adds per column; .colnn written by {how}")
        lib_id = library_identity(lib_path)
        print(f"libcolnn     : {lib_path} ({lib_id})")
        print(f"BLAS         : {blas_path}" + (f" ({blas_info})" if blas_info else ""))
        print(f"BLAS sgemm   : {sg['gflops']:.1f} GFLOP/s on {n}x{n}x{n} float32 "
              f"(median of {sg['repeats']})" + (" !" if sg["others"] > BUSY_WARN else ""))
        print(f"TensorFlow   : {tf.__version__}, Keras {keras.__version__}; numpy "
              f"{np.__version__}; fkb-loop: {fkb_cmd} bench/fkb_loop.f90")
        results["machine"] = {"cpu": cpu_model(), "cores_online": os.cpu_count(),
                              "cores_usable": len(os.sched_getaffinity(0)),
                              "python": platform.python_version()}
        results["model"] = {"params": native.n_params, "macs_per_column": macs,
                            "colnn_file_by": how}
        results["libcolnn"] = {"path": lib_path, "identity": lib_id}
        results["blas"] = {"path": blas_path, "info": blas_info, "sgemm": sg}
        results["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__,
                               "numpy": np.__version__}

        # ctypes overhead of forward_raw: the same Python path, with n_columns = 0 the library
        # returns at its argument check.
        dummy_x = np.zeros((1, N_INPUTS), np.float32)
        dummy_y = np.zeros((1, N_OUTPUTS), np.float32)
        xp0, yp0 = dummy_x.ctypes.data, dummy_y.ctypes.data
        overhead = measure(lambda: native.forward_raw(xp0, 0, yp0), None, 0.3)["median_s"]
        results["forward_raw_overhead_s"] = overhead
        print(f"call overhead: forward_raw (Python + ctypes, library returns at once) "
              f"{overhead * 1e6:.2f} us per call")
        print()

        rng = np.random.default_rng(args.seed + 1)
        tf_fn = tf.function(lambda t: model(t, training=False), jit_compile=False)
        print("output check (max abs err / max |Keras out|, tolerance "
              f"{REL_TOL:g}) and timing, per column count:")
        for nc in args.columns:
            x = rng.standard_normal((nc, N_INPUTS), dtype=np.float32)
            ref = model(x, training=False).numpy()
            scale = float(np.max(np.abs(ref)))
            xt = tf.constant(x)
            y = np.empty((nc, N_OUTPUTS), np.float32)
            y_fkb = np.empty((nc, N_OUTPUTS), np.float32)
            xp, yp, yfp = x.ctypes.data, y.ctypes.data, y_fkb.ctypes.data
            np_run = make_numpy_forward(np, stages, x)
            fkb_forward = fkb.fkb_forward

            y_blas = np.empty((nc, N_OUTPUTS), np.float32)
            ybp = y_blas.ctypes.data

            def run_colnn():
                native.forward_raw(xp, nc, yp)

            def run_colnn_blas():
                native_blas.forward_raw(xp, nc, ybp)

            def run_tf_predict():
                return model.predict_on_batch(x)

            def run_tf_function():
                return tf_fn(xt).numpy()

            def run_fkb():
                fkb_forward(nc, N_INPUTS, N_OUTPUTS, xp, yfp)

            runs = {"colnn": run_colnn, "colnn-blas": run_colnn_blas, "tf.predict": run_tf_predict,
                    "tf.function": run_tf_function, "fkb-loop": run_fkb, "numpy": np_run}

            # correctness first: nothing wrong is ever timed
            native.predict(x, out=y)          # the checked call; raises on a library error
            if native.forward_raw(xp, nc, yp) != 0:
                raise SystemExit("colnn_forward (forward_raw) returned an error status")
            native_blas.predict(x, out=y_blas)
            outs = {"colnn": y.copy(), "colnn-blas": y_blas.copy(), "tf.predict": np.asarray(run_tf_predict()),
                    "tf.function": run_tf_function()}
            if fkb_forward(nc, N_INPUTS, N_OUTPUTS, xp, yfp) != 0:
                raise SystemExit("fkb_forward: size mismatch")
            outs["fkb-loop"] = y_fkb.copy()
            outs["numpy"] = np_run().copy()
            errs = {}
            for name in METHODS:
                errs[name] = float(np.max(np.abs(outs[name] - ref))) / scale
            line = ", ".join(f"{m} {errs[m]:.1e}" for m in METHODS)
            print(f"  {nc:>6} columns: max|out| {scale:.3g}; rel. err {line}")
            bad = [m for m in METHODS if not errs[m] <= REL_TOL]
            if bad:
                raise SystemExit(f"output mismatch at {nc} columns: {', '.join(bad)} "
                                 f"(> {REL_TOL:g} of max |out|); nothing is timed")

            row = {"columns": nc, "rel_err": errs, "time": {}, "columns_per_s": {}}
            settle()
            row["time"] = measure_set(runs, args.repeats, args.min_time, args.rounds)
            # and the buffers the timed calls wrote still hold the checked result
            for name, after in (("colnn", y), ("colnn-blas", y_blas), ("fkb-loop", y_fkb),
                                ("numpy", np_run())):
                if not float(np.max(np.abs(after - ref))) / scale <= REL_TOL:
                    raise SystemExit(f"{name}: the output after timing differs from Keras'")
            for name in METHODS:
                row["columns_per_s"][name] = nc / row["time"][name]["median_s"]
            cps = row["columns_per_s"]
            row["colnn_gflops"] = 2.0 * macs * nc / row["time"]["colnn"]["median_s"] / 1e9
            row["best_tf"] = max(("tf.predict", "tf.function"), key=lambda m: cps[m])
            row["ratio"] = {"vs_best_tf": cps["colnn"] / cps[row["best_tf"]],
                            "blas_vs_best_tf": cps["colnn-blas"] / cps[row["best_tf"]],
                            "invariant_vs_blas": cps["colnn"] / cps["colnn-blas"],
                            "vs_fkb_loop": cps["colnn"] / cps["fkb-loop"],
                            "vs_numpy": cps["colnn"] / cps["numpy"]}
            row["target"] = {"vs_best_tf": TARGET_VS_TF.get(nc),
                             "vs_fkb_loop": TARGET_VS_LOOP.get(nc)}
            results["rows"].append(row)

    # ---- the tables
    print()
    print(f"columns/s (median; threads = {args.threads}):")
    hdr = f"{'columns':>8} " + " ".join(f"{m:>13}" for m in METHODS) + f" {'colnn GFLOP/s':>14}"
    print(hdr)
    print("-" * len(hdr))
    for row in results["rows"]:
        cps = row["columns_per_s"]
        marks = {m: "!" if row["time"][m]["others"] > BUSY_WARN else " " for m in METHODS}
        print(f"{row['columns']:>8} " + " ".join(f"{fmt_rate(cps[m]):>12}{marks[m]}"
                                                 for m in METHODS)
              + f" {row['colnn_gflops']:>14.1f}")
    print()
    print("ratios of columns/s (target in brackets; met / MISSED):")
    hdr = (f"{'columns':>8} {'best TF':>12} {'colnn/best TF':>22} {'colnn/fkb-loop':>22} "
           f"{'colnn/numpy':>12} {'colnn-blas/best TF':>19} {'colnn/colnn-blas':>17}")
    print(hdr)
    print("-" * len(hdr))

    def with_target(value: float, target: float | None) -> str:
        if target is None:
            return f"{value:.2f}x"
        verdict = "met" if value >= target else "MISSED"
        return f"{value:.2f}x [>={target:g}x {verdict}]"

    for row in results["rows"]:
        r, tg = row["ratio"], row["target"]
        print(f"{row['columns']:>8} {row['best_tf']:>12} "
              f"{with_target(r['vs_best_tf'], tg['vs_best_tf']):>22} "
              f"{with_target(r['vs_fkb_loop'], tg['vs_fkb_loop']):>22} "
              f"{r['vs_numpy']:>11.2f}x {r['blas_vs_best_tf']:>18.2f}x "
              f"{r['invariant_vs_blas']:>16.2f}x")
    print()
    big = max(results["rows"], key=lambda r: r["columns"])
    print(f"colnn at {big['columns']:,} columns: {big['colnn_gflops']:.1f} GFLOP/s = "
          f"{100 * big['colnn_gflops'] / sg['gflops']:.0f}% of the BLAS' "
          f"{n}^3 sgemm rate ({sg['gflops']:.1f} GFLOP/s)")
    if results["rows"][0]["columns"] <= 16:
        first = results["rows"][0]
        share = overhead / first["time"]["colnn"]["median_s"]
        print(f"forward_raw call overhead at {first['columns']} column(s): "
              f"{overhead * 1e6:.2f} us = {100 * share:.0f}% of colnn's time per call")
    reps = sorted({t["repeats"] for r in results["rows"] for t in r["time"].values()})
    print(f"repeats per measurement: {reps[0]}..{reps[-1]} (median taken), after warm-up")
    spreads = [((t["q3_s"] - t["q1_s"]) / t["median_s"], m, r["columns"])
               for r in results["rows"] for m, t in r["time"].items()]
    worst = max(spreads)
    print(f"spread of the repeats, (q3 - q1) / median: median "
          f"{100 * statistics.median(s[0] for s in spreads):.0f}%, largest "
          f"{100 * worst[0]:.0f}% ({worst[1]} at {worst[2]} columns); {args.rounds} interleaved "
          "rounds per column count")
    busy = [t["others"] for r in results["rows"] for t in r["time"].values()] + [sg["others"]]
    results["max_other_cores"] = max(busy)
    n_marked = sum(b > BUSY_WARN for b in busy)
    print(f"other processes' CPU use during the measurements: max {max(busy):.2f} cores; "
          + (f"{n_marked} measurement(s) marked '!' (> {BUSY_WARN} cores): not a quiet machine, "
             "rerun those" if n_marked else "none above " + f"{BUSY_WARN} cores (quiet machine)"))

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
