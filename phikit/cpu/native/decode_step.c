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
   the attention use `threads` OpenMP threads, as the per-module path does.

   Written once on vec.h (every level with native kernels); the activation lookups use AVX-512's gather where the
   level has it. */
#include "vec.h"

/* phk_lin, phk_layer and phk_model: phk_abi.h (mirrored in phikit/cpu/abi.py) */

#if PHK_VEC
int phk_has_decode_step(void) { return 1; }

/* n - i values from p (at most PHK_VL; the lanes past n read 0) as fp32 */
static inline vf ld(const uint16_t *p, int64_t left) {
    if (left >= PHK_VL) return vf_load_bf16(p);
    uint16_t t[PHK_VL] = {0};
    memcpy(t, p, (size_t)left * 2);
    return vf_load_bf16(t);
}
/* fp32 -> nearest bf16 (ties to even, NaN kept quiet), as fp32 again: torch's rounding after each bf16 op */
static inline vf rnd(vf v) {
    vu u = (vu)v;
    vu r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    vu nan = (vu)(v != v);  /* all ones where v is NaN */
    return (vf)((r & ~nan) | (((u & 0xffff0000u) | 0x400000u) & nan));
}
/* the high halves of a rounded vector's lanes (its bf16 values) -> p, min(left, PHK_VL) of them */
static inline void st(uint16_t *p, int64_t left, vf rounded) {
    if (left >= PHK_VL) { vf_store_bf16_hi(p, rounded); return; }
    uint16_t t[PHK_VL];
    vf_store_bf16_hi(t, rounded);
    memcpy(p, t, (size_t)left * 2);
}
static inline vf vabs(vf x) { return (vf)((vu)x & 0x7fffffffu); }

/* tanh: |x| < 0.625 odd polynomial (Cephes tanhf), else 1 - 2 / (exp(2|x|) + 1) with x's sign; ~1 ulp fp32 */
static inline vf vtanh(vf x) {
    vf ax = vabs(x);
    vf e = vf_exp(vf_min(ax + ax, vf_set1(88.0f)));
    vf big = vf_set1(1.0f) - vf_set1(2.0f) / (e + 1.0f);
    big = (vf)((vu)big | ((vu)x & 0x80000000u));
    vf z = x * x, p = vf_set1(-5.70498872745e-3f);
    p = vf_fma(p, z, vf_set1(2.06390887954e-2f));
    p = vf_fma(p, z, vf_set1(-5.37397155531e-2f));
    p = vf_fma(p, z, vf_set1(1.33314422036e-1f));
    p = vf_fma(p, z, vf_set1(-3.33332819422e-1f));
    vf small = vf_fma(p * z, x, x);
    return vsel(ax < 0.625f, small, big);
}

/* layers.gelu_new, op by op: 0.5 * x * (1.0 + tanh(sqrt(2 / pi) * (x + 0.044715 * pow(x, 3.0)))) */
static void gelu_new(const uint16_t *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i += PHK_VL) {
        vf v = ld(x + i, n - i);
        vf t = rnd(rnd(v * v) * v);  /* torch.pow(bf16, 3.0) rounds x * x first */
        t = rnd(t * 0.044715f);
        t = rnd(v + t);
        t = rnd(t * 0.7978845608028654f);
        t = rnd(vtanh(t));
        t = rnd(t + 1.0f);
        st(y + i, n - i, rnd(rnd(v * 0.5f) * t));
    }
}

/* GatedMLP: up * silu(gate), silu(g) = g / (1 + exp(-g)); gate_up = [gate (n), up (n)] */
static void silu_gated(const uint16_t *gate_up, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i += PHK_VL) {
        vf g = ld(gate_up + i, n - i), u = ld(gate_up + n + i, n - i);
        vf s = rnd(g / (vf_set1(1.0f) + vf_exp(vf_zero() - g)));
        st(y + i, n - i, rnd(u * s));
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
    for (int64_t i = 0; i < n; i += PHK_VL) {
        vf v = ld(x + i, n - i) * rstd + shift;
        st(y + i, n - i, rnd(v * ld(w + i, n - i) + ld(b + i, n - i)));
    }
}

/* layers.RMSNorm: h = x * rsqrt(mean(x^2) + eps) in fp32, rounded to bf16, then weight * h rounded. The squares of
   bf16 values are exact in double, and so (for any realistic row) is their sum, in any order. */
typedef double vd __attribute__((vector_size(PHK_VL * 8)));
static void rms_norm(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t n, float eps) {
    vd s = (vd){0};
    int64_t i = 0;
    for (; i < n; i += PHK_VL) {
        vd v = __builtin_convertvector(ld(x + i, n - i), vd);
        s += v * v;
    }
    double sq = 0;
    for (int j = 0; j < PHK_VL; j++) sq += s[j];
    float r = 1.0f / sqrtf((float)(sq / (double)n) + eps);
    for (i = 0; i < n; i += PHK_VL) st(y + i, n - i, rnd(ld(w + i, n - i) * rnd(ld(x + i, n - i) * r)));
}

/* y = a + b rounded to bf16 (in place on a allowed) */
static void add(const uint16_t *a, const uint16_t *b, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i += PHK_VL) st(y + i, n - i, rnd(ld(a + i, n - i) + ld(b + i, n - i)));
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
   of 16 bits, so Python computes it once for all 65536 inputs with PyTorch's own ops (`table`, 65537 entries) and
   these kernels look it up: PyTorch's numbers exactly, and 0.9-1.3 ms with AVX-512's gather where the op-by-op
   gelu_new above took 4.3 ms (512 x 8192 values, 2 threads; a scalar lookup loop 2.4 ms).
   y[i] = table[x[i]] for n values; silu_gated: rows of [gate (n), up (n)] -> up * table[gate], rounded to bf16. */
static inline void lookup_run(const uint16_t *x, const uint16_t *table, uint16_t *y, int64_t n) {
    int64_t i = 0;
#if PHK_VL == 16
    for (; i + 16 <= n; i += 16) {
        __m512i idx = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + i)));
        __m512i v = _mm512_i32gather_epi32(idx, (const int *)table, 2);  /* low half: the entry */
        _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtepi32_epi16(v));
    }
#endif
    for (; i < n; i++) y[i] = table[x[i]];
}
void phk_lookup_bf16(const uint16_t *x, const uint16_t *table, uint16_t *y, int64_t n, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i0 = 0; i0 < n; i0 += 4096) lookup_run(x + i0, table, y + i0, n - i0 < 4096 ? n - i0 : 4096);
}
void phk_silu_gated_lookup(const uint16_t *gate_up, const uint16_t *table, uint16_t *y, int64_t rows, int64_t n,
                           int threads) {
    #pragma omp parallel num_threads(threads)
    {
        uint16_t s[512];
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const uint16_t *g = gate_up + r * 2 * n;
            for (int64_t i0 = 0; i0 < n; i0 += 512) {
                int64_t m = n - i0 < 512 ? n - i0 : 512;
                lookup_run(g + i0, table, s, m);
                for (int64_t i = 0; i < m; i += PHK_VL)
                    st(y + r * n + i0 + i, m - i, rnd(ld(g + n + i0 + i, m - i) * ld(s + i, m - i)));
            }
        }
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
            for (int64_t i = 0; i < D; i += PHK_VL) {
                vf a = rnd(ld(xr + i, D - i) * ld(c + i, D - i));
                vf e = rnd(ld(p + i, D - i) * ld(sn + i, D - i));
                st(o + i, D - i, rnd(a + e));
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
