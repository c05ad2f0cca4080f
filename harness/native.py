"""The real Fortran library through its C binding (include/colnn.h), via ctypes.

Verification, tests and benchmarks call the same entry points a C or C++ host model would.
The library of each precision is the one ``COLNN_LIB`` / ``COLNN_LIB_DOUBLE`` names, else the
one the installed wheel carries, else the build tree's (``build/single``, ``build/double``);
see harness/locate.py.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Literal

import numpy as np

from . import locate
from .errors import HarnessError

__all__ = ["ColnnError", "NativeModel", "NativeEnsemble", "library_path", "load_library", "STATUS_NAMES",
           "batch_invariant_kernel"]

Precision = Literal["single", "double"]

#: the checkout the package runs from (a wheel install has none: see harness.locate)
REPO_ROOT = locate.SOURCE_ROOT
ERRMSG_LEN = 1024

STATUS_NAMES = {
    0: "ok", 1: "io error", 2: "format error", 3: "argument error", 4: "non-finite value",
    5: "unsupported", 6: "memory error", 7: "not implemented",
}


class ColnnError(HarnessError):
    """A non-zero status from the Fortran library, with its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _check(stat: int, err: ctypes.Array) -> None:
    """Raises the library's status and message when a call failed."""
    if stat != 0:
        raise ColnnError(stat, err.value.decode(errors="replace"))


def library_path(precision: Precision = "single") -> Path:
    """Path of libcolnn for `precision`: $COLNN_LIB / $COLNN_LIB_DOUBLE, else the wheel's, else
    the build tree's."""
    return locate.library(precision).path


_libraries: dict[str, ctypes.CDLL] = {}


def load_library(path: Path | str | None = None, precision: Precision = "single") -> ctypes.CDLL:
    """Opens (once) and declares the C API of the library at `path`."""
    located = (locate.Located(Path(path), "the caller") if path is not None
               else locate.library(precision))
    lib_path = located.path
    key = str(lib_path.resolve()) if lib_path.exists() else str(lib_path)
    if key in _libraries:
        return _libraries[key]
    if not lib_path.exists():
        hint = locate.not_found_hint("library", located, locate.LIBRARY_ENV.get(precision,
                                                                                 "COLNN_LIB"))
        raise HarnessError(f"{lib_path}: colnn library not found ({precision} precision, from "
                           f"{located.origin}; {hint})")
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as exc:
        raise HarnessError(f"{lib_path}: cannot load the colnn library: {exc}") from None
    c_char_p, c_int, c_size_t, c_void_p = ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p
    lib.colnn_load.argtypes = [c_char_p, ctypes.POINTER(c_void_p), c_char_p, c_size_t]
    lib.colnn_load.restype = c_int
    lib.colnn_save.argtypes = [c_void_p, c_char_p, c_char_p, c_size_t]
    lib.colnn_save.restype = c_int
    lib.colnn_free.argtypes = [c_void_p]
    lib.colnn_free.restype = None
    lib.colnn_forward.argtypes = [c_void_p, c_void_p, c_int, c_void_p, c_char_p, c_size_t]
    lib.colnn_forward.restype = c_int
    lib.colnn_set_check_finite.argtypes = [c_void_p, c_int]
    lib.colnn_set_check_finite.restype = c_int
    lib.colnn_set_batch_invariant.argtypes = [c_void_p, c_int]
    lib.colnn_set_batch_invariant.restype = c_int
    lib.colnn_ensemble_set_batch_invariant.argtypes = [c_void_p, c_int]
    lib.colnn_ensemble_set_batch_invariant.restype = c_int
    lib.colnn_batch_invariant_kernel.argtypes = [c_char_p, c_size_t]
    lib.colnn_batch_invariant_kernel.restype = None
    for name in ("colnn_num_inputs", "colnn_num_outputs", "colnn_num_layers"):
        getattr(lib, name).argtypes = [c_void_p]
        getattr(lib, name).restype = c_int
    lib.colnn_num_params.argtypes = [c_void_p]
    lib.colnn_num_params.restype = ctypes.c_int64
    lib.colnn_layer_info.argtypes = [c_void_p, c_int, c_char_p, c_size_t, c_char_p, c_size_t,
                                     ctypes.POINTER(c_int), ctypes.POINTER(c_int)]
    lib.colnn_layer_info.restype = c_int
    for name in ("colnn_forward_train", "colnn_backward"):
        getattr(lib, name).argtypes = [c_void_p, c_void_p, c_int, c_void_p, c_char_p, c_size_t]
        getattr(lib, name).restype = c_int
    lib.colnn_train_configure.argtypes = [c_void_p, c_char_p, c_char_p, c_char_p, c_size_t]
    lib.colnn_train_configure.restype = c_int
    lib.colnn_train_step.argtypes = [c_void_p, c_void_p, c_void_p, c_int, c_void_p, c_char_p,
                                     c_size_t]
    lib.colnn_train_step.restype = c_int
    lib.colnn_train_targets.argtypes = [c_void_p]
    lib.colnn_train_targets.restype = c_int
    lib.colnn_save_checkpoint.argtypes = [c_void_p, c_char_p, c_char_p, c_size_t]
    lib.colnn_save_checkpoint.restype = c_int
    lib.colnn_train_epoch.argtypes = [c_void_p, c_void_p, c_void_p, c_int, c_int, ctypes.c_int64,
                                      c_int, c_void_p, c_char_p, c_size_t]
    lib.colnn_train_epoch.restype = c_int
    lib.colnn_evaluate.argtypes = [c_void_p, c_void_p, c_void_p, c_int, c_void_p, c_char_p,
                                   c_size_t]
    lib.colnn_evaluate.restype = c_int
    lib.colnn_num_trainable.argtypes = [c_void_p]
    lib.colnn_num_trainable.restype = ctypes.c_int64
    for name in ("colnn_get_params", "colnn_set_params", "colnn_get_grads"):
        getattr(lib, name).argtypes = [c_void_p, c_void_p, ctypes.c_int64]
        getattr(lib, name).restype = c_int
    lib.colnn_ensemble_load.argtypes = [c_char_p, ctypes.POINTER(c_void_p), c_char_p, c_size_t]
    lib.colnn_ensemble_load.restype = c_int
    lib.colnn_ensemble_free.argtypes = [c_void_p]
    lib.colnn_ensemble_free.restype = None
    lib.colnn_ensemble_info.argtypes = [c_void_p] + [ctypes.POINTER(c_int)] * 3
    lib.colnn_ensemble_info.restype = c_int
    lib.colnn_ensemble_set_noise.argtypes = [c_void_p, c_void_p, c_int, ctypes.c_int64, c_char_p,
                                             c_size_t]
    lib.colnn_ensemble_set_noise.restype = c_int
    lib.colnn_ensemble_forward.argtypes = [c_void_p, c_void_p, c_int, c_void_p, c_void_p, c_void_p,
                                           ctypes.c_int64, c_char_p, c_size_t]
    lib.colnn_ensemble_forward.restype = c_int
    lib.colnn_real_bytes.argtypes = []
    lib.colnn_real_bytes.restype = c_int
    lib.colnn_version.argtypes = [c_char_p, c_size_t]
    lib.colnn_version.restype = None
    _libraries[key] = lib
    return lib


def batch_invariant_kernel(library: Path | str | None = None,
                           precision: Precision = "single") -> str:
    """The instruction set of the library's batch-invariant kernel here: avx512, avx2, generic."""
    buf = ctypes.create_string_buffer(32)
    load_library(library, precision).colnn_batch_invariant_kernel(buf, 32)
    return buf.value.decode()


class NativeModel:
    """A model loaded by the Fortran library. Arrays follow Keras: ``x`` is (columns, features)
    in C order, which is exactly the library's (features, columns) in Fortran order."""

    def __init__(self, path: Path | str, library: Path | str | None = None,
                 precision: Precision = "single") -> None:
        self._lib = load_library(library, precision)
        self.dtype = np.float64 if self._lib.colnn_real_bytes() == 8 else np.float32
        self.path = str(path)
        handle = ctypes.c_void_p()
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_load(os.fsencode(self.path), ctypes.byref(handle), err, ERRMSG_LEN)
        _check(stat, err)
        self._handle = handle
        self.n_inputs = self._lib.colnn_num_inputs(handle)
        self.n_outputs = self._lib.colnn_num_outputs(handle)
        self.n_layers = self._lib.colnn_num_layers(handle)
        self.n_params = int(self._lib.colnn_num_params(handle))

    @property
    def precision(self) -> str:
        return "float64" if self.dtype == np.float64 else "float32"

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._lib.colnn_free(self._handle)
            self._handle = None

    def __enter__(self) -> "NativeModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _live_handle(self) -> ctypes.c_void_p:
        if self._handle is None:
            raise HarnessError(f"{self.path}: model already closed")
        return self._handle

    def layers(self) -> list[tuple[str, str, int, int]]:
        """(type, name, n_in, n_out) of each layer."""
        out = []
        for i in range(1, self.n_layers + 1):
            tbuf, nbuf = ctypes.create_string_buffer(64), ctypes.create_string_buffer(256)
            n_in, n_out = ctypes.c_int(), ctypes.c_int()
            self._lib.colnn_layer_info(self._live_handle(), i, tbuf, 64, nbuf, 256,
                                       ctypes.byref(n_in), ctypes.byref(n_out))
            out.append((tbuf.value.decode(), nbuf.value.decode(), n_in.value, n_out.value))
        return out

    def set_check_finite(self, flag: bool) -> None:
        self._lib.colnn_set_check_finite(self._live_handle(), int(flag))

    def set_batch_invariant(self, flag: bool) -> None:
        """True (the library's default): each column's outputs are the same bits whatever the
        number of columns per call; False: the BLAS path."""
        self._lib.colnn_set_batch_invariant(self._live_handle(), int(flag))

    def predict(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Forward pass of x (columns, n_inputs) -> (columns, n_outputs)."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[np.newaxis, :]
        if x.ndim != 2:
            raise HarnessError(f"predict: input must be 2-D (columns, features), got {x.shape}")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        n_columns = x.shape[0]
        if x.shape[1] != self.n_inputs:
            raise HarnessError(f"predict: input has {x.shape[1]} features, the model "
                               f"({self.path}) takes {self.n_inputs}")
        if out is None:
            out = np.empty((n_columns, self.n_outputs), dtype=self.dtype)
        elif (out.shape != (n_columns, self.n_outputs) or out.dtype != self.dtype
              or not out.flags.c_contiguous):
            raise HarnessError(f"predict: out must be a C-contiguous {self.dtype.__name__} array "
                               f"of shape {(n_columns, self.n_outputs)}")
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_forward(self._live_handle(), x.ctypes.data, n_columns,
                                       out.ctypes.data, err, ERRMSG_LEN)
        _check(stat, err)
        return out

    def forward_raw(self, x_ptr: int, n_columns: int, y_ptr: int) -> int:
        """The bare C call on caller-prepared buffers (benchmarks: no checks, no allocation)."""
        return self._lib.colnn_forward(self._handle, x_ptr, n_columns, y_ptr, None, 0)

    # -- training building blocks -------------------------------------------------------------

    @property
    def n_trainable(self) -> int:
        return int(self._lib.colnn_num_trainable(self._live_handle()))

    def forward_train(self, x: np.ndarray) -> np.ndarray:
        """Training-mode forward of a minibatch x (batch, n_inputs); keeps what backward needs."""
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=self.dtype)
        if x.shape[1] != self.n_inputs:
            raise HarnessError(f"forward_train: input has {x.shape[1]} features, the model "
                               f"takes {self.n_inputs}")
        y = np.empty((x.shape[0], self.n_outputs), self.dtype)
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_forward_train(self._live_handle(), x.ctypes.data, x.shape[0],
                                             y.ctypes.data, err, ERRMSG_LEN)
        _check(stat, err)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dL/dx for dL/dy of the last forward_train; parameter gradients stay in the model."""
        dy = np.ascontiguousarray(np.atleast_2d(dy), dtype=self.dtype)
        if dy.shape[1] != self.n_outputs:
            raise HarnessError(f"backward: dy has {dy.shape[1]} features, the model gives "
                               f"{self.n_outputs}")
        dx = np.empty((dy.shape[0], self.n_inputs), self.dtype)
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_backward(self._live_handle(), dy.ctypes.data, dy.shape[0],
                                        dx.ctypes.data, err, ERRMSG_LEN)
        _check(stat, err)
        return dx

    def configure_training(self, optimizer: str, loss: str = "mse") -> None:
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_train_configure(self._live_handle(), optimizer.encode(),
                                               loss.encode(), err, ERRMSG_LEN)
        _check(stat, err)

    @property
    def _n_targets(self) -> int | None:
        n = self._lib.colnn_train_targets(self._live_handle())
        return None if n < 0 else int(n)

    def save_checkpoint(self, path: Path | str) -> None:
        """Model file plus the training state; loading it resumes training exactly."""
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_save_checkpoint(self._live_handle(), os.fsencode(str(path)), err,
                                               ERRMSG_LEN)
        _check(stat, err)

    def train_step(self, x: np.ndarray, t: np.ndarray) -> float:
        """One optimizer step on the minibatch x (batch, n_inputs), targets t (batch, n_targets)."""
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=self.dtype)
        t = np.ascontiguousarray(np.atleast_2d(t), dtype=self.dtype)
        if t.shape[0] != x.shape[0]:
            raise HarnessError(f"train_step: {x.shape[0]} inputs but {t.shape[0]} targets")
        n_targets = self._n_targets
        if n_targets is None:
            raise HarnessError("train_step: call configure_training first")
        if x.shape[1] != self.n_inputs or t.shape[1] != n_targets:
            raise HarnessError(f"train_step: expected inputs (n, {self.n_inputs}) and targets "
                               f"(n, {n_targets}), got {x.shape} and {t.shape}")
        loss = (ctypes.c_double if self.dtype == np.float64 else ctypes.c_float)()
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_train_step(self._live_handle(), x.ctypes.data, t.ctypes.data,
                                          x.shape[0], ctypes.addressof(loss), err, ERRMSG_LEN)
        _check(stat, err)
        return float(loss.value)

    def _xt(self, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=self.dtype)
        t = np.ascontiguousarray(np.atleast_2d(t), dtype=self.dtype)
        n_targets = self._n_targets
        if n_targets is None:
            raise HarnessError("call configure_training first")
        if x.shape[1] != self.n_inputs or t.shape != (x.shape[0], n_targets):
            raise HarnessError(f"expected inputs (n, {self.n_inputs}) and targets "
                               f"(n, {n_targets}), got {x.shape} and {t.shape}")
        return x, t

    def train_epoch(self, x: np.ndarray, t: np.ndarray, batch_size: int, seed: int = 0,
                    epoch: int = 0) -> float:
        x, t = self._xt(x, t)
        loss = (ctypes.c_double if self.dtype == np.float64 else ctypes.c_float)()
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_train_epoch(self._live_handle(), x.ctypes.data, t.ctypes.data,
                                           x.shape[0], batch_size, seed, epoch,
                                           ctypes.addressof(loss), err, ERRMSG_LEN)
        _check(stat, err)
        return float(loss.value)

    def evaluate(self, x: np.ndarray, t: np.ndarray) -> float:
        x, t = self._xt(x, t)
        loss = (ctypes.c_double if self.dtype == np.float64 else ctypes.c_float)()
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_evaluate(self._live_handle(), x.ctypes.data, t.ctypes.data,
                                        x.shape[0], ctypes.addressof(loss), err, ERRMSG_LEN)
        _check(stat, err)
        return float(loss.value)

    def _flat(self, fn, arr: np.ndarray | None = None) -> np.ndarray:
        n = self.n_trainable
        buf = np.empty(n, self.dtype) if arr is None else np.ascontiguousarray(arr, self.dtype)
        if buf.size != n:
            raise HarnessError(f"expected {n} trainable values, got {buf.size}")
        stat = fn(self._live_handle(), buf.ctypes.data, n)
        if stat != 0:
            raise ColnnError(stat, f"{self.path}: cannot access the trainable values (status {stat})")
        return buf

    def get_params(self) -> np.ndarray:
        return self._flat(self._lib.colnn_get_params)

    def set_params(self, p: np.ndarray) -> None:
        self._flat(self._lib.colnn_set_params, p)

    def get_grads(self) -> np.ndarray:
        return self._flat(self._lib.colnn_get_grads)

    def save(self, path: Path | str) -> None:
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_save(self._live_handle(), os.fsencode(str(path)), err, ERRMSG_LEN)
        _check(stat, err)


class NativeEnsemble:
    """An ensemble loaded by the Fortran library from a directory (its *.colnn files) or a list
    file; arrays in Keras layout as for NativeModel."""

    def __init__(self, path: Path | str, library: Path | str | None = None,
                 precision: Precision = "single") -> None:
        self._lib = load_library(library, precision)
        self.dtype = np.float64 if self._lib.colnn_real_bytes() == 8 else np.float32
        self.path = str(path)
        handle = ctypes.c_void_p()
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_ensemble_load(os.fsencode(self.path), ctypes.byref(handle), err,
                                             ERRMSG_LEN)
        _check(stat, err)
        self._handle = handle
        nm, ni, no = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        self._lib.colnn_ensemble_info(handle, ctypes.byref(nm), ctypes.byref(ni), ctypes.byref(no))
        self.n_members, self.n_inputs, self.n_outputs = nm.value, ni.value, no.value

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._lib.colnn_ensemble_free(self._handle)
            self._handle = None

    def __enter__(self) -> "NativeEnsemble":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def set_batch_invariant(self, flag: bool) -> None:
        """As NativeModel.set_batch_invariant, for every member."""
        self._lib.colnn_ensemble_set_batch_invariant(self._handle, int(flag))

    def set_noise(self, sd: float | np.ndarray, seed: int) -> None:
        sd_arr = np.ascontiguousarray(np.atleast_1d(np.asarray(sd, dtype=self.dtype)))
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_ensemble_set_noise(self._handle, sd_arr.ctypes.data, sd_arr.size,
                                                  int(seed), err, ERRMSG_LEN)
        _check(stat, err)

    def predict(self, x: np.ndarray, spread: bool = False, members: bool = False,
                column_offset: int = 0) -> dict[str, np.ndarray]:
        """{'mean': (columns, n_outputs)[, 'spread': same][, 'members': (members, columns,
        n_outputs)]}"""
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=self.dtype)
        if x.shape[1] != self.n_inputs:
            raise HarnessError(f"predict: input has {x.shape[1]} features, the ensemble "
                               f"({self.path}) takes {self.n_inputs}")
        nc = x.shape[0]
        out = {"mean": np.empty((nc, self.n_outputs), self.dtype)}
        if spread:
            out["spread"] = np.empty((nc, self.n_outputs), self.dtype)
        if members:
            out["members"] = np.empty((self.n_members, nc, self.n_outputs), self.dtype)
        err = ctypes.create_string_buffer(ERRMSG_LEN)
        stat = self._lib.colnn_ensemble_forward(
            self._handle, x.ctypes.data, nc, out["mean"].ctypes.data,
            out["spread"].ctypes.data if spread else None,
            out["members"].ctypes.data if members else None, int(column_offset), err, ERRMSG_LEN)
        _check(stat, err)
        return out


def library_version(library: Path | str | None = None) -> str:
    lib = load_library(library)
    buf = ctypes.create_string_buffer(64)
    lib.colnn_version(buf, 64)
    return buf.value.decode()
