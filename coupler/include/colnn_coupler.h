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

/* Per-column fallback and ramped coupling (&colnn_coupler fallback, fallback_lower,
 * fallback_upper, fallback_max_share, fallback_max_steps, ramp_steps) take the host's own
 * closure of each column. A host that has one creates its scheme with host_closure = 1
 * (a configuration asking for either is refused at init otherwise) and passes the closure,
 * (n_outputs, n_columns) like outputs, to colnn_scheme_run_closure: a column whose outputs
 * are not finite or out of bounds takes the closure (counted in *n_fallback, or NULL), and a
 * ramp gives w NN + (1 - w) closure with w = min(1, step / ramp_steps). */
int colnn_scheme_init_closure(const char *config, const char *name, int n_inputs,
                              int n_outputs, const char *input_vars, const char *output_vars,
                              int host_closure, int *scheme, char *errmsg, size_t errmsg_len);
int colnn_scheme_run_closure(int scheme, const colnn_real *inputs, int n_columns,
                             colnn_real *outputs, const colnn_real *closure,
                             int64_t column_offset, int64_t step, int *n_fallback,
                             char *errmsg, size_t errmsg_len);
/* Once a step, with the step's fallback columns and columns summed over the host's chunks
 * (and ranks): *failed = 1, with the reason in errmsg, when more than fallback_max_share of
 * the columns fell back at each of fallback_max_steps consecutive steps. The host decides
 * what a failed run does; the library stops nothing. */
int colnn_scheme_fallback_update(int scheme, int64_t n_fallback, int64_t n_columns,
                                 int *failed, char *errmsg, size_t errmsg_len);

/* What the successful _run calls cost since init: their number, the columns they took, and
 * their seconds summed over calls (over threads too, when called from several at once). */
void colnn_coupler_timers(int64_t *calls, int64_t *columns, double *seconds);
int colnn_scheme_timers(int scheme, int64_t *calls, int64_t *columns, double *seconds,
                        char *errmsg, size_t errmsg_len);
#ifdef __cplusplus
}
#endif
#endif
