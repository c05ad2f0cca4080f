#!/usr/bin/env python3
"""Which BLAS serves colnn best on this machine: sgemm rates and the colnn forward pass.

For each BLAS variant and thread count a fresh child process is started (thread counts and
OPENBLAS_CORETYPE are read once, when a library initialises), with that BLAS put in front of
libcolnn's own by LD_PRELOAD where needed. The child measures, through the sgemm_ that libcolnn
binds to (resolved the way the dynamic linker does, and its library printed):
  * sgemm GFLOP/s on 2048^3 and on the hidden-layer shape 256 x 8192 x 256 (m x n x k),
  * the colnn forward pass of the paper architecture (random weights) at --columns columns,
    its output checked against harness.reference first,
  * the sum of the sgemm times of that network's layer shapes at those columns: the time colnn
    would take if its non-GEMM work (bias, batch norm, leaky ReLU, copies, checks) were free;
    at 1 column also the same layers as sgemv_.
A second table runs the linked BLAS (and Debian's other OpenBLAS build) with different OpenMP /
BLAS thread splits and OpenMP wait policies: do libgomp's threads (the library's column blocks
and elementwise passes) and the BLAS' own threads get in each other's way?

This machine is a 2-vCPU virtual machine whose speed drifts by +-15 % within seconds, and it is
shared: every configuration runs --rounds times, interleaved, and the tables show medians;
each measurement first waits for other processes to go idle (see bench/forward.py).

Variants: Debian's OpenBLAS 0.3.21 as libcolnn links it, the same with OPENBLAS_CORETYPE=
SkylakeX / Zen / Haswell, Debian's other OpenBLAS build (pthread or openmp, LD_PRELOAD, same
soname so it replaces the linked one), Debian's BLIS 0.9.0 (libblis4-pthread, if installed;
LD_PRELOAD), numpy's bundled OpenBLAS 0.3.31 (scipy_openblas, through bench/sgemm_shim.c,
compiled here). Nothing is installed or switched system-wide.

    .venv/bin/python bench/blas_rates.py [--threads 1 2] [--columns 1 64 8192] [--rounds 3]
                                         [--min-time S] [--no-interference] [--json FILE]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEBIAN_OPENBLAS = ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
                   "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0")
DEBIAN_BLIS = "/usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------------------------
# child: one BLAS, one thread setting

def paper_spec(np, seed: int = 0):
    """The paper architecture as a ModelSpec with random weights and BN statistics (numpy only,
    so the child does not need TensorFlow)."""
    from harness.modelfile import Activation, LayerSpec, ModelSpec
    rng = np.random.default_rng(seed)
    f32 = np.float32
    layers = []
    n_in = 94
    for i in range(1, 6):
        lim = np.sqrt(6.0 / (n_in + 256))
        layers.append(LayerSpec("dense", f"dense_{i}", {
            "units": 256, "use_bias": True, "activation": Activation.make("linear")}, {
            "kernel": rng.uniform(-lim, lim, (n_in, 256)).astype(f32),
            "bias": rng.uniform(-0.1, 0.1, 256).astype(f32)}))
        layers.append(LayerSpec("batch_normalization", f"batch_norm_{i}", {
            "epsilon": 1e-3, "momentum": 0.99, "center": True, "scale": True}, {
            "gamma": rng.uniform(0.5, 1.5, 256).astype(f32),
            "beta": rng.normal(0, 0.2, 256).astype(f32),
            "moving_mean": rng.normal(0, 0.3, 256).astype(f32),
            "moving_variance": rng.uniform(0.5, 2.0, 256).astype(f32)}))
        layers.append(LayerSpec("activation", f"leaky_relu_{i}", {
            "activation": Activation.make("leaky_relu", negative_slope=0.3)}))
        layers.append(LayerSpec("dropout", f"dropout_{i}", {"rate": 0.1}))
        n_in = 256
    lim = np.sqrt(6.0 / (256 + 65))
    layers.append(LayerSpec("dense", "dense_out", {
        "units": 65, "use_bias": True, "activation": Activation.make("linear")}, {
        "kernel": rng.uniform(-lim, lim, (256, 65)).astype(f32),
        "bias": rng.uniform(-0.1, 0.1, 65).astype(f32)}))
    return ModelSpec("float32", 94, layers)


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(BENCH_DIR))
    sys.path.insert(0, str(REPO_ROOT))
    import forward as fwd            # bench/forward.py: timing and BLAS helpers
    fwd.QUIET.update(wait_s=args.wait_quiet, retries=max(0, args.retries))
    import numpy as np
    from harness import reference
    from harness.modelfile import read_model
    from harness.native import NativeModel, library_path

    lib_path = str(library_path("single"))
    spec = read_model(args.model)
    native = NativeModel(args.model, library=lib_path)
    sgemm, blas_path = fwd.resolve_sgemm(lib_path)
    out: dict = {"sgemm_from": blas_path, "info": fwd.blas_description(blas_path)}
    if "sgemm_shim" in blas_path:
        import ctypes
        lib = ctypes.CDLL(os.environ["COLNN_BENCH_SCIPY_OPENBLAS"])
        lib.scipy_openblas_get_config64_.restype = ctypes.c_char_p
        lib.scipy_openblas_get_corename64_.restype = ctypes.c_char_p
        out["info"] = (f"{lib.scipy_openblas_get_config64_().decode()}; core "
                       f"{lib.scipy_openblas_get_corename64_().decode()}; threads "
                       f"{lib.scipy_openblas_get_num_threads64_()}")
    t = args.min_time
    parts = set(args.parts.split(","))
    busy = [0.0]
    if "sgemm" in parts:
        r = fwd.sgemm_rate(sgemm, np, 2048, 2048, 2048, None, max(t, 0.5))
        out["sgemm_2048"] = r["gflops"]
        busy.append(r["others"])
        r = fwd.sgemm_rate(sgemm, np, 256, 8192, 256, None, t)
        out["sgemm_layer"] = r["gflops"]
        busy.append(r["others"])

    dense = [(lay.tensors["kernel"].shape[1], lay.tensors["kernel"].shape[0])
             for lay in spec.layers if lay.type == "dense"]          # (m = out, k = in)
    macs = sum(m * k for m, k in dense)
    rng = np.random.default_rng(3)
    out["forward"] = {}
    for nc in args.columns:
        x = rng.standard_normal((nc, 94), dtype=np.float32)
        y = np.empty((nc, 65), np.float32)
        native.predict(x, out=y)
        ref = reference.forward(spec, x.T).T
        err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
        if not err < 1e-4:
            raise SystemExit(f"colnn output wrong with this BLAS: rel. err {err:.2e}")
        xp, yp = x.ctypes.data, y.ctypes.data
        r = fwd.measure(lambda: native.forward_raw(xp, nc, yp), None, t)
        tf = r["median_s"]
        busy.append(r["others"])
        out["forward"][str(nc)] = {"columns_per_s": nc / tf, "gflops": 2 * macs * nc / tf / 1e9,
                                   "forward_s": tf, "rel_err": err}
        if "gemmsum" not in parts:
            continue
        gemm_sum = 0.0
        for shape in sorted(set(dense)):
            r = fwd.sgemm_rate(sgemm, np, shape[0], nc, shape[1], None, t / 3)
            gemm_sum += dense.count(shape) * r["median_s"]
            busy.append(r["others"])
        gemv = {}
        if nc == 1:        # the same layers as matrix-vector products (sgemv_)
            sgemv, gemv_from = fwd.resolve_sgemm(lib_path, "sgemv_")
            gemv = {"gemv_sum_s": 0.0, "sgemv_from": gemv_from}
            for shape in sorted(set(dense)):
                r = fwd.sgemv_time(sgemv, np, shape[0], shape[1], None, t / 3)
                gemv["gemv_sum_s"] += dense.count(shape) * r["median_s"]
                busy.append(r["others"])
        out["forward"][str(nc)].update(gemv, gemm_sum_s=gemm_sum, gemm_share=gemm_sum / tf)
    out["max_other_cores"] = max(busy)
    print("RESULT " + json.dumps(out))
    return 0


# --------------------------------------------------------------------------------------------
# parent

def run_child(model: Path, env_extra: dict, columns: list[int], min_time: float,
              quiet: list[str], parts: str) -> dict:
    env = dict(os.environ)
    for var in ("OPENBLAS_CORETYPE", "LD_PRELOAD", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                "COLNN_BENCH_SCIPY_OPENBLAS"):
        env.pop(var, None)
    env.update(env_extra)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", str(model),
           "--min-time", str(min_time), "--parts", parts, *quiet,
           "--columns", *map(str, columns)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"child failed ({env_extra}):\n{res.stdout}\n{res.stderr}")


def scipy_openblas_path() -> str | None:
    import numpy as np
    libs = glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "libscipy_openblas*"))
    return libs[0] if libs else None


def build_shim(workdir: Path) -> str | None:
    if not scipy_openblas_path():
        return None
    out = workdir / "libsgemm_shim.so"
    cmd = ["gcc", "-O2", "-fPIC", "-shared", "-o", str(out), str(BENCH_DIR / "sgemm_shim.c"),
           "-ldl"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"cannot build the scipy_openblas shim:\n{res.stderr}", file=sys.stderr)
        return None
    return str(out)


def library_path() -> str:
    sys.path.insert(0, str(REPO_ROOT))
    from harness.native import library_path as lp
    return str(lp("single"))


def linked_blas() -> str:
    """Real path of the BLAS libcolnn is linked against (its ldd line naming blas)."""
    res = subprocess.run(["ldd", library_path()], capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if "blas" in line and "=>" in line:
            return os.path.realpath(line.split("=>")[1].split("(")[0].strip())
    return "unknown"


def short_name(path: str) -> str:
    """'Debian OpenBLAS 0.3.21 openmp' and the like, from the library's path."""
    if "openblas-openmp" in path:
        return "Debian OpenBLAS 0.3.21 openmp"
    if "openblas-pthread" in path:
        return "Debian OpenBLAS 0.3.21 pthread"
    if "blis" in path:
        return "Debian BLIS"
    return Path(path).name


def median_tree(runs: list):
    """Element-wise median of a list of equally shaped JSON trees (numbers; other leaves are
    taken from the first)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: median_tree([r[k] for r in runs]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return statistics.median(runs)
    return first


def threads_env(omp: int, blas: int) -> dict:
    return {"OMP_NUM_THREADS": str(omp), "OPENBLAS_NUM_THREADS": str(blas),
            "BLIS_NUM_THREADS": str(blas), "MKL_NUM_THREADS": str(blas)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--columns", nargs="+", type=int, default=[1, 64, 8192])
    p.add_argument("--min-time", type=float, default=0.4)
    p.add_argument("--rounds", type=int, default=3,
                   help="run every configuration this many times, interleaved; print medians")
    p.add_argument("--parts", default="sgemm,forward,gemmsum", help=argparse.SUPPRESS)
    p.add_argument("--no-interference", action="store_true",
                   help="skip the OpenMP / OpenBLAS thread-split table")
    p.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                   help="before each measurement wait up to S seconds for other processes to "
                        "go idle (default 60)")
    p.add_argument("--retries", type=int, default=2,
                   help="redo a measurement disturbed by other processes at most this often")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np  # noqa: F401  (the parent only writes the model file and the shim)
    from harness.modelfile import write_model

    with tempfile.TemporaryDirectory(prefix="colnn-blas-") as tmp:
        workdir = Path(tmp)
        model = workdir / "paper.colnn"
        write_model(paper_spec(np), model)
        shim = build_shim(workdir)

        linked = linked_blas()
        sys.path.insert(0, str(BENCH_DIR))
        from forward import library_identity
        print(f"libcolnn: {library_path()} ({library_identity(library_path())}); links BLAS "
              f"{linked}")
        print()
        variants: list[tuple[str, dict]] = [(f"as linked: {short_name(linked)}", {})]
        for core in ("SkylakeX", "Zen", "Haswell"):
            variants.append((f"  same, OPENBLAS_CORETYPE={core}", {"OPENBLAS_CORETYPE": core}))
        for path in DEBIAN_OPENBLAS:
            if Path(path).exists() and os.path.realpath(path) != linked:
                variants.append((f"{short_name(path)} (LD_PRELOAD)", {"LD_PRELOAD": path}))
        if Path(DEBIAN_BLIS).exists():
            variants.append(("Debian BLIS 0.9.0 pthread (LD_PRELOAD)", {"LD_PRELOAD": DEBIAN_BLIS}))
        if shim:
            variants.append(("numpy's scipy_openblas (LD_PRELOAD shim)",
                             {"LD_PRELOAD": shim,
                              "COLNN_BENCH_SCIPY_OPENBLAS": scipy_openblas_path()}))

        cols = args.columns
        quiet = ["--wait-quiet", str(args.wait_quiet), "--retries", str(args.retries)]
        jobs: list[dict] = []
        for name, env in variants:
            for thr in args.threads:
                jobs.append({"table": "variants", "name": name, "threads": thr, "env": env,
                             "child_env": {**env, **threads_env(thr, thr)},
                             "parts": "sgemm,forward,gemmsum", "runs": []})
        if not args.no_interference:
            splits = [("OMP 2, BLAS 2", threads_env(2, 2)),
                      ("OMP 2, BLAS 2, OMP_WAIT_POLICY=passive",
                       {**threads_env(2, 2), "OMP_WAIT_POLICY": "passive"}),
                      ("OMP 2, BLAS 2, OMP_WAIT_POLICY=active",
                       {**threads_env(2, 2), "OMP_WAIT_POLICY": "active"}),
                      ("OMP 1, BLAS 2", threads_env(1, 2)),
                      ("OMP 2, BLAS 1", threads_env(2, 1)),
                      ("OMP 1, BLAS 1", threads_env(1, 1))]
            blases = [(short_name(linked), {})]
            for path in DEBIAN_OPENBLAS:
                if Path(path).exists() and os.path.realpath(path) != linked:
                    blases.append((short_name(path), {"LD_PRELOAD": path}))
            for b, benv in blases:
                for sp, senv in splits:
                    jobs.append({"table": "interference", "name": f"{b}: {sp}", "env": benv,
                                 "child_env": {**benv, **senv}, "parts": "forward",
                                 "runs": []})

        # rounds: every job once per round (order reversed every other round), medians after
        for rnd in range(args.rounds):
            order = jobs if rnd % 2 == 0 else jobs[::-1]
            for i, job in enumerate(order):
                if sys.stderr.isatty():
                    print(f"\r[round {rnd + 1}/{args.rounds}, run {i + 1}/{len(jobs)}]",
                          end="", file=sys.stderr, flush=True)
                job["runs"].append(run_child(model, job["child_env"], cols, args.min_time,
                                             quiet, job["parts"]))
        if sys.stderr.isatty():
            print("\r" + " " * 40 + "\r", end="", file=sys.stderr, flush=True)
        for job in jobs:
            job["median"] = median_tree(job["runs"])
        results = {"libcolnn": library_path(), "linked_blas": linked, "rounds": args.rounds,
                   "columns": cols, "jobs": [{k: v for k, v in j.items() if k != "child_env"}
                                             for j in jobs]}

        print(f"medians of {args.rounds} rounds (each a fresh process per row; the rows of a "
              "round run back to back, rounds alternate the order)")
        print(f"{'BLAS':<42} {'thr':>3} {'2048^3':>7} {'256x8192':>8} "
              + " ".join(f"{'fwd ' + str(c):>10} {'gemm%':>5}" for c in cols)
              + f" {'GFLOP/s@' + str(max(cols)):>14} {'busy':>5}  sgemm_ from")
        print(f"{'':<42} {'':>3} {'GFLOP/s':>7} {'x256':>8} "
              + " ".join(f"{'col/s':>10} {'':>5}" for c in cols))
        for job in (j for j in jobs if j["table"] == "variants"):
            r = job["median"]
            f = r["forward"]
            spread = [x["sgemm_2048"] for x in job["runs"]]
            print(f"{job['name']:<42} {job['threads']:>3} {r['sgemm_2048']:>7.1f} "
                  f"{r['sgemm_layer']:>8.1f} "
                  + " ".join(f"{f[str(c)]['columns_per_s']:>10,.0f} "
                             f"{100 * f[str(c)]['gemm_share']:>4.0f}%" for c in cols)
                  + f" {f[str(max(cols))]['gflops']:>14.1f} "
                  f"{max(x['max_other_cores'] for x in job['runs']):>5.2f}  "
                  f"{Path(r['sgemm_from']).name} [{r['info']}]")
            job["sgemm_2048_rounds"] = spread
        print("gemm% = the sum of the network's sgemm times (its layer shapes at that column "
              "count, the same BLAS and threads) / colnn's forward time;")
        print("busy = the most CPU (cores) other processes used during one of the row's "
              "measurements; 2048^3 per round: "
              + "; ".join(f"{j['name'].strip()} {j['threads']}: "
                          + "/".join(f"{v:.0f}" for v in j["sgemm_2048_rounds"])
                          for j in jobs if j["table"] == "variants" and j["threads"] == 2))
        if "1" in {str(c) for c in cols}:
            print()
            print("1 column in detail (microseconds): colnn forward; the sum of its six layers as "
                  "sgemm_ (n = 1) and as sgemv_ (the sgemv_ libcolnn would bind to)")
            for job in (j for j in jobs if j["table"] == "variants"):
                f1 = job["median"]["forward"]["1"]
                print(f"{job['name']:<42} {job['threads']:>3}  forward "
                      f"{1e6 * f1['forward_s']:7.1f}  sgemm sum {1e6 * f1['gemm_sum_s']:7.1f}"
                      f"  sgemv sum {1e6 * f1['gemv_sum_s']:7.1f} "
                      f"({Path(f1['sgemv_from']).name})")

        inter = [j for j in jobs if j["table"] == "interference"]
        if inter:
            print()
            print("OpenMP threads (libgomp: colnn's column blocks and elementwise passes) against "
                  "the BLAS' own threads (OMP = OMP_NUM_THREADS, BLAS = OPENBLAS_NUM_THREADS):")
            print(f"{'setting':<70} " + " ".join(f"{'fwd ' + str(c):>10}" for c in cols)
                  + f" {'GFLOP/s@' + str(max(cols)):>14} {'busy':>5}")
            for job in inter:
                f = job["median"]["forward"]
                print(f"{job['name']:<70} " + " ".join(f"{f[str(c)]['columns_per_s']:>10,.0f}"
                                                       for c in cols)
                      + f" {f[str(max(cols))]['gflops']:>14.1f} "
                      f"{max(x['max_other_cores'] for x in job['runs']):>5.2f}")
            print("(columns/s of the colnn forward pass)")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
