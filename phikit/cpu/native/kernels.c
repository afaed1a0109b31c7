/* phikit's CPU kernels for decoding: matrix-vector products y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for small M,
   and the attention of one new token over the KV cache (phk_attention_decode, below).

   At batch 1 a decode step streams every weight once; these loops read each weight row once for all M rows of x,
   multiply exactly and accumulate in fp32 (4 or 8 output rows at a time, prefetching ahead). Weights:
     bf16  W bf16 [N, K]                      (K % 16 == 0; bf16 dot-product instructions where the CPU has them)
     int8  W in phikit's blocked layout, int8 [N, K], scales bf16 [N] (N % 4 == 0, K % 64 == 0), w = q * scale
     int4  W in phikit's nibble layout, scales_and_zeros bf16 [K/GS, N, 2], w = (q - 8) * scale + zero (below;
           bf16 dot-product instructions, so AVX512-BF16 CPUs only)
   x, bias and y are bf16; each output is rounded to bf16 once, after the bias is added.
   Threads: OpenMP over output rows, as many as torch.get_num_threads() (passed in); the library links the libgomp
   torch has loaded, so both share one thread pool. Built by phikit/native_kernels.py with the host compiler
   (-O3 -march=native); without AVX-512 `phk_available` returns 0 and phikit keeps its PyTorch paths. */
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

#if defined(__AVX512F__)
#define ROWS 4
#ifndef BF16_AHEAD
#define BF16_AHEAD 2048 /* bytes prefetched ahead of each row's read position, into L2 (T1): +30% over L1 (T0) on a
                           Zen 4 host, and 2 KB 3-5% faster than 1 KB */
#endif
#ifndef INT4_AHEAD
#define INT4_AHEAD 8192 /* the int4 kernel reads one stream; into L2 this far ahead: 23-25 GB/s here, 17 with 1 KB into L1 */
#endif

int phk_available(void) { return 1; }

static inline __m512 load_i8x16(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

static float *x_to_f32(const uint16_t *x, int64_t n) {  /* NULL: no memory */
    float *xf = (float *)phk_aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    if (!xf) return NULL;
    for (int64_t i = 0; i < n; i++) xf[i] = f32_of_bf16(x[i]);
    return xf;
}

static inline void store_row(uint16_t *y, int64_t m, int64_t N, int64_t n, float v, const uint16_t *bias) {
    y[m * N + n] = bf16_of_f32(v + (bias ? f32_of_bf16(bias[n]) : 0.f));
}

/* ---- bf16 ---- */
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
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
phk_status_t phk_linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int threads) {
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
#else
/* Without AVX512-BF16: widen each bf16 to fp32 (a shift) and fmadd, 4 rows at a time. */
phk_status_t phk_linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int threads) {
    float *xf = x_to_f32(x, M * K);
    if (!xf) return PHK_ERR_NOMEM;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n0 = 0; n0 < N; n0 += ROWS) {
        int64_t rows = N - n0 < ROWS ? N - n0 : ROWS;
        for (int64_t m = 0; m < M; m++) {
            const float *xm = xf + m * K;
            __m512 acc[ROWS];
            for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
            if (rows == ROWS) {
                const uint16_t *w0 = w + n0 * K;
                for (int64_t k = 0; k < K; k += 16) {
                    __m512 xv = _mm512_loadu_ps(xm + k);
                    for (int r = 0; r < ROWS; r++) {
                        if (m == 0) _mm_prefetch((const char *)(w0 + r * K + k) + BF16_AHEAD, _MM_HINT_T1);
                        acc[r] = _mm512_fmadd_ps(load_bf16x16(w0 + r * K + k), xv, acc[r]);
                    }
                }
            } else {
                for (int r = 0; r < rows; r++)
                    for (int64_t k = 0; k < K; k += 16)
                        acc[r] = _mm512_fmadd_ps(load_bf16x16(w + (n0 + r) * K + k), _mm512_loadu_ps(xm + k), acc[r]);
            }
            for (int r = 0; r < rows; r++) store_row(y, m, N, n0 + r, _mm512_reduce_add_ps(acc[r]), bias);
        }
    }
    free(xf);
    return PHK_OK;
}
#endif

/* ---- int8, per output channel, in phikit's layout (quantize_math.pack_int8_native; N % 4 == 0, K % 64 == 0) ----
   Blocks of 4 rows interleaved 64 columns at a time, [N/4, K/64, 4, 64]: a thread streams one contiguous run of
   memory, prefetched INT8_AHEAD bytes ahead into L2. On the Zen 4 host, one weight from memory: 31 GB/s against 24
   for 8 row-major rows read side by side (read roofline 32, same run). */
#ifndef INT8_AHEAD
#define INT8_AHEAD 8192
#endif
/* Several rows of x (M > 1): each 64-column chunk of the 4-row block is widened to fp32 once, in registers, for all
   M rows; the M x 4 accumulators live in memory (L1). */
static void int8_block_rows(const float *xf, const int8_t *wn, int64_t M, int64_t K, __m512 *acc) {
    for (int64_t i = 0; i < M * 4; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 64) {
        __m512 wv[4][4];
        for (int r = 0; r < 4; r++) {
            const int8_t *p = wn + k * 4 + r * 64;
            _mm_prefetch((const char *)p + INT8_AHEAD, _MM_HINT_T1);
            for (int c = 0; c < 4; c++) wv[r][c] = load_i8x16(p + 16 * c);
        }
        for (int64_t m = 0; m < M; m++) {
            const float *xm = xf + m * K + k;
            __m512 x0 = _mm512_loadu_ps(xm), x1 = _mm512_loadu_ps(xm + 16);
            __m512 x2 = _mm512_loadu_ps(xm + 32), x3 = _mm512_loadu_ps(xm + 48);
            for (int r = 0; r < 4; r++) {
                __m512 a = acc[m * 4 + r];
                a = _mm512_fmadd_ps(wv[r][0], x0, a);
                a = _mm512_fmadd_ps(wv[r][1], x1, a);
                a = _mm512_fmadd_ps(wv[r][2], x2, a);
                acc[m * 4 + r] = _mm512_fmadd_ps(wv[r][3], x3, a);
            }
        }
    }
}

phk_status_t phk_linear_int8(const uint16_t *x, const int8_t *w, const uint16_t *scales, const uint16_t *bias,
                             uint16_t *y, int64_t M, int64_t N, int64_t K, int threads) {
    float *xf = x_to_f32(x, M * K);
    if (!xf) return PHK_ERR_NOMEM;
    #pragma omp parallel num_threads(threads)
    {
        /* a thread without memory for the M x 4 accumulators takes the rows one at a time (the same sums) */
        __m512 *many = M > 1 ? (__m512 *)phk_aligned_alloc(64, (size_t)(M * 4) * sizeof(__m512)) : NULL;
        #pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += 4) {
            const int8_t *wn = w + n0 * K;
            if (many) {
                int8_block_rows(xf, wn, M, K, many);
                for (int64_t m = 0; m < M; m++)
                    for (int r = 0; r < 4; r++)
                        store_row(y, m, N, n0 + r,
                                  _mm512_reduce_add_ps(many[m * 4 + r]) * f32_of_bf16(scales[n0 + r]), bias);
                continue;
            }
            for (int64_t m = 0; m < M; m++) {  /* M == 1 (or no memory for `many`) */
                const float *xm = xf + m * K;
                __m512 acc[4];
                for (int r = 0; r < 4; r++) acc[r] = _mm512_setzero_ps();
                for (int64_t k = 0; k < K; k += 64) {
                    __m512 x0 = _mm512_loadu_ps(xm + k), x1 = _mm512_loadu_ps(xm + k + 16);
                    __m512 x2 = _mm512_loadu_ps(xm + k + 32), x3 = _mm512_loadu_ps(xm + k + 48);
                    for (int r = 0; r < 4; r++) {
                        const int8_t *p = wn + k * 4 + r * 64;
                        _mm_prefetch((const char *)p + INT8_AHEAD, _MM_HINT_T1);
                        acc[r] = _mm512_fmadd_ps(load_i8x16(p), x0, acc[r]);
                        acc[r] = _mm512_fmadd_ps(load_i8x16(p + 16), x1, acc[r]);
                        acc[r] = _mm512_fmadd_ps(load_i8x16(p + 32), x2, acc[r]);
                        acc[r] = _mm512_fmadd_ps(load_i8x16(p + 48), x3, acc[r]);
                    }
                }
                for (int r = 0; r < 4; r++)
                    store_row(y, m, N, n0 + r, _mm512_reduce_add_ps(acc[r]) * f32_of_bf16(scales[n0 + r]), bias);
            }
        }
        free(many);
    }
    free(xf);
    return PHK_OK;
}

/* rows [r0, r1) of an int8 weight in phikit's layout -> bf16 out [r1 - r0, K], q * scale rounded to bf16 once (as
   torch's bf16 multiply of the two); a prefill multiplies them with oneDNN's bf16 GEMM. Needs AVX512-BF16. */
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
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
#else
void phk_dequant_int8_bf16(const int8_t *w, const uint16_t *scales, uint16_t *out, int64_t r0, int64_t r1, int64_t K,
                           int threads) {}
#endif

/* ---- attention of one new token over the cache (a decode step without padding) ---- */
/* out[b, h, :] = softmax(scale * q[b, h] . k[b, h / G, s]) over s < S, weighted sum of v[b, h / G, s]; G = H / KV.
   q [B, H, D] contiguous; k, v element strides (batch, head, position), last dim contiguous; D % 16 == 0.
   fp32 scores, softmax and accumulation; out bf16 [B, H, D] rounded once. */
phk_status_t phk_attention_decode(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                  int64_t B, int64_t H, int64_t KV, int64_t S, int64_t D,
                                  int64_t kb, int64_t kh, int64_t ks, int64_t vb, int64_t vh, int64_t vs, float scale,
                                  int threads) {
    int64_t G = H / KV;
    /* scores of S + 16 floats per thread, allocated here so that a failure returns before any work */
    float *scores = (float *)phk_malloc(sizeof(float) * (size_t)(S + 16) * (size_t)(threads > 0 ? threads : 1));
    if (!scores) return PHK_ERR_NOMEM;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        const uint16_t *kp = k + b * kb + (h / G) * kh, *vp = v + b * vb + (h / G) * vh;
        float *p = scores + (size_t)omp_get_thread_num() * (size_t)(S + 16);
        __m512 qv[16];  /* D <= 256 */
        for (int64_t d = 0; d < D; d += 16) qv[d / 16] = load_bf16x16(q + bh * D + d);
        float top = -INFINITY;
        for (int64_t s = 0; s < S; s++) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; d += 16) acc = _mm512_fmadd_ps(qv[d / 16], load_bf16x16(kp + s * ks + d), acc);
            p[s] = _mm512_reduce_add_ps(acc) * scale;
            top = p[s] > top ? p[s] : top;
        }
        __m512 total = _mm512_setzero_ps();
        int64_t s = 0;
        for (; s + 16 <= S; s += 16) {
            __m512 e = phk_exp16(_mm512_sub_ps(_mm512_loadu_ps(p + s), _mm512_set1_ps(top)));
            _mm512_storeu_ps(p + s, e);
            total = _mm512_add_ps(total, e);
        }
        if (s < S) {
            __mmask16 m = (__mmask16)((1u << (S - s)) - 1);
            __m512 e = phk_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + s), _mm512_set1_ps(top)));
            e = _mm512_maskz_mov_ps(m, e);
            _mm512_mask_storeu_ps(p + s, m, e);
            total = _mm512_add_ps(total, e);
        }
        float inv = 1.0f / _mm512_reduce_add_ps(total);
        __m512 acc[16];
        for (int64_t d = 0; d < D; d += 16) acc[d / 16] = _mm512_setzero_ps();
        for (int64_t t = 0; t < S; t++) {
            __m512 w = _mm512_set1_ps(p[t]);
            for (int64_t d = 0; d < D; d += 16) acc[d / 16] = _mm512_fmadd_ps(w, load_bf16x16(vp + t * vs + d), acc[d / 16]);
        }
        for (int64_t d = 0; d < D; d += 16) {
            float o[16];
            _mm512_storeu_ps(o, _mm512_mul_ps(acc[d / 16], _mm512_set1_ps(inv)));
            for (int j = 0; j < 16; j++) out[bh * D + d + j] = bf16_of_f32(o[j]);
        }
    }
    free(scores);
    return PHK_OK;
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
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
int phk_has_int4(void) { return 1; }

/* One 128-column chunk k of the 4-row block at wn: pa[r] (+)= (128 + q) . x over its four 32-column slots. HALF
   (group size 64): each half chunk is a group of its own, flushed into total[r] with its scale; else the chunk's
   group is flushed when it ends (`flush`). One dependency chain per row (4 rows interleave): a flush is one fmadd.
   The loop is bound by vector arithmetic on the 2-core Zen 4 host, so the fewer ops per 128 weights the better:
   4 shifts, 4 ternary-logic ops, 4 dot products, 1 fmadd per group and row, and a group's scale / zero bookkeeping
   once per 4-row block (INT4_GROUP). Doing that bookkeeping per row in scalar code cost 40% of the time in L2. */
#define INT4_NIBBLES(v, shift) ((__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(v, shift), low4, magic, 0xEA))
/* A group ending in this chunk: its 4 rows' (scale, zero) pairs in fp32 into sc[8] (read back as broadcasts from
   memory, no shuffles), and their zero terms (-136 scale, zero) * sum_x accumulated for all 4 rows in one fmadd. */
#define INT4_GROUP(sp, g, sc) do {                                                                                    \
    __m256i sw = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sp)));                                       \
    __m256 sv = _mm256_castsi256_ps(_mm256_slli_epi32(sw, 16));                                                        \
    _mm256_storeu_ps(sc, sv);                                                                                          \
    zacc = _mm256_fmadd_ps(sv, _mm256_mul_ps(_mm256_broadcast_ss(xsm + (g)), pattern), zacc);                          \
} while (0)
#define INT4_CHUNK(HALF) do {                                                                                        \
    __m512bh xv0 = (__m512bh)_mm512_loadu_si512(xm + k), xv1 = (__m512bh)_mm512_loadu_si512(xm + k + 32);            \
    __m512bh xv2 = (__m512bh)_mm512_loadu_si512(xm + k + 64), xv3 = (__m512bh)_mm512_loadu_si512(xm + k + 96);       \
    if (HALF) INT4_GROUP(s, k / GS, sc_a);                                                                             \
    if (HALF || flush) INT4_GROUP(s_end, (k + 127) / GS, sc_b);                                                        \
    for (int r = 0; r < ROWS; r++) {                                                                                   \
        const uint8_t *p = wn + k * 2 + r * 64;                                                                        \
        if (m == 0) _mm_prefetch((const char *)p + INT4_AHEAD, _MM_HINT_T1);                                             \
        __m512i v = _mm512_loadu_si512(p);                                                                             \
        __m512 a = _mm512_dpbf16_ps(pa[r], INT4_NIBBLES(v, 0), xv0);                                                   \
        a = _mm512_dpbf16_ps(a, INT4_NIBBLES(v, 4), xv1);                                                              \
        if (HALF) {                                                                                                    \
            total[r] = _mm512_fmadd_ps(a, _mm512_set1_ps(sc_a[2 * r]), total[r]);                                     \
            a = _mm512_setzero_ps();                                                                                   \
        }                                                                                                              \
        a = _mm512_dpbf16_ps(a, INT4_NIBBLES(v, 8), xv2);                                                              \
        a = _mm512_dpbf16_ps(a, INT4_NIBBLES(v, 12), xv3);                                                             \
        if (HALF || flush) {                                                                                           \
            total[r] = _mm512_fmadd_ps(a, _mm512_set1_ps(sc_b[2 * r]), total[r]);                                     \
            a = _mm512_setzero_ps();                                                                                   \
        }                                                                                                              \
        pa[r] = a;                                                                                                     \
    }                                                                                                                  \
} while (0)

phk_status_t phk_linear_int4(const uint16_t *x, const uint8_t *w, const uint16_t *sz, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int64_t GS, int threads) {
    int64_t NG = K / GS, KB = K / 2;
    float *xsum = (float *)phk_malloc(sizeof(float) * (size_t)(M * NG));  /* [M, NG] sum of x over each group */
    if (!xsum) return PHK_ERR_NOMEM;
    for (int64_t i = 0; i < M * NG; i++) {
        __m512 t = _mm512_setzero_ps();
        for (int64_t k = 0; k < GS; k += 16) t = _mm512_add_ps(t, load_bf16x16(x + i * GS + k));
        xsum[i] = _mm512_reduce_add_ps(t);
    }
    /* ternary logic 0xEA = (A & B) | C: A the shifted words, B = 0x000f, C = 0x4300 (bf16 128.0) */
    const __m512i low4 = _mm512_set1_epi16(0x000f), magic = _mm512_set1_epi16(0x4300);
    const __m256 pattern = _mm256_setr_ps(-136.f, 1.f, -136.f, 1.f, -136.f, 1.f, -136.f, 1.f);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n0 = 0; n0 < N; n0 += ROWS) {  /* ROWS == 4, the layout's block */
        const uint8_t *wn = w + n0 * KB;
        for (int64_t m = 0; m < M; m++) {
            const uint16_t *xm = x + m * K;
            const float *xsm = xsum + m * NG;
            float sc_a[8], sc_b[8];
            __m512 total[ROWS], pa[ROWS];
            __m256 zacc = _mm256_setzero_ps();  /* lanes 2r, 2r + 1: row r's -136 scale and zero terms */
            for (int r = 0; r < ROWS; r++) total[r] = pa[r] = _mm512_setzero_ps();
            for (int64_t k = 0; k < K; k += 128) {
                const uint16_t *s = sz + ((k / GS) * N + n0) * 2;  /* the chunk's first group */
                const uint16_t *s_end = sz + (((k + 127) / GS) * N + n0) * 2;  /* its last group */
                int flush = (k + 128) % GS == 0;
                if (GS == 64) INT4_CHUNK(1); else INT4_CHUNK(0);
            }
            float zero_terms[8];
            _mm256_storeu_ps(zero_terms, zacc);
            for (int r = 0; r < ROWS; r++)
                store_row(y, m, N, n0 + r, _mm512_reduce_add_ps(total[r]) + (zero_terms[2 * r] + zero_terms[2 * r + 1]),
                          bias);
        }
    }
    free(xsum);
    return PHK_OK;
}

/* rows [r0, r1) of an int4 weight in phikit's layout -> out [r1 - r0, K], (q - 8) * scale + zero rounded as torch
   does it in fp32 (a multiply, then an add): fp32 for MKL's fp32 GEMM, or rounded once more to bf16 (as torch's
   .to(bfloat16) of those fp32 values) for oneDNN's bf16 GEMM, in one pass instead of two. */
static void dequant_int4(const uint8_t *w, const uint16_t *sz, void *out, int bf16, int64_t r0, int64_t r1, int64_t N,
                         int64_t K, int64_t GS, int threads) {
    int64_t KB = K / 2;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = r0; n < r1; n++) {
        const uint16_t *row = (const uint16_t *)(w + (n / 4) * 4 * KB + (n % 4) * 64);  /* + chunk * 256 bytes */
        for (int64_t k = 0; k < K; k += 128) {
            for (int half = 0; half < 2; half++) {  /* words 16 * half .. + 16 of the chunk */
                __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + k + 16 * half)));
                for (int i = 0; i < 4; i++) {  /* nibble i: columns k + 32 i + 16 half .. + 16 */
                    int64_t col = k + 32 * i + 16 * half;
                    const uint16_t *e = sz + ((col / GS) * N + n) * 2;
                    __m512i q = _mm512_and_si512(_mm512_srli_epi32(words, 4 * i), _mm512_set1_epi32(15));
                    __m512 c = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(8)));
                    c = _mm512_add_ps(_mm512_mul_ps(c, _mm512_set1_ps(f32_of_bf16(e[0]))), _mm512_set1_ps(f32_of_bf16(e[1])));
                    if (bf16)
                        _mm256_storeu_si256((__m256i *)((uint16_t *)out + (n - r0) * K + col), (__m256i)_mm512_cvtneps_pbh(c));
                    else
                        _mm512_storeu_ps((float *)out + (n - r0) * K + col, c);
                }
            }
        }
    }
}
void phk_dequant_int4_f32(const uint8_t *w, const uint16_t *sz, float *out, int64_t r0, int64_t r1, int64_t N,
                          int64_t K, int64_t GS, int threads) {
    dequant_int4(w, sz, out, 0, r0, r1, N, K, GS, threads);
}
void phk_dequant_int4_bf16(const uint8_t *w, const uint16_t *sz, uint16_t *out, int64_t r0, int64_t r1, int64_t N,
                           int64_t K, int64_t GS, int threads) {
    dequant_int4(w, sz, out, 1, r0, r1, N, K, GS, threads);
}
#else
int phk_has_int4(void) { return 0; }
phk_status_t phk_linear_int4(const uint16_t *x, const uint8_t *w, const uint16_t *sz, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int64_t GS, int threads) { return PHK_ERR_UNSUPPORTED; }
void phk_dequant_int4_f32(const uint8_t *w, const uint16_t *sz, float *out, int64_t r0, int64_t r1, int64_t N,
                          int64_t K, int64_t GS, int threads) {}
void phk_dequant_int4_bf16(const uint8_t *w, const uint16_t *sz, uint16_t *out, int64_t r0, int64_t r1, int64_t N,
                           int64_t K, int64_t GS, int threads) {}
#endif

#else
int phk_available(void) { return 0; }
int phk_has_int4(void) { return 0; }
#endif
