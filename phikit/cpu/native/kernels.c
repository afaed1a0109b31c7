/* The ABI functions of phikit's native library (at every level), and the decode kernels that need AVX512-BF16's
   dot products: matrix-vector products y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for small M, with weights
     bf16  W bf16 [N, K] (K % 16 == 0)
     int4  W in phikit's nibble layout, scales_and_zeros bf16 [K/GS, N, 2], w = (q - 8) * scale + zero (below)
   and the bf16 forms of dequantized rows for oneDNN's bf16 GEMM. At batch 1 a decode step streams every weight
   once; these loops read each weight row once for all M rows of x, multiply exactly and accumulate in fp32 (4 or 8
   output rows at a time, prefetching ahead). x, bias and y are bf16; each output is rounded to bf16 once, after the
   bias is added. The same kernels for every other level, and the int8 and attention kernels for all, are written
   once in portable.c (on vec.h).
   Threads: OpenMP over output rows, as many as torch.get_num_threads() (passed in); the library links the libgomp
   torch has loaded, so both share one thread pool. Built by phikit/cpu/kernels.py for the CPU level in use. */
#include "phk.h"
#include <stddef.h>
#include <omp.h>

/* ---- the ABI (phk_abi.h), at every level: phikit/cpu/abi.py compares these with its mirror on load ---- */
int64_t phk_abi_version(void) { return PHK_ABI_VERSION; }

int64_t phk_struct_size(int64_t which) {
    switch (which) {
        case PHK_STRUCT_LIN: return (int64_t)sizeof(phk_lin);
        case PHK_STRUCT_LAYER: return (int64_t)sizeof(phk_layer);
        case PHK_STRUCT_MODEL: return (int64_t)sizeof(phk_model);
        default: return -1;
    }
}

/* each struct's fields in declaration order, as abi.py lists them */
static const int64_t lin_offsets[] = {
    offsetof(phk_lin, kind), offsetof(phk_lin, n), offsetof(phk_lin, k), offsetof(phk_lin, group),
    offsetof(phk_lin, w), offsetof(phk_lin, scales), offsetof(phk_lin, bias), offsetof(phk_lin, aux)};
static const int64_t layer_offsets[] = {
    offsetof(phk_layer, qkv), offsetof(phk_layer, o), offsetof(phk_layer, up), offsetof(phk_layer, down),
    offsetof(phk_layer, norm1_w), offsetof(phk_layer, norm1_b), offsetof(phk_layer, norm2_w),
    offsetof(phk_layer, norm2_b), offsetof(phk_layer, qnorm_w), offsetof(phk_layer, qnorm_b),
    offsetof(phk_layer, knorm_w), offsetof(phk_layer, knorm_b), offsetof(phk_layer, k_cache),
    offsetof(phk_layer, v_cache)};
static const int64_t model_offsets[] = {
    offsetof(phk_model, n_layers), offsetof(phk_model, hidden), offsetof(phk_model, heads),
    offsetof(phk_model, kv_heads), offsetof(phk_model, head_dim), offsetof(phk_model, inter),
    offsetof(phk_model, rmsnorm), offsetof(phk_model, parallel), offsetof(phk_model, act),
    offsetof(phk_model, fused_qkv), offsetof(phk_model, cache_head_stride), offsetof(phk_model, window),
    offsetof(phk_model, eps), offsetof(phk_model, qk_eps), offsetof(phk_model, scale)};
#define PHK_COUNT(a) ((int64_t)(sizeof(a) / sizeof((a)[0])))

int64_t phk_struct_offset(int64_t which, int64_t field) {
    const int64_t *t = which == PHK_STRUCT_LIN ? lin_offsets : which == PHK_STRUCT_LAYER ? layer_offsets
                       : which == PHK_STRUCT_MODEL ? model_offsets : NULL;
    int64_t n = which == PHK_STRUCT_LIN ? PHK_COUNT(lin_offsets) : which == PHK_STRUCT_LAYER ? PHK_COUNT(layer_offsets)
                : which == PHK_STRUCT_MODEL ? PHK_COUNT(model_offsets) : 0;
    return t && field >= 0 && field < n ? t[field] : -1;
}

static _Thread_local int64_t failed_bytes;  /* per thread: Python asks right after the call that failed */
int64_t phk_failed_alloc_bytes(void) { return failed_bytes; }
void *phk_malloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) failed_bytes = (int64_t)bytes;
    return p;
}
void *phk_aligned_alloc(size_t align, size_t bytes) {  /* bytes rounded up to a multiple of align (C11) */
    size_t rounded = (bytes + align - 1) / align * align;
    void *p = aligned_alloc(align, rounded ? rounded : align);
    if (!p) failed_bytes = (int64_t)rounded;
    return p;
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
/* What only AVX512-BF16 has: vdpbf16ps, 32 bf16 products per instruction. Every other kernel, and these ones at
   the levels without it, are written once in portable.c. */
#include <immintrin.h>
int phk_has_bf16_dot(void) { return 1; }
#define ROWS 4
#ifndef BF16_AHEAD
#define BF16_AHEAD 2048 /* bytes prefetched ahead of each row's read position, into L2 (T1): +30% over L1 (T0) on a
                           Zen 4 host, and 2 KB 3-5% faster than 1 KB */
#endif
#ifndef INT4_AHEAD
#define INT4_AHEAD 8192 /* the int4 kernel reads one stream; into L2 this far ahead: 23-25 GB/s here, 17 with 1 KB into L1 */
#endif

/* ---- bf16 ---- */
/* vdpbf16ps: 32 bf16 products per instruction, each exact in fp32 and accumulated in fp32 (pairs added in turn), so
   only the summation order differs from the fp32 loop below; no conversions, so the loop keeps up with memory.
   8 rows at a time, one cache line of each per step: 47 GB/s from memory on the Zen 4 host against 40 for the
   fp32 loop with 4 rows (read-only roofline 51, same run). The 8 rows of a block are contiguous and a thread's next
   block follows them, so near a row's end each row prefetches its counterpart in the next block: rows of 2048-3072
   columns (4-6 KB, a block's first 2 KB otherwise unprefetched) read 3-6% faster (median of 7 alternating passes). */
#define ROWS16 8
#define BF16_DOT(R) do {                                                                                             \
    for (; k + 32 <= K; k += 32) {                                                                                    \
        __m512bh xv = (__m512bh)_mm512_loadu_si512(xm + k);                                                          \
        int64_t ahead = k + BF16_AHEAD / 2;  /* past a row's end: the same row of the next block, not the next row */ \
        const uint16_t *pw = ahead < K ? w0 + ahead : w0 + ahead + (ROWS16 - 1) * K;                                  \
        for (int r = 0; r < (R); r++) {                                                                               \
            if (m == 0) _mm_prefetch((const char *)(pw + r * K), _MM_HINT_T1);                                        \
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(w0 + r * K + k), xv);                     \
        }                                                                                                             \
    }                                                                                                                 \
    if (k < K) {  /* K % 32 == 16: the last 16 columns, the upper half zeroed */                                      \
        __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(0xffff, xm + k);                                            \
        for (int r = 0; r < (R); r++)                                                                                 \
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_maskz_loadu_epi16(0xffff, w0 + r * K + k), xv);       \
    }                                                                                                                 \
} while (0)
/* One row of x (a batch-1 decode step): each weight row in turn, so that a thread reads its rows as one sequential
   stream rather than 8 streams 2K bytes apart; the same sum in the same order (one accumulator, k ascending) as the
   8-row form, so the same bits. Zen 5 host (2 threads, 16 distinct weights, against a plain read of the same bytes in
   the same run): 8192 x 2048 40.3 GB/s against 34.6 with 8 rows (read 40.9), 8192 x 3072 47.5 against 42.3 (read
   46.2), 2048 x 8192 40.1 against 38.8 (read 42.8); prefetching 1-4 KB ahead read the same. */
static void bf16_one_row(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int64_t N,
                         int64_t K, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *wr = w + n * K;
        __m512 acc = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) {
            _mm_prefetch((const char *)(wr + k) + BF16_AHEAD, _MM_HINT_T1);  /* past the row's end: the next row's */
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(wr + k), (__m512bh)_mm512_loadu_si512(x + k));
        }
        if (k < K)  /* K % 32 == 16 */
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(0xffff, wr + k),
                                   (__m512bh)_mm512_maskz_loadu_epi16(0xffff, x + k));
        store_row(y, 0, N, n, _mm512_reduce_add_ps(acc), bias);
    }
}

phk_status_t phk_linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int threads) {
    if (M == 1) {
        bf16_one_row(x, w, bias, y, N, K, threads);
        return PHK_OK;
    }
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n0 = 0; n0 < N; n0 += ROWS16) {
        int64_t rows = N - n0 < ROWS16 ? N - n0 : ROWS16;
        const uint16_t *w0 = w + n0 * K;
        for (int64_t m = 0; m < M; m++) {
            const uint16_t *xm = x + m * K;
            __m512 acc[ROWS16];
            for (int r = 0; r < ROWS16; r++) acc[r] = _mm512_setzero_ps();
            int64_t k = 0;
            if (rows == ROWS16) BF16_DOT(ROWS16); else BF16_DOT(rows);
            for (int r = 0; r < rows; r++) store_row(y, m, N, n0 + r, _mm512_reduce_add_ps(acc[r]), bias);
        }
    }
    return PHK_OK;
}

/* rows [r0, r1) of an int8 weight in phikit's layout -> bf16 out [r1 - r0, K], q * scale rounded to bf16 once (as
   torch's bf16 multiply of the two); a prefill multiplies them with oneDNN's bf16 GEMM. */
void phk_dequant_int8_bf16(const int8_t *w, const uint16_t *scales, uint16_t *out, int64_t r0, int64_t r1, int64_t K,
                           int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = r0; n < r1; n++) {
        const int8_t *row = w + (n / 4) * 4 * K + (n % 4) * 64;  /* + chunk * 256 bytes */
        __m512 s = _mm512_set1_ps(f32_of_bf16(scales[n]));
        uint16_t *o = out + (n - r0) * K;
        for (int64_t k = 0; k < K; k += 64)
            for (int c = 0; c < 4; c++)
                _mm256_storeu_si256((__m256i *)(o + k + 16 * c),
                                    (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(load_i8x16(row + k * 4 + 16 * c), s)));
    }
}

/* ---- int4, asymmetric per group of GS columns: w = (q - 8) * scale + zero (GS in 64, 128, 256; K % 128 == 0) ----
   phikit's layout, qweight uint8 [N, K/2] (N % 4 == 0): each 128-column chunk of a row is 32 little-endian 16-bit
   words, word j holding columns j, 32 + j, 64 + j, 96 + j in its nibbles 0..3; rows go in blocks of 4, chunk by
   chunk ([N/4, K/128, 4 rows, 64 bytes]), so a thread streams one contiguous run of memory. A shift and one ternary-logic op turn nibble i of 32
   words into 32 bf16 values 128 + q (bits 0x4300 | q: exact, as bf16 has 7 mantissa bits) in column order, and
   vdpbf16ps multiplies them by the bf16 activations exactly, accumulating in fp32: 12 simple instructions per 128
   weights and no lane-crossing shuffles. Per group: scale * sum (128 + q) x + (zero - 136 * scale) * sum x, the sums
   of x per group taken once per call. fp32 keeps ~17 of its 24 bits after the 136x offset cancels, far below the
   bf16 rounding of the output. scales_and_zeros bf16 [K/GS, N, 2] (the tinygemm layout). Needs AVX512-BF16. */

/* `mr` rows of x (1, 2 or 4: m .. m + mr - 1) against the 4-row block at wn, written to y (+ bias). Per 128-column
   chunk and weight row, a shift and one ternary-logic op turn each nibble of 32 words into 32 bf16 values 128 + q
   once for the mr rows of x (they were 8 of the 13 vector ops per 128 weights and row when each row of x did them
   again), then vdpbf16ps multiplies them by each row's activations. Per row of x the arithmetic is the one it gets
   alone, in the same order, so its output does not depend on the rows beside it (bit for bit the one-row kernel
   before this form). In one process against that kernel (Zen 4 host, 2 threads, 8192 x 2048 weights): 1 row
   0.94-1.02x, 2-64 rows 1.05-1.21x; phi-1.5 int4 engine decode steps 1.09x at 4 and 16 rows, 1.00x at 1. GS (64:
   each half chunk is a group, flushed into total with its scale; else a group is flushed when it ends) and mr are
   constants in each instance, so the accumulators can be registers (4 weight rows x mr rows of x; pa only where
   GS = 256 carries a group across two chunks; at mr = 4 some spill). A group's scale / zero bookkeeping is done
   once per 4-row block and row of x (INT4_GROUP): per weight row in scalar code it cost 40% of the time in L2. */
#define INT4_NIBBLES(v, shift) ((__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(v, shift), low4, magic, 0xEA))
/* A group ending in this chunk: its 4 rows' (scale, zero) pairs in fp32 into sc[8] (read back as broadcasts from
   memory, no shuffles), and their zero terms (-136 scale, zero) * sum_x accumulated for all 4 rows in one fmadd,
   for each row of x. */
#define INT4_GROUP(sp, g, sc) do {                                                                                    \
    __m256i sw = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sp)));                                       \
    __m256 sv = _mm256_castsi256_ps(_mm256_slli_epi32(sw, 16));                                                        \
    _mm256_storeu_ps(sc, sv);                                                                                          \
    for (int i = 0; i < mr; i++)                                                                                       \
        zacc[i] = _mm256_fmadd_ps(sv, _mm256_mul_ps(_mm256_broadcast_ss(xsum + (m + i) * NG + (g)), pattern),     \
                                  zacc[i]);                                                                            \
} while (0)
static inline __attribute__((always_inline)) void int4_block(
        const uint8_t *wn, const uint16_t *sz, const uint16_t *x, const float *xsum, const uint16_t *bias,
        uint16_t *y, int64_t m, int64_t N, int64_t n0, int64_t K, int64_t NG, int gl, const int64_t GS,
        const int mr) {
    const int half = GS == 64;
    /* ternary logic 0xEA = (A & B) | C: A the shifted words, B = 0x000f, C = 0x4300 (bf16 128.0) */
    const __m512i low4 = _mm512_set1_epi16(0x000f), magic = _mm512_set1_epi16(0x4300);
    const __m256 pattern = _mm256_setr_ps(-136.f, 1.f, -136.f, 1.f, -136.f, 1.f, -136.f, 1.f);
    float sc_a[8], sc_b[8];
    __m512 total[ROWS][4], pa[ROWS][4];
    __m256 zacc[4];  /* per row of x, lanes 2r, 2r + 1: weight row r's -136 scale and zero terms */
    for (int i = 0; i < mr; i++) {
        zacc[i] = _mm256_setzero_ps();
        for (int r = 0; r < ROWS; r++) total[r][i] = pa[r][i] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; k += 128) {
        const uint16_t *s = sz + ((k >> gl) * N + n0) * 2;  /* the chunk's first group */
        const uint16_t *s_end = sz + (((k + 127) >> gl) * N + n0) * 2;  /* its last group */
        const int flush = GS == 128 || (GS == 256 && (k & 128));  /* the chunk ends a group (k % 128 == 0) */
        if (half) INT4_GROUP(s, k >> gl, sc_a);
        if (half || flush) INT4_GROUP(s_end, (k + 127) >> gl, sc_b);
        /* row i's activations for this chunk: loaded once into registers for mr <= 2, read from L1 by each
           vdpbf16ps for mr = 4 (held in registers, 16 of them, they spill; as memory operands 1.07x faster) */
        __m512bh xv[2][4];
        for (int i = 0; i < (mr <= 2 ? mr : 0); i++)
            for (int j = 0; j < 4; j++) xv[i][j] = (__m512bh)_mm512_loadu_si512(x + (m + i) * K + k + 32 * j);
#define XV(i, j) (mr <= 2 ? xv[(i) & 1][j] : (__m512bh)_mm512_loadu_si512(x + (m + (i)) * K + k + 32 * (j)))
#pragma GCC unroll 4
        for (int r = 0; r < ROWS; r++) {
            const uint8_t *p = wn + k * 2 + r * 64;
            if (m == 0) _mm_prefetch((const char *)p + INT4_AHEAD, _MM_HINT_T1);
            __m512i v = _mm512_loadu_si512(p);
            __m512bh q0 = INT4_NIBBLES(v, 0), q1 = INT4_NIBBLES(v, 4);
            __m512bh q2 = INT4_NIBBLES(v, 8), q3 = INT4_NIBBLES(v, 12);
#pragma GCC unroll 4
            for (int i = 0; i < mr; i++) {
                __m512 a = _mm512_dpbf16_ps(pa[r][i], q0, XV(i, 0));
                a = _mm512_dpbf16_ps(a, q1, XV(i, 1));
                if (half) {
                    total[r][i] = _mm512_fmadd_ps(a, _mm512_set1_ps(sc_a[2 * r]), total[r][i]);
                    a = _mm512_setzero_ps();
                }
                a = _mm512_dpbf16_ps(a, q2, XV(i, 2));
                a = _mm512_dpbf16_ps(a, q3, XV(i, 3));
                if (half || flush) {
                    total[r][i] = _mm512_fmadd_ps(a, _mm512_set1_ps(sc_b[2 * r]), total[r][i]);
                    a = _mm512_setzero_ps();
                }
                pa[r][i] = a;
            }
        }
#undef XV
    }
    for (int i = 0; i < mr; i++) {
        float zero_terms[8];
        _mm256_storeu_ps(zero_terms, zacc[i]);
        for (int r = 0; r < ROWS; r++)
            store_row(y, m + i, N, n0 + r,
                      _mm512_reduce_add_ps(total[r][i]) + (zero_terms[2 * r] + zero_terms[2 * r + 1]), bias);
    }
}
#undef INT4_GROUP

phk_status_t phk_linear_int4(const uint16_t *x, const uint8_t *w, const uint16_t *sz, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int64_t GS, int threads) {
    /* GS is a power of two (64, 128, 256): group indices by shifts. The three 64-bit divisions by the runtime GS
       per 128-column chunk and 4-row block they replace cost 3-6% of the kernel's time (A/B, AMX Xeon host). */
    const int gl = __builtin_ctzll((unsigned long long)GS);
    int64_t NG = K >> gl, KB = K / 2;
    float *xsum = (float *)phk_malloc(sizeof(float) * (size_t)(M * NG));  /* [M, NG] sum of x over each group */
    if (!xsum) return PHK_ERR_NOMEM;
    for (int64_t i = 0; i < M * NG; i++) {
        __m512 t = _mm512_setzero_ps();
        for (int64_t k = 0; k < GS; k += 16) t = _mm512_add_ps(t, load_bf16x16(x + i * GS + k));
        xsum[i] = _mm512_reduce_add_ps(t);
    }
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n0 = 0; n0 < N; n0 += ROWS) {  /* ROWS == 4, the layout's block */
        const uint8_t *wn = w + n0 * KB;
        for (int64_t m = 0; m < M;) {  /* x's rows four at a time, then two, then one */
            const int mr = M - m >= 4 ? 4 : M - m >= 2 ? 2 : 1;
#define INT4_BLOCK(G, MR) int4_block(wn, sz, x, xsum, bias, y, m, N, n0, K, NG, gl, G, MR)
#define INT4_ROWS(G) do {                                                                                     \
    if (mr == 4) INT4_BLOCK(G, 4); else if (mr == 2) INT4_BLOCK(G, 2); else INT4_BLOCK(G, 1);                     \
} while (0)
            if (GS == 64) INT4_ROWS(64);
            else if (GS == 128) INT4_ROWS(128);
            else INT4_ROWS(256);
#undef INT4_ROWS
#undef INT4_BLOCK
            m += mr;
        }
    }
    free(xsum);
    return PHK_OK;
}

/* rows [r0, r1) of an int4 weight in phikit's layout -> bf16 out [r1 - r0, K]: (q - 8) * scale + zero computed as
   torch does it in fp32 (a multiply, then an add), rounded to bf16 as torch's .to(bfloat16) of those values, for
   oneDNN's bf16 GEMM (int4.c has the fp32 form, for MKL's fp32 GEMM). A group has only 16 values: they are computed
   once per group and 128-column chunk (a 16-entry bf16 table), and nibble i of the chunk's 32 words, which holds
   columns 32 i .. 32 i + 31 in order, is 32 indices into it (vpermw): 4 instructions per 32 weights where widening
   each weight took 8 per 16, and the same bits. */
void phk_dequant_int4_bf16(const uint8_t *w, const uint16_t *sz, uint16_t *out, int64_t r0, int64_t r1, int64_t N,
                           int64_t K, int64_t GS, int threads) {
    const int gl = __builtin_ctzll((unsigned long long)GS);  /* GS a power of two: groups by shifts */
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = r0; n < r1; n++) {
        const uint16_t *row = int4_row_words(w, n, K);
        uint16_t *o = out + (n - r0) * K;
        for (int64_t k = 0; k < K; k += 128) {
            __m512i words = _mm512_loadu_si512((const void *)(row + k));  /* the chunk's 32 words */
            __m512i table = int4_bf16_table(sz + ((k >> gl) * N + n) * 2);
            for (int i = 0; i < 4; i++) {  /* nibble i: columns k + 32 i .. + 32, in one group (GS >= 64) */
                if (i == 2 && GS == 64) table = int4_bf16_table(sz + (((k + 64) >> gl) * N + n) * 2);
                __m512i q = _mm512_and_si512(_mm512_srli_epi16(words, 4 * i), _mm512_set1_epi16(15));
                _mm512_storeu_si512((void *)(o + k + 32 * i), _mm512_permutexvar_epi16(q, table));
            }
        }
    }
}
#else
int phk_has_bf16_dot(void) { return 0; }
void phk_dequant_int8_bf16(const int8_t *w, const uint16_t *scales, uint16_t *out, int64_t r0, int64_t r1, int64_t K,
                           int threads) {}
void phk_dequant_int4_bf16(const uint8_t *w, const uint16_t *sz, uint16_t *out, int64_t r0, int64_t r1, int64_t N,
                           int64_t K, int64_t GS, int threads) {}
#endif
