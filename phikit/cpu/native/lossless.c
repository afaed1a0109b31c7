/* Lossless 12-bit bf16 weights ("c12") for the batch-1 matrix-vector product: the same bf16 values in 3/4 of the bytes.

   A decode step reads every weight once, so past the memory roofline only fewer bytes per weight help. Within 64
   consecutive weights of a row, exponents span few octaves: each weight keeps its sign and 7 mantissa bits in one
   byte and its exponent as a 4-bit code above the row-group's base (largest exponent - 15). Code 0 is exponent 0
   (zero and subnormals, exact). A weight more than 14 octaves below its group's largest (~1 in 10^4 of normal
   weights) is an exception: its exact bf16 value is kept in a sorted side list and patched in before use.
   12.1 bits per weight instead of 16.

   Exact: the kernel rebuilds each 32-weight chunk in registers in column order and feeds it to the same vdpbf16ps,
   in the same order, against the same activations as phk_linear_bf16 (kernels.c), so its outputs equal that
   kernel's bit for bit.

   Layout, for W bf16 [N, K] (N % 8 == 0, K % 64 == 0), G = K / 64 groups, B = N / 8 blocks of 8 rows:
     data  uint8 [B, G, 768]: per (block, group) 8 rows x 64 sign-mantissa bytes, then 8 rows x 32 code bytes
           (bytes 0-31 of a row's codes are the low nibbles, 32-63 the high ones). Weight i of the group sits at byte
           position pos(i): (i % 32 / 8) * 16 + (i / 32) * 8 + i % 8, the order in which unpacklo / unpackhi_epi8
           of two byte vectors yield columns 0-31 and 32-63.
     bases uint8 [B, G, 8]: each row's base exponent in the group.
     aux   int64 [B + 1 + E]: aux[b] .. aux[b + 1] index block b's exceptions among the E records that follow, each
           value | column-in-group << 16 | row-in-block << 24 | group << 32, sorted by (group, row, column).
   A block's data is contiguous and the next block follows, so a thread's rows are one stream (prefetched ahead). */
#include "phk.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define C12_BLOCK 768
#ifndef C12_AHEAD
#define C12_AHEAD 16384 /* bytes of the stream prefetched ahead, into L2 */
#endif

int phk_has_c12(void) { return 1; }

static inline int c12_pos(int i) { return (i % 32 / 8) * 16 + (i / 32) * 8 + i % 8; }

/* One row-group (64 weights at src) -> its base, sign-mantissa bytes and codes; returns its exceptions, and writes
   their records when `rec` is given. */
static int64_t encode_group(const uint16_t *src, uint8_t *sm, uint8_t *codes, uint8_t *base_out, int64_t *rec,
                            int64_t g, int r) {
    int mx = 0;
    for (int i = 0; i < 64; i++) { int e = (src[i] >> 7) & 0xff; if (e > mx) mx = e; }
    int base = mx > 15 ? mx - 15 : 0;
    *base_out = (uint8_t)base;
    memset(codes, 0, 32);
    int64_t exc = 0;
    for (int i = 0; i < 64; i++) {
        int e = (src[i] >> 7) & 0xff, p = c12_pos(i), code = e > base ? e - base : 0;
        sm[p] = (uint8_t)((src[i] >> 8 & 0x80) | (src[i] & 0x7f));
        codes[p % 32] |= (uint8_t)(p < 32 ? code : code << 4);
        if (code == 0 && e != 0) {  /* below the group's 15 octaves: kept exactly in the side list */
            if (rec) rec[exc] = (int64_t)src[i] | (int64_t)i << 16 | (int64_t)r << 24 | g << 32;
            exc++;
        }
    }
    return exc;
}

/* Pass 1: data and bases of W, and each block's number of exceptions in counts [B]. */
void phk_c12_encode(const uint16_t *w, uint8_t *data, uint8_t *bases, int64_t *counts, int64_t N, int64_t K,
                    int threads) {
    int64_t G = K / 64;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < N / 8; b++) {
        int64_t exc = 0;
        for (int64_t g = 0; g < G; g++) {
            uint8_t *p = data + (b * G + g) * C12_BLOCK;
            for (int r = 0; r < 8; r++)
                exc += encode_group(w + (b * 8 + r) * K + g * 64, p + r * 64, p + 512 + r * 32,
                                    bases + (b * G + g) * 8 + r, NULL, g, r);
        }
        counts[b] = exc;
    }
}

/* Pass 2: the exception records, into aux (whose first B + 1 entries the caller filled with the running offsets). */
void phk_c12_exceptions(const uint16_t *w, int64_t *aux, int64_t N, int64_t K, int threads) {
    int64_t G = K / 64, B = N / 8;
    int64_t *recs = aux + B + 1;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < B; b++) {
        if (aux[b + 1] == aux[b]) continue;
        int64_t *rec = recs + aux[b];
        uint8_t sm[64], codes[32], base;
        for (int64_t g = 0; g < G; g++)
            for (int r = 0; r < 8; r++)
                rec += encode_group(w + (b * 8 + r) * K + g * 64, sm, codes, &base, rec, g, r);
    }
}

/* Row r of a (block, group) chunk as two vectors of 32 bf16 weights in column order (exceptions not yet patched). */
static inline void c12_row(const uint8_t *p, int r, uint8_t base, __m512i *v0, __m512i *v1) {
    const __m512i m0f = _mm512_set1_epi8(0x0f);
    __m512i sm = _mm512_loadu_si512(p + r * 64);
    __m256i e = _mm256_loadu_si256((const __m256i *)(p + 512 + r * 32));
    __m512i code = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(e), _mm256_srli_epi16(e, 4), 1), m0f);
    __m512i ex = _mm512_maskz_add_epi8(_mm512_test_epi8_mask(code, code), code, _mm512_set1_epi8((char)base));
    /* low byte: the exponent's lowest bit, then 7 mantissa bits; high byte: the sign, then the exponent's upper 7 */
    __m512i lo = _mm512_ternarylogic_epi32(_mm512_set1_epi8(0x7f), sm, _mm512_slli_epi16(ex, 7), 0xCA);
    __m512i hi = _mm512_ternarylogic_epi32(_mm512_set1_epi8((char)0x80), sm, _mm512_srli_epi16(ex, 1), 0xCA);
    *v0 = _mm512_unpacklo_epi8(lo, hi);
    *v1 = _mm512_unpackhi_epi8(lo, hi);
}

/* The same with row r's exceptions in this group patched in; *e advances past them. */
static inline void c12_row_patched(const uint8_t *p, int r, uint8_t base, const int64_t *recs, int64_t *e,
                                   int64_t end, int64_t g, __m512i *v0, __m512i *v1) {
    uint16_t tmp[64] __attribute__((aligned(64)));
    c12_row(p, r, base, v0, v1);
    if (*e < end && recs[*e] >> 32 == g && (recs[*e] >> 24 & 0xff) == r) {
        _mm512_store_si512(tmp, *v0);
        _mm512_store_si512(tmp + 32, *v1);
        for (; *e < end && recs[*e] >> 32 == g && (recs[*e] >> 24 & 0xff) == r; ++*e)
            tmp[recs[*e] >> 16 & 0xff] = (uint16_t)(recs[*e] & 0xffff);
        *v0 = _mm512_load_si512(tmp);
        *v1 = _mm512_load_si512(tmp + 32);
    }
}

/* y [M, N] = x [M, K] @ W^T (+ bias), W in the c12 layout; bf16 in and out, each output rounded once. */
void phk_linear_c12(const uint16_t *x, const uint8_t *data, const uint8_t *bases, const int64_t *aux,
                    const uint16_t *bias, uint16_t *y, int64_t M, int64_t N, int64_t K, int threads) {
    int64_t G = K / 64, B = N / 8;
    const int64_t *recs = aux + B + 1;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t m = 0; m < M; m++) {
            const uint16_t *xm = x + m * K;
            const uint8_t *p = data + b * G * C12_BLOCK, *bs = bases + b * G * 8;
            int64_t e = aux[b], end = aux[b + 1];
            __m512 acc[8];
            for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
            for (int64_t g = 0; g < G; g++, p += C12_BLOCK, bs += 8) {
                __m512bh x0 = (__m512bh)_mm512_loadu_si512(xm + g * 64);
                __m512bh x1 = (__m512bh)_mm512_loadu_si512(xm + g * 64 + 32);
                if (m == 0)
                    for (int i = 0; i < C12_BLOCK / 64; i++) _mm_prefetch((const char *)p + C12_AHEAD + 64 * i, _MM_HINT_T1);
                __m512i v0, v1;
                if (e < end && recs[e] >> 32 == g) {  /* a group with exceptions (a few percent of them) */
                    for (int r = 0; r < 8; r++) {
                        c12_row_patched(p, r, bs[r], recs, &e, end, g, &v0, &v1);
                        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)v0, x0);
                        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)v1, x1);
                    }
                } else {
                    for (int r = 0; r < 8; r++) {
                        c12_row(p, r, bs[r], &v0, &v1);
                        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)v0, x0);
                        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)v1, x1);
                    }
                }
            }
            for (int r = 0; r < 8; r++) {
                float v = _mm512_reduce_add_ps(acc[r]);
                int64_t n = b * 8 + r;
                y[m * N + n] = bf16_of_f32(v + (bias ? f32_of_bf16(bias[n]) : 0.f));
            }
        }
    }
}

/* Rows [r0, r1) of W back to bf16 out [r1 - r0, K] (a prefill's GEMM slices, and state_dict). */
void phk_c12_decode_rows(const uint8_t *data, const uint8_t *bases, const int64_t *aux, uint16_t *out,
                         int64_t r0, int64_t r1, int64_t N, int64_t K, int threads) {
    int64_t G = K / 64, B = N / 8;
    const int64_t *recs = aux + B + 1;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = r0; n < r1; n++) {
        int64_t b = n / 8, r = n % 8, e = aux[b], end = aux[b + 1];
        uint16_t *row = out + (n - r0) * K;
        for (int64_t g = 0; g < G; g++) {
            __m512i v0, v1;
            const uint8_t *p = data + (b * G + g) * C12_BLOCK;
            c12_row(p, (int)r, bases[(b * G + g) * 8 + r], &v0, &v1);
            _mm512_storeu_si512(row + g * 64, v0);
            _mm512_storeu_si512(row + g * 64 + 32, v1);
        }
        for (; e < end; e++)
            if ((recs[e] >> 24 & 0xff) == r)
                row[(recs[e] >> 32) * 64 + (recs[e] >> 16 & 0xff)] = (uint16_t)(recs[e] & 0xffff);
    }
}
#else
/* stubs of the same signatures (phk_abi.h): phk_has_c12() is 0, so Python calls none of them */
int phk_has_c12(void) { return 0; }
void phk_c12_encode(const uint16_t *w, uint8_t *data, uint8_t *bases, int64_t *counts, int64_t N, int64_t K,
                    int threads) {}
void phk_c12_exceptions(const uint16_t *w, int64_t *aux, int64_t N, int64_t K, int threads) {}
void phk_linear_c12(const uint16_t *x, const uint8_t *data, const uint8_t *bases, const int64_t *aux,
                    const uint16_t *bias, uint16_t *y, int64_t M, int64_t N, int64_t K, int threads) {}
void phk_c12_decode_rows(const uint8_t *data, const uint8_t *bases, const int64_t *aux, uint16_t *out,
                         int64_t r0, int64_t r1, int64_t N, int64_t K, int threads) {}
#endif
