/* phikit's decode kernels written once, on the vector layer of vec.h: AVX-512, AVX2 + FMA and aarch64 NEON builds
   of this file are the same source. kernels.c adds what only AVX512-BF16 has (bf16 dot products); where a level
   has that, its versions of phk_linear_bf16 (and of int4.c's phk_linear_int4) are the ones built (the
   `#if !AVX512-BF16` blocks).

     phk_linear_bf16   y = x W^T (+ bias), W bf16 [N, K] (K % 16 == 0): W widened to fp32 (a shift) and fmadd
     phk_linear_int8   W int8 in phikit's blocked layout [N/4, K/64, 4, 64], scales bf16 [N]: w = q * scale
     phk_attention_decode   one new token per row over the cache (_rows: each row its own cache row and length)
     phk_dequant_int8_f32   rows of an int8 weight in fp32, for a prefill's fp32 GEMM
   (the int4 kernels, on the same layer, are in int4.c)

   x, bias and y are bf16 ([M, K], [N], [M, N]); y rounded to bf16 once, after the bias. Products are exact in fp32
   and summed in fp32 (vec.h). Threads: OpenMP over output rows, `threads` of them (torch.get_num_threads()). */
#include "vec.h"
#include <omp.h>

#if PHK_VEC
int phk_available(void) { return 1; }

#ifndef BF16_AHEAD
#define BF16_AHEAD 2048 /* bytes prefetched ahead of each row's read position, into L2 (kernels.c says why) */
#endif
#ifndef INT8_AHEAD
#define INT8_AHEAD 8192
#endif
#define NV16 (16 / PHK_VL)  /* vectors per 16 columns */

static float *x_to_f32(const uint16_t *x, int64_t n) {  /* NULL: no memory */
    float *xf = (float *)phk_aligned_alloc(64, (size_t)n * 4);
    if (!xf) return NULL;
    for (int64_t i = 0; i < n; i++) xf[i] = f32_of_bf16(x[i]);
    return xf;
}

/* ---- bf16: 4 rows at a time, each weight widened to fp32 and multiplied by x in fp32 ----
   Prefetching the next block's rows near a row's end (rows of 2048 columns are 4 KB, and a block's first 2 KB would
   otherwise come unprefetched) read 1.17-1.26x faster on the AVX2 level of the Zen 5 host; 8 rows a block, one cache
   line of each per step, read 0.83-0.99x as fast as 4 (same host, A/B in one process). */
#if !(defined(__AVX512BF16__) && defined(__AVX512BW__))
#define ROWS 4
/* Two rows of x (m, m + 1) against one 4-row block: each weight vector is widened once for both, and the 8
   accumulators stay in registers (4 + 2 + 8 vectors: fits AVX2's 16). Every accumulator sums the same products in
   the same order as the one-row loop below, so each row's result equals its one-row call bit for bit. Several rows
   come from a serving engine's batched decode. */
static void m_pair(const float *x0, const uint16_t *w0, uint16_t *y, int64_t m, int64_t N, int64_t n0, int64_t K,
                   const uint16_t *bias, int prefetch) {
    const float *x1 = x0 + K;
    vf a0[ROWS], a1[ROWS];
    for (int r = 0; r < ROWS; r++) a0[r] = a1[r] = vf_zero();
    for (int64_t k = 0; k < K; k += 16) {
        if (prefetch && k % 32 == 0) {  /* as the one-row loop does for row 0 */
            int64_t ahead = k + BF16_AHEAD / 2;
            const uint16_t *pw = ahead < K ? w0 + ahead : w0 + ahead + (ROWS - 1) * K;
            for (int r = 0; r < ROWS; r++) phk_prefetch_l2(pw + r * K);
        }
        for (int u = 0; u < NV16; u++) {
            vf xv0 = vf_load(x0 + k + u * PHK_VL), xv1 = vf_load(x1 + k + u * PHK_VL);
            for (int r = 0; r < ROWS; r++) {
                vf wv = vf_load_bf16(w0 + r * K + k + u * PHK_VL);
                a0[r] = vf_fma(wv, xv0, a0[r]);
                a1[r] = vf_fma(wv, xv1, a1[r]);
            }
        }
    }
    for (int r = 0; r < ROWS; r++) {
        store_row(y, m, N, n0 + r, vf_sum(a0[r]), bias);
        store_row(y, m + 1, N, n0 + r, vf_sum(a1[r]), bias);
    }
}

phk_status_t phk_linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int threads) {
    float *xf = x_to_f32(x, M * K);
    if (!xf) return PHK_ERR_NOMEM;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n0 = 0; n0 < N; n0 += ROWS) {
        int64_t rows = N - n0 < ROWS ? N - n0 : ROWS;
        const uint16_t *w0 = w + n0 * K;
        int64_t m = 0;
        if (rows == ROWS)
            for (; m + 1 < M; m += 2) m_pair(xf + m * K, w0, y, m, N, n0, K, bias, m == 0);
        for (; m < M; m++) {
            const float *xm = xf + m * K;
            vf acc[ROWS];
            for (int r = 0; r < ROWS; r++) acc[r] = vf_zero();
            if (rows == ROWS) {
                for (int64_t k = 0; k < K; k += 16) {
                    /* past a row's end: the same row of the next block (a thread's blocks are contiguous), whose
                       first BF16_AHEAD bytes would otherwise come unprefetched */
                    int64_t ahead = k + BF16_AHEAD / 2;
                    const uint16_t *pw = ahead < K ? w0 + ahead : w0 + ahead + (ROWS - 1) * K;
                    for (int r = 0; r < ROWS; r++) {
                        if (m == 0 && k % 32 == 0) phk_prefetch_l2(pw + r * K);
                        for (int u = 0; u < NV16; u++)
                            acc[r] = vf_fma(vf_load_bf16(w0 + r * K + k + u * PHK_VL), vf_load(xm + k + u * PHK_VL),
                                            acc[r]);
                    }
                }
            } else {
                for (int r = 0; r < rows; r++)
                    for (int64_t k = 0; k < K; k += PHK_VL)
                        acc[r] = vf_fma(vf_load_bf16(w0 + r * K + k), vf_load(xm + k), acc[r]);
            }
            for (int r = 0; r < rows; r++) store_row(y, m, N, n0 + r, vf_sum(acc[r]), bias);
        }
    }
    free(xf);
    return PHK_OK;
}
#endif

/* ---- int8, per output channel, in phikit's layout (N % 4 == 0, K % 64 == 0) ----
   Blocks of 4 rows interleaved 64 columns at a time: a thread streams one contiguous run of memory. */
#define C64 (64 / PHK_VL)  /* vectors per 64-column chunk */

/* Several rows of x (M > 1): each 64-column chunk of the 4-row block is widened once for all M rows; the M x 4
   accumulators live in memory (L1). The same sums, in the same order, as the M == 1 loop. */
static void int8_block_rows(const float *xf, const int8_t *wn, int64_t M, int64_t K, vf *acc) {
    for (int64_t i = 0; i < M * 4; i++) acc[i] = vf_zero();
    for (int64_t k = 0; k < K; k += 64) {
        vf wv[4][C64];
        for (int r = 0; r < 4; r++) {
            const int8_t *p = wn + k * 4 + r * 64;
            phk_prefetch_l2(p + INT8_AHEAD);
            for (int c = 0; c < C64; c++) wv[r][c] = vf_load_i8(p + PHK_VL * c);
        }
        for (int64_t m = 0; m < M; m++) {
            const float *xm = xf + m * K + k;
            for (int r = 0; r < 4; r++) {
                vf a = acc[m * 4 + r];
                for (int c = 0; c < C64; c++) a = vf_fma(wv[r][c], vf_load(xm + PHK_VL * c), a);
                acc[m * 4 + r] = a;
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
        vf *many = M > 1 ? (vf *)phk_aligned_alloc(64, (size_t)(M * 4) * sizeof(vf)) : NULL;
        #pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += 4) {
            const int8_t *wn = w + n0 * K;
            if (many) {
                int8_block_rows(xf, wn, M, K, many);
                for (int64_t m = 0; m < M; m++)
                    for (int r = 0; r < 4; r++)
                        store_row(y, m, N, n0 + r, vf_sum(many[m * 4 + r]) * f32_of_bf16(scales[n0 + r]), bias);
                continue;
            }
            for (int64_t m = 0; m < M; m++) {  /* M == 1 (or no memory for `many`) */
                const float *xm = xf + m * K;
                vf acc[4];
                for (int r = 0; r < 4; r++) acc[r] = vf_zero();
                for (int64_t k = 0; k < K; k += 64) {
                    for (int r = 0; r < 4; r++) {
                        const int8_t *p = wn + k * 4 + r * 64;
                        phk_prefetch_l2(p + INT8_AHEAD);
                        for (int c = 0; c < C64; c++)
                            acc[r] = vf_fma(vf_load_i8(p + PHK_VL * c), vf_load(xm + k + PHK_VL * c), acc[r]);
                    }
                }
                for (int r = 0; r < 4; r++)
                    store_row(y, m, N, n0 + r, vf_sum(acc[r]) * f32_of_bf16(scales[n0 + r]), bias);
            }
        }
        free(many);
    }
    free(xf);
    return PHK_OK;
}

/* rows [r0, r1) of an int8 weight in phikit's layout -> fp32 out [r1 - r0, K], q * scale (exact) */
void phk_dequant_int8_f32(const int8_t *w, const uint16_t *scales, float *out, int64_t r0, int64_t r1, int64_t K,
                          int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = r0; n < r1; n++) {
        const int8_t *row = w + (n / 4) * 4 * K + (n % 4) * 64;  /* + chunk * 256 bytes */
        vf s = vf_set1(f32_of_bf16(scales[n]));
        float *o = out + (n - r0) * K;
        for (int64_t k = 0; k < K; k += 64)
            for (int c = 0; c < C64; c++) vf_store(o + k + PHK_VL * c, vf_load_i8(row + k * 4 + PHK_VL * c) * s);
    }
}

/* ---- attention of one new token over the cache (a decode step without padding) ----
   out[b, h, :] = softmax(scale * q[b, h] . k[b, h / G, s]) over s < S, weighted sum of v[b, h / G, s]; G = H / KV.
   q [B, H, D] contiguous; k, v element strides (batch, head, position), last dim contiguous; D % 16 == 0, D <= 256.
   fp32 scores, softmax and accumulation; out bf16 [B, H, D] rounded once.
   phk_attention_decode_rows: row b reads batch row rows[b] of k / v and its keys first[b] <= s < len[b] (a serving
   engine's decode batch over its KV pool, each row at its own length, one call for all of them); S is the largest
   len[b] - first[b]. Each row's numbers are those of phk_attention_decode on that row's keys alone. */
phk_status_t phk_attention_decode(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                  int64_t B, int64_t H, int64_t KV, int64_t S, int64_t D,
                                  int64_t kb, int64_t kh, int64_t ks, int64_t vb, int64_t vh, int64_t vs, float scale,
                                  int threads) {
    return phk_attention_decode_rows(q, k, v, out, B, H, KV, S, D, kb, kh, ks, vb, vh, vs, NULL, NULL, NULL, scale,
                                     threads);
}

phk_status_t phk_attention_decode_rows(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                       int64_t B, int64_t H, int64_t KV, int64_t S, int64_t D,
                                       int64_t kb, int64_t kh, int64_t ks, int64_t vb, int64_t vh, int64_t vs,
                                       const int64_t *rows, const int64_t *first, const int64_t *len, float scale,
                                       int threads) {
    int64_t G = H / KV;
    const int64_t S_max = S;
    /* scores of S + 16 floats per thread, allocated here so that a failure returns before any work */
    float *scores = (float *)phk_malloc(sizeof(float) * (size_t)(S + 16) * (size_t)(threads > 0 ? threads : 1));
    if (!scores) return PHK_ERR_NOMEM;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H, nd = D / PHK_VL;
        int64_t row = rows ? rows[b] : b, s0 = first ? first[b] : 0;
        const int64_t S = len ? len[b] - s0 : S_max;  /* this row's keys */
        const uint16_t *kp = k + row * kb + (h / G) * kh + s0 * ks, *vp = v + row * vb + (h / G) * vh + s0 * vs;
        float *p = scores + (size_t)omp_get_thread_num() * (size_t)(S_max + 16);
        vf qv[256 / PHK_VL];
        for (int64_t d = 0; d < nd; d++) qv[d] = vf_load_bf16(q + bh * D + d * PHK_VL);
        float top = -INFINITY;
        for (int64_t s = 0; s < S; s++) {
            vf acc = vf_zero();
            for (int64_t d = 0; d < nd; d++) acc = vf_fma(qv[d], vf_load_bf16(kp + s * ks + d * PHK_VL), acc);
            p[s] = vf_sum(acc) * scale;
            top = p[s] > top ? p[s] : top;
        }
        vf total = vf_zero();
        int64_t s = 0;
        for (; s + PHK_VL <= S; s += PHK_VL) {
            vf e = vf_exp(vf_load(p + s) - top);
            vf_store(p + s, e);
            total += e;
        }
        if (s < S) {  /* the last S - s scores; the lanes past them count as 0 */
            float t[PHK_VL] = {0};
            memcpy(t, p + s, sizeof(float) * (size_t)(S - s));
            vf_store(t, vf_exp(vf_load(t) - top));
            for (int64_t i = S - s; i < PHK_VL; i++) t[i] = 0.f;
            memcpy(p + s, t, sizeof(float) * (size_t)(S - s));
            total += vf_load(t);
        }
        float inv = 1.0f / vf_sum(total);
        vf acc[256 / PHK_VL];
        for (int64_t d = 0; d < nd; d++) acc[d] = vf_zero();
        for (int64_t t = 0; t < S; t++) {
            vf wt = vf_set1(p[t]);
            for (int64_t d = 0; d < nd; d++) acc[d] = vf_fma(wt, vf_load_bf16(vp + t * vs + d * PHK_VL), acc[d]);
        }
        for (int64_t d = 0; d < nd; d++) {
            float o[PHK_VL];
            vf_store(o, acc[d] * inv);
            for (int j = 0; j < PHK_VL; j++) out[bh * D + d * PHK_VL + j] = bf16_of_f32(o[j]);
        }
    }
    free(scores);
    return PHK_OK;
}

#else
int phk_available(void) { return 0; }
phk_status_t phk_linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int threads) { return PHK_ERR_UNSUPPORTED; }
phk_status_t phk_linear_int8(const uint16_t *x, const int8_t *w, const uint16_t *scales, const uint16_t *bias,
                             uint16_t *y, int64_t M, int64_t N, int64_t K, int threads) { return PHK_ERR_UNSUPPORTED; }
phk_status_t phk_attention_decode(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                  int64_t B, int64_t H, int64_t KV, int64_t S, int64_t D,
                                  int64_t kb, int64_t kh, int64_t ks, int64_t vb, int64_t vh, int64_t vs, float scale,
                                  int threads) { return PHK_ERR_UNSUPPORTED; }
phk_status_t phk_attention_decode_rows(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                       int64_t B, int64_t H, int64_t KV, int64_t S, int64_t D,
                                       int64_t kb, int64_t kh, int64_t ks, int64_t vb, int64_t vh, int64_t vs,
                                       const int64_t *rows, const int64_t *first, const int64_t *len, float scale,
                                       int threads) { return PHK_ERR_UNSUPPORTED; }
void phk_dequant_int8_f32(const int8_t *w, const uint16_t *scales, float *out, int64_t r0, int64_t r1, int64_t K,
                          int threads) {}
#endif
