"""Verification of the Fortran library against Keras on the same inputs.

Keras runs the original file (`.keras` or `.h5`); the Fortran library, through its C binding,
runs the converted model file. The figure of merit is the largest absolute difference over all
outputs and columns, relative to the largest absolute Keras output (so a tolerance reads as
"digits of agreement"), plus where the worst difference sits.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import HarnessError
from .native import NativeModel

__all__ = ["VerifyResult", "verify", "keras_predict", "load_inputs", "model_file_precision",
           "DEFAULT_TOL"]

DEFAULT_TOL = {"float32": 1e-5, "float64": 1e-12}


@dataclass
class VerifyResult:
    keras_file: str
    model_file: str
    library_precision: str
    library_path: str
    keras_precision: str
    n_columns: int
    n_outputs: int
    max_abs_error: float
    max_abs_output: float
    rel_error: float              # max_abs_error / max_abs_output
    max_elementwise_rel: float    # max |f - k| / max(|k|, tiny) over all entries
    worst_column: int
    worst_output: int
    keras_value: float
    fortran_value: float
    tol: float
    passed: bool

    def report(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"verify {self.keras_file} ({self.keras_precision} Keras model) vs "
            f"{self.model_file} ({self.library_precision} library {self.library_path}, "
            f"{self.n_columns} columns x {self.n_outputs} outputs)\n"
            f"  max abs error      {self.max_abs_error:.3e}\n"
            f"  max |keras output| {self.max_abs_output:.3e}\n"
            f"  relative error     {self.rel_error:.3e}  (tolerance {self.tol:.1e})\n"
            f"  max elementwise rel {self.max_elementwise_rel:.3e}\n"
            f"  worst: output {self.worst_output} of column {self.worst_column}: "
            f"keras {self.keras_value:.9g}, fortran {self.fortran_value:.9g}\n"
            f"  {verdict}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def model_file_precision(path: Path | str) -> str:
    """The `precision` a colnn file declares (FKB files: float32, the precision FKB runs in)."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for _, line in zip(range(64), fh):
                parts = line.split()
                if len(parts) == 2 and parts[0] == "precision":
                    return parts[1]
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read: {exc.strerror}") from None
    return "float32"


def load_inputs(path: Path | str, n_inputs: int, dataset: str | None = None) -> np.ndarray:
    """User inputs, one row per column as Keras takes them, from `.npy` or an HDF5 dataset."""
    p = Path(path)
    try:
        if p.suffix == ".npy":
            x = np.load(p, allow_pickle=False)
        elif p.suffix in (".h5", ".hdf5", ".nc"):
            import h5py
            with h5py.File(p, "r") as f:
                if dataset is None:
                    names = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
                    if len(names) != 1:
                        raise HarnessError(f"{p}: give the dataset to use (found {names})")
                    dataset = names[0]
                if dataset not in f:
                    raise HarnessError(f"{p}: no dataset '{dataset}'")
                x = f[dataset][()]
        else:
            raise HarnessError(f"{p}: inputs must be a .npy or .h5 file")
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{p}: cannot read inputs: {exc}") from None
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != n_inputs or x.shape[0] < 1:
        raise HarnessError(f"{p}: inputs must have shape (columns, {n_inputs}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise HarnessError(f"{p}: inputs contain NaN or Inf")
    return x


def _load_keras_model(path: str):
    """Keras 3 first; Keras 2 (tf_keras) files that Keras 3 cannot read go to tf_keras.

    Loading a Keras file can run code from it (a Lambda layer's marshalled bytecode, a
    custom class), so Keras only sees files the converter's static reader accepts (it refuses
    Lambda and custom classes without importing anything), and both loaders run in safe mode.
    tf_keras' ``load_model`` ignores ``safe_mode`` for legacy .h5 files (it would unmarshal a
    Lambda's bytecode), hence the explicit SafeModeScope.
    """
    from .keras_reader import read_keras_isolated

    # raises ConversionError (a HarnessError) for anything it refuses, or a read that hangs
    read_keras_isolated(path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as first:  # noqa: BLE001 - Keras raises many types; we retry once
        if path.endswith(".h5"):
            try:
                return _load_tf_keras_h5(path)
            except Exception:  # noqa: BLE001
                pass
        raise HarnessError(f"{path}: Keras cannot load the model: {first}") from None


def _load_tf_keras_h5(path: str):
    """A legacy .h5 file through tf_keras, with Lambda bytecode refused (safe mode)."""
    import tf_keras
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(True):
        return tf_keras.models.load_model(path, compile=False, safe_mode=True)


@contextlib.contextmanager
def _tensorflow_logs_aside() -> Iterator[None]:
    """TensorFlow's C++ and absl log lines (CUDA probes, oneDNN notes) go to a temporary file
    instead of the terminal; they are shown only when loading or predicting fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as logs:
        os.dup2(logs.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            logs.seek(0)
            text = logs.read().decode(errors="replace").strip()
            if text:
                print(f"TensorFlow said:\n{text[-4000:]}", file=sys.stderr)
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def keras_predict(path: Path | str, x: np.ndarray) -> np.ndarray:
    return keras_predict_with_dtype(path, x)[0]


def keras_predict_with_dtype(path: Path | str, x: np.ndarray) -> tuple[np.ndarray, str]:
    """Keras' outputs for x, and the precision the model computes in."""
    with _tensorflow_logs_aside():
        model = _load_keras_model(str(path))
        # the input tensor's dtype, not the model's policy: a Sequential of float64 layers can
        # still carry the global float32 policy and would round the inputs
        dtype = np.float64 if "float64" in str(model.inputs[0].dtype) else np.float32
        y = np.asarray(model.predict_on_batch(x.astype(dtype)))
    return y, np.dtype(dtype).name


def verify(keras_file: Path | str, model_file: Path | str, columns: int = 1024, seed: int = 0,
           tol: float | None = None, inputs: Path | str | None = None,
           library: Path | str | None = None, inputs_dataset: str | None = None) -> VerifyResult:
    """Runs Keras and the Fortran library on the same inputs and compares."""
    if columns < 1:
        raise HarnessError(f"--columns must be >= 1, got {columns}")
    precision = model_file_precision(model_file)
    lib_precision = "double" if precision == "float64" else "single"
    with NativeModel(model_file, library=library, precision=lib_precision) as native:
        if inputs is not None:
            x = load_inputs(inputs, native.n_inputs, inputs_dataset)
        else:
            x = np.random.default_rng(seed).standard_normal((columns, native.n_inputs))
        x = x.astype(native.dtype)
        y_fortran = native.predict(x).astype(np.float64)
        library_precision = native.precision
        library_used = str(getattr(native._lib, "_name", library or ""))
    y_keras, keras_precision = keras_predict_with_dtype(keras_file, x)
    y_keras = y_keras.astype(np.float64)
    if y_keras.shape != y_fortran.shape:
        raise HarnessError(f"{keras_file} gives outputs of shape {y_keras.shape}, "
                           f"{model_file} gives {y_fortran.shape}")
    diff = np.abs(y_fortran - y_keras)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    max_abs = float(diff.max())
    scale = float(np.abs(y_keras).max())
    rel = max_abs / scale if scale > 0 else max_abs
    tiny = np.finfo(np.float64).tiny
    elem_rel = float((diff / np.maximum(np.abs(y_keras), tiny)).max())
    if tol is None:
        # the less precise side sets what agreement means: a float32 Keras model run by the
        # double library still carries float32 rounding in its weights and Keras' outputs
        tol = DEFAULT_TOL["float32" if "float32" in (keras_precision, library_precision)
                          else "float64"]
    return VerifyResult(
        keras_file=str(keras_file), model_file=str(model_file),
        library_precision=library_precision, library_path=library_used,
        keras_precision=keras_precision, n_columns=int(x.shape[0]),
        n_outputs=int(y_keras.shape[1]), max_abs_error=max_abs, max_abs_output=scale,
        rel_error=rel, max_elementwise_rel=elem_rel, worst_column=int(worst[0]),
        worst_output=int(worst[1]), keras_value=float(y_keras[worst]),
        fortran_value=float(y_fortran[worst]), tol=float(tol),
        passed=bool(np.isfinite(rel) and rel <= tol))
