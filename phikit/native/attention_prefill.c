/* Causal attention of a whole prompt (a prefill): query t sees keys 0..t, for bf16 q / k / v on the CPU.

   PyTorch's CPU flash attention spent 11% of a 512-token phi-1.5 prefill here at ~60 GFLOP/s on the 2-core host.
   This kernel does the same arithmetic with bf16 dot-product instructions (vdpbf16ps, 32 products per instruction,
   each exact, fp32 sums), 8 query rows at a time:
     1. scores s[i, j] = scale * q_i . k_j for the keys the block's rows can see, in fp32 (keys packed in pairs of
        head dimensions, [D/2, S, 2], so one instruction takes 16 keys for one query row);
     2. an exact softmax per row in fp32 (max, exp, sum), the probabilities rounded to bf16 as PyTorch's flash
        kernel rounds them before its value product;
     3. out_i = sum_j p_ij v_j / sum_j p_ij in fp32 (values packed in pairs of keys, [S/2, D, 2]), rounded once.
   Shapes: q [B, H, T, D], k / v [B, KV, T, D] (element strides for batch, head, position; last dim contiguous),
   out [B, T, H, D] contiguous; H % KV == 0 (grouped heads), D % 16 == 0 and D <= 256. */
#include "phk.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define QROWS 8  /* query rows per block */

static inline __m512bh pair(const uint16_t *p) {  /* two bf16 values (p[0], p[1]) broadcast to every 32-bit lane */
    int32_t v;
    memcpy(&v, p, 4);
    return (__m512bh)_mm512_set1_epi32(v);
}

/* Pack one kv head: kp[d / 2][s][2] = (k[s][d], k[s][d + 1]) for s < S, zero up to SP (a multiple of 32);
   vp[s / 2][d][2] = (v[s][d], v[s + 1][d]), zero for s >= S. */
static void pack_kv(const uint16_t *k, const uint16_t *v, int64_t ks, int64_t vs, int64_t S, int64_t SP, int64_t D,
                    uint16_t *kp, uint16_t *vp) {
    for (int64_t d = 0; d < D; d += 2)
        for (int64_t s = 0; s < SP; s++) {
            kp[(d / 2 * SP + s) * 2] = s < S ? k[s * ks + d] : 0;
            kp[(d / 2 * SP + s) * 2 + 1] = s < S ? k[s * ks + d + 1] : 0;
        }
    for (int64_t s = 0; s < SP; s += 2)
        for (int64_t d = 0; d < D; d++) {
            vp[(s / 2 * D + d) * 2] = s < S ? v[s * vs + d] : 0;
            vp[(s / 2 * D + d) * 2 + 1] = s + 1 < S ? v[(s + 1) * vs + d] : 0;
        }
}

/* One block of QROWS query rows q[r] (bf16 [D] each) of one head against its packed kv head: out rows [D] bf16. */
static void block(const uint16_t *const *q, const uint16_t *kp, const uint16_t *vp, int64_t i0, int64_t SP,
                  int64_t D, float scale, float *sc, uint16_t *pb, uint16_t *const *out) {
    int64_t n = i0 + QROWS;  /* keys the block's last row may see, rounded below */
    int64_t n32 = (n + 31) / 32 * 32 < SP ? (n + 31) / 32 * 32 : SP;
    /* 1. scores, 8 rows x 32 keys at a time */
    for (int64_t j = 0; j < n32; j += 32) {
        __m512 acc[QROWS][2];
        for (int r = 0; r < QROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 2) {
            const uint16_t *kr = kp + (d / 2 * SP + j) * 2;
            __m512bh k0 = (__m512bh)_mm512_loadu_si512(kr), k1 = (__m512bh)_mm512_loadu_si512(kr + 32);
            for (int r = 0; r < QROWS; r++) {
                __m512bh qv = pair(q[r] + d);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], k0, qv);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], k1, qv);
            }
        }
        for (int r = 0; r < QROWS; r++) {
            _mm512_storeu_ps(sc + r * SP + j, _mm512_mul_ps(acc[r][0], _mm512_set1_ps(scale)));
            _mm512_storeu_ps(sc + r * SP + j + 16, _mm512_mul_ps(acc[r][1], _mm512_set1_ps(scale)));
        }
    }
    /* 2. softmax of each row over keys 0..i; probabilities rounded to bf16, zero past i (pairs: up to n32) */
    float inv[QROWS];
    for (int r = 0; r < QROWS; r++) {
        int64_t seen = i0 + r + 1;
        float *s = sc + r * SP, top = -INFINITY;
        for (int64_t j = 0; j < seen; j++) top = s[j] > top ? s[j] : top;
        __m512 total = _mm512_setzero_ps();
        for (int64_t j = 0; j < n32; j += 16) {
            __mmask16 m = seen - j >= 16 ? (__mmask16)0xffff : seen - j > 0 ? (__mmask16)((1u << (seen - j)) - 1) : 0;
            __m512 e = _mm512_maskz_mov_ps(m, phk_exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), _mm512_set1_ps(top))));
            total = _mm512_add_ps(total, e);
            _mm256_storeu_si256((__m256i *)(pb + r * SP + j), (__m256i)_mm512_cvtneps_pbh(e));
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(total);
    }
    /* 3. out = P V / sum: 4 rows x 64 dims at a time, two keys per instruction */
    for (int r0 = 0; r0 < QROWS; r0 += 4) {
        for (int64_t d0 = 0; d0 < D; d0 += 64) {
            int nv = D - d0 >= 64 ? 4 : (int)((D - d0) / 16);
            __m512 acc[4][4];
            for (int r = 0; r < 4; r++) for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
            for (int64_t j = 0; j < n32; j += 2) {
                const uint16_t *vr = vp + (j / 2 * D + d0) * 2;
                __m512bh vv[4];
                for (int c = 0; c < nv; c++) vv[c] = (__m512bh)_mm512_loadu_si512(vr + 32 * c);
                for (int r = 0; r < 4; r++) {
                    __m512bh pv = pair(pb + (r0 + r) * SP + j);
                    for (int c = 0; c < nv; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], vv[c], pv);
                }
            }
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < nv; c++) {
                    __m512 o = _mm512_mul_ps(acc[r][c], _mm512_set1_ps(inv[r0 + r]));
                    if (out[r0 + r]) _mm256_storeu_si256((__m256i *)(out[r0 + r] + d0 + 16 * c),
                                                         (__m256i)_mm512_cvtneps_pbh(o));
                }
        }
    }
}

void phk_attention_prefill(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                           int64_t B, int64_t H, int64_t KV, int64_t T, int64_t D,
                           int64_t qb, int64_t qh, int64_t qt, int64_t kb, int64_t kh, int64_t ks,
                           int64_t vb, int64_t vh, int64_t vs, float scale, int threads) {
    int64_t SP = (T + 31) / 32 * 32, G = H / KV, blocks = (T + QROWS - 1) / QROWS;
    /* one kv head at a time: its packed copy is all the extra memory (a 128k-token head of 96 dims: 2 x 25 MB) */
    uint16_t *kp = (uint16_t *)malloc((size_t)(SP * D) * 2), *vp = (uint16_t *)malloc((size_t)(SP * D) * 2);
    for (int64_t bk = 0; bk < B * KV; bk++) {
        int64_t b = bk / KV, g0 = bk % KV * G;  /* query heads g0 .. g0 + G read this kv head */
        pack_kv(k + b * kb + bk % KV * kh, v + b * vb + bk % KV * vh, ks, vs, T, SP, D, kp, vp);
        #pragma omp parallel num_threads(threads)
        {
            float *sc = (float *)malloc(sizeof(float) * (size_t)(QROWS * SP));
            uint16_t *pb = (uint16_t *)malloc((size_t)(QROWS * SP) * 2);
            /* the last blocks see the most keys: hand them out first, one at a time */
            #pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < G * blocks; item++) {
                int64_t i0 = (blocks - 1 - item / G) * QROWS, h = g0 + item % G;
                const uint16_t *qr[QROWS];
                uint16_t *orow[QROWS];
                for (int r = 0; r < QROWS; r++) {
                    int64_t i = i0 + r < T ? i0 + r : T - 1;  /* rows past the end repeat the last; not written */
                    qr[r] = q + b * qb + h * qh + i * qt;
                    orow[r] = i0 + r < T ? out + ((b * T + i0 + r) * H + h) * D : NULL;
                }
                block(qr, kp, vp, i0, SP, D, scale, sc, pb, orow);
            }
            free(sc);
            free(pb);
        }
    }
    free(kp);
    free(vp);
}
#else
void phk_attention_prefill(void) {}
#endif
