/* Batch-invariant C = A B for the forward pass (column-major, no transposes).
 *
 * Every element is c(i,j) = fma(a(i,k), b(k,j), ... fma(a(i,1), b(1,j), 0)): one exactly rounded
 * fused multiply-add per term, in k order, starting from zero. No path (register tile, tail,
 * instruction set) changes that chain, so a column's result is a pure function of that column and
 * A: the same bits for any number of columns in the call, any position of the column, any
 * chunking, thread count or MPI layout, and on any machine whose compiler honours fma (x86-64
 * with or without FMA hardware, aarch64). An optimized BLAS gives none of that: its kernels,
 * blocking and small-matrix paths change the summation with the shape.
 *
 * The price is a kernel that is simpler than a BLAS one; bench/batch_invariance.py measures it.
 * The instruction set (AVX-512, AVX2+FMA, generic C with fma()) is chosen at the first call; a
 * tile's tails (rows past m, a last group of fewer columns) keep the same per-element chain, so
 * the instruction set changes the speed, not the bits. */
#include <stddef.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define COLNN_TILE_BODY(T, FMA, MR, NR)                                                       \
  for (int j0 = 0; j0 < n; j0 += NR) {                                                       \
    const int nr = n - j0 < NR ? n - j0 : NR;                                                \
    for (int i0 = 0; i0 < m; i0 += MR) {                                                     \
      const int mr = m - i0 < MR ? m - i0 : MR;                                              \
      T acc[NR][MR];                                                                         \
      for (int jj = 0; jj < NR; jj++)                                                        \
        for (int ii = 0; ii < MR; ii++) acc[jj][ii] = 0;                                     \
      if (mr == MR && nr == NR) {                                                            \
        for (int p = 0; p < k; p++) {                                                        \
          const T *ap = a + i0 + (size_t)p * m;                                              \
          for (int jj = 0; jj < NR; jj++) {                                                  \
            const T bv = b[p + (size_t)(j0 + jj) * k];                                       \
            for (int ii = 0; ii < MR; ii++) acc[jj][ii] = FMA(ap[ii], bv, acc[jj][ii]);      \
          }                                                                                  \
        }                                                                                    \
      } else if (mr == MR) {                                                                 \
        for (int p = 0; p < k; p++) {                                                        \
          const T *ap = a + i0 + (size_t)p * m;                                              \
          for (int jj = 0; jj < nr; jj++) {                                                  \
            const T bv = b[p + (size_t)(j0 + jj) * k];                                       \
            for (int ii = 0; ii < MR; ii++) acc[jj][ii] = FMA(ap[ii], bv, acc[jj][ii]);      \
          }                                                                                  \
        }                                                                                    \
      } else {                                                                               \
        for (int p = 0; p < k; p++) {                                                        \
          const T *ap = a + i0 + (size_t)p * m;                                              \
          for (int jj = 0; jj < nr; jj++) {                                                  \
            const T bv = b[p + (size_t)(j0 + jj) * k];                                       \
            for (int ii = 0; ii < mr; ii++) acc[jj][ii] = FMA(ap[ii], bv, acc[jj][ii]);      \
          }                                                                                  \
        }                                                                                    \
      }                                                                                      \
      for (int jj = 0; jj < nr; jj++)                                                        \
        for (int ii = 0; ii < mr; ii++) c[i0 + ii + (size_t)(j0 + jj) * m] = acc[jj][ii];    \
    }                                                                                        \
  }

typedef void (*gemm_s_fn)(int, int, int, const float *restrict, const float *restrict,
                          float *restrict);
typedef void (*gemm_d_fn)(int, int, int, const double *restrict, const double *restrict,
                          double *restrict);

static void gemm_s_generic(int m, int n, int k, const float *restrict a,
                           const float *restrict b, float *restrict c)
{
  COLNN_TILE_BODY(float, fmaf, 8, 4)
}

static void gemm_d_generic(int m, int n, int k, const double *restrict a,
                           const double *restrict b, double *restrict c)
{
  COLNN_TILE_BODY(double, fma, 4, 4)
}

#if defined(__x86_64__) && defined(__GNUC__)
#define COLNN_X86_DISPATCH 1
#include <immintrin.h>

/* Explicit fma intrinsics (the auto-vectorizer does not keep these tiles in registers reliably).
 * A tile is 2 vectors of rows x NT columns of accumulators; rows past m are masked out of the
 * loads (they load zeros) and of the stores, so row tails run the same instructions. Columns go
 * in tiles of NR, then 4, 2 and 1 (a tail of single columns would leave the FMA units waiting on
 * two dependency chains); every tile keeps the same per-element chain. */
#define COLNN_X86_TILE(NT, T, VEC, W, ZERO, SET1, FMA, LOADM, STOREM)                          \
  {                                                                                           \
    VEC acc0[NT], acc1[NT];                                                                   \
    for (int jj = 0; jj < NT; jj++) acc0[jj] = acc1[jj] = ZERO();                             \
    const T *bj = b + (size_t)j0 * k;                                                         \
    for (int p = 0; p < k; p++) {                                                             \
      const VEC a0 = LOADM(ai + (size_t)p * m, m0), a1 = LOADM(ai + (size_t)p * m + W, m1);   \
      for (int jj = 0; jj < NT; jj++) {                                                       \
        const VEC bv = SET1(bj[p + (size_t)jj * k]);                                          \
        acc0[jj] = FMA(a0, bv, acc0[jj]);                                                     \
        acc1[jj] = FMA(a1, bv, acc1[jj]);                                                     \
      }                                                                                       \
    }                                                                                         \
    for (int jj = 0; jj < NT; jj++) {                                                         \
      STOREM(ci + (size_t)(j0 + jj) * m, m0, acc0[jj]);                                       \
      STOREM(ci + (size_t)(j0 + jj) * m + W, m1, acc1[jj]);                                   \
    }                                                                                         \
  }

#define COLNN_X86_KERNEL(NAME, T, VEC, W, NR, ZERO, SET1, FMA, LOADM, STOREM, MASKT, MASKOF)   \
  static void NAME(int m, int n, int k, const T *restrict a, const T *restrict b,             \
                   T *restrict c)                                                             \
  {                                                                                           \
    for (int i0 = 0; i0 < m; i0 += 2 * W) {                                                   \
      const int mr = m - i0;                                                                  \
      const MASKT m0 = MASKOF(mr), m1 = MASKOF(mr - W);                                       \
      const T *ai = a + i0;                                                                   \
      T *ci = c + i0;                                                                         \
      int j0 = 0;                                                                             \
      for (; j0 + NR <= n; j0 += NR)                                                          \
        COLNN_X86_TILE(NR, T, VEC, W, ZERO, SET1, FMA, LOADM, STOREM)                         \
      for (; j0 + 4 <= n; j0 += 4)                                                            \
        COLNN_X86_TILE(4, T, VEC, W, ZERO, SET1, FMA, LOADM, STOREM)                          \
      for (; j0 + 2 <= n; j0 += 2)                                                            \
        COLNN_X86_TILE(2, T, VEC, W, ZERO, SET1, FMA, LOADM, STOREM)                          \
      for (; j0 < n; j0++)                                                                    \
        COLNN_X86_TILE(1, T, VEC, W, ZERO, SET1, FMA, LOADM, STOREM)                          \
    }                                                                                         \
  }

/* AVX-512: 2 x 8 = 16 of the 32 zmm registers hold accumulators */
#define S512_MASK(r) ((__mmask16)((r) >= 16 ? 0xFFFF : (r) <= 0 ? 0 : (1u << (r)) - 1))
#define D512_MASK(r) ((__mmask8)((r) >= 8 ? 0xFF : (r) <= 0 ? 0 : (1u << (r)) - 1))
#define S512_LOAD(p, mk) _mm512_maskz_loadu_ps(mk, p)
#define D512_LOAD(p, mk) _mm512_maskz_loadu_pd(mk, p)
#define S512_STORE(p, mk, v) _mm512_mask_storeu_ps(p, mk, v)
#define D512_STORE(p, mk, v) _mm512_mask_storeu_pd(p, mk, v)
__attribute__((target("avx512f")))
COLNN_X86_KERNEL(gemm_s_avx512, float, __m512, 16, 8, _mm512_setzero_ps, _mm512_set1_ps,
                 _mm512_fmadd_ps, S512_LOAD, S512_STORE, __mmask16, S512_MASK)
__attribute__((target("avx512f")))
COLNN_X86_KERNEL(gemm_d_avx512, double, __m512d, 8, 8, _mm512_setzero_pd, _mm512_set1_pd,
                 _mm512_fmadd_pd, D512_LOAD, D512_STORE, __mmask8, D512_MASK)

/* AVX2 + FMA: 2 x 6 = 12 of the 16 ymm registers hold accumulators; masks are lane vectors */
static inline __attribute__((target("avx2"))) __m256i lanes_s(int r)
{
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), idx);
}
static inline __attribute__((target("avx2"))) __m256i lanes_d(int r)
{
  const __m256i idx = _mm256_setr_epi64x(0, 1, 2, 3);
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(r), idx);
}
#define S256_LOAD(p, mk) _mm256_maskload_ps(p, mk)
#define D256_LOAD(p, mk) _mm256_maskload_pd(p, mk)
#define S256_STORE(p, mk, v) _mm256_maskstore_ps(p, mk, v)
#define D256_STORE(p, mk, v) _mm256_maskstore_pd(p, mk, v)
__attribute__((target("avx2,fma")))
COLNN_X86_KERNEL(gemm_s_avx2, float, __m256, 8, 6, _mm256_setzero_ps, _mm256_set1_ps,
                 _mm256_fmadd_ps, S256_LOAD, S256_STORE, __m256i, lanes_s)
__attribute__((target("avx2,fma")))
COLNN_X86_KERNEL(gemm_d_avx2, double, __m256d, 4, 6, _mm256_setzero_pd, _mm256_set1_pd,
                 _mm256_fmadd_pd, D256_LOAD, D256_STORE, __m256i, lanes_d)
#endif

/* Chosen at the first call; first callers racing store the same pointers. */
static _Atomic gemm_s_fn chosen_s;
static _Atomic gemm_d_fn chosen_d;

/* COLNN_INVARIANT_KERNEL=avx2|generic caps the instruction set (tests compare the bits of every
 * kernel a machine can run; colnn_batch_invariant_kernel names the one in use). */
static void choose(void)
{
  gemm_s_fn s = gemm_s_generic;
  gemm_d_fn d = gemm_d_generic;
#ifdef COLNN_X86_DISPATCH
  const char *cap = getenv("COLNN_INVARIANT_KERNEL");
  const int allow512 = !cap || strcmp(cap, "avx512") == 0;
  const int allow2 = allow512 || strcmp(cap, "avx2") == 0;
  __builtin_cpu_init();
  if (allow512 && __builtin_cpu_supports("avx512f")) {
    s = gemm_s_avx512;
    d = gemm_d_avx512;
  } else if (allow2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    s = gemm_s_avx2;
    d = gemm_d_avx2;
  }
#endif
  chosen_d = d;
  chosen_s = s;
}

/* c(m, n) = a(m, k) b(k, n), column-major with leading dimensions m, k, m. */
void colnn_gemm_invariant_s(int m, int n, int k, const float *a, const float *b, float *c)
{
  if (!chosen_s) choose();
  chosen_s(m, n, k, a, b, c);
}

void colnn_gemm_invariant_d(int m, int n, int k, const double *a, const double *b, double *c)
{
  if (!chosen_d) choose();
  chosen_d(m, n, k, a, b, c);
}

/* Which kernel runs here (for benchmarks and reports). */
const char *colnn_gemm_invariant_isa(void)
{
  if (!chosen_s) choose();
#ifdef COLNN_X86_DISPATCH
  if (chosen_s == gemm_s_avx512) return "avx512";
  if (chosen_s == gemm_s_avx2) return "avx2";
#endif
  return "generic";
}
