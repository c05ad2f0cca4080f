/* A toy host in C: its state lives in (features, columns) arrays, and each step it hands the NN
 * parameterization chunks of pcols columns, as a GCM's physics driver does: with THREADS > 1
 * from an OpenMP loop over the chunks, each thread calling the coupler for its own chunks.
 * Usage: c_host NAMELIST N_INPUTS N_OUTPUTS N_COLUMNS PCOLS [THREADS]; prints the outputs, a
 * column a line. */
#include <stdio.h>
#include <stdlib.h>
#include "colnn_coupler.h"

int main(int argc, char **argv) {
  if (argc != 6 && argc != 7) {
    fprintf(stderr, "usage: %s NAMELIST N_INPUTS N_OUTPUTS N_COLUMNS PCOLS [THREADS]\n", argv[0]);
    return 2;
  }
  int n_in = atoi(argv[2]), n_out = atoi(argv[3]), ncol = atoi(argv[4]), pcols = atoi(argv[5]);
  int threads = argc == 7 ? atoi(argv[6]) : 1;
  char err[1024];
  if (colnn_coupler_init(argv[1], n_in, n_out, err, sizeof err) != 0) {
    fprintf(stderr, "init failed: %s\n", err);
    return 1;
  }
  colnn_real *state = malloc(sizeof *state * (size_t)n_in * ncol);
  colnn_real *tend = malloc(sizeof *tend * (size_t)n_out * ncol);
  for (int j = 0; j < ncol; j++)
    for (int i = 0; i < n_in; i++) state[(size_t)j * n_in + i] = (colnn_real)(0.01 * ((i * 7 + j * 3) % 23) - 0.1);
  int n_chunks = (ncol + pcols - 1) / pcols, failed = 0;
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
  for (int c = 0; c < n_chunks; c++) {
    int j0 = c * pcols, m = ncol - j0 < pcols ? ncol - j0 : pcols;
    char chunk_err[1024];
    if (colnn_coupler_run(state + (size_t)j0 * n_in, m, tend + (size_t)j0 * n_out, j0, 1, NULL,
                          chunk_err, sizeof chunk_err) != 0) {
#pragma omp critical
      {
        fprintf(stderr, "run failed at column %d: %s\n", j0, chunk_err);
        failed = 1;
      }
    }
  }
  if (failed) return 1;
  for (int j = 0; j < ncol; j++) {
    for (int i = 0; i < n_out; i++) printf("%.8e ", (double)tend[(size_t)j * n_out + i]);
    printf("\n");
  }
  colnn_coupler_finalize(err, sizeof err);
  free(state);
  free(tend);
  return 0;
}
