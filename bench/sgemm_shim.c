/* sgemm_ (LP64, Fortran calling convention) forwarding to numpy's bundled OpenBLAS
 * (scipy_openblas64: symbols prefixed "scipy_", suffixed "64_", 64-bit integers).
 * bench/blas_rates.py compiles this and LD_PRELOADs it, so that libcolnn's sgemm_ calls go to
 * that OpenBLAS; the integer conversion costs nanoseconds per call. */
#include <stdint.h>

void scipy_sgemm_64_(const char *transa, const char *transb, const int64_t *m, const int64_t *n,
                     const int64_t *k, const float *alpha, const float *a, const int64_t *lda,
                     const float *b, const int64_t *ldb, const float *beta, float *c,
                     const int64_t *ldc);

void sgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
            const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
            const float *beta, float *c, const int *ldc)
{
    int64_t m8 = *m, n8 = *n, k8 = *k, lda8 = *lda, ldb8 = *ldb, ldc8 = *ldc;
    scipy_sgemm_64_(transa, transb, &m8, &n8, &k8, alpha, a, &lda8, b, &ldb8, beta, c, &ldc8);
}
