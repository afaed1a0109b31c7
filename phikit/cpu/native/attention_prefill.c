/* Causal attention of a whole prompt (a prefill): query t sees keys 0..t, for bf16 q / k / v on the CPU.

   PyTorch's CPU flash attention spent 11% of a 512-token phi-1.5 prefill here at ~60 GFLOP/s on the 2-core host.
   This kernel does the same arithmetic with bf16 dot-product instructions (vdpbf16ps, 32 products per instruction,
   each exact, fp32 sums), 8 query rows at a time:
     1. scores s[i, j] = scale * q_i . k_j for the keys the block's rows can see, in fp32 (keys packed in pairs of
        head dimensions in blocks of 32 keys, [S/32, D/2, 32, 2], so one instruction takes 16 keys for one row);
     2. an exact softmax per row in fp32 (max, exp, sum), the probabilities rounded to bf16 as PyTorch's flash
        kernel rounds them before its value product;
     3. out_i = sum_j p_ij v_j / sum_j p_ij in fp32 (values packed in pairs of keys, [S/2, D, 2]), rounded once.
   Shapes: q [B, H, T, D], k / v [B, KV, T, D] (element strides for batch, head, position; last dim contiguous),
   out [B, T, H, D] contiguous; H % KV == 0 (grouped heads), D % 16 == 0.
   One parallel region: the threads pack a group of kv heads (as many as pack_bytes of copies hold), then share its
   (head, 8-row block) items, the blocks that see the most keys first. 512-token phi-1.5 layer (32 heads of 64
   dims) on the 2-core host: 7.3 ms with one thread packing each head in turn, 4.1 ms so. */
#include "vec.h"  /* vf_exp */
#include <omp.h>

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define QROWS 8  /* query rows per block */

static inline __m512bh pair(const uint16_t *p) {  /* two bf16 values (p[0], p[1]) broadcast to every 32-bit lane */
    int32_t v;
    memcpy(&v, p, 4);
    return (__m512bh)_mm512_set1_epi32(v);
}

/* Pack keys s0 .. s0 + 32 of one kv head (s0 % 32 == 0), in blocks of 32 keys:
   kp[s / 32][d / 2][s % 32][2] = (k[s][d], k[s][d + 1]) (one block is contiguous, so phase 1 reads it in order) and
   vp[s / 2][d][2] = (v[s][d], v[s + 1][d]), zero for s >= S. */
static void pack_kv(const uint16_t *k, const uint16_t *v, int64_t ks, int64_t vs, int64_t S, int64_t SP, int64_t D,
                    int64_t s0, uint16_t *kp, uint16_t *vp) {
    /* The rows are far apart (in a fused qkv output, 4K pages or more): hardware prefetchers do not follow them,
       and rows a multiple of 4 KB apart share an L1 set, so each is fetched a few rows ahead and used at once. */
    uint32_t *kp32 = (uint32_t *)kp;  /* a (d, d + 1) pair of bf16 values moves as one 32-bit word */
    for (int64_t s = s0; s < s0 + 32; s++) {
        if (s + 4 < S)
            for (int64_t off = 0; off < D; off += 32) {
                _mm_prefetch((const char *)(k + (s + 4) * ks + off), _MM_HINT_T0);
                _mm_prefetch((const char *)(v + (s + 4) * vs + off), _MM_HINT_T0);
            }
        for (int64_t dp = 0; dp < D / 2; dp++) {
            uint32_t w = 0;
            if (s < S) memcpy(&w, k + s * ks + 2 * dp, 4);
            kp32[(s0 / 32 * (D / 2) + dp) * 32 + s - s0] = w;
        }
    }
    __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                  39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);  /* a0 b0 a1 b1 .. a15 b15 */
    __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));  /* a16 b16 .. a31 b31 */
    for (int64_t s = s0; s < s0 + 32; s += 2) {
        uint16_t *dst = vp + s / 2 * D * 2;
        for (int64_t d = 0; d < D; d += 32) {  /* D % 16 == 0: the last step may be 16 wide */
            __mmask32 m = D - d >= 32 ? (__mmask32)0xffffffffu : (__mmask32)0xffffu;
            __m512i a = _mm512_maskz_loadu_epi16(s < S ? m : 0, v + s * vs + d);
            __m512i b = _mm512_maskz_loadu_epi16(s + 1 < S ? m : 0, v + (s + 1) * vs + d);
            _mm512_storeu_si512(dst + 2 * d, _mm512_permutex2var_epi16(a, lo, b));
            if (D - d >= 32) _mm512_storeu_si512(dst + 2 * d + 32, _mm512_permutex2var_epi16(a, hi, b));
        }
    }
}

/* Rows r0 .. r0 + 4 of out, dims d0 .. d0 + 16 nv: sum_j p[r][j] v[j] over keys j < n32, times inv[r], to bf16. */
static inline __attribute__((always_inline)) void pv_tile(const uint16_t *vp, const uint16_t *pb, int64_t SP,
                                                          int64_t D, int64_t d0, int64_t n32, int r0,
                                                          const float *inv, uint16_t *const *out, const int nv) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++) for (int c = 0; c < nv; c++) acc[r][c] = _mm512_setzero_ps();
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
            if (out[r0 + r])
                _mm256_storeu_si256((__m256i *)(out[r0 + r] + d0 + 16 * c), (__m256i)_mm512_cvtneps_pbh(o));
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
            const uint16_t *kr = kp + (j / 32 * (D / 2) + d / 2) * 64;
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
        float *s = sc + r * SP;
        __m512 tops = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < seen; j += 16) {
            __mmask16 m = seen - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (seen - j)) - 1);
            tops = _mm512_mask_max_ps(tops, m, tops, _mm512_maskz_loadu_ps(m, s + j));
        }
        float top = _mm512_reduce_max_ps(tops);
        __m512 total = _mm512_setzero_ps();
        for (int64_t j = 0; j < n32; j += 16) {
            __mmask16 m = seen - j >= 16 ? (__mmask16)0xffff : seen - j > 0 ? (__mmask16)((1u << (seen - j)) - 1) : 0;
            __m512 d = _mm512_sub_ps(_mm512_loadu_ps(s + j), _mm512_set1_ps(top));
            __m512 e = _mm512_maskz_mov_ps(m, (__m512)vf_exp((vf)d));
            total = _mm512_add_ps(total, e);
            _mm256_storeu_si256((__m256i *)(pb + r * SP + j), (__m256i)_mm512_cvtneps_pbh(e));
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(total);
    }
    /* 3. out = P V / sum: 4 rows x up to 64 dims at a time, two keys per instruction */
    for (int r0 = 0; r0 < QROWS; r0 += 4)
        for (int64_t d0 = 0; d0 < D; d0 += 64)
            switch (D - d0 >= 64 ? 4 : (int)((D - d0) / 16)) {  /* a constant width: the sums stay in registers */
                case 4: pv_tile(vp, pb, SP, D, d0, n32, r0, inv, out, 4); break;
                case 3: pv_tile(vp, pb, SP, D, d0, n32, r0, inv, out, 3); break;
                case 2: pv_tile(vp, pb, SP, D, d0, n32, r0, inv, out, 2); break;
                default: pv_tile(vp, pb, SP, D, d0, n32, r0, inv, out, 1); break;
            }
}

phk_status_t phk_attention_prefill(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                   int64_t B, int64_t H, int64_t KV, int64_t T, int64_t D,
                                   int64_t qb, int64_t qh, int64_t qt, int64_t kb, int64_t kh, int64_t ks,
                                   int64_t vb, int64_t vh, int64_t vs, float scale, int64_t pack_bytes, int threads) {
    int64_t SP = (T + 31) / 32 * 32, G = H / KV, blocks = (T + QROWS - 1) / QROWS, head = SP * D;
    /* kv heads are packed a group at a time, as many as `pack_bytes` of packed copies hold (at least one; 32 MB
       from Python: a 512-token prompt packs every head at once, a 128k-token one of 96 dims one head, 2 x 25 MB) */
    int64_t group = pack_bytes / (head * 4) > 0 ? pack_bytes / (head * 4) : 1;
    group = group < B * KV ? group : B * KV;
    /* every buffer up front, so that a failure returns before any work: the packed group, and each thread's scores
       (fp32) and probabilities (bf16) for one block */
    size_t packed = (size_t)(group * head) * 2, rows = (size_t)(QROWS * SP);
    size_t team = (size_t)(threads > 0 ? threads : 1);
    uint16_t *kp = (uint16_t *)phk_malloc(packed), *vp = kp ? (uint16_t *)phk_malloc(packed) : NULL;
    float *sc_all = vp ? (float *)phk_malloc(sizeof(float) * rows * team) : NULL;
    uint16_t *pb_all = sc_all ? (uint16_t *)phk_malloc(2 * rows * team) : NULL;
    if (!pb_all) {
        free(kp);
        free(vp);
        free(sc_all);
        return PHK_ERR_NOMEM;
    }
    #pragma omp parallel num_threads(threads)
    {
        float *sc = sc_all + (size_t)omp_get_thread_num() * rows;
        uint16_t *pb = pb_all + (size_t)omp_get_thread_num() * rows;
        for (int64_t g0 = 0; g0 < B * KV; g0 += group) {
            int64_t n = B * KV - g0 < group ? B * KV - g0 : group, chunks = SP / 32;
            #pragma omp for schedule(static)
            for (int64_t it = 0; it < n * chunks; it++) {
                int64_t bk = g0 + it / chunks, b = bk / KV;
                pack_kv(k + b * kb + bk % KV * kh, v + b * vb + bk % KV * vh, ks, vs, T, SP, D, it % chunks * 32,
                        kp + (bk - g0) * head, vp + (bk - g0) * head);
            }
            /* every query head of the group, the blocks that see the most keys first, one at a time */
            #pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < blocks * n * G; item++) {
                int64_t i0 = (blocks - 1 - item / (n * G)) * QROWS, bk = g0 + item % (n * G) / G;
                int64_t b = bk / KV, h = bk % KV * G + item % G;
                const uint16_t *qr[QROWS];
                uint16_t *orow[QROWS];
                for (int r = 0; r < QROWS; r++) {
                    int64_t i = i0 + r < T ? i0 + r : T - 1;  /* rows past the end repeat the last; not written */
                    qr[r] = q + b * qb + h * qh + i * qt;
                    orow[r] = i0 + r < T ? out + ((b * T + i0 + r) * H + h) * D : NULL;
                }
                block(qr, kp + (bk - g0) * head, vp + (bk - g0) * head, i0, SP, D, scale, sc, pb, orow);
            }
        }
    }
    free(sc_all);
    free(pb_all);
    free(kp);
    free(vp);
    return PHK_OK;
}
#else
phk_status_t phk_attention_prefill(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                   int64_t B, int64_t H, int64_t KV, int64_t T, int64_t D,
                                   int64_t qb, int64_t qh, int64_t qt, int64_t kb, int64_t kh, int64_t ks,
                                   int64_t vb, int64_t vh, int64_t vs, float scale, int64_t pack_bytes, int threads) {
    return PHK_ERR_UNSUPPORTED;
}
#endif
