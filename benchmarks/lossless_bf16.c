/* Lossless 12-bit bf16 weights for the batch-1 matvec: a measured lever, not shipped (benchmarks/RESULTS.md).

   A decode step streams every weight once, so fewer bytes per weight is the one way past the memory roofline that
   keeps bf16's numbers. Within 64 consecutive weights of a row, exponents span few octaves: each weight keeps its
   sign and 7 mantissa bits in a byte and its exponent as a 4-bit code above the group's base (max exponent - 15);
   code 0 is zero, or a weight more than 2^14 below the group's largest (0.008% of normal(0, 0.02) weights; they
   would be added back from a sparse list, which this prototype leaves out). 12.1 bits per weight instead of 16.
   The kernel rebuilds each bf16 exactly in registers (two byte selects and an interleave) and runs the same
   vdpbf16ps as the plain kernel, whose loop (8 rows side by side, prefetching the next block) it is timed against.

   Build and run (AVX512-BF16 CPU; N x K of one weight, copies totalling 1.2 GB so every pass reads from memory):
     cc -O3 -march=native -fopenmp benchmarks/lossless_bf16.c -o /tmp/lossless_bf16 -lm
     OMP_NUM_THREADS=2 /tmp/lossless_bf16 16384 3072
   It prints the fraction of exception weights, the largest difference from the plain kernel (the exceptions and
   fp32 summation order), then per pass both kernels' rate in bf16-equivalent GB/s and their ratio.
   ONE=1 times one cache-resident matrix 2000 times instead: the kernels' compute rate. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <omp.h>
static inline uint16_t bf16_of_f32(float f) { uint32_t u; memcpy(&u, &f, 4); u += 0x7fffu + ((u >> 16) & 1u); return (uint16_t)(u >> 16); }
static double now(void) { return omp_get_wtime(); }
#define AHEAD 2048
/* plain bf16 kernel (as phikit's) */
void plain(const uint16_t *x, const uint16_t *w, float *y, int64_t N, int64_t K) {
    #pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 8) {
        const uint16_t *w0 = w + n0 * K;
        __m512 acc[8]; for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
        for (int64_t k = 0; k < K; k += 32) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
            int64_t ahead = k + AHEAD / 2; const uint16_t *pw = ahead < K ? w0 + ahead : w0 + ahead + 7 * K;
            for (int r = 0; r < 8; r++) {
                _mm_prefetch((const char *)(pw + r * K), _MM_HINT_T1);
                acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(w0 + r * K + k), xv);
            }
        }
        for (int r = 0; r < 8; r++) y[n0 + r] = _mm512_reduce_add_ps(acc[r]);
    }
}
/* c12: per (8-row block, 64-col group): 8 x 64 SM bytes, then 8 x 32 nibble bytes (768 B); bases [N/8][K/64][8] */
#ifndef C12_AHEAD
#define C12_AHEAD 16384
#endif
void c12(const uint16_t *xp, const uint8_t *data, const uint8_t *bases, float *y, int64_t N, int64_t K) {
    int64_t G = K / 64;
    const __m512i m0f = _mm512_set1_epi8(0x0f);
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < N / 8; b++) {
        const uint8_t *p = data + b * G * 768, *bs = bases + b * G * 8;
        __m512 acc[8]; for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
        for (int64_t g = 0; g < G; g++, p += 768, bs += 8) {
            __m512bh x0 = (__m512bh)_mm512_loadu_si512(xp + g * 64), x1 = (__m512bh)_mm512_loadu_si512(xp + g * 64 + 32);
            for (int i = 0; i < 12; i++) _mm_prefetch((const char *)p + C12_AHEAD + 64 * i, _MM_HINT_T1);
            for (int r = 0; r < 8; r++) {
                __m512i sm = _mm512_load_si512(p + r * 64);
                __m256i e = _mm256_load_si256((const __m256i *)(p + 512 + r * 32));
                __m512i ee = _mm512_inserti64x4(_mm512_castsi256_si512(e), _mm256_srli_epi16(e, 4), 1);
                ee = _mm512_and_si512(ee, m0f);  /* codes: bytes 0-31 low nibbles, 32-63 high nibbles */
                __mmask64 nz = _mm512_test_epi8_mask(ee, ee);
                __m512i ex = _mm512_maskz_add_epi8(nz, ee, _mm512_set1_epi8((char)bs[r]));
                __m512i lo = _mm512_ternarylogic_epi32(_mm512_set1_epi8(0x7f), sm, _mm512_slli_epi16(ex, 7), 0xCA); /* a?b:c */
                __m512i hi = _mm512_ternarylogic_epi32(_mm512_set1_epi8((char)0x80), sm, _mm512_srli_epi16(ex, 1), 0xCA);
                acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_unpacklo_epi8(lo, hi), x0);
                acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_unpackhi_epi8(lo, hi), x1);
            }
        }
        for (int r = 0; r < 8; r++) y[b * 8 + r] = _mm512_reduce_add_ps(acc[r]);
    }
}
/* encode one N x K bf16 matrix; weight i of a group: byte i of SM / code i (code i< 32: low nibble of byte i, else high nibble of byte i-32) */
int64_t encode(const uint16_t *w, uint8_t *data, uint8_t *bases, int64_t N, int64_t K) {
    int64_t G = K / 64, exc = 0;
    for (int64_t n = 0; n < N; n++) for (int64_t g = 0; g < G; g++) {
        const uint16_t *src = w + n * K + g * 64;
        int mx = 0; for (int i = 0; i < 64; i++) { int e = (src[i] >> 7) & 0xff; if (e > mx) mx = e; }
        int base = mx - 15 < 0 ? 0 : mx - 15;
        int64_t b = n / 8, r = n % 8;
        uint8_t *p = data + (b * G + g) * 768; bases[(b * G + g) * 8 + r] = (uint8_t)base;
        uint8_t *sm = p + r * 64, *nb = p + 512 + r * 32;
        memset(nb, 0, 32);
        for (int i = 0; i < 64; i++) {
            int e = (src[i] >> 7) & 0xff, s = src[i] >> 15, m = src[i] & 0x7f, code = e > base ? e - base : 0;
            if (code == 0 && (e || m)) { exc++; sm[i] = 0; } else sm[i] = (uint8_t)(s << 7 | m);
            if (i < 32) nb[i] |= code; else nb[i - 32] |= code << 4;
        }
    }
    return exc;
}
/* the unpacklo/hi order: w0 = weights {0-7,16-23,32-39,48-55}, w1 = the rest */
void permute_x(const uint16_t *x, uint16_t *xp, int64_t K) {
    for (int64_t g = 0; g < K / 64; g++) for (int i = 0; i < 64; i++) {
        int half = i / 32, j = i % 32, lane = j / 8, t = j % 8;  /* xp slot i <- weight lane*16 + half*8 + t */
        xp[g * 64 + i] = x[g * 64 + lane * 16 + half * 8 + t];
    }
}
int main(int argc, char **argv) {
    int64_t N = atol(argv[1]), K = atol(argv[2]);
    int copies = (int)(1.2e9 / (N * K * 2)); if (copies < 2) copies = 2; if (getenv("ONE")) copies = 1;
    uint16_t **ws = malloc(copies * sizeof(void *)); uint8_t **ds = malloc(copies * sizeof(void *)), **bs = malloc(copies * sizeof(void *));
    srand(1);
    int64_t exc = 0;
    for (int c = 0; c < copies; c++) {
        ws[c] = aligned_alloc(64, N * K * 2);
        for (int64_t i = 0; i < N * K; i++) { float u1 = (rand() + 1.f) / (RAND_MAX + 2.f), u2 = rand() / (float)RAND_MAX;
            ws[c][i] = bf16_of_f32(0.02f * sqrtf(-2 * logf(u1)) * cosf(6.2831853f * u2)); }
        ds[c] = aligned_alloc(64, N * K / 64 * 768 / 8); bs[c] = aligned_alloc(64, N * K / 64 + 64);
        exc += encode(ws[c], ds[c], bs[c], N, K);
    }
    uint16_t *x = aligned_alloc(64, K * 2), *xp = aligned_alloc(64, K * 2);
    for (int64_t i = 0; i < K; i++) x[i] = bf16_of_f32((float)rand() / RAND_MAX - 0.5f);
    permute_x(x, xp, K);
    float *y1 = aligned_alloc(64, N * 4), *y2 = aligned_alloc(64, N * 4);
    plain(x, ws[0], y1, N, K); c12(xp, ds[0], bs[0], y2, N, K);
    double err = 0; for (int64_t i = 0; i < N; i++) err = fmax(err, fabs(y1[i] - y2[i]));
    printf("%ldx%ld copies %d exceptions %.4f%% maxdiff %g\n", N, K, copies, 100.0 * exc / (copies * N * K), err);
    double tp[9], tc[9];
    for (int it = 0; it < 9; it++) {
        double t = now(); for (int c = 0; c < (getenv("ONE") ? 2000 : copies); c++) plain(x, ws[c % copies], y1, N, K); tp[it] = now() - t;
        t = now(); for (int c = 0; c < (getenv("ONE") ? 2000 : copies); c++) c12(xp, ds[c % copies], bs[c % copies], y2, N, K); tc[it] = now() - t;
    }
    double bytes = (double)(getenv("ONE") ? 2000 : copies) * N * K * 2;
    for (int it = 1; it < 9; it++) printf("plain %.1f GB/s  c12 %.1f GB/s-equiv  ratio %.3f\n", bytes / tp[it] / 1e9, bytes / tc[it] / 1e9, tp[it] / tc[it]);
    return 0;
}
