/* colnn coupler: the NN parameterization as a host model calls it (CCPP-style
 * init / run / finalize; 0 = success, otherwise errmsg says why; the library never stops).
 * Arrays are (features, columns) in Fortran order = C's a[n_columns][n_features]. */
#ifndef COLNN_COUPLER_H
#define COLNN_COUPLER_H
#include "colnn.h"
#ifdef __cplusplus
extern "C" {
#endif
/* config: a Fortran namelist file with group &colnn_coupler (model_file or ensemble, noise_sd,
 * noise_seed, check_finite, batch_invariant, online_training, optimizer, loss). The model must map n_inputs
 * host features to n_outputs. */
int colnn_coupler_init(const char *config, int n_inputs, int n_outputs, char *errmsg,
                       size_t errmsg_len);
/* One chunk of columns. column_offset: global index (0-based) of its first column; step: the
 * host's time step (with column_offset, the key of an ensemble's input noise, so the chunking
 * does not change results). targets: NULL, or (n_outputs, n_columns) for one online-training
 * step when enabled. */
int colnn_coupler_run(const colnn_real *inputs, int n_columns, colnn_real *outputs,
                      int64_t column_offset, int64_t step, const colnn_real *targets,
                      char *errmsg, size_t errmsg_len);
int colnn_coupler_finalize(char *errmsg, size_t errmsg_len);

/* Several schemes in one host (convection and radiation, say): each is an id (1, 2, ...)
 * from colnn_scheme_init, initialised from the &colnn_coupler group whose `name` matches
 * (name "" : the file's only group). Two live schemes cannot share a name. A finalized id
 * stays invalid: using it is an error, never another scheme. colnn_scheme_run has the
 * arguments and the thread safety of colnn_coupler_run. */
/* input_vars, output_vars: NULL, or what the host passes / expects at each position, one
 * "NAME LEVEL UNITS" a line, checked against the model's recorded features. */
int colnn_scheme_init(const char *config, const char *name, int n_inputs, int n_outputs,
                      const char *input_vars, const char *output_vars, int *scheme,
                      char *errmsg, size_t errmsg_len);
int colnn_scheme_run(int scheme, const colnn_real *inputs, int n_columns, colnn_real *outputs,
                     int64_t column_offset, int64_t step, const colnn_real *targets,
                     char *errmsg, size_t errmsg_len);
int colnn_scheme_finalize(int scheme, char *errmsg, size_t errmsg_len);

/* What the successful _run calls cost since init: their number, the columns they took, and
 * their seconds summed over calls (over threads too, when called from several at once). */
void colnn_coupler_timers(int64_t *calls, int64_t *columns, double *seconds);
int colnn_scheme_timers(int scheme, int64_t *calls, int64_t *columns, double *seconds,
                        char *errmsg, size_t errmsg_len);
#ifdef __cplusplus
}
#endif
#endif
