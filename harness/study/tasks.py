"""One task of one stage: what every executor runs (``harness task STAGE INDEX --study DIR``).

Stages: ``data`` (a truth run of the host), ``train`` (one candidate in Keras), ``convert`` (its
Keras file to a colnn model file, verified against Keras), ``couple`` (one coupled host run of a
candidate, a baseline or the top-k ensemble from one initial condition), ``collect`` and
``report`` (one task each). A task's outcome (a diverged training, a failed conversion, a run
that failed its criteria) is a result, recorded and done; only an infrastructure failure (an
exception, a host that cannot start, a stop by Slurm: time limit, scancel, a failed node) leaves
the task in state 'error', with its reason, for ``--resume``. A task
whose input comes from a task that has not finished (killed, cancelled, failed) records state
'waiting' instead of a result: ``--resume`` reruns it after the earlier task, so a cancelled
training never turns into a 'skipped' candidate.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..atomic import atomic_path
from ..errors import HarnessError
from ..status import (ConvertStatus, ErrorReason, RunOutcome, RunStatus, TaskProgress, TaskState,
                      TrainStatus)
from .config import StudyError, host_plugin
from .constraint import (mass_constrained_loss, pick_snapshots, snapshot_batching,
                         snapshot_dataset)
from .layout import StudyDir, atomic_write_json, read_json, task_ics
from .locks import TaskLock

__all__ = ["run_task", "calibration", "training_data", "STAGE_TASKS", "UpstreamUnfinished",
           "TaskStopped", "stop_on_signals"]


class UpstreamUnfinished(StudyError):
    """The task's input is not there yet because an earlier task has not finished."""


def _unfinished(sd: StudyDir, stage: str, indices: Any) -> str | None:
    unfinished = [i for i in indices if sd.task_state(stage, i) != TaskState.OK]
    if not unfinished:
        return None
    shown = ", ".join(map(str, unfinished[:8])) + (", ..." if len(unfinished) > 8 else "")
    return f"waiting for {stage} task(s) {shown} (not finished)"


def _require(sd: StudyDir, stage: str, indices: Any) -> None:
    message = _unfinished(sd, stage, indices)
    if message is not None:
        raise UpstreamUnfinished(message)


# ---------------------------------------------------------------------------------------------
# data
def _truth_seed(sd: StudyDir, index: int) -> int:
    return sd.config.seed * 1000 + index + 1


def task_data(sd: StudyDir, index: int) -> dict[str, Any]:
    from ..hosts import host_run_from_dict, run_host
    cfg, d = sd.config, sd.config.data
    out = sd.truth_dir(index)
    sd.remove(out)
    run = {**cfg.host.run, "mode": "truth", "dt": d.dt, "n_steps": d.steps,
           "spinup_steps": d.spinup_steps, "sample_interval": d.sample_interval,
           "seed": _truth_seed(sd, index)}
    spec = {"host": cfg.host.name, "executable": cfg.host.executable, "model": cfg.host.model,
            "run": run}
    result = run_host(host_run_from_dict(spec, sd.root, output_dir=out))
    if result.get("status") != RunStatus.COMPLETED:
        raise StudyError(f"truth run {out} did not complete: {result.get('reason')} "
                         f"{result.get('message', '')}")
    return {"steps": result.get("steps"), "wall_s": result.get("wall_time_s")}


def _truth_file(sd: StudyDir, index: int) -> Path:
    path = sd.truth_dir(index) / host_plugin(sd.config).truth_file
    if sd.task_state("data", index) != TaskState.OK or not path.is_file():
        raise UpstreamUnfinished(f"{path}: the truth run is not finished "
                                 "(run the data stage first)")
    return path


def calibration(sd: StudyDir) -> dict[str, Any]:
    """The failure criteria calibrated on the first truth run, the baselines' fits and the
    coupled runs' initial states; computed once and cached in data/calibration.json."""
    path = sd.root / "data" / "calibration.json"
    if path.is_file():
        return json.loads(path.read_text())
    cfg, c = sd.config, sd.config.couple
    first, last = _truth_file(sd, 0), _truth_file(sd, cfg.data.runs - 1)
    out: dict[str, Any] = {"training_truth": str(first.relative_to(sd.root)),
                           "init_file": str(last)}
    try:
        found = host_plugin(cfg).calibrate(first, last, c)
    except HarnessError as exc:
        raise StudyError(str(exc)) from None
    for key in ("failure", "n_snapshots", "bias_variable", "bias_label"):
        if key not in found:
            raise StudyError(f"host plugin of {cfg.host.name!r}: calibrate() gave no {key!r}")
    n_snap = int(found.pop("n_snapshots"))
    out.update(found)
    n_ic = c.initial_conditions
    if n_snap < n_ic:
        raise StudyError(f"{last}: {n_snap} snapshots for {n_ic} initial conditions")
    # spread over the independent truth run: far apart, so the runs start decorrelated
    out["init_indices"] = [1 + int((j + 0.5) * n_snap / n_ic) for j in range(n_ic)]
    atomic_write_json(path, out)
    return out


def training_data(sd: StudyDir) -> dict[str, np.ndarray]:
    """Training and validation pairs (samples, features) from the first truth run, split in
    time (the last ``validation_fraction`` of the snapshots validates), so validation samples
    are not neighbours of training samples."""
    cfg = sd.config
    truth = _truth_file(sd, 0)
    try:
        return host_plugin(cfg).training_pairs(truth, cfg.host,
                                               cfg.training.validation_fraction)
    except HarnessError as exc:
        raise StudyError(str(exc)) from None



def _snapshot_columns(sd: StudyDir) -> int:
    """Columns per snapshot of the training truth run (training.snapshot_batches)."""
    try:
        return host_plugin(sd.config).snapshot_columns(_truth_file(sd, 0))
    except HarnessError as exc:
        raise StudyError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# train
_TF_CONFIGURED: dict[str, int] = {}


def _keras(threads: int) -> Any:
    """Keras with deterministic ops and a fixed thread count (set once per process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = _quiet_import_tensorflow()
    if not _TF_CONFIGURED:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:       # already initialised in this process
            pass
        tf.config.experimental.enable_op_determinism()
        _TF_CONFIGURED["threads"] = threads
    import keras
    return keras


def _quiet_import_tensorflow() -> Any:
    """TensorFlow, imported with file descriptor 2 muted: its C++ start-up lines (oneDNN,
    CUDA stubs) ignore TF_CPP_MIN_LOG_LEVEL and would bury the progress bars. Import errors
    still raise."""
    import sys
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    # retracing notices from repeated predict() calls say nothing a study user can act on
    tf.get_logger().setLevel("ERROR")
    try:
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    return tf


def build_model(keras: Any, cand: dict[str, Any], n_in: int, n_out: int,
                mean: np.ndarray, var: np.ndarray) -> Any:
    """The paper's network family: input normalization, then ``layers`` x [Dense(nodes),
    BatchNormalization if chosen, LeakyReLU(slope), Dropout if > 0], then a linear Dense."""
    layers = [keras.Input((n_in,)),
              keras.layers.Normalization(mean=mean, variance=np.maximum(var, 1e-12))]
    for _ in range(cand["layers"]):
        layers.append(keras.layers.Dense(cand["nodes"]))
        if cand["batch_norm"]:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.LeakyReLU(negative_slope=cand["leaky_relu"]))
        if cand["dropout"] > 0:
            layers.append(keras.layers.Dropout(cand["dropout"]))
    layers.append(keras.layers.Dense(n_out))
    return keras.Sequential(layers)


def _optimizer(keras: Any, name: str, lr: float) -> Any:
    return {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop,
            "sgd": keras.optimizers.SGD}[name](learning_rate=lr)


def task_train(sd: StudyDir, index: int) -> dict[str, Any]:
    t = sd.config.training
    cand = sd.plan["candidates"][index]
    cdir = sd.candidate_dir(cand["name"])
    cdir.mkdir(parents=True, exist_ok=True)
    for stale in ("model.keras", "train.json", "model.colnn", "convert.json", "online0.keras",
                  "online0.colnn", "online.colnn", "online.json"):
        (cdir / stale).unlink(missing_ok=True)
    data = training_data(sd)
    xt, yt, xv, yv = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
    rng = np.random.default_rng(cand["seed"])
    batching = None
    if t.snapshot_batches:
        batching = snapshot_batching(_snapshot_columns(sd), t.batch_size)
        pick = pick_snapshots(xt.shape[0], batching.columns, t.max_samples, rng)
        xt, yt = xt[pick], yt[pick]
    elif t.max_samples and xt.shape[0] > t.max_samples:
        pick = np.sort(rng.choice(xt.shape[0], t.max_samples, replace=False))
        xt, yt = xt[pick], yt[pick]
    y_mean, y_std = yt.mean(axis=0), np.maximum(yt.std(axis=0), 1e-30)
    keras = _keras(t.threads)
    keras.utils.set_random_seed(cand["seed"])
    model = build_model(keras, cand, xt.shape[1], yt.shape[1], xt.mean(axis=0), xt.var(axis=0))
    if t.online_steps:
        _save_online_start(model, cdir, y_mean, y_std)
    loss: Any = "mse"
    if t.mass_constraint > 0:
        assert batching is not None     # the configuration's check
        loss = mass_constrained_loss(keras, t.mass_constraint,
                                     int(host_plugin(sd.config).mass_output), batching.columns)
    model.compile(_optimizer(keras, cand["optimizer"], cand["learning_rate"]), loss=loss)
    callbacks = [keras.callbacks.TerminateOnNaN()]
    if t.patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=t.patience,
                                                       restore_best_weights=True))
    zt = ((yt - y_mean) / y_std).astype(np.float32)
    zv = ((yv - y_mean) / y_std).astype(np.float32)
    start = time.perf_counter()
    if batching is None:
        hist = model.fit(xt.astype(np.float32), zt,
                         validation_data=(xv.astype(np.float32), zv),
                         epochs=t.epochs, batch_size=t.batch_size, callbacks=callbacks,
                         verbose=0)
    else:
        hist = model.fit(snapshot_dataset(xt, zt, batching, cand["seed"]),
                         validation_data=snapshot_dataset(xv, zv, batching, None),
                         epochs=t.epochs, callbacks=callbacks, verbose=0,
                         shuffle=False)       # the dataset shuffles whole snapshots itself
    train_s = time.perf_counter() - start
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    record: dict[str, Any] = {"name": cand["name"], "epochs": len(history.get("loss", [])),
                              "history": history, "train_s": train_s,
                              "n_params": int(sum(np.prod(w.shape)
                                                  for w in model.trainable_weights)),
                              "samples": int(xt.shape[0])}
    if batching is not None:
        record["snapshot_batches"] = batching.as_dict()
    if t.mass_constraint > 0:
        record["mass_constraint"] = t.mass_constraint
    losses = history.get("loss", []) + history.get("val_loss", [])
    if not losses or not np.all(np.isfinite(losses)):
        bad = next((i for i, v in enumerate(history.get("loss", [])) if not np.isfinite(v)),
                   len(history.get("loss", [])) - 1)
        record.update(status=TrainStatus.DIVERGED,
                      message=f"the training loss became non-finite in epoch {bad + 1}")
        atomic_write_json(cdir / "train.json", record)
        return {"train_status": TrainStatus.DIVERGED}
    _fold_target_scaling(model, y_mean, y_std)
    pred = np.asarray(model.predict(xv.astype(np.float32), batch_size=8192, verbose=0),
                      dtype=np.float64)
    val_mse = float(np.mean(((pred - yv) / y_std) ** 2))
    if batching is not None and getattr(host_plugin(sd.config), "mass_output", None) is not None:
        # the validation snapshots' domain-mean mass-tendency error (physical units), what
        # the constraint acts on: recorded with and without it
        plugin = host_plugin(sd.config)
        m = int(plugin.mass_output)
        err = (pred[:, m] - yv[:, m]).reshape(-1, batching.columns).mean(axis=1)
        record["val_mass_output"] = getattr(plugin, "mass_output_name", "") or f"output {m}"
        record["val_mass_mean_error"] = float(err.mean())
        record["val_mass_rms_error"] = float(np.sqrt(np.mean(err ** 2)))
    if not np.isfinite(val_mse):
        record.update(status=TrainStatus.DIVERGED, message="the validation predictions are not finite")
        atomic_write_json(cdir / "train.json", record)
        return {"train_status": TrainStatus.DIVERGED}
    if t.mass_constraint > 0:
        # the saved file names a plain loss: the constraint's closure is not serializable, and
        # only the weights matter from here (conversion and verification load compile=False)
        model.compile(loss="mse")
    tmp = cdir / ".model.tmp.keras"
    model.save(tmp)
    os.replace(tmp, cdir / "model.keras")
    record.update(status=TrainStatus.OK, val_mse=val_mse, train_mse=history["loss"][-1],
                  best_val_loss=float(min(history["val_loss"])),
                  y_mean=y_mean.tolist(), y_std=y_std.tolist())
    atomic_write_json(cdir / "train.json", record)
    return {"train_status": TrainStatus.OK, "val_mse": val_mse}


def _fold_target_scaling(model: Any, y_mean: np.ndarray, y_std: np.ndarray) -> None:
    """The host passes physical values: the target scaling goes into the last Dense layer."""
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel * y_std.astype(kernel.dtype),
                      (bias * y_std + y_mean).astype(bias.dtype)])


def _save_online_start(model: Any, cdir: Path, y_mean: np.ndarray, y_std: np.ndarray) -> None:
    """The online twin's start: the candidate's architecture and initial weights (built from
    its seed, before any training), in physical units as the offline model ends up."""
    weights = [w.copy() for w in model.get_weights()]
    _fold_target_scaling(model, y_mean, y_std)
    tmp = cdir / ".online0.tmp.keras"
    model.save(tmp)
    os.replace(tmp, cdir / "online0.keras")
    model.set_weights(weights)


# ---------------------------------------------------------------------------------------------
# convert
def _verify_inputs(sd: StudyDir) -> Path:
    """1,024 validation columns (physical units), the same for every candidate."""
    path = sd.root / "data" / "verify_inputs.npy"
    if not path.is_file():
        x = training_data(sd)["x_val"]
        pick = np.sort(np.random.default_rng(sd.config.seed).choice(
            x.shape[0], min(1024, x.shape[0]), replace=False))
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, x[pick])
    return path


def task_convert(sd: StudyDir, index: int) -> dict[str, Any]:
    _quiet_import_tensorflow()
    from ..convert import convert
    from ..verify import verify
    cand = sd.plan["candidates"][index]
    cdir = sd.candidate_dir(cand["name"])
    _require(sd, "train", [index])
    (cdir / "model.colnn").unlink(missing_ok=True)
    train = read_json(cdir / "train.json")
    record: dict[str, Any] = {"name": cand["name"]}
    if train is None or train.get("status") != TrainStatus.OK:
        status = TrainStatus.MISSING if train is None else train.get("status")
        record.update(status=ConvertStatus.SKIPPED, message=f"no trained model (training: {status})")
    else:
        try:
            convert(cdir / "model.keras", cdir / "model.colnn")
            result = verify(cdir / "model.keras", cdir / "model.colnn",
                            inputs=_verify_inputs(sd), tol=sd.config.training.verify_tol)
            passed = ConvertStatus.OK if result.passed else ConvertStatus.VERIFY_FAILED
            record.update(status=passed,
                          verify=result.as_dict(), max_abs_error=result.max_abs_error,
                          rel_error=result.rel_error)
            if not result.passed:
                record["message"] = (f"Fortran vs Keras relative error {result.rel_error:.2e} "
                                     f"> {result.tol:.1e}")
        except HarnessError as exc:
            (cdir / "model.colnn").unlink(missing_ok=True)
            record.update(status=ConvertStatus.FAILED, message=str(exc))
    atomic_write_json(cdir / "convert.json", record)
    out: dict[str, Any] = {"convert_status": record["status"]}
    if sd.config.training.online_steps:
        out["online_status"] = _train_online(sd, cand, train)
    return out


def _online_optimizer(cand: dict[str, Any]) -> str:
    """The candidate's Keras optimizer in the library's words (Keras defaults otherwise)."""
    return f"{cand['optimizer']} learning_rate={cand['learning_rate']!r}"


def _train_online(sd: StudyDir, cand: dict[str, Any], train: dict[str, Any] | None) -> str:
    """The candidate's online twin: its untrained network (online0.keras) converted, then
    trained by the host's truth run from the training truth's first snapshot
    (online_interval), checkpointed to online.colnn; its validation MSE like the offline
    model's. online.json records the outcome."""
    from ..convert import convert
    from ..hosts import HostError, host_run_from_dict, run_host
    from ..native import NativeModel
    cfg, t = sd.config, sd.config.training
    cdir = sd.candidate_dir(cand["name"])
    run_dir = cdir / "online-run"
    sd.remove(run_dir)
    (cdir / "online.colnn").unlink(missing_ok=True)
    record: dict[str, Any] = {"name": cand["name"], "host_steps": t.online_steps,
                              "interval": t.online_interval,
                              "optimizer": _online_optimizer(cand)}
    if train is None or train.get("status") != TrainStatus.OK \
            or not (cdir / "online0.keras").is_file():
        record.update(status=ConvertStatus.SKIPPED,
                      message="no untrained start (the offline training did not finish)")
        atomic_write_json(cdir / "online.json", record)
        return record["status"]
    try:
        convert(cdir / "online0.keras", cdir / "online0.colnn")
        spec = {"host": cfg.host.name, "executable": cfg.host.executable,
                "model": cfg.host.model,
                "run": {**cfg.host.run, **host_plugin(cfg).run_keys(cfg.host),
                        "mode": "truth", "dt": cfg.data.dt, "n_steps": t.online_steps,
                        "spinup_steps": 0, "sample_interval": t.online_steps,
                        "seed": _truth_seed(sd, 0), "init_file": str(_truth_file(sd, 0)),
                        "init_index": 1, "online_interval": t.online_interval},
                "coupler": {"model_file": str(cdir / "online0.colnn"), "online_training": True,
                            "optimizer": _online_optimizer(cand), "loss": "mse"}}
        start = time.perf_counter()
        result = run_host(host_run_from_dict(spec, sd.root, output_dir=run_dir))
        record["online_s"] = time.perf_counter() - start
        extra = result.get("extra") or {}
        record.update(optimizer_steps=extra.get("online_steps"),
                      skipped=extra.get("online_skipped"),
                      first_loss=extra.get("online_first_loss"),
                      last_loss=extra.get("online_last_loss"))
        if result.get("status") != RunStatus.COMPLETED:
            raise HostError(f"the online-training truth run {run_dir} ended "
                            f"{result.get('status')}: {result.get('message', '')}")
        shutil.copyfile(run_dir / "online.colnn", cdir / ".online.colnn.tmp")
        os.replace(cdir / ".online.colnn.tmp", cdir / "online.colnn")
        data = training_data(sd)
        y_std = np.asarray(train["y_std"])
        with NativeModel(cdir / "online.colnn") as net:
            pred = np.asarray(net.predict(data["x_val"].astype(np.float32)), dtype=np.float64)
        val_mse = float(np.mean(((pred - data["y_val"]) / y_std) ** 2))
        record.update(status=ConvertStatus.OK, val_mse=val_mse if np.isfinite(val_mse) else None)
    except HarnessError as exc:
        (cdir / "online.colnn").unlink(missing_ok=True)
        record.update(status=ConvertStatus.FAILED, message=str(exc))
    atomic_write_json(cdir / "online.json", record)
    return record["status"]


# ---------------------------------------------------------------------------------------------
# couple
def ensemble_members(sd: StudyDir) -> list[str]:
    """The top-k converted candidates by validation MSE (ties by name)."""
    ranked = []
    for cand in sd.plan["candidates"]:
        cdir = sd.candidate_dir(cand["name"])
        train, conv = read_json(cdir / "train.json"), read_json(cdir / "convert.json")
        if train and conv and train.get("status") == TrainStatus.OK and \
                conv.get("status") == ConvertStatus.OK:
            ranked.append((train["val_mse"], cand["name"]))
    return [name for _, name in sorted(ranked)[: sd.config.couple.ensemble_top_k]]


def _ensemble_dir(sd: StudyDir, members: list[str]) -> Path:
    path = sd.root / "ensembles" / f"top{sd.config.couple.ensemble_top_k}"
    current = read_json(path / "members.json")
    if current is not None and current.get("members") == members:
        return path
    tmp = Path(tempfile.mkdtemp(dir=path.parent if path.parent.exists() else
                                _mkdir(path.parent), prefix=".top"))
    for name in members:
        shutil.copyfile(sd.candidate_dir(name) / "model.colnn", tmp / f"{name}.colnn")
    (tmp / "members.json").write_text(json.dumps({"members": members}) + "\n")
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    try:
        os.rename(tmp, path)
    except OSError:      # another task made it at the same moment
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _candidate_index(sd: StudyDir, name: str) -> int:
    return next(c["index"] for c in sd.plan["candidates"] if c["name"] == name)


def task_couple(sd: StudyDir, index: int) -> dict[str, Any]:
    """One model from the task's initial conditions: one host process runs them together
    (batched runs: one coupler call per stage for all), each run with its own directory and
    result. The marker lists every run's outcome; a task killed half-way leaves no marker and
    is redone whole."""
    from ..hosts import host_run_from_dict, host_takes_batches, run_host, run_host_batch
    cfg, c = sd.config, sd.config.couple
    task = sd.plan["couple"][index]
    name, kind, ics = task["name"], task["kind"], task_ics(task)
    if kind in ("candidate", "online"):
        _require(sd, "convert", [_candidate_index(sd, task.get("candidate", name))])
    elif kind == "ensemble":      # the members are the best of all candidates
        _require(sd, "convert", range(sd.n_tasks("convert")))
    batch_dir = sd.run_dir(name, ics[0]).with_name(f"{name}-batch{ics[0]}")
    for ic in ics:
        sd.remove(sd.run_dir(name, ic))
    sd.remove(batch_dir)
    cal = calibration(sd)
    plugin = host_plugin(cfg)
    base: dict[str, Any] = {**cfg.host.run, "mode": "coarse", "dt": c.dt, "n_steps": c.steps,
                            "init_file": cal["init_file"]}
    if c.output_interval:
        base["output_interval"] = c.output_interval
    base.update(plugin.run_keys(cfg.host))
    coupler: dict[str, Any] = {}
    outcome: dict[str, Any] = {"name": name, "kind": kind, "ics": ics}
    skipped = None
    if kind == "candidate":
        conv = read_json(sd.candidate_dir(name) / "convert.json")
        if conv is None or conv.get("status") != ConvertStatus.OK:
            status = ConvertStatus.MISSING if conv is None else conv.get("status")
            skipped = f"no converted model (conversion: {status})"
        base["closure"] = "nn"
        coupler["model_file"] = str(sd.candidate_dir(name) / "model.colnn")
    elif kind == "online":
        online = read_json(sd.candidate_dir(task["candidate"]) / "online.json")
        if online is None or online.get("status") != ConvertStatus.OK:
            status = ConvertStatus.MISSING if online is None else online.get("status")
            skipped = f"no online-trained model (online training: {status})"
        base["closure"] = "nn"
        coupler["model_file"] = str(sd.candidate_dir(task["candidate"]) / "online.colnn")
    elif kind == "baseline":
        base["closure"] = task["closure"]
        base.update(plugin.baseline_run_keys(task["closure"], cal))
    else:
        members = ensemble_members(sd)
        if len(members) < 2:
            skipped = f"{len(members)} converted candidate(s): no ensemble"
        else:
            coupler.update(ensemble=str(_ensemble_dir(sd, members)),
                           noise_sd=c.ensemble_noise_sd, noise_seed=cfg.seed)
            outcome["members"] = members
        base["closure"] = "nn"
    if skipped is not None:
        return {**outcome, "runs": [{"ic": ic, "run_status": RunOutcome.SKIPPED,
                                     "message": skipped} for ic in ics]}
    runs = []
    for ic in ics:
        spec = {"host": cfg.host.name, "executable": cfg.host.executable,
                "model": cfg.host.model,
                "run": {**base, "seed": _truth_seed(sd, ic),
                        "init_index": cal["init_indices"][ic]},
                "failure": {**cfg.host.failure, **cal["failure"]}, "coupler": coupler}
        runs.append(host_run_from_dict(spec, sd.root, output_dir=sd.run_dir(name, ic)))
    if len(runs) > 1 and host_takes_batches(cfg.host.name, runs[0].precision,
                                            cfg.host.executable):
        # the runs share the process: the limit per run covers the batch once per run
        results = run_host_batch(runs, timeout=c.timeout * len(runs), batch_dir=batch_dir)
    else:
        results = [run_host(run, timeout=c.timeout) for run in runs]
    return {**outcome, "runs": [{"ic": ic, "run_status": r.get("status"),
                                 "steps": r.get("steps"), "failure_step": r.get("failure_step"),
                                 "reason": r.get("reason")} for ic, r in zip(ics, results)]}


# ---------------------------------------------------------------------------------------------
def task_collect(sd: StudyDir, index: int) -> dict[str, Any]:
    from .collect import collect
    # looked at before reading: a task finishing while the tables are built leaves them stale
    waits = [m for stage in ("data", "train", "convert", "couple")
             if (m := _unfinished(sd, stage, range(sd.n_tasks(stage)))) is not None]
    table = collect(sd)     # partial tables are worth writing; the marker says they are partial
    if waits:
        raise UpstreamUnfinished("; ".join(waits))
    return {"rows": len(table)}


def task_report(sd: StudyDir, index: int) -> dict[str, Any]:
    from ..report import write_report
    wait = _unfinished(sd, "collect", [0])
    report = write_report(sd.root)
    if wait is not None:
        raise UpstreamUnfinished(wait)
    return {"report": str(report)}


STAGE_TASKS: dict[str, Callable[[StudyDir, int], dict[str, Any]]] = {
    "data": task_data, "train": task_train, "convert": task_convert, "couple": task_couple,
    "collect": task_collect, "report": task_report}


class TaskStopped(BaseException):
    """SIGTERM or SIGUSR1 while a task runs (see :func:`stop_on_signals`). A BaseException, so
    that task code catching Exception (a conversion records a refused model as its result)
    can never turn a stop into a result; ``subprocess.run`` kills the host program on it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.reason = (ErrorReason.TIME_LIMIT if signum == signal.SIGUSR1
                       else ErrorReason.TERMINATED)

    def describe(self, stage: str) -> str:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if self.reason == ErrorReason.TERMINATED:
            return (f"stopped by SIGTERM (attempt {restarts + 1}: scancel, a requeue, or Slurm "
                    f"ending the job); --resume reruns it")
        text = (f"stopped at Slurm's warning before the time limit (SIGUSR1, attempt "
                f"{restarts + 1})")
        limit = os.environ.get("COLNN_MAX_REQUEUES", "")
        if limit.isdigit() and restarts < int(limit):
            return text + "; requeued: it starts again from scratch"
        # a study directory keeps its configuration: a longer limit is a hand-made sbatch
        element = os.environ.get("SLURM_ARRAY_TASK_ID", "I")
        return (text + f"; no requeues left (executor.slurm.max_requeues = {limit or '?'}): "
                f"--resume reruns it with the same limit; for a longer one, from the study "
                f"directory: sbatch --time=HH:MM:SS --array={element} slurm/{stage}.sbatch")


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """In ``harness task``: SIGTERM (scancel, a requeue) and SIGUSR1 (the sbatch script passes
    on Slurm's warning before the time limit) raise :class:`TaskStopped` in the running task,
    whose marker then records why it stopped ('error', retried by --resume). The first signal
    raises; later ones are ignored (Slurm follows with SIGKILL anyway)."""
    def handler(signum: int, frame: Any) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise TaskStopped(signum)

    old = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextmanager
def _signals_held() -> Iterator[None]:
    """A stop that comes while the marker is written waits until it is written whole."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def run_task(root: Path | str, stage: str, index: int, force: bool = False,
             study: StudyDir | None = None) -> dict[str, Any]:
    """Runs one task unless it is finished; writes and returns its marker.

    The task's lock is held from before it writes anything until its marker is written: a
    second process that finds it held writes nothing and returns status 'running' with the
    holder. A :class:`TaskStopped` is recorded in the marker, then raised again."""
    sd = study or StudyDir.open(root)
    if stage not in STAGE_TASKS:
        raise StudyError(f"unknown stage {stage!r} (stages: {', '.join(STAGE_TASKS)})")
    if not 0 <= index < sd.n_tasks(stage):
        raise StudyError(f"{stage} has tasks 0..{sd.n_tasks(stage) - 1}, got {index}")
    if not force and sd.task_state(stage, index) == TaskState.OK:
        return {"status": TaskState.OK, "skipped": True}
    lock = TaskLock(sd.lock_path(stage, index))
    holder = lock.acquire()
    if holder is not None:
        return {"status": TaskProgress.RUNNING, "stage": stage, "index": index,
                "holder": asdict(holder),
                "message": f"{stage} task {index} is already running ({holder.describe()}); "
                           f"this process leaves it alone and writes nothing"}
    stopped: TaskStopped | None = None
    try:
        # the holder before us may have finished it between our first look and our lock
        if not force and sd.task_state(stage, index) == TaskState.OK:
            return {"status": TaskState.OK, "skipped": True}
        start = time.perf_counter()
        try:
            marker: dict[str, Any] = {"status": TaskState.OK, **STAGE_TASKS[stage](sd, index)}
        except UpstreamUnfinished as exc:
            marker = {"status": TaskState.WAITING, "message": str(exc)}
        except TaskStopped as exc:
            stopped = exc
            marker = {"status": TaskState.ERROR, "reason": exc.reason,
                      "message": exc.describe(stage)}
        except Exception as exc:    # noqa: BLE001 - recorded for --resume, never lost
            marker = {"status": TaskState.ERROR, "reason": ErrorReason.EXCEPTION,
                      "message": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=8)}
        marker.update(stage=stage, index=index, wall_s=time.perf_counter() - start,
                      host=socket.gethostname(), pid=os.getpid(),
                      slurm_job=os.environ.get("SLURM_JOB_ID", ""),
                      attempt=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) + 1,
                      finished=time.time())
        with _signals_held():
            atomic_write_json(sd.marker(stage, index), marker)
    finally:
        lock.release()
    if stopped is not None:
        raise stopped
    return marker
