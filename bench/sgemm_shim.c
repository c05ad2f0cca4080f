/* sgemm_ (LP64, Fortran calling convention) forwarding to numpy's bundled OpenBLAS
 * (scipy_openblas64: symbols prefixed "scipy_", suffixed "64_", 64-bit integers).
 * bench/blas_rates.py compiles this and LD_PRELOADs it, so that libcolnn's sgemm_ calls go to
 * that OpenBLAS. The library named by $COLNN_BENCH_SCIPY_OPENBLAS is opened RTLD_LOCAL: linking
 * it would put its unprefixed internal symbols into the global scope, where they would replace
 * those of the system OpenBLAS that libcolnn also loads (a crash). The integer conversion costs
 * nanoseconds per call. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void sgemm64_fn(const char *transa, const char *transb, const int64_t *m,
                        const int64_t *n, const int64_t *k, const float *alpha, const float *a,
                        const int64_t *lda, const float *b, const int64_t *ldb,
                        const float *beta, float *c, const int64_t *ldc);

static sgemm64_fn *target;

__attribute__((constructor)) static void shim_init(void)
{
    const char *path = getenv("COLNN_BENCH_SCIPY_OPENBLAS");
    void *h = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (h) target = (sgemm64_fn *)dlsym(h, "scipy_sgemm_64_");
    if (!target) {
        fprintf(stderr, "sgemm_shim: cannot load scipy_sgemm_64_ from %s: %s\n",
                path ? path : "(COLNN_BENCH_SCIPY_OPENBLAS not set)", dlerror());
        abort();
    }
}

void sgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
            const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
            const float *beta, float *c, const int *ldc)
{
    int64_t m8 = *m, n8 = *n, k8 = *k, lda8 = *lda, ldb8 = *ldb, ldc8 = *ldc;
    target(transa, transb, &m8, &n8, &k8, alpha, a, &lda8, b, &ldb8, beta, c, &ldc8);
}
