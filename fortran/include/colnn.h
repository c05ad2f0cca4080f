/* colnn: C interface of the colnn Fortran neural-network library.
 *
 * Arrays are (features, columns) in Fortran order, which is C's x[n_columns][n_features]:
 * one column (a model column, a sample) is a contiguous run of features.
 * Every function that can fail returns 0 on success or a COLNN_ERR_* code and writes a
 * NUL-terminated message into errmsg (at most errmsg_len bytes). A model handle must not be
 * used by two threads at once; separate handles may.
 */
#ifndef COLNN_H
#define COLNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(COLNN_DOUBLE)
typedef double colnn_real;
#else
typedef float colnn_real; /* check colnn_real_bytes() against the library you link */
#endif

typedef struct colnn_model colnn_model;

enum {
  COLNN_OK = 0,
  COLNN_ERR_IO = 1,
  COLNN_ERR_FORMAT = 2,
  COLNN_ERR_ARGUMENT = 3,
  COLNN_ERR_NONFINITE = 4,
  COLNN_ERR_UNSUPPORTED = 5,
  COLNN_ERR_MEMORY = 6,
  COLNN_ERR_NOT_IMPLEMENTED = 7
};

/* Loads a colnn model file or an FKB text file; *model is NULL on failure. */
int colnn_load(const char *path, colnn_model **model, char *errmsg, size_t errmsg_len);
/* Writes the model as a colnn model file (atomically). */
int colnn_save(colnn_model *model, const char *path, char *errmsg, size_t errmsg_len);
void colnn_free(colnn_model *model);

/* y(n_outputs, n_columns) = model(x(n_inputs, n_columns)). Fails on non-finite inputs, and
 * reports non-finite outputs (y is still written), unless disabled by colnn_set_check_finite. */
int colnn_forward(colnn_model *model, const colnn_real *x, int n_columns, colnn_real *y,
                  char *errmsg, size_t errmsg_len);
int colnn_set_check_finite(colnn_model *model, int flag);
/* flag != 0 (the default): each column's outputs are a pure function of its inputs and the model,
 * the same bits whatever the number of columns per call, the chunking, the threads or the MPI
 * layout (dense layers use an fma-chain kernel instead of the BLAS); 0: the BLAS, whose results
 * change in the last bits with the call's shape. Kept across colnn_load of the same handle. */
int colnn_set_batch_invariant(colnn_model *model, int flag);
/* the instruction set the batch-invariant kernel uses here: "avx512", "avx2" or "generic" */
void colnn_batch_invariant_kernel(char *buf, size_t buf_len);

int colnn_num_inputs(colnn_model *model);
int colnn_num_outputs(colnn_model *model);
int colnn_num_layers(colnn_model *model);
int64_t colnn_num_params(colnn_model *model);
/* index is 1-based */
int colnn_layer_info(colnn_model *model, int index, char *type, size_t type_len, char *name,
                     size_t name_len, int *n_in, int *n_out);
int colnn_real_bytes(void);

/* Training building blocks. forward_train runs in training mode (batch-norm batch statistics
 * and moving-statistics update, dropout masks) and keeps what backward needs; backward takes
 * dL/dy and leaves the parameter gradients in the model (dx may be NULL). Parameters and
 * gradients are flat vectors in Keras' order (model.trainable_variables, each row-major):
 * n must equal colnn_num_trainable. */
int colnn_forward_train(colnn_model *model, const colnn_real *x, int n_columns, colnn_real *y,
                        char *errmsg, size_t errmsg_len);
int colnn_backward(colnn_model *model, const colnn_real *dy, int n_columns, colnn_real *dx,
                   char *errmsg, size_t errmsg_len);
int64_t colnn_num_trainable(colnn_model *model);
int colnn_get_params(colnn_model *model, colnn_real *p, int64_t n);
int colnn_set_params(colnn_model *model, const colnn_real *p, int64_t n);
int colnn_get_grads(colnn_model *model, colnn_real *g, int64_t n);
/* A training step = forward_train, loss, backward, one optimizer update (Keras 3 formulas).
 * optimizer: "sgd|rmsprop|adam [key=value ...]"; loss: "mse", "mae", "huber [delta=D]",
 * "categorical_crossentropy", "gaussian_nll" (targets: n_outputs / 2). A non-finite loss or
 * gradient returns COLNN_ERR_NONFINITE and leaves the weights unchanged. */
int colnn_train_configure(colnn_model *model, const char *optimizer, const char *loss,
                          char *errmsg, size_t errmsg_len);
int colnn_train_step(colnn_model *model, const colnn_real *x, const colnn_real *targets,
                     int n_columns, colnn_real *loss, char *errmsg, size_t errmsg_len);
/* One epoch in minibatches of batch_size; seed 0 keeps the order, else a shuffle that is a pure
 * function of (seed, epoch). colnn_evaluate: the loss at inference. */
int colnn_train_epoch(colnn_model *model, const colnn_real *x, const colnn_real *targets,
                      int n_columns, int batch_size, int64_t seed, int epoch,
                      colnn_real *mean_loss, char *errmsg, size_t errmsg_len);
/* The model file plus a training block (optimizer, loss, step count, optimizer state): loading
 * it with colnn_load restores the training configuration, so a run resumes exactly. */
int colnn_train_targets(colnn_model *model); /* targets per column of the loss; -1: none */
int colnn_save_checkpoint(colnn_model *model, const char *path, char *errmsg, size_t errmsg_len);
int colnn_evaluate(colnn_model *model, const colnn_real *x, const colnn_real *targets,
                   int n_columns, colnn_real *loss, char *errmsg, size_t errmsg_len);

/* Ensembles: members that agree on input and output sizes; forward gives their mean and, when
 * the pointers are not NULL, the spread (population standard deviation) and every member's
 * output (n_outputs, n_columns, n_members). Input noise is reproducible from (seed, member,
 * call, column_offset + column, feature) whatever the threads or the split of columns. */
typedef struct colnn_ensemble colnn_ensemble;
/* path: a directory (its *.colnn files, in name order) or a list file (one path a line). */
int colnn_ensemble_load(const char *path, colnn_ensemble **ens, char *errmsg, size_t errmsg_len);
void colnn_ensemble_free(colnn_ensemble *ens);
int colnn_ensemble_info(colnn_ensemble *ens, int *n_members, int *n_inputs, int *n_outputs);
/* n_sd = 1 (one standard deviation for all inputs) or n_inputs; all >= 0 */
int colnn_ensemble_set_noise(colnn_ensemble *ens, const colnn_real *sd, int n_sd, int64_t seed,
                             char *errmsg, size_t errmsg_len);
/* as colnn_set_batch_invariant, for every member */
int colnn_ensemble_set_batch_invariant(colnn_ensemble *ens, int flag);
int colnn_ensemble_forward(colnn_ensemble *ens, const colnn_real *x, int n_columns,
                           colnn_real *mean, colnn_real *spread, colnn_real *members,
                           int64_t column_offset, char *errmsg, size_t errmsg_len);
void colnn_version(char *buf, size_t buf_len);

#ifdef __cplusplus
}
#endif
#endif /* COLNN_H */
