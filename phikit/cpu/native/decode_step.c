/* One decode step of every layer of a phi / phi3 model for one token (batch 1), in a single call from Python.

   At batch 1 the matrix-vector products are most of a step, but the rest -- norms, rotary, the activation, residual
   adds, cache writes and the Python module calls around them -- cost a quarter of an int4 token on a 2-core host.
   Here the layer loop runs in C: the linears and the attention are the same kernels as the per-module path
   (kernels.c), and every elementwise op is computed as PyTorch computes it for bf16 tensors: in fp32, rounded to
   bf16 after each op, in the order the modules apply them (phikit/layers.py, decoder.py, rope.py). Results equal
   the module path up to fp32 rounding inside the norms' reductions and the transcendental functions (tanh, exp),
   which the bf16 rounding after them almost always absorbs.

   Layout (phikit/native_decode.py fills these): x bf16 [hidden] in/out; cos_full / sin_signed bf16 [D] and
   partner int64 [D] are RotaryTables of this token; each layer's k_cache / v_cache point at batch row 0 of its
   static cache [KV, slots, D]. Elementwise work runs on the calling thread (it is microseconds); the linears and
   the attention use `threads` OpenMP threads, as the per-module path does. */
#include "phk.h"

/* phk_lin, phk_layer and phk_model: phk_abi.h (mirrored in phikit/cpu/abi.py) */

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
int phk_has_decode_step(void) { return 1; }

static inline __mmask16 tail(int64_t n, int64_t i) {  /* lanes of [i, i + 16) below n */
    return n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
}
static inline __m512 ld(const uint16_t *p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
/* fp32 -> nearest bf16 (ties to even, NaN kept quiet), as fp32 again: torch's rounding after each bf16 op */
static inline __m512 rnd(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    r = _mm512_and_si512(r, hi);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_and_si512(u, hi), _mm512_set1_epi32(0x400000));
    return _mm512_castsi512_ps(r);
}
static inline void st(uint16_t *p, __mmask16 m, __m512 rounded) {
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(rounded), 16)));
}
#define V1(c) _mm512_set1_ps(c)

/* tanh: |x| < 0.625 odd polynomial (Cephes tanhf), else 1 - 2 / (exp(2|x|) + 1) with x's sign; ~1 ulp fp32 */
static inline __m512 tanh16(__m512 x) {
    __m512 ax = _mm512_abs_ps(x);
    __m512 e = phk_exp16(_mm512_min_ps(_mm512_add_ps(ax, ax), V1(88.0f)));
    __m512 big = _mm512_sub_ps(V1(1.0f), _mm512_div_ps(V1(2.0f), _mm512_add_ps(e, V1(1.0f))));
    big = _mm512_or_ps(big, _mm512_and_ps(x, V1(-0.0f)));
    __m512 z = _mm512_mul_ps(x, x), p = V1(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, V1(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, V1(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, V1(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, V1(-3.33332819422e-1f));
    __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, V1(0.625f), _CMP_LT_OQ), big, small);
}

/* layers.gelu_new, op by op: 0.5 * x * (1.0 + tanh(sqrt(2 / pi) * (x + 0.044715 * pow(x, 3.0)))) */
static void gelu_new(const uint16_t *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail(n, i);
        __m512 v = ld(x + i, m);
        __m512 t = rnd(_mm512_mul_ps(rnd(_mm512_mul_ps(v, v)), v));  /* torch.pow(bf16, 3.0) rounds x * x first */
        t = rnd(_mm512_mul_ps(t, V1(0.044715f)));
        t = rnd(_mm512_add_ps(v, t));
        t = rnd(_mm512_mul_ps(t, V1(0.7978845608028654f)));
        t = rnd(tanh16(t));
        t = rnd(_mm512_add_ps(t, V1(1.0f)));
        st(y + i, m, rnd(_mm512_mul_ps(rnd(_mm512_mul_ps(v, V1(0.5f))), t)));
    }
}

/* GatedMLP: up * silu(gate), silu(g) = g / (1 + exp(-g)); gate_up = [gate (n), up (n)] */
static void silu_gated(const uint16_t *gate_up, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail(n, i);
        __m512 g = ld(gate_up + i, m), u = ld(gate_up + n + i, m);
        __m512 s = rnd(_mm512_div_ps(g, _mm512_add_ps(V1(1.0f), phk_exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)))));
        st(y + i, m, rnd(_mm512_mul_ps(u, s)));
    }
}

/* nn.LayerNorm on bf16 (torch's CPU kernel): mean and variance in fp32, y = (x * rstd + (-rstd * mean)) * w + b */
static void layer_norm(const uint16_t *x, const uint16_t *w, const uint16_t *b, uint16_t *y, int64_t n, float eps) {
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; i++) sum += f32_of_bf16(x[i]);
    float mean = (float)(sum / (double)n);
    for (int64_t i = 0; i < n; i++) { double d = (double)f32_of_bf16(x[i]) - mean; sq += d * d; }
    float var = (float)(sq / (double)n);
    float rstd = 1.0f / sqrtf((var > 0.f ? var : 0.f) + eps), shift = -rstd * mean;
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail(n, i);
        __m512 v = _mm512_add_ps(_mm512_mul_ps(ld(x + i, m), V1(rstd)), V1(shift));
        st(y + i, m, rnd(_mm512_add_ps(_mm512_mul_ps(v, ld(w + i, m)), ld(b + i, m))));
    }
}

/* layers.RMSNorm: h = x * rsqrt(mean(x^2) + eps) in fp32, rounded to bf16, then weight * h rounded */
static void rms_norm(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t n, float eps) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();  /* squares of bf16 values are exact in double */
    for (int64_t i = 0; i < n; i += 16) {
        __m512 v = ld(x + i, tail(n, i));
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
    }
    double sq = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    float r = 1.0f / sqrtf((float)(sq / (double)n) + eps);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail(n, i);
        st(y + i, m, rnd(_mm512_mul_ps(ld(w + i, m), rnd(_mm512_mul_ps(ld(x + i, m), V1(r))))));
    }
}

/* y = a + b rounded to bf16 (in place on a allowed) */
static void add(const uint16_t *a, const uint16_t *b, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail(n, i);
        st(y + i, m, rnd(_mm512_add_ps(ld(a + i, m), ld(b + i, m))));
    }
}

/* RotaryTables.apply on `heads` heads of D in place: x * cos_full + x[partner] * sin_signed, each op rounded */
static void rotate(uint16_t *x, int64_t heads, int64_t D, const uint16_t *cosf, const uint16_t *sins,
                   const int64_t *partner, uint16_t *tmp) {
    for (int64_t h = 0; h < heads; h++) {
        uint16_t *xh = x + h * D;
        for (int64_t i = 0; i < D; i++) {
            float a = f32_of_bf16(bf16_of_f32(f32_of_bf16(xh[i]) * f32_of_bf16(cosf[i])));
            float b = f32_of_bf16(bf16_of_f32(f32_of_bf16(xh[partner[i]]) * f32_of_bf16(sins[i])));
            tmp[i] = bf16_of_f32(a + b);
        }
        memcpy(xh, tmp, (size_t)D * 2);
    }
}

static void norm(const phk_model *md, const uint16_t *x, const uint16_t *w, const uint16_t *b, uint16_t *y) {
    if (md->rmsnorm) rms_norm(x, w, y, md->hidden, md->eps);
    else layer_norm(x, w, b, y, md->hidden, md->eps);
}

/* The elementwise pieces on their own, for tests against PyTorch's ops (tests/test_native_decode.py). */
void phk_gelu_new(const uint16_t *x, uint16_t *y, int64_t n) { gelu_new(x, y, n); }
void phk_silu_gated(const uint16_t *gate_up, uint16_t *y, int64_t n) { silu_gated(gate_up, y, n); }
void phk_layer_norm(const uint16_t *x, const uint16_t *w, const uint16_t *b, uint16_t *y, int64_t n, float eps) {
    layer_norm(x, w, b, y, n, eps);
}
void phk_rms_norm(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t n, float eps) {
    rms_norm(x, w, y, n, eps);
}

/* The activations over many tokens (a prefill), on `threads` threads. A bf16 activation of one input is a function
   of 16 bits, so Python computes it once for all 65536 inputs with PyTorch's own ops (`table`, 65537 entries: the
   kernel reads 32 bits at a time) and these kernels look it up: PyTorch's numbers exactly, and 0.9-1.3 ms where
   the op-by-op gelu_new above took 4.3 ms (512 x 8192 values, 2 threads; a scalar lookup loop 2.4 ms).
   y[i] = table[x[i]] for n values; silu_gated: rows of [gate (n), up (n)] -> up * table[gate], rounded to bf16. */
static inline __m512i lookup16(const uint16_t *x, const uint16_t *table, __mmask16 m) {
    __m512i idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x));
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, (const int *)table, 2);  /* low half: entry */
}
void phk_lookup_bf16(const uint16_t *x, const uint16_t *table, uint16_t *y, int64_t n, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i0 = 0; i0 < n; i0 += 4096)
        for (int64_t i = i0; i < n && i < i0 + 4096; i += 16) {
            __mmask16 m = tail(n, i);
            _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtepi32_epi16(lookup16(x + i, table, m)));
        }
}
void phk_silu_gated_lookup(const uint16_t *gate_up, const uint16_t *table, uint16_t *y, int64_t rows, int64_t n,
                           int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < n; i += 16) {
            __mmask16 m = tail(n, i);
            const uint16_t *g = gate_up + r * 2 * n;
            __m512 s = _mm512_castsi512_ps(_mm512_slli_epi32(lookup16(g + i, table, m), 16));
            st(y + r * n + i, m, rnd(_mm512_mul_ps(ld(g + n + i, m), s)));
        }
}

/* RMSNorm over the rows of a prefill (layers.RMSNorm on bf16 x and weight), on `threads` threads: the decode step's
   rms_norm per row. The mean of squares is summed exactly (in double) where PyTorch sums fp32 in its own order, so a
   rare value differs by a bf16 ulp; the seven PyTorch ops took 3.5% of a 512-token Phi-3-mini prefill. */
void phk_rms_norm_rows(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t rows, int64_t n, float eps,
                       int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; r++) rms_norm(x + r * n, w, y + r * n, n, eps);
}

/* RotaryTables.apply (rope.py) over a whole prompt's q or k: out = x * cos_full + partnered(x) * sin_signed, each
   product and the sum rounded to bf16 as PyTorch's four ops round them (the same numbers, in one pass instead of a
   cat, two broadcast products and a sum: ~6 ms of a 512-token phi-1.5 layer). partnered(x) swaps the two halves of
   the first R dims and keeps the rest. x [B, H, T, D] by element strides (last dim contiguous); cos / sin
   [Bt, T, D] contiguous, Bt = 1 (tb = 0) or B (tb = T * D); out [B, H, T, D] contiguous; D <= 256. */
void phk_rotary(const uint16_t *x, const uint16_t *cosf, const uint16_t *sins, uint16_t *out, int64_t B, int64_t H,
                int64_t T, int64_t D, int64_t R, int64_t xb, int64_t xh, int64_t xt, int64_t tb, int threads) {
    int64_t half = R / 2;
    /* token by token, every head of it: a token's heads lie together in a fused projection's output, while one
       head's tokens are a row apart (a new page each, which hardware prefetchers do not follow) */
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t bt = 0; bt < B * T; bt++) {
        int64_t b = bt / T, t = bt % T;
        const uint16_t *c = cosf + b * tb + t * D, *sn = sins + b * tb + t * D;
        uint16_t p[256];
        for (int64_t h = 0; h < H; h++) {
            const uint16_t *xr = x + b * xb + h * xh + t * xt;
            uint16_t *o = out + ((b * H + h) * T + t) * D;
            memcpy(p, xr + half, (size_t)half * 2);
            memcpy(p + half, xr, (size_t)half * 2);
            memcpy(p + R, xr + R, (size_t)(D - R) * 2);
            for (int64_t i = 0; i < D; i += 16) {
                __mmask16 m = tail(D, i);
                __m512 a = rnd(_mm512_mul_ps(ld(xr + i, m), ld(c + i, m)));
                __m512 e = rnd(_mm512_mul_ps(ld(p + i, m), ld(sn + i, m)));
                st(o + i, m, rnd(_mm512_add_ps(a, e)));
            }
        }
    }
}

static phk_status_t linear(const phk_lin *l, const uint16_t *x, uint16_t *y, int threads) {
    const uint16_t *s = (const uint16_t *)l->scales;
    if (l->kind == PHK_LINEAR_BF16)
        return phk_linear_bf16(x, (const uint16_t *)l->w, l->bias, y, 1, l->n, l->k, threads);
    if (l->kind == PHK_LINEAR_INT8)
        return phk_linear_int8(x, (const int8_t *)l->w, s, l->bias, y, 1, l->n, l->k, threads);
    if (l->kind == PHK_LINEAR_INT4)
        return phk_linear_int4(x, (const uint8_t *)l->w, s, l->bias, y, 1, l->n, l->k, l->group, threads);
    if (l->kind == PHK_LINEAR_C12)
        phk_linear_c12(x, (const uint8_t *)l->w, (const uint8_t *)l->scales, l->aux, l->bias, y, 1, l->n, l->k, threads);
    return PHK_OK;
}

/* PHK_ERR_NOMEM: a buffer or a kernel's allocation failed; x and the cache are then partly updated (Python raises) */
phk_status_t phk_decode_step(const phk_model *md, const phk_layer *layers, uint16_t *x, const uint16_t *cosf,
                             const uint16_t *sins, const int64_t *partner, int64_t slot, int threads) {
    int64_t E = md->hidden, D = md->head_dim, H = md->heads, KV = md->kv_heads, I = md->inter;
    int64_t qs = H * D, kvs = KV * D, stride = md->cache_head_stride;
    int64_t up_n = md->act == PHK_ACT_SILU_GATED ? 2 * I : I;
    size_t total = (size_t)(E + qs + 2 * kvs + qs + E + up_n + I + E + D + 64);
    uint16_t *buf = (uint16_t *)phk_malloc(total * 2);
    if (!buf) return PHK_ERR_NOMEM;
    uint16_t *h = buf, *qkv = h + E, *att = qkv + qs + 2 * kvs;
    uint16_t *a = att + qs, *up = a + E, *act = up + up_n, *mo = act + I, *tmp = mo + E;
    phk_status_t status = PHK_OK;  /* the first failing kernel's */
#define PHK_TRY(call) do { if ((status = (call)) != PHK_OK) goto done; } while (0)
    int64_t first = md->window > 0 && slot + 1 > md->window ? slot + 1 - md->window : 0;  /* oldest visible slot */
    for (int64_t li = 0; li < md->n_layers; li++) {
        const phk_layer *L = layers + li;
        norm(md, x, L->norm1_w, L->norm1_b, h);
        if (md->fused_qkv) PHK_TRY(linear(&L->qkv[0], h, qkv, threads));
        else for (int j = 0; j < 3; j++) PHK_TRY(linear(&L->qkv[j], h, qkv + (j ? qs + (j - 1) * kvs : 0), threads));
        uint16_t *q = qkv, *k = qkv + qs, *v = qkv + qs + kvs;
        if (L->qnorm_w) {
            for (int64_t i = 0; i < H + KV; i++) {  /* q heads, then k heads (contiguous in qkv) */
                const uint16_t *w = i < H ? L->qnorm_w : L->knorm_w, *b = i < H ? L->qnorm_b : L->knorm_b;
                layer_norm(q + i * D, w, b, tmp, D, md->qk_eps);
                memcpy(q + i * D, tmp, (size_t)D * 2);
            }
        }
        rotate(q, H, D, cosf, sins, partner, tmp);
        rotate(k, KV, D, cosf, sins, partner, tmp);
        for (int64_t i = 0; i < KV; i++) {
            memcpy(L->k_cache + i * stride + slot * D, k + i * D, (size_t)D * 2);
            memcpy(L->v_cache + i * stride + slot * D, v + i * D, (size_t)D * 2);
        }
        PHK_TRY(phk_attention_decode(q, L->k_cache + first * D, L->v_cache + first * D, att, 1, H, KV,
                                     slot + 1 - first, D, 0, stride, D, 0, stride, D, md->scale, threads));
        PHK_TRY(linear(&L->o, att, a, threads));
        add(x, a, x, E);  /* parallel: (x + attn) + mlp, the MLP reading the same h; sequential: norm x + attn again */
        if (!md->parallel) norm(md, x, L->norm2_w, L->norm2_b, h);
        PHK_TRY(linear(&L->up, h, up, threads));
        if (md->act == PHK_ACT_SILU_GATED) silu_gated(up, act, I); else gelu_new(up, act, I);
        PHK_TRY(linear(&L->down, act, mo, threads));
        add(x, mo, x, E);
    }
#undef PHK_TRY
done:
    free(buf);
    return status;
}
#else
/* stubs of the same signatures (phk_abi.h): phk_has_decode_step() is 0, so Python calls none of them */
int phk_has_decode_step(void) { return 0; }
phk_status_t phk_decode_step(const phk_model *md, const phk_layer *layers, uint16_t *x, const uint16_t *cosf,
                             const uint16_t *sins, const int64_t *partner, int64_t slot, int threads) {
    return PHK_ERR_UNSUPPORTED;
}
void phk_gelu_new(const uint16_t *x, uint16_t *y, int64_t n) {}
void phk_silu_gated(const uint16_t *gate_up, uint16_t *y, int64_t n) {}
void phk_layer_norm(const uint16_t *x, const uint16_t *w, const uint16_t *b, uint16_t *y, int64_t n, float eps) {}
void phk_rms_norm(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t n, float eps) {}
void phk_lookup_bf16(const uint16_t *x, const uint16_t *table, uint16_t *y, int64_t n, int threads) {}
void phk_silu_gated_lookup(const uint16_t *gate_up, const uint16_t *table, uint16_t *y, int64_t rows, int64_t n,
                           int threads) {}
void phk_rotary(const uint16_t *x, const uint16_t *cosf, const uint16_t *sins, uint16_t *out, int64_t B, int64_t H,
                int64_t T, int64_t D, int64_t R, int64_t xb, int64_t xh, int64_t xt, int64_t tb, int threads) {}
void phk_rms_norm_rows(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t rows, int64_t n, float eps,
                       int threads) {}
#endif
