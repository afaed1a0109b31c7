/* Shared by phikit's native sources (portable.c, kernels.c, decode_step.c, attention_prefill.c, lossless.c): bf16
   conversions, an output's one bf16 rounding and checked allocation; the vector layer is vec.h, the exported
   prototypes and structs are in phk_abi.h. */
#ifndef PHK_H
#define PHK_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "phk_abi.h"

/* malloc / aligned_alloc that record a failure's size for phk_failed_alloc_bytes (kernels.c); NULL on failure. An
   exported function that allocates checks the result and returns PHK_ERR_NOMEM, having freed what it holds. */
__attribute__((visibility("hidden"))) void *phk_malloc(size_t bytes);
__attribute__((visibility("hidden"))) void *phk_aligned_alloc(size_t align, size_t bytes);

static inline float f32_of_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t bf16_of_f32(float f) {  /* round to nearest even, NaN stays NaN (as torch) */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* y[m, n] = v (+ bias[n]), rounded to bf16 once */
/* row n of an int4 weight [N, K] in phikit's layout, as the 16-bit words of its first chunk (chunk c at + 128 c) */
static inline const uint16_t *int4_row_words(const uint8_t *w, int64_t n, int64_t K) {
    return (const uint16_t *)(w + (n / 4) * 2 * K + (n % 4) * 64);
}
static inline void store_row(uint16_t *y, int64_t m, int64_t N, int64_t n, float v, const uint16_t *bias) {
    y[m * N + n] = bf16_of_f32(v + (bias ? f32_of_bf16(bias[n]) : 0.f));
}

#if defined(__AVX512F__)
#include <immintrin.h>
static inline __m512 load_bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline __m512 load_i8x16(const int8_t *p) {  /* 16 int8 -> fp32 */
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
#endif
#if defined(__AVX512BF16__)
/* the 16 values of an int4 group, (q - 8) * scale + zero in fp32 rounded to bf16, as a vpermw table (entries 16..31
   unused: indices are < 16); e = the group's (scale, zero). The dequantized rows (kernels.c) and the GEMM tiles
   (gemm_tiles.c) both build them here, so both give the same bits. */
static inline __m512i int4_bf16_table(const uint16_t *e) {
    const __m512 q8 = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    __m512 v = _mm512_add_ps(_mm512_mul_ps(q8, _mm512_set1_ps(f32_of_bf16(e[0]))), _mm512_set1_ps(f32_of_bf16(e[1])));
    return _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(v));
}
#endif
#endif
