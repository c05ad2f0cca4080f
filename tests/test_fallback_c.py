"""Per-column fallback and ramped coupling through the coupler's C binding (what a C host and
the harness call): a linear model y = 2 x + 1 on 2 features, the host's closure passed beside
it; the outputs column by column against the rule (bounds, non-finite, w = step / ramp_steps),
the count, the fallback verdict over steps, and the settings refused at init."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from harness.locate import host_bin_dir
from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model

ERR = 1024


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    path = host_bin_dir("single").path.parent / "coupler" / "libcolnn_coupler.so"
    if not path.exists():
        path = host_bin_dir("single").path / "libcolnn_coupler.so"
    lib = ctypes.CDLL(str(path))
    real_p = np.ctypeslib.ndpointer(np.float32, flags="F_CONTIGUOUS")
    lib.colnn_scheme_init_closure.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                              ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                              ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                                              ctypes.c_char_p, ctypes.c_size_t]
    lib.colnn_scheme_run_closure.argtypes = [ctypes.c_int, real_p, ctypes.c_int, real_p, real_p,
                                             ctypes.c_int64, ctypes.c_int64,
                                             ctypes.POINTER(ctypes.c_int), ctypes.c_char_p,
                                             ctypes.c_size_t]
    lib.colnn_scheme_fallback_update.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                                 ctypes.POINTER(ctypes.c_int), ctypes.c_char_p,
                                                 ctypes.c_size_t]
    lib.colnn_scheme_finalize.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    return lib


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fallback") / "linear.colnn"
    dense = LayerSpec("dense", "d", {"units": 2, "use_bias": True,
                                     "activation": Activation.make("linear")},
                      {"kernel": 2 * np.eye(2), "bias": np.ones(2)})
    write_model(ModelSpec("float32", 2, [dense]), path)
    return path


class Scheme:
    def __init__(self, lib: ctypes.CDLL, config: Path, host_closure: bool = True) -> None:
        self.lib = lib
        self.id = ctypes.c_int(0)
        err = ctypes.create_string_buffer(ERR)
        stat = lib.colnn_scheme_init_closure(str(config).encode(), b"", 2, 2, None, None,
                                             int(host_closure), ctypes.byref(self.id), err, ERR)
        self.error = err.value.decode() if stat else ""

    def run(self, x: np.ndarray, closure: np.ndarray, step: int) -> tuple[np.ndarray, int, str]:
        y = np.zeros_like(x, order="F")
        n = ctypes.c_int(-1)
        err = ctypes.create_string_buffer(ERR)
        stat = self.lib.colnn_scheme_run_closure(self.id, x, x.shape[1], y, closure, 0, step,
                                                 ctypes.byref(n), err, ERR)
        return y, n.value, err.value.decode() if stat else ""

    def update(self, n_fallback: int, n_columns: int) -> tuple[int, str]:
        failed = ctypes.c_int(-1)
        err = ctypes.create_string_buffer(ERR)
        assert self.lib.colnn_scheme_fallback_update(self.id, n_fallback, n_columns,
                                                     ctypes.byref(failed), err, ERR) == 0
        return failed.value, err.value.decode()

    def close(self) -> None:
        err = ctypes.create_string_buffer(ERR)
        self.lib.colnn_scheme_finalize(self.id, err, ERR)


def config(tmp_path: Path, model: Path, text: str) -> Path:
    path = tmp_path / "c.nml"
    path.write_text(f"&colnn_coupler model_file = '{model}', {text} /\n")
    return path


def columns(values: list[list[float]]) -> np.ndarray:
    """(features, columns) from a list of columns."""
    return np.asfortranarray(np.array(values, dtype=np.float32).T)


def test_out_of_bounds_and_non_finite_columns_take_the_closure(lib, model, tmp_path) -> None:
    s = Scheme(lib, config(tmp_path, model, "fallback = .true., fallback_lower = -10, "
                                            "fallback_upper = 10, 8"))
    assert not s.error
    # y = 2x + 1: column 2 gives 21 > 10 (feature 1), column 3 gives 9 > 8 (feature 2's bound),
    # column 4 overflows to inf
    x = columns([[1, 2], [10, 0], [0, 4], [3e38, 0], [-4, -4]])
    closure = columns([[-1, -1], [-2, -2], [-3, -3], [-4, -4], [-5, -5]])
    y, n, err = s.run(x, closure, step=5)
    assert not err and n == 3
    np.testing.assert_array_equal(y, columns([[3, 5], [-2, -2], [-3, -3], [-4, -4], [-7, -7]]))
    # a non-finite input is the host's broken state, not a column to replace
    y, n, err = s.run(columns([[np.nan, 0]]), columns([[0, 0]]), step=6)
    assert "input feature 1 of column 1 is not finite" in err and n == 0
    s.close()


def test_the_ramp_blends_network_and_closure(lib, model, tmp_path) -> None:
    s = Scheme(lib, config(tmp_path, model, "ramp_steps = 4"))
    x = columns([[1, 2], [0, -1]])
    closure = columns([[11, 21], [-9, 3]])
    nn = 2 * x + 1
    for step in (0, 1, 3, 4, 9):
        w = min(1.0, step / 4)
        y, n, err = s.run(x, closure, step)
        assert not err and n == 0
        np.testing.assert_allclose(y, w * nn + (1 - w) * closure, rtol=1e-6)
    s.close()


def test_the_verdict_needs_too_many_columns_for_long_enough(lib, model, tmp_path) -> None:
    s = Scheme(lib, config(tmp_path, model, "fallback = .true., fallback_max_share = 0.25, "
                                            "fallback_max_steps = 3"))
    # 3 steps over the share, then one at it (not over) resets the count
    assert [s.update(n, 8)[0] for n in (3, 3, 2, 3, 3)] == [0, 0, 0, 0, 0]
    failed, why = s.update(3, 8)
    assert failed == 1 and "fallback_max_steps = 3" in why and "3 of 8" in why
    s.close()


@pytest.mark.parametrize("text, host_closure, expect", [
    ("fallback = .true.", False, "this host has none"),
    ("ramp_steps = 3", False, "this host has none"),
    ("fallback = .true., fallback_lower = 1, fallback_upper = 0",
     True, "fallback_lower(1) = 1 is above fallback_upper(1) = 0"),
    ("fallback = .true., fallback_lower = 1, 2, 3", True,
     "fallback_lower gives 3 values; give 1, or one per output (2)"),
    ("fallback_lower = 1", True, "fallback = .false."),
    ("fallback = .true., fallback_max_share = 1.5", True, "fallback_max_share must be in (0, 1]"),
    ("fallback = .true., fallback_max_steps = 0", True, "fallback_max_steps must be >= 1"),
    ("ramp_steps = -2", True, "ramp_steps must be >= 0"),
])
def test_bad_settings_are_refused_at_init(lib, model, tmp_path, text, host_closure,
                                          expect) -> None:
    s = Scheme(lib, config(tmp_path, model, text), host_closure=host_closure)
    assert expect in s.error, s.error
    assert str(tmp_path / "c.nml") in s.error


def test_online_training_of_batchnorm_needs_two_columns(lib, tmp_path) -> None:
    """A BatchNormalization layer trained on a batch of one column sees variance 0 and learns a
    moving variance that decays to 0 (its outputs then explode in inference): refused with the
    reason; two columns train."""
    path = tmp_path / "bn.colnn"
    dense = LayerSpec("dense", "d", {"units": 2, "use_bias": True,
                                     "activation": Activation.make("linear")},
                      {"kernel": np.eye(2), "bias": np.zeros(2)})
    bn = LayerSpec("batch_normalization", "bn",
                   {"epsilon": 1e-3, "momentum": 0.99, "center": True, "scale": True},
                   {"gamma": np.ones(2), "beta": np.zeros(2), "moving_mean": np.zeros(2),
                    "moving_variance": np.ones(2)})
    write_model(ModelSpec("float32", 2, [dense, bn]), path)
    cfg = config(tmp_path, path, "online_training = .true., optimizer = 'sgd learning_rate=0.1'")
    lib.colnn_scheme_init.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.POINTER(ctypes.c_int), ctypes.c_char_p,
                                      ctypes.c_size_t]
    real_p = np.ctypeslib.ndpointer(np.float32, flags="F_CONTIGUOUS")
    lib.colnn_scheme_run.argtypes = [ctypes.c_int, real_p, ctypes.c_int, real_p, ctypes.c_int64,
                                     ctypes.c_int64, real_p, ctypes.c_char_p, ctypes.c_size_t]
    scheme, err = ctypes.c_int(0), ctypes.create_string_buffer(ERR)
    assert lib.colnn_scheme_init(str(cfg).encode(), b"", 2, 2, None, None,
                                 ctypes.byref(scheme), err, ERR) == 0, err.value
    for n, ok in ((1, False), (2, True)):
        x = columns([[1, 2]] * n) if n == 1 else columns([[1, 2], [3, -1]])
        y = np.zeros_like(x, order="F")
        stat = lib.colnn_scheme_run(scheme, x, n, y, 0, 1, np.asfortranarray(x + 1), err, ERR)
        assert (stat == 0) == ok, err.value
        if not ok:
            assert b"BatchNormalization needs at least 2 columns" in err.value
    lib.colnn_scheme_finalize(scheme, err, ERR)
