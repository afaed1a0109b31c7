/* phikit's own prefill GEMM on AVX512-BF16: y [M, N] = x [M, K] @ W^T (+ bias), W given as
     PHK_TILES_BF16  bf16 [N, K] row-major
     PHK_TILES_INT4  phikit's int4 layout, scales_and_zeros bf16 [K/GS, N, 2] (kernels.c), w = (q - 8) * scale + zero
     PHK_TILES_INT8  phikit's int8 layout (4-row blocks of 64-column chunks) with scales bf16 [N], w = q * scale
   each weight value the bf16 its format's dequantized rows hold (the same bits as phk_dequant_int4_bf16 /
   phk_dequant_int8_bf16), multiplied exactly with vdpbf16ps, accumulated in fp32, the bias added in fp32 and the sum
   rounded to bf16 once: a quantized weight gives bit for bit the output of PHK_TILES_BF16 on its dequantized rows.

   Why: a quantized prefill through oneDNN first writes each slice of dequantized rows to memory and then lets oneDNN
   copy that slice into its own blocked layout, and the slices' shorter GEMMs run below the whole weight's. Here the
   dequantization is the packing: each panel of 64 weight rows x KC columns is turned into bf16 and laid out for the
   dot products in one pass, and a quantized weight is read from memory at a quarter (int4) or a half (int8) of bf16's
   bytes. Zen 5 host (941 GFLOP/s bf16 dot-product peak, 2 threads, M = 512): 8192 x 2048 int4 768 GFLOP/s against
   661 for oneDNN on dequantized slices (benchmarks/RESULTS.md).

   Blocking (BLIS's, with the weight in the vector lanes as oneDNN's brgemm does): a thread takes a contiguous range of
   64-row panels; per panel and KC block it packs W into P [KC/2][64][2] (each 32-bit pair of columns k, k + 1 of 16
   rows in one vector: a 16 x 16 transpose of 32-bit lanes), then runs the micro-kernel over x's rows 6 at a time:
   24 fp32 accumulators (6 rows x 64 outputs), per column pair 4 vector loads of P, 6 broadcasts of x's pair and 24
   vdpbf16ps. Partial sums between KC blocks live in a per-thread fp32 buffer C [M][64]; after the last block they
   get the bias and are rounded. Needs N % 64 == 0 and K % 32 == 0 (the caller checks; phk_gemm_tiles_ok). */
#include "phk.h"
#include <omp.h>

#define TILE_N 64  /* weight rows per panel: 4 vectors of 16 fp32 outputs */
#define TILE_M 6   /* rows of x per micro-kernel call */
#define TILE_K 256 /* columns per packed panel: P is 32 KB, in a 48 KB L1 (KC 128 and 512 measured slower) */

int phk_gemm_tiles_ok(int64_t N, int64_t K) { return N % TILE_N == 0 && K % 32 == 0 && N > 0 && K > 0; }

#if defined(__AVX512BF16__)
int phk_has_gemm_tiles(void) { return 1; }

/* r[i]: 16 rows of 16 32-bit lanes -> r[j] holds lane j of every row */
static inline __attribute__((always_inline)) void transpose16x16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {  /* 128-bit lanes: rows 4a .. 4a + 3 of lane L hold columns 4 L + b */
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

typedef struct {
    int kind;  /* enum phk_tiles_kind */
    const void *w;
    const uint16_t *sz;  /* int4: scales_and_zeros; int8: scales */
    int64_t N, K;
    int gl;  /* int4: log2 of the group size */
} weight_src;

/* rows n0 + 16 g .. + 16, columns k .. k + 31 of the weight -> r[i] (32 bf16 of row i); tab: the panel's int4
   tables, [64 rows][4 groups][32 words] (groups counted from the panel's first column k0) */
static inline __attribute__((always_inline)) void weight_rows(const weight_src *s, int64_t n0, int g, int64_t k0,
                                                              int64_t k, const uint16_t *tab, __m512i r[16]) {
    /* unrolled, so that r stays in registers and each row's address is a constant offset from its 16-row base
       (rolled, GCC kept r on the stack and divided n by 4 per row: hot in cache a unit took ~120 cycles) */
    const int64_t K = s->K, n = n0 + 16 * g;  /* n % 16 == 0 */
    if (s->kind == PHK_TILES_BF16) {
        const uint16_t *w = (const uint16_t *)s->w + n * K + k;
        #pragma GCC unroll 16
        for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512((const void *)(w + i * K));
    } else if (s->kind == PHK_TILES_INT4) {
        const int nib = (int)((k & 127) >> 5), grp = (int)((k >> s->gl) - (k0 >> s->gl));
        const uint8_t *w = (const uint8_t *)s->w + (n / 4) * 2 * K + (k & ~(int64_t)127) * 2;  /* int4_row_words */
        const __m512i mask = _mm512_set1_epi16(15);
        const uint16_t *t = tab + (16 * g * 4 + grp) * 32;
        #pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {  /* nibble `nib` of the chunk's 32 words: columns k .. k + 31 in order */
            const __m512i words = _mm512_loadu_si512((const void *)(w + (i / 4) * 2 * K + (i % 4) * 64));
            const __m512i q = _mm512_and_si512(_mm512_srli_epi16(words, 4 * nib), mask);
            r[i] = _mm512_permutexvar_epi16(q, _mm512_load_si512((const void *)(t + i * 4 * 32)));
        }
    } else {
        const int8_t *w = (const int8_t *)s->w + (n / 4) * 4 * K + (k >> 6) * 256 + (k & 63);
        #pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {  /* columns k .. k + 31: 32 bytes of the row's 64-column chunk */
            const int8_t *b = w + (i / 4) * 4 * K + (i % 4) * 64;
            const __m512 sc = _mm512_set1_ps(f32_of_bf16(s->sz[n + i]));
            r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(load_i8x16(b + 16), sc), _mm512_mul_ps(load_i8x16(b), sc));
        }
    }
}

/* the panel rows n0 .. n0 + 63, columns k0 .. k0 + kc -> P [kc/2][64][2] */
static void pack_panel(const weight_src *s, int64_t n0, int64_t k0, int kc, uint16_t *tab, uint16_t *P) {
    if (s->kind == PHK_TILES_INT4) {
        const int64_t g0 = k0 >> s->gl, g1 = (k0 + kc - 1) >> s->gl;
        for (int r = 0; r < TILE_N; r++)
            for (int64_t g = g0; g <= g1; g++)
                _mm512_store_si512((void *)(tab + (r * 4 + (g - g0)) * 32),
                                   int4_bf16_table(s->sz + (g * s->N + n0 + r) * 2));
    }
    for (int64_t k = k0; k < k0 + kc; k += 32)
        for (int g = 0; g < 4; g++) {
            __m512i r[16];
            weight_rows(s, n0, g, k0, k, tab, r);
            transpose16x16(r);  /* r[j]: columns k + 2j, k + 2j + 1 of the 16 rows */
            for (int j = 0; j < 16; j++)
                _mm512_store_si512((void *)(P + (((k - k0) / 2 + j) * TILE_N + 16 * g) * 2), r[j]);
        }
}

/* C [mr][64] (+)= x [mr rows, stride K][kc] @ P; `first`: start from zero */
static inline __attribute__((always_inline)) void micro_kernel(const uint16_t *x, int64_t K, int kc,
                                                               const uint16_t *P, float *C, const int mr,
                                                               int first) {
    __m512 acc[TILE_M][4];
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(C + r * TILE_N + 16 * j);
    for (int p = 0; p < kc / 2; p++) {
        const __m512bh w0 = (__m512bh)_mm512_load_si512((const void *)(P + p * 128));
        const __m512bh w1 = (__m512bh)_mm512_load_si512((const void *)(P + p * 128 + 32));
        const __m512bh w2 = (__m512bh)_mm512_load_si512((const void *)(P + p * 128 + 64));
        const __m512bh w3 = (__m512bh)_mm512_load_si512((const void *)(P + p * 128 + 96));
        for (int r = 0; r < mr; r++) {
            int32_t pair;
            memcpy(&pair, x + r * K + 2 * p, 4);
            const __m512bh b = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], w0, b);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], w1, b);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], w2, b);
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], w3, b);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < 4; j++) _mm512_store_ps(C + r * TILE_N + 16 * j, acc[r][j]);
}

phk_status_t phk_gemm_tiles(const uint16_t *x, int64_t kind, const void *w, const uint16_t *sz, int64_t GS,
                            const uint16_t *bias, uint16_t *y, int64_t M, int64_t N, int64_t K, int threads) {
    if (!phk_gemm_tiles_ok(N, K) || kind < PHK_TILES_BF16 || kind > PHK_TILES_INT8) return PHK_ERR_UNSUPPORTED;
    if (kind == PHK_TILES_INT4 && (K % 128 || (GS != 64 && GS != 128 && GS != 256))) return PHK_ERR_UNSUPPORTED;
    if (kind == PHK_TILES_INT8 && K % 64) return PHK_ERR_UNSUPPORTED;  /* the layouts' own constraints */
    const weight_src s = {(int)kind, w, sz, N, K, kind == PHK_TILES_INT4 ? __builtin_ctzll((unsigned long long)GS) : 0};
    const int64_t panels = N / TILE_N;
    if (threads > panels) threads = (int)panels;
    if (threads < 1) threads = 1;
    /* per thread: P (32 KB), the int4 tables (16 KB), C [M][64] fp32 */
    const size_t p_bytes = (size_t)TILE_K * TILE_N * 2, tab_bytes = (size_t)TILE_N * 4 * 32 * 2,
                 c_bytes = (size_t)M * TILE_N * 4, each = p_bytes + tab_bytes + c_bytes;
    char *scratch = (char *)phk_aligned_alloc(64, each * (size_t)threads);
    if (!scratch) return PHK_ERR_NOMEM;
    #pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        uint16_t *P = (uint16_t *)(scratch + each * (size_t)t), *tab = (uint16_t *)((char *)P + p_bytes);
        float *C = (float *)((char *)tab + tab_bytes);
        for (int64_t panel = panels * t / nt; panel < panels * (t + 1) / nt; panel++) {
            const int64_t n0 = panel * TILE_N;
            for (int64_t k0 = 0; k0 < K; k0 += TILE_K) {
                const int kc = K - k0 < TILE_K ? (int)(K - k0) : TILE_K;
                pack_panel(&s, n0, k0, kc, tab, P);
                for (int64_t m = 0; m < M; m += TILE_M) {
                    const uint16_t *xm = x + m * K + k0;
                    float *Cm = C + m * TILE_N;
                    switch (M - m < TILE_M ? (int)(M - m) : TILE_M) {  /* constant row counts: registers */
                        case 6: micro_kernel(xm, K, kc, P, Cm, 6, k0 == 0); break;
                        case 5: micro_kernel(xm, K, kc, P, Cm, 5, k0 == 0); break;
                        case 4: micro_kernel(xm, K, kc, P, Cm, 4, k0 == 0); break;
                        case 3: micro_kernel(xm, K, kc, P, Cm, 3, k0 == 0); break;
                        case 2: micro_kernel(xm, K, kc, P, Cm, 2, k0 == 0); break;
                        default: micro_kernel(xm, K, kc, P, Cm, 1, k0 == 0); break;
                    }
                }
            }
            for (int j = 0; j < 4; j++) {  /* + bias in fp32, rounded to bf16 once */
                const __m512 b = bias ? load_bf16x16(bias + n0 + 16 * j) : _mm512_setzero_ps();
                for (int64_t m = 0; m < M; m++) {
                    __m512 v = _mm512_load_ps(C + m * TILE_N + 16 * j);
                    if (bias) v = _mm512_add_ps(v, b);  /* none: a sum of -0 stays -0, as F.linear's */
                    _mm256_storeu_si256((__m256i *)(y + m * N + n0 + 16 * j), (__m256i)_mm512_cvtneps_pbh(v));
                }
            }
        }
    }
    free(scratch);
    return PHK_OK;
}
#else
int phk_has_gemm_tiles(void) { return 0; }
phk_status_t phk_gemm_tiles(const uint16_t *x, int64_t kind, const void *w, const uint16_t *sz, int64_t GS,
                            const uint16_t *bias, uint16_t *y, int64_t M, int64_t N, int64_t K, int threads) {
    return PHK_ERR_UNSUPPORTED;
}
#endif
