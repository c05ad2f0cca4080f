"""The steady-state forward call allocates nothing: a C host interposes malloc/calloc/realloc
and counts the calls made from inside libcolnn during repeated forwards (after warm-up).

Calls made by the BLAS are not counted: OpenBLAS 0.3.21's SkylakeX small-matrix kernel mallocs
per call for thin shapes, which is outside the library's control."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.modelfile import Activation, LayerSpec, ModelSpec, write_model

HOST = r'''
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "colnn.h"
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static long from_colnn = 0, total = 0;
static int counting = 0;
static void count(void *caller) {
  if (!counting) return;
  counting = 0;  /* dladdr may allocate */
  Dl_info info;
  total++;
  if (dladdr(caller, &info) && info.dli_fname && strstr(info.dli_fname, "libcolnn")) from_colnn++;
  counting = 1;
}
void *malloc(size_t n) { count(__builtin_return_address(0)); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count(__builtin_return_address(0)); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count(__builtin_return_address(0)); return __libc_realloc(p, n); }
int main(int argc, char **argv) {
  char err[512]; colnn_model *m;
  if (colnn_load(argv[1], &m, err, sizeof err)) { puts(err); return 1; }
  int nc = atoi(argv[2]), nin = colnn_num_inputs(m), nout = colnn_num_outputs(m);
  colnn_real *x = calloc((size_t)nin * nc, sizeof *x), *y = calloc((size_t)nout * nc, sizeof *y);
  for (int i = 0; i < nin * nc; i++) x[i] = (i % 7) * 0.1f - 0.3f;
  for (int r = 0; r < 3; r++) colnn_forward(m, x, nc, y, err, sizeof err);
  counting = 1;
  for (int r = 0; r < 20; r++)
    if (colnn_forward(m, x, nc, y, err, sizeof err)) { counting = 0; puts(err); return 2; }
  counting = 0;
  printf("%ld %ld\n", from_colnn, total);
  colnn_free(m);
  return 0;
}
'''


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, repo_root: Path, lib_single: Path) -> Path:
    d = tmp_path_factory.mktemp("steady")
    (d / "host.c").write_text(HOST)
    exe = d / "host"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(d / "host.c"),
                    f"-I{repo_root / 'fortran/include'}", str(lib_single), "-ldl",
                    f"-Wl,-rpath,{lib_single.parent}"], check=True)
    return exe


@pytest.mark.parametrize("n_columns", [1, 7, 64, 1000, 3000])
def test_forward_allocates_nothing_in_steady_state(host: Path, tmp_path: Path,
                                                   n_columns: int) -> None:
    rng = np.random.default_rng(0)
    act = Activation.make("leaky_relu", negative_slope=0.3)
    layers = [LayerSpec("normalization", "n", {"epsilon": 1e-7, "invert": False},
                        {"mean": np.zeros(20, np.float32), "variance": np.ones(20, np.float32)})]
    width = 20
    for i in range(3):
        layers += [
            LayerSpec("dense", f"d{i}", {"units": 48, "use_bias": True, "activation": act},
                      {"kernel": rng.standard_normal((width, 48)).astype(np.float32) * 0.2,
                       "bias": np.zeros(48, np.float32)}),
            LayerSpec("batch_normalization", f"bn{i}", {"epsilon": 1e-3, "momentum": 0.99,
                                                        "center": True, "scale": True},
                      {k: np.ones(48, np.float32) for k in
                       ("gamma", "beta", "moving_mean", "moving_variance")}),
            LayerSpec("dropout", f"drop{i}", {"rate": 0.1}, {}),
            LayerSpec("activation", f"sm{i}", {"activation": Activation.make("softmax")}, {}),
        ]
        width = 48
    layers.append(LayerSpec("dense", "out", {"units": 9, "use_bias": False,
                                             "activation": Activation.make("linear")},
                            {"kernel": rng.standard_normal((48, 9)).astype(np.float32)}))
    write_model(ModelSpec("float32", 20, layers), tmp_path / "m.colnn")
    out = subprocess.run([str(host), str(tmp_path / "m.colnn"), str(n_columns)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    from_colnn, _total = map(int, out.stdout.split())
    assert from_colnn == 0, f"{from_colnn} allocations from libcolnn in 20 steady-state calls"


def test_the_counter_sees_allocations(host: Path, tmp_path: Path) -> None:
    """The check can fail: a first call (workspace allocation) is counted when not warmed up."""
    src = Path(host.parent / "host.c").read_text()
    cold = src.replace("for (int r = 0; r < 3; r++) colnn_forward", "if (0) colnn_forward")
    (tmp_path / "cold.c").write_text(cold)
    repo = Path(__file__).resolve().parent.parent
    lib = repo / "build/single/fortran/libcolnn.so"
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "cold"), str(tmp_path / "cold.c"),
                    f"-I{repo / 'fortran/include'}", str(lib), "-ldl",
                    f"-Wl,-rpath,{lib.parent}"], check=True)
    rng = np.random.default_rng(0)
    spec = ModelSpec("float32", 3, [LayerSpec(
        "dense", "d", {"units": 2, "use_bias": False, "activation": Activation.make("linear")},
        {"kernel": rng.standard_normal((3, 2)).astype(np.float32)})])
    write_model(spec, tmp_path / "m.colnn")
    out = subprocess.run([str(tmp_path / "cold"), str(tmp_path / "m.colnn"), "50"],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[0]) > 0
