/* phikit's thin per-ISA vector layer. The portable kernels (portable.c) are written once on these types and helpers
   and compiled per CPU level (phikit/cpu/kernels.py, compile_flags): the same source becomes AVX-512 (16 fp32
   lanes), AVX2 + FMA (8 lanes) or aarch64 NEON (4 lanes) code.

   Almost everything is GCC / clang vector extensions (`+ - * & | << >>` on whole vectors, `__builtin_convertvector`
   between same-width lanes), which every target compiles to its own instructions. An intrinsic per ISA only where
   the extensions fall short: the fused multiply-add (the library is built with -ffp-contract=off, so that elementwise
   kernels round as PyTorch does and `a * b + c` is never fused behind our back), min / max, the widening loads, lane
   sums, bf16 stores and 16-bit multiply-adds. Without one of these ISAs PHK_VEC is 0 and the portable kernels
   compile to stubs.

   Rounding: every product of two bf16 values (or of an int8 / 4-bit code and a bf16 value) is exact in fp32, so the
   kernels differ from PyTorch's fp32 reference only in the order of the fp32 sums: per lane in column order, then
   across lanes by halving (vf_sum, the order of _mm512_reduce_add_ps). The one exception, the int4 kernel's 16-bit
   form of x, is stated in portable.c. */
#ifndef PHK_VEC_H
#define PHK_VEC_H
#include "phk.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)  /* the avx512 level's sets (not KNL's) */
#include <immintrin.h>
#define PHK_VL 16
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PHK_VL 8
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define PHK_VL 4
#endif

#ifdef PHK_VL
#define PHK_VEC 1
typedef float vf __attribute__((vector_size(PHK_VL * 4)));      /* PHK_VL fp32 lanes */
typedef int32_t vi __attribute__((vector_size(PHK_VL * 4)));
typedef uint32_t vu __attribute__((vector_size(PHK_VL * 4)));
typedef uint16_t vu16 __attribute__((vector_size(PHK_VL * 2)));  /* PHK_VL bf16 / 16-bit words */
typedef int8_t vi8 __attribute__((vector_size(PHK_VL)));

static inline vf vf_set1(float c) {  /* not (vf){0} + c: that adds 0.0 (-0.0 + 0.0 is +0.0), an op per call */
#if PHK_VL == 16
    return (vf)_mm512_set1_ps(c);
#elif PHK_VL == 8
    return (vf)_mm256_set1_ps(c);
#else
    return (vf)vdupq_n_f32(c);
#endif
}
static inline vf vf_zero(void) { return (vf){0}; }
static inline vf vf_load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vf_store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vu vu_load(const void *p) { vu v; memcpy(&v, p, sizeof v); return v; }

/* The widening loads are intrinsics: GCC 12 builds __builtin_convertvector of narrow lanes out of lane inserts. */
/* PHK_VL bf16 values -> fp32 (exact: the 16 bits become the high half) */
static inline vf vf_load_bf16(const uint16_t *p) {
#if PHK_VL == 16
    return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#elif PHK_VL == 8
    return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
#else
    return (vf)vshll_n_u16(vld1_u16(p), 16);
#endif
}
/* PHK_VL int8 values -> fp32 (exact) */
static inline vf vf_load_i8(const int8_t *p) {
#if PHK_VL == 16
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif PHK_VL == 8
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#else
    int32_t four;
    memcpy(&four, p, 4);
    int16x8_t wide = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(four)));
    return (vf)vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)));
#endif
}
/* PHK_VL 16-bit words -> 32-bit lanes, in order */
static inline vu vu_load_u16(const uint16_t *p) {
#if PHK_VL == 16
    return (vu)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
#elif PHK_VL == 8
    return (vu)_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
#else
    return (vu)vmovl_u16(vld1_u16(p));
#endif
}

/* a * b + c, rounded once */
static inline vf vf_fma(vf a, vf b, vf c) {
#if PHK_VL == 16
    return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif PHK_VL == 8
    return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    return (vf)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
#endif
}
/* 2 * PHK_VL int16 lanes (one vector's bytes): acc + the products a * b summed in pairs into acc's 32-bit lanes, exact
   (vpmaddwd; NEON's widening multiply-accumulate sums other pairs, but integers sum exactly in any order) */
typedef int16_t vs16 __attribute__((vector_size(PHK_VL * 4)));
typedef uint16_t vw16 __attribute__((vector_size(PHK_VL * 4)));
static inline vi vi_madd16(vs16 a, vs16 b, vi acc) {  /* one vpdpwssd where the CPU has VNNI (e.g. AVX2 + AVX-VNNI) */
#if PHK_VL == 16 && defined(__AVX512VNNI__)
    return (vi)_mm512_dpwssd_epi32((__m512i)acc, (__m512i)a, (__m512i)b);
#elif PHK_VL == 16
    return (vi)_mm512_add_epi32((__m512i)acc, _mm512_madd_epi16((__m512i)a, (__m512i)b));
#elif PHK_VL == 8 && defined(__AVXVNNI__)
    return (vi)_mm256_dpwssd_avx_epi32((__m256i)acc, (__m256i)a, (__m256i)b);
#elif PHK_VL == 8
    return (vi)_mm256_add_epi32((__m256i)acc, _mm256_madd_epi16((__m256i)a, (__m256i)b));
#else
    int32x4_t s = vmlal_s16((int32x4_t)acc, vget_low_s16((int16x8_t)a), vget_low_s16((int16x8_t)b));
    return (vi)vmlal_high_s16(s, (int16x8_t)a, (int16x8_t)b);
#endif
}

/* Byte dot products for the int4 byte kernel (int4.c): x86's vpmaddubsw (AVX2, AVX512-BW), or aarch64's SDOT / UDOT
   where the compiler targets the dot-product extension (Armv8.2 FEAT_DotProd: -march=native on such a CPU, or
   +dotprod). PHK_BYTE_DOT says whether this build has one. The kernel multiplies the 4-bit codes q (0..15, in bytes)
   by x's high bytes h (signed) and low bytes l (unsigned) and needs each row's sum of both exactly; vb_acc is what
   it accumulates a chunk in (16-bit pair sums on x86, 32-bit sums of four on ARM: integers, exact either way). */
#if PHK_VL >= 8  /* x86: vpmaddubsw (AVX2, AVX512-BW) */
#define PHK_BYTE_DOT 1
typedef uint8_t vu8 __attribute__((vector_size(PHK_VL * 4)));
typedef int8_t vs8 __attribute__((vector_size(PHK_VL * 4)));
/* unsigned bytes a times signed bytes b, adjacent pairs summed into 16-bit lanes (saturating: callers keep every pair
   sum far from 2^15) */
static inline vs16 vs16_maddubs(vu8 a, vs8 b) {
#if PHK_VL == 16
    return (vs16)_mm512_maddubs_epi16((__m512i)a, (__m512i)b);
#else
    return (vs16)_mm256_maddubs_epi16((__m256i)a, (__m256i)b);
#endif
}
typedef vs16 vb_acc;
static inline vb_acc vb_dot_hi(vb_acc acc, vu8 q, vs8 h) { return acc + vs16_maddubs(q, h); }
static inline vb_acc vb_dot_lo(vb_acc acc, vu8 l, vu8 q) { return acc + vs16_maddubs(l, (vs8)q); }
/* 256 * hi + lo, pairs of 16-bit lanes summed into 32-bit ones (the sums stay below 2^15: int4.c) */
static inline vi vb_sum(vb_acc hi, vb_acc lo) {
    return vi_madd16(hi, (vs16){0} + 256, vi_madd16(lo, (vs16){0} + 1, (vi){0}));
}
/* [a0 + a1, a2 + a3, b0 + b1, b2 + b3] in every 128-bit lane: vphaddd's result, built from two shuffles and an add
   (single-cycle ops, where vphaddd is 3-4 micro-ops on AMD cores; AVX-512 has no vphaddd) */
static inline vi vi_hadd(vi a, vi b) {
#if PHK_VL == 16
    return (vi)_mm512_shuffle_ps((__m512)a, (__m512)b, 0x88) + (vi)_mm512_shuffle_ps((__m512)a, (__m512)b, 0xdd);
#else
    return (vi)_mm256_shuffle_ps((__m256)a, (__m256)b, 0x88) + (vi)_mm256_shuffle_ps((__m256)a, (__m256)b, 0xdd);
#endif
}
/* the 16 bytes at p, as 4 32-bit lanes, in every 128-bit lane */
static inline vu vu_load4_every128(const void *p) {
#if PHK_VL == 16
    return (vu)_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p));
#else
    return (vu)_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
#endif
}
#elif defined(__ARM_FEATURE_DOTPROD)  /* aarch64 with SDOT / UDOT: 16 bytes a vector, four products per 32-bit lane */
#define PHK_BYTE_DOT 1
typedef uint8_t vu8 __attribute__((vector_size(16)));
typedef int8_t vs8 __attribute__((vector_size(16)));
typedef vi vb_acc;
static inline vb_acc vb_dot_hi(vb_acc acc, vu8 q, vs8 h) {  /* q <= 15: the same value as a signed byte */
    return (vi)vdotq_s32((int32x4_t)acc, (int8x16_t)q, (int8x16_t)h);
}
static inline vb_acc vb_dot_lo(vb_acc acc, vu8 l, vu8 q) {  /* unsigned x unsigned; a chunk's sums < 2^17 */
    return (vi)vdotq_u32((uint32x4_t)acc, (uint8x16_t)l, (uint8x16_t)q);
}
static inline vi vb_sum(vb_acc hi, vb_acc lo) { return hi * 256 + lo; }
static inline vi vi_hadd(vi a, vi b) { return (vi)vpaddq_s32((int32x4_t)a, (int32x4_t)b); }
static inline vu vu_load4_every128(const void *p) { return vu_load(p); }
#else
#define PHK_BYTE_DOT 0
#endif

/* c - a * b, rounded once */
static inline vf vf_fnma(vf a, vf b, vf c) { return vf_fma(-a, b, c); }
/* max(a, b) as x86's maxps: b where either is NaN (so max(-87, NaN) stays NaN, as in PyTorch) */
static inline vf vf_max(vf a, vf b) {
#if PHK_VL == 16
    return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif PHK_VL == 8
    return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#else
    return (vf)vmaxq_f32((float32x4_t)a, (float32x4_t)b);  /* NaN if either is NaN */
#endif
}

/* min(a, b) as x86's minps: b where either is NaN */
static inline vf vf_min(vf a, vf b) {
#if PHK_VL == 16
    return (vf)_mm512_min_ps((__m512)a, (__m512)b);
#elif PHK_VL == 8
    return (vf)_mm256_min_ps((__m256)a, (__m256)b);
#else
    return (vf)vminq_f32((float32x4_t)a, (float32x4_t)b);  /* NaN if either is NaN */
#endif
}

/* the sum of the lanes, halving: (lane i) += (lane i + w) for w = PHK_VL / 2, ..., 1 (_mm512_reduce_add_ps's order) */
static inline float vf_sum(vf v) {
#if PHK_VL == 16
    return _mm512_reduce_add_ps((__m512)v);
#elif PHK_VL == 8
    __m128 h = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#else
    float32x2_t h = vadd_f32(vget_low_f32((float32x4_t)v), vget_high_f32((float32x4_t)v));
    return vget_lane_f32(h, 0) + vget_lane_f32(h, 1);
#endif
}

/* the bf16 values in the high halves of a vector's lanes (fp32 already rounded to bf16) -> PHK_VL of them at p */
static inline void vf_store_bf16_hi(uint16_t *p, vf rounded) {
#if PHK_VL == 16
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(_mm512_srli_epi32((__m512i)rounded, 16)));
#elif PHK_VL == 8
    __m256i s = _mm256_srli_epi32((__m256i)rounded, 16);
    __m128i lo = _mm256_castsi256_si128(s), hi = _mm256_extracti128_si256(s, 1);
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(lo, hi));
#else
    vst1_u16(p, vshrn_n_u32((uint32x4_t)rounded, 16));
#endif
}

/* exp of each lane: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial, times 2^n (about 1 ulp; x <= 88; NaN stays
   NaN; the max's operand order lets NaN through, as PyTorch does). Inline: a call spills every vector register. */
static inline vf vf_exp(vf x) {
    x = vf_max(vf_set1(-87.0f), x);
    const vf shifter = vf_set1(12582912.0f);  /* 1.5 * 2^23: adding and subtracting it rounds to nearest even */
    vf n = (x * 1.44269504088896341f + shifter) - shifter;
    vf r = vf_fnma(n, vf_set1(0.693145751953125f), x);
    r = vf_fnma(n, vf_set1(1.428606765330187045e-06f), r);
    vf p = vf_set1(1.0f / 720);
    p = vf_fma(p, r, vf_set1(1.0f / 120));
    p = vf_fma(p, r, vf_set1(1.0f / 24));
    p = vf_fma(p, r, vf_set1(1.0f / 6));
    p = vf_fma(p, r, vf_set1(0.5f));
    p = vf_fma(p, r, vf_set1(1.0f));
    p = vf_fma(p, r, vf_set1(1.0f));
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;  /* 2^n, n in [-126, 127] */
    return p * (vf)e;
}

/* a where mask (all ones / zeros per lane), else b */
static inline vf vsel(vi mask, vf a, vf b) { return (vf)(((vu)mask & (vu)a) | (~(vu)mask & (vu)b)); }

static inline void phk_prefetch_l2(const void *p) { __builtin_prefetch(p, 0, 2); }
#else
#define PHK_VEC 0
#endif
#endif
