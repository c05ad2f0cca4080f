/* Child process of the model-reader fuzzer (tests/fuzz_model_reader.py).
 *
 *   load_model PATH [RESAVE_PATH]
 *
 * Loads PATH with colnn_load and prints exactly one line, exiting 0 in every case the library
 * handles (a crash, an abort, a Fortran runtime error or a hang is what the fuzzer hunts):
 *
 *   ok inputs=N outputs=M layers=L params=P forward=S
 *       the model loaded and is consistent: sizes >= 1, the layer chain connects inputs to
 *       outputs, every trainable value is finite, forward on a few columns ran (S is its status:
 *       non-finite outputs from huge but finite weights are the forward's business, not the
 *       reader's; -1: skipped, with COLNN_FUZZ_NO_FORWARD set), and, with RESAVE_PATH, the model saved there loads again with the same sizes
 *       and parameters;
 *   invalid REASON
 *       colnn_load returned 0 but the model breaks one of those rules (or an error left a handle);
 *   error STAT: MESSAGE
 *       colnn_load refused the file (MESSAGE may be empty; the fuzzer checks it).
 *
 * With COLNN_FUZZ_ABORT set (for a coverage-guided fuzzer, which sees only crashes and hangs:
 * tests/fuzz/afl_model_reader.sh), every rule above that fails, an empty message and an
 * allocation failure (a size that was not refused before allocating) abort() instead.
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "colnn.h"

#define ERRLEN 4096
#define NCOL 3

__attribute__((format(printf, 1, 2))) static int invalid(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("invalid ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  if (getenv("COLNN_FUZZ_ABORT") != NULL) abort();
  return 0;
}

/* Finite check on the library's working precision, whatever colnn_real says here. */
static int params_finite(colnn_model *m, int64_t n, int rb, void **out) {
  size_t bytes = (size_t)(n > 0 ? n : 1) * (size_t)rb;
  void *p = malloc(bytes);
  if (p == NULL) return -1;
  if (n > 0 && colnn_get_params(m, (colnn_real *)p, n) != 0) {
    free(p);
    return -2;
  }
  for (int64_t i = 0; i < n; i++) {
    double v = rb == 8 ? ((double *)p)[i] : (double)((float *)p)[i];
    if (!isfinite(v)) {
      free(p);
      return 0;
    }
  }
  *out = p;
  return 1;
}

int main(int argc, char **argv) {
  char err[ERRLEN];
  colnn_model *m = (colnn_model *)0x1; /* must come back NULL on failure */
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s PATH [RESAVE_PATH]\n", argv[0]);
    return 64;
  }
  memset(err, 'X', sizeof err); /* an unterminated message would show */
  int stat = colnn_load(argv[1], &m, err, sizeof err);
  if (memchr(err, '\0', sizeof err) == NULL) {
    return invalid("errmsg not NUL-terminated (stat %d)", stat);
  }
  if (stat != 0) {
    if (m != NULL) return invalid("failed load left a non-NULL handle (stat %d)", stat);
    /* one line: newlines in the message would break the protocol */
    for (char *c = err; *c; c++)
      if (*c == '\n' || *c == '\r') *c = ' ';
    printf("error %d: %s\n", stat, err);
    if (getenv("COLNN_FUZZ_ABORT") != NULL &&
        (err[0] == '\0' || stat == COLNN_ERR_MEMORY || strstr(err, argv[1]) == NULL))
      abort();
    return 0;
  }
  if (m == NULL) return invalid("status 0 but NULL handle");

  int rb = colnn_real_bytes();
  int ni = colnn_num_inputs(m), no = colnn_num_outputs(m), nl = colnn_num_layers(m);
  int64_t np = colnn_num_params(m), nt = colnn_num_trainable(m);
  if (ni < 1) return invalid("inputs %d", ni);
  if (no < 1) return invalid("outputs %d", no);
  if (nl < 1) return invalid("layers %d", nl);
  /* num_params counts every stored value, the trainable ones included */
  if (np < 0 || nt < 0 || nt > np)
    return invalid("parameter counts: %lld stored, %lld trainable", (long long)np, (long long)nt);
  int width = ni;
  for (int k = 1; k <= nl; k++) {
    char type[64], name[256];
    int n_in = -1, n_out = -1;
    if (colnn_layer_info(m, k, type, sizeof type, name, sizeof name, &n_in, &n_out) != 0)
      return invalid("layer_info failed for layer %d", k);
    if (n_in != width) return invalid("layer chain broken at layer %d", k);
    if (n_out < 1) return invalid("layer %d has no outputs", k);
    width = n_out;
  }
  if (width != no) return invalid("last layer width %d differs from outputs %d", width, no);

  void *p = NULL;
  int fin = params_finite(m, nt, rb, &p);
  if (fin == 0) return invalid("non-finite trainable value (of %lld)", (long long)nt);
  if (fin < 0) return invalid("cannot read the parameters (%d)", fin);

  /* forward on a few columns: must not crash; its status is reported, not judged */
  int fstat = -1;
  if (getenv("COLNN_FUZZ_NO_FORWARD") == NULL) {
    void *x = calloc((size_t)ni * NCOL, (size_t)rb), *y = calloc((size_t)no * NCOL, (size_t)rb);
    if (x != NULL && y != NULL) {
      for (size_t i = 0; i < (size_t)ni * NCOL; i++) {
        double v = 0.1 * (double)(i % 7) - 0.3;
        if (rb == 8) ((double *)x)[i] = v; else ((float *)x)[i] = (float)v;
      }
      fstat = colnn_forward(m, (colnn_real *)x, NCOL, (colnn_real *)y, err, sizeof err);
    }
    free(x);
    free(y);
  }

  if (argc == 3) {
    if (colnn_save(m, argv[2], err, sizeof err) != 0) {
      printf("invalid cannot save the loaded model: %s\n", err);
      free(p);
      colnn_free(m);
      return 0;
    }
    colnn_model *m2 = NULL;
    if (colnn_load(argv[2], &m2, err, sizeof err) != 0) {
      for (char *c = err; *c; c++)
        if (*c == '\n' || *c == '\r') *c = ' ';
      printf("invalid the saved model does not load again: %s\n", err);
      free(p);
      colnn_free(m);
      return 0;
    }
    void *p2 = NULL;
    int same = colnn_num_inputs(m2) == ni && colnn_num_outputs(m2) == no &&
               colnn_num_layers(m2) == nl && colnn_num_params(m2) == np &&
               colnn_num_trainable(m2) == nt && params_finite(m2, nt, rb, &p2) == 1 &&
               (nt == 0 || memcmp(p, p2, (size_t)nt * (size_t)rb) == 0);
    free(p2);
    colnn_free(m2);
    if (!same) {
      free(p);
      colnn_free(m);
      return invalid("the saved model differs after reloading");
    }
  }
  free(p);
  colnn_free(m);
  printf("ok inputs=%d outputs=%d layers=%d params=%lld forward=%d\n", ni, no, nl,
         (long long)np, fstat);
  return 0;
}
