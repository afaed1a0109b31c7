/* phikit's CPU kernels for decoding: matrix-vector products y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for small M,
   and the attention of one new token over the KV cache (phk_attention_decode, below).

   At batch 1 a decode step streams every weight once; these loops read each weight row once for all M rows of x,
   convert to fp32 in registers and accumulate in fp32 (4 or 8 output rows at a time, prefetching ahead). Weights:
     bf16  W bf16 [N, K]                      (K % 16 == 0)
     int8  W int8 [N, K], scales bf16 [N]     (K % 64 == 0), w = q * scale
   (int4 stays on aten's _weight_int4pack_mm_for_cpu, which was faster than a loop like these on this host.)
   x, bias and y are bf16; each output is rounded to bf16 once, after the bias is added.
   Threads: OpenMP over output rows, as many as torch.get_num_threads() (passed in); the library links the libgomp
   torch has loaded, so both share one thread pool. Built by phikit/native_kernels.py with the host compiler
   (-O3 -march=native); without AVX-512 `phk_available` returns 0 and phikit keeps its PyTorch paths. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static inline float f32_of_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t bf16_of_f32(float f) {  /* round to nearest even, NaN stays NaN (as torch) */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#if defined(__AVX512F__)
#include <immintrin.h>
#define ROWS 4
#define AHEAD 1024 /* bytes prefetched ahead of each row's read position */

int phk_available(void) { return 1; }

static inline __m512 load_bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline __m512 load_i8x16(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

static float *x_to_f32(const uint16_t *x, int64_t n) {
    float *xf = (float *)aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    for (int64_t i = 0; i < n; i++) xf[i] = f32_of_bf16(x[i]);
    return xf;
}

static inline void store_row(uint16_t *y, int64_t m, int64_t N, int64_t n, float v, const uint16_t *bias) {
    y[m * N + n] = bf16_of_f32(v + (bias ? f32_of_bf16(bias[n]) : 0.f));
}

/* ---- bf16 ---- */
void phk_linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                     int64_t M, int64_t N, int64_t K, int threads) {
    float *xf = x_to_f32(x, M * K);
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
                        if (m == 0) _mm_prefetch((const char *)(w0 + r * K + k) + AHEAD, _MM_HINT_T0);
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
}

/* ---- int8, per output channel: 8 rows at a time, one cache line of each row per step (K % 64 == 0) ---- */
#define ROWS8 8
void phk_linear_int8(const uint16_t *x, const int8_t *w, const uint16_t *scales, const uint16_t *bias, uint16_t *y,
                     int64_t M, int64_t N, int64_t K, int threads) {
    float *xf = x_to_f32(x, M * K);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n0 = 0; n0 < N; n0 += ROWS8) {
        int64_t rows = N - n0 < ROWS8 ? N - n0 : ROWS8;
        for (int64_t m = 0; m < M; m++) {
            const float *xm = xf + m * K;
            __m512 acc[ROWS8];
            for (int r = 0; r < ROWS8; r++) acc[r] = _mm512_setzero_ps();
            if (rows == ROWS8) {
                const int8_t *w0 = w + n0 * K;
                for (int64_t k = 0; k < K; k += 64) {
                    __m512 x0 = _mm512_loadu_ps(xm + k), x1 = _mm512_loadu_ps(xm + k + 16);
                    __m512 x2 = _mm512_loadu_ps(xm + k + 32), x3 = _mm512_loadu_ps(xm + k + 48);
                    for (int r = 0; r < ROWS8; r++) {
                        const int8_t *p = w0 + r * K + k;
                        if (m == 0) _mm_prefetch((const char *)p + AHEAD, _MM_HINT_T0);
                        acc[r] = _mm512_fmadd_ps(load_i8x16(p), x0, acc[r]);
                        acc[r] = _mm512_fmadd_ps(load_i8x16(p + 16), x1, acc[r]);
                        acc[r] = _mm512_fmadd_ps(load_i8x16(p + 32), x2, acc[r]);
                        acc[r] = _mm512_fmadd_ps(load_i8x16(p + 48), x3, acc[r]);
                    }
                }
            } else {
                for (int r = 0; r < rows; r++)
                    for (int64_t k = 0; k < K; k += 16)
                        acc[r] = _mm512_fmadd_ps(load_i8x16(w + (n0 + r) * K + k), _mm512_loadu_ps(xm + k), acc[r]);
            }
            for (int r = 0; r < rows; r++)
                store_row(y, m, N, n0 + r, _mm512_reduce_add_ps(acc[r]) * f32_of_bf16(scales[n0 + r]), bias);
        }
    }
    free(xf);
}

/* ---- attention of one new token over the cache (a decode step without padding) ---- */
/* exp on 16 lanes: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial, scaled by 2^n (about 1 ulp; inputs <= 0) */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* out[b, h, :] = softmax(scale * q[b, h] . k[b, h / G, s]) over s < S, weighted sum of v[b, h / G, s]; G = H / KV.
   q [B, H, D] contiguous; k, v element strides (batch, head, position), last dim contiguous; D % 16 == 0.
   fp32 scores, softmax and accumulation; out bf16 [B, H, D] rounded once. */
void phk_attention_decode(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                          int64_t B, int64_t H, int64_t KV, int64_t S, int64_t D,
                          int64_t kb, int64_t kh, int64_t ks, int64_t vb, int64_t vh, int64_t vs, float scale,
                          int threads) {
    int64_t G = H / KV;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        const uint16_t *kp = k + b * kb + (h / G) * kh, *vp = v + b * vb + (h / G) * vh;
        float *p = (float *)malloc(sizeof(float) * (size_t)(S + 16));
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
            __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + s), _mm512_set1_ps(top)));
            _mm512_storeu_ps(p + s, e);
            total = _mm512_add_ps(total, e);
        }
        if (s < S) {
            __mmask16 m = (__mmask16)((1u << (S - s)) - 1);
            __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + s), _mm512_set1_ps(top)));
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
        free(p);
    }
}

#else
int phk_available(void) { return 0; }
#endif
