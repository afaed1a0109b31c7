/* C-level checks of the portable kernels (phikit/cpu/native/portable.c, int4.c) against scalar references in
   double, for any target: tests/test_native_c.py builds this with the library's sources for each x86-64 level the
   host runs, and cross-compiled for aarch64 to run under qemu-aarch64. Prints one line per check; exits 1 on any
   failure.

   The references compute each output in double from the same bf16 / int8 / 4-bit values. A kernel's output is that
   value rounded to bf16 once, up to its fp32 summation order, so it must lie within one bf16 step (2^-7 relative,
   plus a small absolute term for outputs near 0); dequantized rows must equal torch's fp32 formula bit for bit. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "phk_abi.h"

static uint32_t rng_state = 12345u;
static float uniform(void) {  /* in [-1, 1) */
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}
static float f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static uint16_t bf16(float f) {  /* round to nearest even */
    uint32_t u; memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static uint16_t *random_bf16(int64_t n, float scale) {
    uint16_t *p = malloc(sizeof(uint16_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) p[i] = bf16(uniform() * scale);
    return p;
}

static int failures = 0;
static void report(const char *what, double worst, double limit) {
    int ok = worst <= limit;
    failures += !ok;
    printf("%s %s: worst %.3g (limit %.3g)\n", ok ? "ok  " : "FAIL", what, worst, limit);
}
/* the worst excess of |y - ref| over one bf16 step of ref, as a fraction of that step (<= 1 passes) */
static double bf16_excess(const uint16_t *y, const double *ref, int64_t n, double atol) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double step = fabs(ref[i]) * 0x1p-7 + atol;
        double e = fabs((double)f32(y[i]) - ref[i]) / step;
        worst = e > worst ? e : worst;
    }
    return worst;
}

static void check_bf16(int64_t M, int64_t N, int64_t K) {
    uint16_t *x = random_bf16(M * K, 1), *w = random_bf16(N * K, 0.1f), *b = random_bf16(N, 1);
    uint16_t *y = malloc(2 * (size_t)(M * N));
    double *ref = malloc(sizeof(double) * (size_t)(M * N));
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = f32(b[n]);
            for (int64_t k = 0; k < K; k++) s += (double)f32(x[m * K + k]) * f32(w[n * K + k]);
            ref[m * N + n] = s;
        }
    char what[96];
    snprintf(what, sizeof what, "linear_bf16 M=%lld N=%lld K=%lld", (long long)M, (long long)N, (long long)K);
    if (phk_linear_bf16(x, w, b, y, M, N, K, 2) != PHK_OK) report(what, INFINITY, 1);
    else report(what, bf16_excess(y, ref, M * N, 1e-6), 1);
    free(x); free(w); free(b); free(y); free(ref);
}

static void check_int8(int64_t M, int64_t N, int64_t K) {
    uint16_t *x = random_bf16(M * K, 1), *s = random_bf16(N, 0.01f), *b = random_bf16(N, 1);
    int8_t *q = malloc((size_t)(N * K)), *packed = malloc((size_t)(N * K));
    for (int64_t i = 0; i < N * K; i++) q[i] = (int8_t)(uniform() * 127);
    for (int64_t n = 0; n < N; n++)  /* phikit's layout: [N/4, K/64, 4, 64] */
        for (int64_t k = 0; k < K; k++)
            packed[(n / 4) * 4 * K + (k / 64) * 256 + (n % 4) * 64 + k % 64] = q[n * K + k];
    uint16_t *y = malloc(2 * (size_t)(M * N));
    double *ref = malloc(sizeof(double) * (size_t)(M * N));
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (double)f32(x[m * K + k]) * q[n * K + k];
            ref[m * N + n] = acc * f32(s[n]) + f32(b[n]);
        }
    char what[96];
    snprintf(what, sizeof what, "linear_int8 M=%lld N=%lld K=%lld", (long long)M, (long long)N, (long long)K);
    if (phk_linear_int8(x, packed, s, b, y, M, N, K, 2) != PHK_OK) report(what, INFINITY, 1);
    else report(what, bf16_excess(y, ref, M * N, 1e-6), 1);
    float *rows = malloc(sizeof(float) * (size_t)(N * K));
    phk_dequant_int8_f32(packed, s, rows, 1, N, K, 2);
    double bad = 0;
    for (int64_t n = 1; n < N; n++)
        for (int64_t k = 0; k < K; k++) bad += rows[(n - 1) * K + k] != (float)q[n * K + k] * f32(s[n]);
    snprintf(what, sizeof what, "dequant_int8_f32 N=%lld K=%lld (values that differ)", (long long)N, (long long)K);
    report(what, bad, 0);
    free(x); free(s); free(b); free(q); free(packed); free(y); free(ref); free(rows);
}

static void check_int4(int64_t M, int64_t N, int64_t K, int64_t GS, int outliers) {
    uint16_t *x = random_bf16(M * K, 1), *b = random_bf16(N, 1), *sz = malloc(4 * (size_t)(K / GS * N));
    for (int64_t i = 0; i < K / GS * N; i++) {
        sz[2 * i] = bf16(fabsf(uniform()) * 0.02f + 1e-3f);
        sz[2 * i + 1] = bf16(uniform() * 0.01f);
    }
    uint8_t *q = malloc((size_t)(N * K)), *packed = calloc((size_t)(N * K / 2), 1);
    for (int64_t i = 0; i < N * K; i++) {
        rng_state = rng_state * 1664525u + 1013904223u;
        q[i] = (uint8_t)(rng_state >> 28);
    }
    for (int64_t n = 0; n < N; n++)  /* chunk of 128 columns: word j holds columns j, 32 + j, 64 + j, 96 + j */
        for (int64_t k = 0; k < K; k++) {
            int64_t chunk = k / 128, c = k % 128, word = c % 32, nibble = c / 32;
            int64_t byte = (n / 4) * 4 * (K / 2) + chunk * 256 + (n % 4) * 64 + word * 2 + nibble / 2;
            packed[byte] |= (uint8_t)(q[n * K + k] << (4 * (nibble % 2)));
        }
    if (outliers)  /* per 64-column block one value 2^10 times the others: those others lose bits in 16-bit form */
        for (int64_t i = 0; i < M * K; i++) x[i] = bf16(i % 64 == 5 ? 300.f : uniform() * 0.3f);
    uint16_t *y = malloc(2 * (size_t)(M * N));
    double *ref = malloc(sizeof(double) * (size_t)(M * N)), *bound = calloc((size_t)(M * N), sizeof(double));
    float *w = malloc(sizeof(float) * (size_t)(N * K));  /* torch's fp32 dequantization: a multiply, then an add */
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            const uint16_t *e = sz + ((k / GS) * N + n) * 2;
            float t = (float)((int)q[n * K + k] - 8) * f32(e[0]);
            w[n * K + k] = t + f32(e[1]);
        }
    double top = 0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = f32(b[n]);
            for (int64_t k = 0; k < K; k++) acc += (double)f32(x[m * K + k]) * w[n * K + k];
            ref[m * N + n] = acc;
            top = fabs(acc) > top ? fabs(acc) : top;
            /* the portable kernel's stated rounding of x: at most 2^(E - 15) per value, E the exponent of its
               block's largest |x| (64 columns, 128 for the x86 byte kernel at GS >= 128: the wider bound covers
               both), times |scale * q| (the scale * 8 and zero terms use x itself) */
            for (int64_t k0 = 0; k0 < K; k0 += 128) {
                double big = 0;
                for (int64_t k = k0; k < k0 + 128; k++) {  /* (not fmax: gcc 12's aarch64 vectorizer crashes on it) */
                    double a = fabs(f32(x[m * K + k]));
                    big = a > big ? a : big;
                }
                double ulp = big > 0 ? ldexp(1.0, ilogb(big) - 15) : 0;
                for (int64_t k = k0; k < k0 + 128; k++)
                    bound[m * N + n] += ulp * fabs(f32(sz[((k / GS) * N + n) * 2]) * q[n * K + k]);
            }
        }
    char what[96];
    snprintf(what, sizeof what, "linear_int4 M=%lld N=%lld K=%lld GS=%lld%s", (long long)M, (long long)N,
             (long long)K, (long long)GS, outliers ? " (outliers)" : "");
    if (phk_linear_int4(x, packed, sz, b, y, M, N, K, GS, 2) != PHK_OK) report(what, INFINITY, 1);
    else {
        /* within one bf16 step of each output, plus the stated rounding of x, plus fp32 sums: 2^-20 of the
           largest output (the AVX512-BF16 kernel's 128 + q offset costs more: tests/test_quantize.py) */
        double worst = 0;
        for (int64_t i = 0; i < M * N; i++) {
            double e = fabs((double)f32(y[i]) - ref[i]) / (fabs(ref[i]) * 0x1p-7 + bound[i] + top * 0x1p-20);
            worst = e > worst ? e : worst;
        }
        report(what, worst, 1);
    }
    float *rows = malloc(sizeof(float) * (size_t)(N * K));
    phk_dequant_int4_f32(packed, sz, rows, 2, N, N, K, GS, 2);
    double bad = 0;
    for (int64_t i = 0; i < (N - 2) * K; i++) bad += rows[i] != w[2 * K + i];
    snprintf(what, sizeof what, "dequant_int4_f32 N=%lld K=%lld GS=%lld (values that differ)", (long long)N,
             (long long)K, (long long)GS);
    report(what, bad, 0);
    free(x); free(b); free(sz); free(q); free(packed); free(y); free(ref); free(bound); free(w); free(rows);
}

static void check_attention(int64_t B, int64_t H, int64_t KV, int64_t S, int64_t D) {
    int64_t slots = S + 5;  /* a cache with room past S: strided views, as a decode step passes them */
    uint16_t *q = random_bf16(B * H * D, 1), *k = random_bf16(B * KV * slots * D, 1);
    uint16_t *v = random_bf16(B * KV * slots * D, 1), *out = malloc(2 * (size_t)(B * H * D));
    double *ref = malloc(sizeof(double) * (size_t)(B * H * D)), *p = malloc(sizeof(double) * (size_t)S);
    float scale = 1.0f / sqrtf((float)D);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const uint16_t *kp = k + (b * KV + h / (H / KV)) * slots * D, *vp = v + (b * KV + h / (H / KV)) * slots * D;
            double top = -INFINITY, total = 0;
            for (int64_t s = 0; s < S; s++) {
                double dot = 0;
                for (int64_t d = 0; d < D; d++) dot += (double)f32(q[(b * H + h) * D + d]) * f32(kp[s * D + d]);
                p[s] = dot * scale;
                top = p[s] > top ? p[s] : top;
            }
            for (int64_t s = 0; s < S; s++) total += p[s] = exp(p[s] - top);
            for (int64_t d = 0; d < D; d++) {
                double acc = 0;
                for (int64_t s = 0; s < S; s++) acc += p[s] * f32(vp[s * D + d]);
                ref[(b * H + h) * D + d] = acc / total;
            }
        }
    char what[96];
    snprintf(what, sizeof what, "attention_decode B=%lld H=%lld KV=%lld S=%lld D=%lld", (long long)B, (long long)H,
             (long long)KV, (long long)S, (long long)D);
    if (phk_attention_decode(q, k, v, out, B, H, KV, S, D, KV * slots * D, slots * D, D, KV * slots * D, slots * D, D,
                             scale, 2) != PHK_OK) report(what, INFINITY, 1);
    else report(what, bf16_excess(out, ref, B * H * D, 1e-3), 1);
    if (S > 1) {  /* the rows in reverse order, each from key 1 on and of its own length, in one call: each equals
                     phk_attention_decode over its own keys alone, bit for bit */
        int64_t *rows = malloc(sizeof(int64_t) * (size_t)B), *first = malloc(sizeof(int64_t) * (size_t)B);
        int64_t *len = malloc(sizeof(int64_t) * (size_t)B);
        uint16_t *batched = malloc(2 * (size_t)(B * H * D)), *alone = malloc(2 * (size_t)(H * D));
        for (int64_t b = 0; b < B; b++) rows[b] = B - 1 - b, first[b] = 1, len[b] = S - (b % 2 && S > 2);
        double bad = 0;
        if (phk_attention_decode_rows(q, k, v, batched, B, H, KV, S - 1, D, KV * slots * D, slots * D, D,
                                      KV * slots * D, slots * D, D, rows, first, len, scale, 2) != PHK_OK) bad = INFINITY;
        for (int64_t b = 0; b < B && bad == 0; b++) {
            const int64_t at = rows[b] * KV * slots * D + first[b] * D;
            phk_attention_decode(q + b * H * D, k + at, v + at, alone, 1, H, KV, len[b] - first[b], D, KV * slots * D,
                                 slots * D, D, KV * slots * D, slots * D, D, scale, 1);
            for (int64_t i = 0; i < H * D; i++) bad += alone[i] != batched[b * H * D + i];
        }
        snprintf(what, sizeof what, "attention_decode_rows B=%lld S=%lld (values unlike each row alone)", (long long)B,
                 (long long)S);
        report(what, bad, 0);
        free(rows); free(first); free(len); free(batched); free(alone);
    }
    free(q); free(k); free(v); free(out); free(ref); free(p);
}

int main(void) {
    if (!phk_available()) {
        printf("FAIL phk_available() is 0: this build has no vector kernels\n");
        return 1;
    }
    check_bf16(1, 40, 192);
    check_bf16(3, 257, 208);  /* rows left over after the 4-row blocks; K % 32 == 16 */
    check_bf16(7, 36, 400);   /* several rows, two at a time, and an odd one */
    check_int8(1, 40, 256);
    check_int8(5, 12, 128);
    for (int64_t gs = 64; gs <= 256; gs *= 2) {
        check_int4(1, 24, 512, gs, 0);
        check_int4(3, 8, 256, gs, 0);
        check_int4(2, 8, 512, gs, 1);
    }
    check_attention(2, 4, 4, 37, 32);
    check_attention(1, 8, 2, 16, 64);
    check_attention(2, 6, 3, 1, 96);
    check_attention(1, 2, 1, 300, 128);
    check_attention(5, 8, 2, 45, 64);
    printf("%d failed\n", failures);
    return failures != 0;
}
