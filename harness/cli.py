"""The `harness` command line: a thin front end over the package's modules.

Every subcommand maps to one function; errors the user can cause are HarnessError and are
printed as one line (no traceback), with exit status 2. `verify` exits 1 when outside tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import HarnessError
from .status import TaskProgress, TaskState

__all__ = ["main", "build_parser"]


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert
    if args.output is None:
        if (Path(args.input) / "study.json").is_file():
            args.stage = "convert"
            return _cmd_stage(args)
        raise HarnessError(f"give the file to write with -o OUT (or a study directory to run "
                           f"its convert stage; {args.input} is not one)")
    limit = {} if args.read_timeout is None else {"read_timeout": args.read_timeout}
    if args.inputs_meta or args.outputs_meta:
        from .convert import load_any, save_any
        from .features import read_feature_csv, with_features
        spec = load_any(args.input, args.src_format, fkb_precision=args.fkb_precision, **limit)
        spec = with_features(
            spec, read_feature_csv(args.inputs_meta) if args.inputs_meta else None,
            read_feature_csv(args.outputs_meta) if args.outputs_meta else None, str(args.input))
        save_any(spec, args.output, args.dst_format)
    else:
        spec = convert(args.input, args.output, src_format=args.src_format,
                       dst_format=args.dst_format, fkb_precision=args.fkb_precision, **limit)
    print(f"{args.input} -> {args.output}: {len(spec.layers)} layers, {spec.n_inputs} -> "
          f"{spec.n_outputs}, {spec.n_params} parameters, {spec.precision}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify
    result = verify(args.keras_file, args.model_file, columns=args.columns, seed=args.seed,
                    tol=args.tol, inputs=args.inputs, library=args.library,
                    inputs_dataset=args.inputs_dataset)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.report())
    return 0 if result.passed else 1


def _cmd_info(args: argparse.Namespace) -> int:
    from .convert import load_any
    spec = load_any(args.model, args.src_format)
    print(f"{args.model}: {spec.precision}, {spec.n_inputs} inputs -> {spec.n_outputs} outputs, "
          f"{spec.n_params} parameters")
    n_in = spec.n_inputs
    for i, layer in enumerate(spec.layers, 1):
        n_out = layer.n_outputs(n_in)
        act = layer.attrs.get("activation")
        act_text = f"  {act.to_text()}" if act is not None else ""
        print(f"  {i:3d} {layer.type:20s} {layer.name:24s} {n_in:6d} -> {n_out:<6d}{act_text}")
        n_in = n_out
    from .features import features_of
    for side in ("input", "output"):
        features = features_of(spec, side)
        if features:
            print(f"{side}s (name level units):")
            for k, f in enumerate(features, start=1):
                print(f"  {k:4d} {f.name:20s} {f.level:10s} {f.units}")
        else:
            print(f"{side}s: not described (harness convert --{side}s-meta CSV)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(Path(args.workdir), seed=args.seed, columns=args.columns, epochs=args.epochs)


def _cmd_config(args: argparse.Namespace) -> int:
    from . import locate
    getters: dict[str, Callable[[], object]] = {
        "cmakedir": lambda: locate.cmake_dir(args.precision),
        "pkgconfigdir": lambda: locate.pkgconfig_dir(args.precision),
        "prefix": lambda: locate.install_prefix(args.precision).path,
        "library": lambda: locate.library(args.precision).path,
        "host_bin": lambda: locate.host_bin_dir(args.precision).path,
        "slurm_templates": lambda: locate.slurm_templates().path,
    }
    for name, get in getters.items():
        if getattr(args, name):
            print(get())
            return 0
    print(locate.report())
    return 0


def _cmd_host_run(args: argparse.Namespace) -> int:
    from .hosts import load_host_run, run_host
    run = load_host_run(args.config, Path(args.output) if args.output else None)
    result = run_host(run, timeout=args.timeout)
    print(json.dumps({k: result.get(k) for k in ("status", "steps", "failure_step", "reason",
                                                  "variable", "message", "wall_time_s",
                                                  "nn_time_s")}, indent=2))
    print(f"outputs in {run.output_dir}")
    return 0


def _cmd_host_defaults(args: argparse.Namespace) -> int:
    from .hosts import host_defaults
    for group, values in host_defaults(args.host, executable=args.executable).items():
        print(f"[{group.removeprefix(args.host + '_')}]  # &{group}")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
        print()
    return 0


def _cmd_l96_calibrate(args: argparse.Namespace) -> int:
    from .l96 import (calibrate_drift, calibrate_window_climate, climate_false_alarm_rates,
                      fit_cubic, read_truth)
    cal = calibrate_drift(args.truth, args.window_time, args.sample_time)
    climate = calibrate_window_climate(args.truth, cal, args.pdf_bins, args.acf_lags)
    out = {"failure": cal.as_dict(), "climate": climate.as_dict()}
    if args.check:
        rates = climate_false_alarm_rates(args.check, cal, climate, (3.0, 4.0, 5.0))
        out["false_alarm_rate_per_window"] = {
            crit: {str(k): v for k, v in r.items()} for crit, r in rates.items()}
    x, u, _ = read_truth(args.truth)
    out["cubic_coeffs"] = fit_cubic(x, u)
    print(json.dumps(out, indent=2))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .study.runner import open_or_create, run_stages, status_text
    if args.resume and args.config:
        raise HarnessError("give either CONFIG (a new or rerun study) or --resume DIR")
    sd = open_or_create(args.config, args.resume or args.output)
    stages = args.stages.split(",") if args.stages else None
    print(f"study {sd.config.name} in {sd.root}", file=sys.stderr)
    from .study.config import STAGES
    run_stages(sd, stages or STAGES, args.executor, wait=not args.no_wait,
               progress=not args.quiet)
    print(status_text(sd.root))
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    from .study.layout import StudyDir
    from .study.runner import run_stages
    sd = StudyDir.open(args.input if args.stage == "convert" else args.study)
    run_stages(sd, [args.stage], getattr(args, "executor", None),
               wait=not getattr(args, "no_wait", False), progress=not getattr(args, "quiet", False))
    counts = sd.counts(args.stage)
    print(f"{args.stage}: {counts['ok']}/{sd.n_tasks(args.stage)} tasks done"
          + (f", {counts['error']} failed (rerun to retry)" if counts["error"] else "")
          + (f", {counts['waiting']} waiting for unfinished earlier tasks (--resume)"
             if counts["waiting"] else ""))
    if args.stage == "report":
        print(f"report: {sd.root / 'report' / 'report.md'}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .study.runner import status_text
    print(status_text(args.study))
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from .study.runner import cancel_study
    print(cancel_study(args.study, args.stage.split(",") if args.stage else None))
    return 0


def _cmd_task(args: argparse.Namespace) -> int:
    from .study.layout import StudyDir
    from .study.tasks import TaskStopped, run_task, stop_on_signals
    if args.count < 1:
        raise HarnessError(f"--count must be >= 1, got {args.count}")
    sd = StudyDir.open(args.study)
    last = min(args.index + args.count, sd.n_tasks(args.stage)) if args.count > 1 \
        else args.index + 1
    failed = 0
    with stop_on_signals():
        for index in range(args.index, last):
            try:
                marker = run_task(sd.root, args.stage, index, force=args.force, study=sd)
            except TaskStopped as exc:
                # the rest of a bundle is left for the requeue or --resume
                print(f"harness: {args.stage} task {index}: {exc.describe(args.stage)}",
                      file=sys.stderr)
                return 128 + exc.signum
            if marker.get("status") == TaskProgress.RUNNING:
                # another job has it: not a failure of this one (exit 0, nothing written)
                print(f"harness: {marker['message']}", file=sys.stderr)
            elif marker.get("status") != TaskState.OK:
                print(f"harness: {args.stage} task {index} failed: {marker.get('message')}",
                      file=sys.stderr)
                failed += 1
    return 1 if failed else 0


def _cmd_image_build(args: argparse.Namespace) -> int:
    from .image import build_command
    return build_command(args.definition, args.sandbox, args.context, args.notest,
                         args.build_ca, args.cache_dir, not args.no_base_cache, args.quiet)


def _cmd_image_action(args: argparse.Namespace) -> int:
    from .image import Action, parse_bind, run_action
    binds = [parse_bind(b) for b in args.bind]
    proc = run_action(args.sandbox, Action(args.image_command), args.args, binds, args.pwd)
    return proc.returncode


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_studies, run_variants
    from .study.variants import parse_variant
    if bool(args.config) != bool(args.variant):
        raise HarnessError("--config and --variant go together: the study file and at least "
                           "one NAME:KEY=VALUE[;KEY=VALUE...] to run from it")
    labels = {}
    for item in args.label:
        key, sep, name = item.partition("=")
        if not sep or not key or not name:
            raise HarnessError(f"--label {item}: expected DIR=NAME")
        labels[key] = name
    dirs, wall = [Path(d) for d in args.studies], {}
    if args.config:
        runs = run_variants(args.config, [parse_variant(v) for v in args.variant], args.output,
                            args.executor, progress=not args.quiet)
        labels.update({str(r.directory): r.variant.name for r in runs
                       if r.variant.name not in labels and str(r.directory) not in labels})
        wall = {r.directory.resolve(): r.wall_s for r in runs}
        dirs = [r.directory for r in runs] + dirs
    path, cmp = compare_studies(dirs, args.output, labels, wall)
    for s in cmp.stats:
        print(f"{s.label}: n {s.n}, censored {s.n - s.n_failed}, Spearman "
              + ("undefined" if s.spearman["rho"] is None else f"{s.spearman['rho']:+.2f}")
              + ", C " + ("undefined" if s.concordance["c"] is None
                          else f"{s.concordance['c']:.2f}"))
    print(f"report: {path}")
    return 0


def _cmd_farm(args: argparse.Namespace) -> int:
    from .study.farm import farm
    return farm(args.study, args.stages.split(","), progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description=(
        "Move Keras networks into the colnn Fortran library and check them."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formats = ["keras", "h5", "colnn", "fkb"]

    c = sub.add_parser("convert", help="convert between Keras (.keras/.h5), colnn and FKB files",
                       description="Convert IN to OUT; formats come from the content of IN and "
                                   "the suffix of OUT (.colnn, .keras, .h5, .fkb/.txt).")
    c.add_argument("input", help="model file to read (or a study directory: its convert stage)")
    c.add_argument("-o", "--output", help="model file to write")
    c.add_argument("--from", dest="src_format", choices=formats, help="format of IN")
    c.add_argument("--to", dest="dst_format", choices=formats, help="format of OUT")
    c.add_argument("--inputs-meta", metavar="CSV",
                   help="what each input feature is: a CSV file with the header name,level,units "
                        "and one row per input, in order (written as meta lines; the coupler "
                        "checks a host's declared variables against them)")
    c.add_argument("--outputs-meta", metavar="CSV", help="the same for the outputs")
    c.add_argument("--fkb-precision", choices=["float32", "float64"], default="float32",
                   help="precision to read an FKB IN's values in: FKB files do not say theirs; "
                        "FKB's default build writes single, its REAL64 build double "
                        "(default float32)")
    c.add_argument("--read-timeout", type=float, metavar="SECONDS",
                   help="give up on a Keras file whose reading takes longer (a damaged HDF5 "
                        "file can hang libhdf5; default 120)")
    c.add_argument("--executor", choices=["local", "slurm", "mpi"],
                   help="study directory: where the tasks run (default: the study's)")
    c.add_argument("--no-wait", action="store_true", help="study directory, slurm: only submit")
    c.add_argument("-q", "--quiet", action="store_true", help="study directory: no progress bars")
    c.set_defaults(func=_cmd_convert)

    v = sub.add_parser("verify", help="compare the Fortran library with Keras on the same inputs")
    v.add_argument("keras_file", help=".keras or .h5 file run by Keras")
    v.add_argument("model_file", help="colnn (or FKB) file run by the Fortran library")
    v.add_argument("--columns", type=int, default=1024, help="random columns (default 1024)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    v.add_argument("--tol", type=float, default=None,
                   help="max abs error / max |output| allowed (default 1e-5 single, 1e-12 double)")
    v.add_argument("--inputs", help=".npy or .h5 array of inputs, one row per column")
    v.add_argument("--inputs-dataset", help="dataset name inside an .h5 inputs file")
    v.add_argument("--library", help="path of libcolnn to use (default: the build tree)")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.set_defaults(func=_cmd_verify)

    i = sub.add_parser("info", help="show the layers of a model file")
    i.add_argument("model")
    i.add_argument("--from", dest="src_format", choices=formats)
    i.set_defaults(func=_cmd_info)

    d = sub.add_parser("demo", help="train a small Keras MLP, convert it, run it in Fortran, verify")
    d.add_argument("--workdir", default="demo-run", help="directory for the files it makes")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--columns", type=int, default=4096, help="columns used in verification")
    d.add_argument("--epochs", type=int, default=8)
    d.set_defaults(func=_cmd_demo)

    cf = sub.add_parser(
        "config", help="where the library, host programs and templates are; build flags for a GCM",
        description="Without an option: every native part the harness uses, where it comes "
                    "from ($COLNN_LIB and friends, the installed wheel, or the source tree's "
                    "build), and what the wheel was built with. With one: that path alone, "
                    "e.g. cmake -Dcolnn_DIR=$(harness config --cmakedir) or "
                    "PKG_CONFIG_PATH=$(harness config --pkgconfigdir) pkg-config --libs colnn.")
    cf.add_argument("--precision", choices=["single", "double"], default="single",
                    help="which build of the library (default single)")
    which = cf.add_mutually_exclusive_group()
    which.add_argument("--cmakedir", action="store_true",
                       help="the directory with colnnConfig.cmake, for find_package(colnn)")
    which.add_argument("--pkgconfigdir", action="store_true",
                       help="the directory with colnn.pc and colnn_coupler.pc")
    which.add_argument("--prefix", action="store_true",
                       help="the installed prefix (lib/, include/colnn/, bin/)")
    which.add_argument("--library", action="store_true", help="the libcolnn the harness loads")
    which.add_argument("--host-bin", action="store_true",
                       help="the directory with the host programs colnn_l96, colnn_sw")
    which.add_argument("--slurm-templates", action="store_true",
                       help="the directory with the sbatch templates")
    cf.set_defaults(func=_cmd_config)

    h = sub.add_parser("host", help="run a Fortran toy host (Lorenz-96, shallow water)")
    hsub = h.add_subparsers(dest="host_command", required=True, metavar="ACTION")
    hr = hsub.add_parser("run", help="run a host from a TOML configuration",
                         description="Writes run.nml into the output directory, runs the host "
                                     "(under mpirun when ranks > 1) and prints its result.")
    hr.add_argument("config", help="TOML file: host, ranks, [model], [run], [failure], [coupler]")
    hr.add_argument("-o", "--output", help="output directory (default: run.output_dir)")
    hr.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    hr.set_defaults(func=_cmd_host_run)
    hd = hsub.add_parser("defaults", help="the configuration keys of a host, with defaults")
    hd.add_argument("host", help="a built-in host (l96, sw) or, with --executable, your own")
    hd.add_argument("--executable", default="",
                    help="the host program of a host of your own (docs/host-protocol.md)")
    hd.set_defaults(func=_cmd_host_defaults)

    lc = sub.add_parser("l96-calibrate",
                        help="drift-test references and cubic fit from an L96 truth run")
    lc.add_argument("truth", help="truth.h5 of colnn_l96 in truth mode")
    lc.add_argument("--window-time", type=float, default=5.0,
                    help="drift window in model time units (default 5)")
    lc.add_argument("--sample-time", type=float, default=0.05,
                    help="time between the samples of a window (default 0.05)")
    lc.add_argument("--check", help="an independent truth run: report false-alarm rates on it")
    lc.add_argument("--pdf-bins", type=int, default=16,
                    help="bins of the distribution criterion (0: off; default 16)")
    lc.add_argument("--acf-lags", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.4, 0.5],
                    help="lags of the autocorrelation criterion, fractions of the window "
                         "(none: off; default 0.1 0.2 0.3 0.4 0.5)")
    lc.set_defaults(func=_cmd_l96_calibrate)

    executors = ["local", "slurm", "mpi"]
    st = sub.add_parser("study", help="run a study: truth data, candidates, coupled runs, report",
                        description="Validates CONFIG, plans the study into its directory and "
                                    "runs the stages data, train, convert, couple, collect, "
                                    "report on the configured executor. Finished tasks are "
                                    "skipped, so a rerun (or --resume DIR) does only what is "
                                    "left, and retries tasks that failed for infrastructure "
                                    "reasons.")
    st.add_argument("config", nargs="?", help="study TOML file (see examples/study/)")
    st.add_argument("-o", "--output", help="study directory (default: studies/<name>)")
    st.add_argument("--resume", metavar="DIR",
                    help="continue the study in DIR (its Slurm jobs that are still queued or "
                         "running are adopted, not submitted again)")
    st.add_argument("--executor", choices=executors, help="override executor.kind")
    st.add_argument("--stages", help="comma-separated subset of the stages, in order")
    st.add_argument("--no-wait", action="store_true",
                    help="slurm: return after submitting (follow with `harness status DIR`)")
    st.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    st.set_defaults(func=_cmd_study)

    helps = {"data": "truth runs of the host", "train": "train the candidates in Keras",
             "couple": "coupled runs of candidates, baselines and the ensemble",
             "collect": "build the results table", "report": "Markdown report with figures"}
    for stage, text in helps.items():
        sp = sub.add_parser(stage, help=f"study stage: {text}",
                            description=f"Runs the unfinished '{stage}' tasks of a study "
                                        f"directory (the convert stage: `harness convert DIR`).")
        sp.add_argument("study", help="study directory")
        sp.add_argument("--executor", choices=executors, help="override executor.kind")
        sp.add_argument("--no-wait", action="store_true", help="slurm: return after submitting")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        sp.set_defaults(func=_cmd_stage, stage=stage)

    ss = sub.add_parser("status", help="progress of a study, from disk and the Slurm queue",
                        description="Per stage the tasks done, running, pending, waiting and "
                                    "failed (they add up to the stage's tasks), from the task "
                                    "markers and the Slurm queue; for tasks that are not done, "
                                    "why (held, a dependency that can never be satisfied, a "
                                    "drained or down node with its reason, a time limit, a "
                                    "failure) and the command that fixes the common causes.")
    ss.add_argument("study", help="study directory")
    ss.set_defaults(func=_cmd_status)

    cn = sub.add_parser("cancel", help="cancel a study's queued and running Slurm jobs",
                        description="scancel of the study's jobs that are still queued or "
                                    "running (from STUDY/slurm/jobs.json, checked against the "
                                    "queue). Running tasks record 'error' (terminated); "
                                    "`harness study --resume STUDY` submits what is left. With "
                                    "nothing queued it says so and exits 0.")
    cn.add_argument("study", help="study directory")
    cn.add_argument("--stage", metavar="S[,S...]",
                    help="only the jobs of these stages (comma-separated; 'farm' for the MPI "
                         "task farm)")
    cn.set_defaults(func=_cmd_cancel)

    tk = sub.add_parser("task", help="run one task of a study (what the executors call)")
    tk.add_argument("stage", choices=["data", "train", "convert", "couple", "collect", "report"])
    tk.add_argument("index", type=int)
    tk.add_argument("--study", required=True, help="study directory")
    tk.add_argument("--count", type=int, default=1,
                    help="run tasks INDEX..INDEX+COUNT-1 (those that exist), one after another")
    tk.add_argument("--force", action="store_true", help="rerun a finished task")
    tk.set_defaults(func=_cmd_task)

    im = sub.add_parser(
        "image", help="build and run the Apptainer image's root without Apptainer (emulation)",
        description="An emulation of `apptainer build --sandbox` for `Bootstrap: debootstrap` "
                    "definitions (containers/colnn-debian.def) and of `apptainer run|exec|test "
                    "--contain --cleanenv` on the sandbox directory it makes, for machines "
                    "without Apptainer. Root only; debootstrap, then each section in a chroot "
                    "inside private mount and PID namespaces. No SIF file is made, there is no "
                    "user namespace or overlay, and only the debootstrap agent of a "
                    "single-stage definition is understood (containers/README.md).")
    isub = im.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    ib = isub.add_parser("build", help="emulate apptainer build --sandbox DIR DEFINITION",
                         description="debootstrap, %setup, %files, %post, the metadata in "
                                     "/.singularity.d, then %test, into a temporary directory "
                                     "renamed to DIR when every step passed; all output goes "
                                     "to DIR.build.log. A failing step names its section and "
                                     "shows its last lines.")
    ib.add_argument("definition", help="the definition file (Bootstrap: debootstrap)")
    ib.add_argument("sandbox", help="the directory to create (must not exist)")
    ib.add_argument("--context", metavar="DIR",
                    help="where %%setup runs and %%files sources are found: the directory "
                         "`apptainer build` would be started in (default: the current one)")
    ib.add_argument("--notest", action="store_true", help="skip %%test, as apptainer's --notest")
    ib.add_argument("--build-ca", metavar="FILE",
                    help="a CA bundle for %%post's downloads (PIP_CERT, SSL_CERT_FILE, ... "
                         "point at it during %%post only), where HTTPS goes through a proxy "
                         "with its own CA; not part of the image")
    ib.add_argument("--cache-dir", metavar="DIR",
                    help="where debootstrap results are kept for reuse (default "
                         "$COLNN_ROOTFS_CACHE or /var/cache/colnn-rootfs)")
    ib.add_argument("--no-base-cache", action="store_true",
                    help="always run debootstrap (no reuse of an earlier result)")
    ib.add_argument("-q", "--quiet", action="store_true",
                    help="do not print the sections' output (it still goes to the log)")
    ib.set_defaults(func=_cmd_image_build)
    for action, text in (("run", "the image's runscript with ARGS (emulated apptainer run)"),
                         ("exec", "a command in the image (emulated apptainer exec)"),
                         ("test", "the image's %test (emulated apptainer test)")):
        ia = isub.add_parser(action, help=text.replace("%", "%%"),
                             description=f"{text[0].upper()}{text[1:]}: chrooted into a "
                                         f"read-only bind of SANDBOX, fresh /tmp, /var/tmp and "
                                         f"$HOME, a clean environment plus the image's "
                                         f"%environment, only the --bind paths from the host "
                                         f"(--contain --cleanenv). Exits with the command's "
                                         f"status.")
        ia.add_argument("--bind", "-B", action="append", default=[], metavar="SRC[:DST[:ro]]",
                        help="a host path to mount in the container (DST: an existing "
                             "directory of the image such as /mnt, or under /tmp)")
        ia.add_argument("--pwd", default="/", help="working directory inside (default /)")
        ia.add_argument("sandbox", help="a directory made by `harness image build`")
        ia.add_argument("args", nargs=argparse.REMAINDER,
                        help="arguments of the runscript / the command and its arguments")
        ia.set_defaults(func=_cmd_image_action)

    cp = sub.add_parser(
        "compare", help="compare finished studies: survival, offline-online statistics",
        description="Writes OUT/report.md with PNG figures: the studies' Kaplan-Meier curves "
                    "and log-rank tests, and per study the censored share, Spearman's rho of "
                    "validation MSE with steps to failure, Harrell's concordance (bootstrap "
                    "CIs) and the Cox hazard ratio of log10 val_mse. Give collected study "
                    "directories, or a study file with --config and its variants (each run "
                    "into OUT/studies/NAME first; one that finished earlier is not rerun), "
                    "or both.",
        epilog="example: harness compare --config examples/study/l96-small.toml "
               "--variant local:host.inputs=local --variant full:host.inputs=full "
               "-o studies/locality")
    cp.add_argument("studies", nargs="*", metavar="STUDY",
                    help="a collected study directory (`harness study` or `harness collect`)")
    cp.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="directory of the comparison (report.md, figures, studies/)")
    cp.add_argument("--config", metavar="CONFIG.toml", help="the study file of the variants")
    cp.add_argument("--variant", action="append", default=[],
                    metavar="NAME:KEY=VALUE[;KEY=VALUE...]",
                    help="a study of CONFIG with these dotted keys changed (VALUE is TOML; a "
                         "bare word is a string: host.inputs=local); NAME alone: CONFIG as it "
                         "is. Repeat for each variant")
    cp.add_argument("--label", action="append", default=[], metavar="DIR=NAME",
                    help="the name of a study in the report (default: the configuration keys "
                         "in which the studies differ, else the directory's name; a variant's "
                         "name)")
    cp.add_argument("--executor", choices=executors, help="override executor.kind of variants")
    cp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    cp.set_defaults(func=_cmd_compare)

    fm = sub.add_parser("farm", help="the MPI task farm (run under mpirun/srun)")
    fm.add_argument("--study", required=True, help="study directory")
    fm.add_argument("--stages", required=True, help="comma-separated stages, in order")
    fm.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    fm.set_defaults(func=_cmd_farm)

    pr = sub.add_parser(
        "paired", help="paired comparison of two studies of the same candidates",
        description="Pairs candidate cNNNN of study A with cNNNN of study B (two studies "
                    "planned from one configuration with the same seed, differing e.g. in "
                    "training.mass_constraint; their candidate tables must be identical) and "
                    "compares steps to failure (counts of B longer/shorter/equal, sign test, "
                    "Wilcoxon signed-rank), the mean-h drift and the energy growth per pair.")
    pr.add_argument("a", help="study directory A (e.g. without the constraint)")
    pr.add_argument("b", help="study directory B (e.g. with it)")
    pr.add_argument("-o", "--output", required=True, help="directory for paired.md and tables")
    pr.add_argument("--label-a", default="", help="name of A in the report (default: its name)")
    pr.add_argument("--label-b", default="", help="name of B in the report (default: its name)")
    pr.set_defaults(func=_cmd_paired)
    return p


def _cmd_paired(args: argparse.Namespace) -> int:
    from .paired import compare_paired, write_paired
    pc = compare_paired(args.a, args.b, args.label_a, args.label_b)
    report = write_paired(pc, args.output)
    t = pc.by_candidate
    print(f"{t.n} candidate pairs: B longer {t.longer}, shorter {t.shorter}, equal {t.equal}; "
          f"sign test p = {t.sign_p if t.sign_p is None else round(t.sign_p, 4)}; "
          f"Wilcoxon p = {t.wilcoxon_p if t.wilcoxon_p is None else round(t.wilcoxon_p, 4)}")
    print(f"report: {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
