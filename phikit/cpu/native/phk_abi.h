/* The C ABI of phikit's native library: every exported function, the decode step's structs and the named constants
   Python passes. phikit/cpu/abi.py mirrors this file by hand (ctypes signatures, Structures, IntEnums); the library
   reports PHK_ABI_VERSION and the size and field offsets of each struct, and abi.check() compares them with the
   mirror when the library loads. Change this file and abi.py together, and bump PHK_ABI_VERSION with any change to a
   signature, a struct or a constant. Only declarations here: the kernels' inline helpers live in phk.h.

   Every function is declared whatever the build targets: a build without an instruction set a function needs
   defines it as a stub of the same signature (status functions return PHK_ERR_UNSUPPORTED, void ones do nothing),
   and phk_has_* say which ones are real. */
#ifndef PHK_ABI_H
#define PHK_ABI_H
#include <stdint.h>

#define PHK_ABI_VERSION 4

/* Returned (as phk_status_t) by the functions that allocate; on PHK_ERR_NOMEM, phk_failed_alloc_bytes() on the same
   thread says how many bytes the failed request was for, and the outputs are unspecified. */
enum phk_status { PHK_OK = 0, PHK_ERR_NOMEM = 1, PHK_ERR_UNSUPPORTED = 2 };
typedef int phk_status_t;  /* an enum phk_status, as a C int */

/* phk_lin.kind */
enum phk_linear_kind {
    PHK_LINEAR_NONE = 0,
    PHK_LINEAR_BF16 = 1,  /* w bf16 [n, k] */
    PHK_LINEAR_INT8 = 2,  /* w int8 per channel in phikit's layout, scales bf16 [n] */
    PHK_LINEAR_INT4 = 3,  /* w uint8 in phikit's int4 layout, scales = scales_and_zeros bf16 [k/group, n, 2] */
    PHK_LINEAR_C12 = 4    /* lossless 12-bit bf16 (lossless.c): w = data, scales = bases, aux */
};

/* phk_model.act */
enum phk_act {
    PHK_ACT_GELU_NEW = 0,   /* fc1 -> gelu_new -> fc2 (phi) */
    PHK_ACT_SILU_GATED = 1  /* gate_up -> up * silu(gate) -> down (phi3) */
};

/* phk_gemm_tiles' `kind`: the weight's format (gemm_tiles.c) */
enum phk_tiles_kind {
    PHK_TILES_BF16 = 0,  /* w bf16 [n, k] */
    PHK_TILES_INT4 = 1,  /* w in phikit's int4 layout, sz = scales_and_zeros bf16 [k/group, n, 2] */
    PHK_TILES_INT8 = 2   /* w in phikit's int8 layout, sz = scales bf16 [n] */
};

/* phk_struct_size / phk_struct_offset's `which` */
enum phk_struct_id { PHK_STRUCT_LIN = 0, PHK_STRUCT_LAYER = 1, PHK_STRUCT_MODEL = 2 };

/* ---- the decode step's structs (decode_step.c; filled by phikit/backends/cpu/decode_step.py) ---- */
typedef struct {
    int64_t kind;  /* enum phk_linear_kind */
    int64_t n, k, group;
    const void *w, *scales;  /* PHK_LINEAR_C12: data, bases */
    const uint16_t *bias;
    const int64_t *aux;  /* PHK_LINEAR_C12: the exception index and records */
} phk_lin;

typedef struct {
    phk_lin qkv[3];  /* fused: qkv[0] holds q, k and v rows; else q, k, v */
    phk_lin o, up, down;  /* up: fc1 [I, hidden] (phi) or gate_up [2I, hidden] (phi3) */
    const uint16_t *norm1_w, *norm1_b, *norm2_w, *norm2_b;  /* *_b NULL for RMSNorm; norm2 unused when parallel */
    const uint16_t *qnorm_w, *qnorm_b, *knorm_w, *knorm_b;  /* qk_layernorm (phi), else NULL */
    uint16_t *k_cache, *v_cache;
} phk_layer;

typedef struct {
    int64_t n_layers, hidden, heads, kv_heads, head_dim, inter;
    int64_t rmsnorm;  /* 1: RMSNorm (phi3), 0: LayerNorm (phi) */
    int64_t parallel;  /* 1: x + attn(ln(x)) + mlp(ln(x)) (phi); 0: sequential residuals (phi3) */
    int64_t act;  /* enum phk_act */
    int64_t fused_qkv, cache_head_stride, window;  /* window 0: none */
    float eps, qk_eps, scale;
} phk_model;

/* ---- the ABI itself (kernels.c, defined at every level) ---- */
int64_t phk_abi_version(void);
int64_t phk_struct_size(int64_t which);  /* sizeof, or -1 for an unknown struct */
/* offsetof the field-th field in declaration order (the order of abi.py's _fields_), or -1 past the last */
int64_t phk_struct_offset(int64_t which, int64_t field);
int64_t phk_failed_alloc_bytes(void);  /* this thread's last failed allocation, in bytes (0: none) */

/* ---- what this build has ---- */
int phk_available(void);  /* the portable kernels (portable.c: AVX-512, AVX2 + FMA or NEON); 0: PyTorch */
int phk_has_int4(void);  /* 0: none; 1: the int4 kernels; 2: and the byte kernel (vpmaddubsw / SDOT + UDOT) */
int phk_has_decode_step(void);  /* the fused decode step and the elementwise kernels (decode_step.c) */
int phk_has_c12(void);
int phk_has_bf16_dot(void);  /* AVX512-BF16's dot products: the prefill attention and the bf16 dequantized rows */
int phk_has_gemm_tiles(void);  /* phk_gemm_tiles (AVX512-BF16) */

/* ---- portable.c (and kernels.c, where the CPU has AVX512-BF16: phk_linear_bf16, phk_linear_int4) ---- */
phk_status_t phk_linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int threads);
phk_status_t phk_linear_int8(const uint16_t *x, const int8_t *w, const uint16_t *scales, const uint16_t *bias,
                             uint16_t *y, int64_t M, int64_t N, int64_t K, int threads);
phk_status_t phk_attention_decode(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                  int64_t B, int64_t H, int64_t KV, int64_t S, int64_t D,
                                  int64_t kb, int64_t kh, int64_t ks, int64_t vb, int64_t vh, int64_t vs, float scale,
                                  int threads);
phk_status_t phk_attention_decode_rows(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                       int64_t B, int64_t H, int64_t KV, int64_t S, int64_t D,
                                       int64_t kb, int64_t kh, int64_t ks, int64_t vb, int64_t vh, int64_t vs,
                                       const int64_t *rows, const int64_t *first, const int64_t *len, float scale,
                                       int threads);
phk_status_t phk_linear_int4(const uint16_t *x, const uint8_t *w, const uint16_t *sz, const uint16_t *bias, uint16_t *y,
                             int64_t M, int64_t N, int64_t K, int64_t GS, int threads);
void phk_dequant_int4_f32(const uint8_t *w, const uint16_t *sz, float *out, int64_t r0, int64_t r1, int64_t N,
                          int64_t K, int64_t GS, int threads);
void phk_dequant_int8_f32(const int8_t *w, const uint16_t *scales, float *out, int64_t r0, int64_t r1, int64_t K,
                          int threads);
/* ---- kernels.c (AVX512-BF16) ---- */
void phk_dequant_int4_bf16(const uint8_t *w, const uint16_t *sz, uint16_t *out, int64_t r0, int64_t r1, int64_t N,
                           int64_t K, int64_t GS, int threads);
void phk_dequant_int8_bf16(const int8_t *w, const uint16_t *scales, uint16_t *out, int64_t r0, int64_t r1, int64_t K,
                           int threads);

/* ---- gemm_tiles.c (AVX512-BF16): a prefill's GEMM, y [M, N] = x [M, K] @ W^T (+ bias), W as `kind` says ---- */
int phk_gemm_tiles_ok(int64_t N, int64_t K);  /* the shapes it takes: N % 64 == 0, K % 32 == 0 */
phk_status_t phk_gemm_tiles(const uint16_t *x, int64_t kind, const void *w, const uint16_t *sz, int64_t GS,
                            const uint16_t *bias, uint16_t *y, int64_t M, int64_t N, int64_t K, int threads);

/* ---- decode_step.c ---- */
phk_status_t phk_decode_step(const phk_model *md, const phk_layer *layers, uint16_t *x, const uint16_t *cosf,
                             const uint16_t *sins, const int64_t *partner, int64_t slot, int threads);
void phk_gelu_new(const uint16_t *x, uint16_t *y, int64_t n);
void phk_silu_gated(const uint16_t *gate_up, uint16_t *y, int64_t n);
void phk_layer_norm(const uint16_t *x, const uint16_t *w, const uint16_t *b, uint16_t *y, int64_t n, float eps);
void phk_rms_norm(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t n, float eps);
void phk_lookup_bf16(const uint16_t *x, const uint16_t *table, uint16_t *y, int64_t n, int threads);
void phk_silu_gated_lookup(const uint16_t *gate_up, const uint16_t *table, uint16_t *y, int64_t rows, int64_t n,
                           int threads);
void phk_rotary(const uint16_t *x, const uint16_t *cosf, const uint16_t *sins, uint16_t *out, int64_t B, int64_t H,
                int64_t T, int64_t D, int64_t R, int64_t xb, int64_t xh, int64_t xt, int64_t tb, int threads);
void phk_rms_norm_rows(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t rows, int64_t n, float eps,
                       int threads);

/* ---- attention_prefill.c ---- */
phk_status_t phk_attention_prefill(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                                   int64_t B, int64_t H, int64_t KV, int64_t T, int64_t D,
                                   int64_t qb, int64_t qh, int64_t qt, int64_t kb, int64_t kh, int64_t ks,
                                   int64_t vb, int64_t vh, int64_t vs, float scale, int64_t pack_bytes, int threads);

/* ---- lossless.c ---- */
void phk_c12_encode(const uint16_t *w, uint8_t *data, uint8_t *bases, int64_t *counts, int64_t N, int64_t K,
                    int threads);
void phk_c12_exceptions(const uint16_t *w, int64_t *aux, int64_t N, int64_t K, int threads);
void phk_linear_c12(const uint16_t *x, const uint8_t *data, const uint8_t *bases, const int64_t *aux,
                    const uint16_t *bias, uint16_t *y, int64_t M, int64_t N, int64_t K, int threads);
void phk_c12_decode_rows(const uint8_t *data, const uint8_t *bases, const int64_t *aux, uint16_t *out,
                         int64_t r0, int64_t r1, int64_t N, int64_t K, int threads);
#endif
