/* phikit's portable int4 kernels, on the vector layer of vec.h (one source for the AVX-512, AVX2 + FMA and aarch64
   NEON builds, as portable.c):

     phk_linear_int4   y = x W^T (+ bias), W in phikit's nibble layout, scales_and_zeros bf16 [K/GS, N, 2]:
                       w = (q - 8) * scale + zero (kernels.c has the AVX512-BF16 version, built at that level instead)
     phk_dequant_int4_f32   rows of an int4 weight in fp32, for a prefill's fp32 GEMM

   x, bias and y are bf16 ([M, K], [N], [M, N]); y rounded to bf16 once, after the bias. Threads: OpenMP over output
   rows, `threads` of them (torch.get_num_threads()). */
#include "vec.h"
#include <omp.h>

#if PHK_VEC
#if PHK_BYTE_DOT && !(defined(__AVX512BF16__) && defined(__AVX512BW__))
int phk_has_int4(void) { return 2; }  /* the byte kernel below runs groups of 128 or more */
#else
int phk_has_int4(void) { return 1; }  /* the 16-bit kernel, or (AVX512-BF16) kernels.c's */
#endif

#ifndef INT4_X_TILE
#define INT4_X_TILE (512 << 10)  /* bytes of x's integer forms per tile of rows (phk_linear_int4) */
#endif
#ifndef INT4_AHEAD
#define INT4_AHEAD 8192
#endif

/* ---- int4, asymmetric per group of GS columns (GS in 64, 128, 256; K % 128 == 0) ----
   phikit's layout (kernels.c): each 128-column chunk of a row is 32 little-endian 16-bit words, word j holding
   columns j, 32 + j, 64 + j, 96 + j in nibbles 0..3; rows in blocks of 4, chunk by chunk. Integer dot products:
   nibble i of 2 * PHK_VL words is isolated in 16-bit lanes (one or two ops), and multiplied by x as 16-bit integers
   with 32-bit pair sums (vi_madd16): 3-4 ops per 16 weights, where fp32 products (128 + q as fp32) took 7-8 and
   were compute-bound at 13-14 GB/s on the AVX2 host.

   x is scaled per block of 64 columns (128 for the byte kernel below) by a power of two to 16-bit integers, n =
   round(x * 2^(14 - E)) with E the exponent of the block's largest |x|: exact for every x within 2^-7 of that
   largest one in magnitude (bf16 has 8 significant bits), otherwise rounded by at most 2^(E - 15) -- the one
   rounding this kernel adds to the fp32 reference; tests bound it. The integer sums are exact; per block and row,
   (their sum as fp32) * scale * 2^(E - 14) is accumulated in fp32. Per group, (zero - 8 * scale) * sum x (the sums
   of x per group taken once per call, in fp32) adds the rest of w = (q - 8) * scale + zero. */
#if !(defined(__AVX512BF16__) && defined(__AVX512BW__))
#define NT (16 / PHK_VL)  /* vectors per 64-byte chunk row */
#define XB 64  /* columns per block of x's 16-bit form (128 for the byte kernel below) */

/* x [K] bf16 -> xq [K] int16 and xs [K / XB] the blocks' scales 2^(E - 14) (0 for a block of zeros); blocks of
   XB << wide columns */
static void x_to_i16(const uint16_t *x, int64_t K, int wide, int16_t *xq, float *xs) {
    const int64_t bw = XB << wide;
    for (int64_t b = 0; b < K / bw; b++) {
        const uint16_t *xb = x + b * bw;
        vu top = (vu){0};  /* the largest |x| as fp32 bits (the order of non-negative floats) */
        for (int j = 0; j < bw; j += PHK_VL) {
            vu a = (vu)vf_load_bf16(xb + j) & 0x7fffffffu;
            top = (vu)vsel((vi)(a > top), (vf)a, (vf)top);
        }
        uint32_t t = 0;
        for (int i = 0; i < PHK_VL; i++) t = top[i] > t ? top[i] : t;
        int e = (int)(t >> 23) - 127;  /* E: 2^E <= max |x| < 2^(E + 1) (a subnormal max: E = -127, fine) */
        if (t == 0 || e > 127 - 14) {  /* zeros; or Inf / NaN (sum x carries them to the output) */
            xs[b] = 0.f;
            memset(xq + b * bw, 0, bw * sizeof(int16_t));
            continue;
        }
        int up = 14 - e < 127 ? 14 - e : 127;  /* scale 2^up, a normal float */
        uint32_t ub = (uint32_t)(up + 127) << 23, db = (uint32_t)(127 - up) << 23;
        float scale, inv;
        memcpy(&scale, &ub, 4);
        memcpy(&inv, &db, 4);
        xs[b] = inv;
        int32_t n[128];
        const vf shifter = vf_set1(12582912.0f);  /* 1.5 * 2^23: adding and subtracting it rounds to nearest even */
        for (int j = 0; j < bw; j += PHK_VL) {
            vf v = vf_load_bf16(xb + j) * scale;  /* exact: a power of two; |v| < 2^15 */
            vi r = __builtin_convertvector((v + shifter) - shifter, vi);
            memcpy(n + j, &r, sizeof r);
        }
        for (int j = 0; j < bw; j++) xq[b * bw + j] = (int16_t)n[j];
    }
}

/* the integer sums of one 64-column half chunk (nibbles i0, i0 + 1) of one chunk row: one chain (vpaddd's latency
   is a cycle; the multiplies are off it) */
#define INT4_HALF(i0, ia) do {                                                                                   \
    ia = (vi){0};                                                                                               \
    for (int t = 0; t < NT; t++) {                                                                              \
        vw16 q0 = (i0) == 0 ? u[t] & 15 : (u[t] >> 8) & 15;                                                     \
        vw16 q1 = (i0) == 0 ? (u[t] >> 4) & 15 : u[t] >> 12;                                                    \
        ia = vi_madd16((vs16)q0, xq16(xk + 32 * (i0) + t * 2 * PHK_VL), ia);                                   \
        ia = vi_madd16((vs16)q1, xq16(xk + 32 * ((i0) + 1) + t * 2 * PHK_VL), ia);                             \
    }                                                                                                           \
} while (0)

static inline vs16 xq16(const int16_t *p) { vs16 v; memcpy(&v, p, sizeof v); return v; }

#if PHK_BYTE_DOT
/* The byte kernel (groups of 128 or more; x86's vpmaddubsw, or aarch64's SDOT / UDOT where the CPU has the
   dot-product extension: vec.h's vb_*): n = 256 h + l with h = n >> 8 (signed) and l = n & 255 (unsigned), so
   q . n = 256 (q . h) + (l . q), each a byte dot product of the nibbles -- 32 weights a vpmaddubsw, where vpmaddwd
   takes 16 -- summed over a chunk in 16-bit lanes on x86 (at most 4 x 2 x 255 x 15 = 30600 < 2^15: exact) and
   widened once, in 32-bit lanes on ARM. The integer sums are exact either way, so ARM's kernel computes what x86's
   does (the fp32 steps after them sum other lanes together, as any two widths do). Nibbles as bytes: a chunk row's
   byte 2j holds columns j (low nibble) and 32 + j (high), byte 2j + 1 columns 64 + j and 96 + j; xh / xl hold x's
   bytes in that order, per vector of the chunk: for vector t and nibble half nb (low, high), 2 * WV bytes at
   (2 t + nb) * 2 * WV, the byte 2j' + c for column 32 nb + 64 c + t WV + j'. Pairs of columns 64 apart share a
   group (GS >= 128) and x's block (128 columns). 25 vector ops per 128 weights and row
   against 32 for the vpmaddwd kernel: in cache 1.5x its speed (AVX2 level, Zen 5 host: 31.6 against 20.9 G weights/s
   on one thread), from memory 1.05-1.09x (A/B in one process, 8192 x 2048 and 2048 x 8192 weights). */
#define WV (PHK_VL * 2)  /* 16-bit words per vector */
static void x_bytes(const int16_t *xq, int64_t K, int8_t *xh, uint8_t *xl) {
    for (int64_t k = 0; k < K; k += 128)
        for (int t = 0; t < 32 / WV; t++)
            for (int nb = 0; nb < 2; nb++)
                for (int j = 0; j < WV; j++)
                    for (int c = 0; c < 2; c++) {
                        int16_t n = xq[k + 32 * nb + 64 * c + t * WV + j];
                        int64_t at = k + (2 * t + nb) * 2 * WV + 2 * j + c;
                        xh[at] = (int8_t)(n >> 8);
                        xl[at] = (uint8_t)(n & 255);
                    }
}
/* Rows n0 .. n0 + 3 of the output for one row of x, on the byte kernel; out[r] gets row r's sum before the bias.
   Per chunk, the four rows' integer sums are folded into one vector (vi_hadd: lane 4j + r holds part of row r's,
   exact in 32 bits: |sum| <= 128 * 15 * 2^15 < 2^26; its conversion to fp32 rounds above 2^24, by at most 2^-24 of
   it, like any fp32 sum) and scaled there by one fma, the four rows' scales and zeros read as one 16-byte vector.
   Done per row, that scalar bookkeeping (scale conversions and broadcasts, a vector accumulator per row kept in
   memory) was half of the loop's instructions: this form runs 1.57-1.70x the per-row one in cache (AVX2 level,
   Zen 4 host, 2 threads, 1-16 rows) and 1.21-1.31x from memory, where it reaches 0.88 of the read roofline. */
static inline void int4_block_bytes(const uint8_t *wn, const uint16_t *sz, const int8_t *xh, const uint8_t *xl,
                                    const float *xsm, const float *xgm, int64_t N, int64_t n0, int64_t K, int gl,
                                    int prefetch, float out[4]) {
    const vw16 nib = (vw16){0} + 0x0f0f;
    vf acc = vf_zero(), zsv = vf_zero(), zzv = vf_zero();  /* lane 4j + r: row r; zsv / zzv: lane r is row r's */
    for (int64_t k = 0; k < K; k += 128) {
        /* rows n0 .. n0 + 3's [scale, zero] for this chunk's group: bf16 pairs, as 32-bit lanes scale | zero << 16 */
        vu se = vu_load4_every128(sz + ((k >> gl) * N + n0) * 2);
        vf sv = (vf)(se << 16), zv = (vf)(se & 0xffff0000u);
        if (((k >> gl) << gl) == k) {  /* a group starts in this chunk: its (zero - 8 scale) * sum x, as fmaf did */
            float xg = xgm[k >> gl];
            zsv = vf_fma(sv, vf_set1(xg * -8.f), zsv);
            zzv = vf_fma(zv, vf_set1(xg), zzv);
        }
        vi s[4];
        for (int r = 0; r < 4; r++) {
            const uint8_t *p = wn + k * 2 + r * 64;
            if (prefetch) phk_prefetch_l2(p + INT4_AHEAD);
            vb_acc ah = (vb_acc){0}, al = (vb_acc){0};
            for (int t = 0; t < 32 / WV; t++) {
                vw16 v;
                memcpy(&v, p + t * 2 * WV, sizeof v);
                vu8 q[2] = {(vu8)(v & nib), (vu8)((v >> 4) & nib)};
                for (int nb = 0; nb < 2; nb++) {
                    vs8 h;  /* x's bytes: the same for the four rows (the compiler keeps them in registers) */
                    vu8 l;
                    memcpy(&h, xh + k + (2 * t + nb) * 2 * WV, sizeof h);
                    memcpy(&l, xl + k + (2 * t + nb) * 2 * WV, sizeof l);
                    ah = vb_dot_hi(ah, q[nb], h);
                    al = vb_dot_lo(al, l, q[nb]);
                }
            }
            s[r] = vb_sum(ah, al);
        }
        vi rows = vi_hadd(vi_hadd(s[0], s[1]), vi_hadd(s[2], s[3]));
        acc = vf_fma(__builtin_convertvector(rows, vf), sv * vf_set1(xsm[k >> 7]), acc);
    }
    for (int r = 0; r < 4; r++) {
        float t = 0.f;
        for (int j = 0; j < PHK_VL; j += 4) t += acc[j + r];
        out[r] = t + (zsv[r] + zzv[r]);
    }
}
#endif

phk_status_t phk_linear_int4(const uint16_t *x, const uint8_t *w, const uint16_t *sz, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int64_t GS, int threads) {
    int bytes = PHK_BYTE_DOT && GS >= 128;  /* the byte kernel (above), x in blocks of 128 */
    /* GS is a power of two (64, 128, 256): group indices by shifts. The three 64-bit divisions by the runtime GS
       per 128-column chunk and 4-row block they replace cost 3-6% of the kernel's time (A/B, AMX Xeon host). */
    const int gl = __builtin_ctzll((unsigned long long)GS);
    int64_t NG = K >> gl, KB = K / 2, NB = K / (XB << bytes);
    /* xq [M, K] int16 (and its bytes, xh / xl [M, K]); xs [M, NB] the blocks' scales; xsum [M, NG] sums of x */
    int16_t *xq = (int16_t *)phk_aligned_alloc(64, sizeof(int16_t) * (size_t)(M * K) * (bytes ? 2 : 1));
    float *xs = (float *)phk_malloc(sizeof(float) * (size_t)(M * NB + M * NG));
    if (!xq || !xs) { free(xq); free(xs); return PHK_ERR_NOMEM; }
    float *xsum = xs + M * NB;
    int8_t *xh = (int8_t *)(xq + M * K);
    uint8_t *xl = (uint8_t *)(xh + M * K);
#if !PHK_BYTE_DOT
    (void)xl;  /* the byte forms exist where the byte kernel does */
#endif
    #pragma omp parallel for schedule(static) num_threads(threads) if (M >= 8)
    for (int64_t m = 0; m < M; m++) {
        x_to_i16(x + m * K, K, bytes, xq + m * K, xs + m * NB);
#if PHK_BYTE_DOT
        if (bytes) x_bytes(xq + m * K, K, xh + m * K, xl + m * K);
#endif
        for (int64_t g = 0; g < NG; g++) {
            vf t = vf_zero();
            for (int64_t k = 0; k < GS; k += PHK_VL) t += vf_load_bf16(x + m * K + g * GS + k);
            xsum[m * NG + g] = vf_sum(t);
        }
    }
    /* x's rows in tiles of INT4_X_TILE bytes (512 KB) of their byte forms, so that a tile stays in L2 / L3 while
       every 4-row block of the weight passes over it (each tile streams the weight again: at 512 rows and K = 2048,
       4 reads of it, ~1% of the arithmetic's time). Untiled, x's 32 MB at 1024 rows and K = 8192 came from memory for
       every block: 1.28x slower (1.13x at 256 rows; 128 KB and 2 MB tiles within noise of 512 KB; Zen 4 host, AVX2
       level). */
    const int64_t MT = K >= INT4_X_TILE / 2 ? 1 : INT4_X_TILE / 2 / K;
    for (int64_t m0 = 0; m0 < M; m0 += MT) {
    const int64_t m1 = M - m0 < MT ? M : m0 + MT;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
        const uint8_t *wn = w + n0 * KB;
        for (int64_t m = m0; m < m1; m++) {
#if PHK_BYTE_DOT
            if (bytes) {
                float out[4];
                int4_block_bytes(wn, sz, xh + m * K, xl + m * K, xs + m * NB, xsum + m * NG, N, n0, K, gl, m == m0,
                                 out);
                for (int r = 0; r < 4; r++) store_row(y, m, N, n0 + r, out[r], bias);
                continue;
            }
#endif
            const int16_t *xm = xq + m * K;
            const float *xsm = xs + m * NB, *xgm = xsum + m * NG;
            vf total[4];
            float zs[4] = {0}, zz[4] = {0};  /* per row: sum of -8 scale sum_x, and of zero sum_x, over groups */
            for (int r = 0; r < 4; r++) total[r] = vf_zero();
            for (int64_t k = 0; k < K; k += 128) {
                const int16_t *xk = xm + k;
                for (int64_t g = k >> gl; g <= (k + 127) >> gl; g++) {  /* the groups that start in this chunk */
                    if ((g << gl) < k) continue;
                    const uint16_t *e = sz + (g * N + n0) * 2;
                    float mx = xgm[g] * -8.f;
                    for (int r = 0; r < 4; r++) {
                        zs[r] = fmaf(f32_of_bf16(e[2 * r]), mx, zs[r]);
                        zz[r] = fmaf(f32_of_bf16(e[2 * r + 1]), xgm[g], zz[r]);
                    }
                }
                const uint16_t *s0 = sz + ((k >> gl) * N + n0) * 2, *s1 = sz + (((k + 64) >> gl) * N + n0) * 2;
                float xs0 = xsm[k >> 6], xs1 = xsm[(k + 64) >> 6], sc0[4], sc1[4];  /* blocks of 64 here */
                for (int r = 0; r < 4; r++) {  /* per row: scale * x's scale */
                    sc0[r] = f32_of_bf16(s0[2 * r]) * xs0;
                    sc1[r] = f32_of_bf16(s1[2 * r]) * xs1;
                }
                for (int r = 0; r < 4; r++) {
                    const uint8_t *p = wn + k * 2 + r * 64;
                    if (m == m0) phk_prefetch_l2(p + INT4_AHEAD);
                    vw16 u[NT];
                    for (int t = 0; t < NT; t++) memcpy(&u[t], p + t * PHK_VL * 4, sizeof u[t]);
                    vi ia;
                    INT4_HALF(0, ia);  /* columns k .. k + 63 */
                    total[r] = vf_fma(__builtin_convertvector(ia, vf), vf_set1(sc0[r]), total[r]);
                    INT4_HALF(2, ia);  /* columns k + 64 .. k + 127 */
                    total[r] = vf_fma(__builtin_convertvector(ia, vf), vf_set1(sc1[r]), total[r]);
                }
            }
            for (int r = 0; r < 4; r++) store_row(y, m, N, n0 + r, vf_sum(total[r]) + (zs[r] + zz[r]), bias);
        }
    }
    }
    free(xq);
    free(xs);
    return PHK_OK;
}
#endif

/* rows [r0, r1) of an int4 weight in phikit's layout -> fp32 out [r1 - r0, K], (q - 8) * scale + zero as torch
   computes it in fp32 (a multiply, then an add) */
void phk_dequant_int4_f32(const uint8_t *w, const uint16_t *sz, float *out, int64_t r0, int64_t r1, int64_t N,
                          int64_t K, int64_t GS, int threads) {
    const int gl = __builtin_ctzll((unsigned long long)GS);  /* GS a power of two: groups by shifts */
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = r0; n < r1; n++) {
        const uint16_t *row = int4_row_words(w, n, K);
        float *o = out + (n - r0) * K;
        for (int64_t k = 0; k < K; k += 128) {
            float s[4], z[4];  /* nibble i's 32 columns lie in one group (GS >= 64): its scale and zero */
            for (int i = 0; i < 4; i++) {
                const uint16_t *e = sz + (((k + 32 * i) >> gl) * N + n) * 2;
                s[i] = f32_of_bf16(e[0]);
                z[i] = f32_of_bf16(e[1]);
            }
            for (int64_t t = 0; t < 32; t += PHK_VL) {  /* words t .. t + PHK_VL of the chunk */
                vu words = vu_load_u16(row + k + t);
                for (int i = 0; i < 4; i++) {  /* nibble i: columns k + 32 i + t .. + PHK_VL */
                    vf c = __builtin_convertvector((vi)((words >> (4 * i)) & 15u) - 8, vf);
                    vf_store(o + k + 32 * i + t, c * s[i] + z[i]);
                }
            }
        }
    }
}
#else
int phk_has_int4(void) { return 0; }
phk_status_t phk_linear_int4(const uint16_t *x, const uint8_t *w, const uint16_t *sz, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int64_t GS, int threads) { return PHK_ERR_UNSUPPORTED; }
void phk_dequant_int4_f32(const uint8_t *w, const uint16_t *sz, float *out, int64_t r0, int64_t r1, int64_t N,
                          int64_t K, int64_t GS, int threads) {}
#endif
