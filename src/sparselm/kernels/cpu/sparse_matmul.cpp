// sparselm CPU sparse matmul: y[b, n] = sum_k x[b, k] * W[n, k]   (y = x @ W.T)
//
// W is stored in the sparselm-bitmask v1 format (src/sparselm/compress/FORMAT.md):
//   bitmask (N, 4*words) uint8, little-endian 32-bit words, bit i of word w <-> column 32*w + i;
//   values  (nnz,) fp32 / bf16 / fp16 / int8, row-major, increasing column order inside a row;
//   row_ptr (N+1,) int64;   scales (N, n_groups) fp32 for int8: W[n, c] = q * scales[n, c / group_size].
//
// Three code paths, one per ISA level, selected by the caller (Python reads sl_isa_flags()):
//   AVX-512 (F, BW, VL, VBMI2): a 16-bit slice of the mask drives an expand-load that places the next
//     popcount(slice) packed values into the lanes whose bit is set (zeros elsewhere); the value pointer then
//     advances by the popcount.  bf16/fp16 use VBMI2's 16-bit expand, int8 its 8-bit expand.
//   AVX2 (+FMA, F16C, BMI, POPCNT): an 8-bit slice indexes a 256-entry table of lane permutations that move
//     the next popcount(slice) values to their lanes; lanes whose bit is clear are zeroed by the table's sign bit.
//   Scalar: walks the set bits with count-trailing-zeros.
// Activations are fp32 (the Python wrapper converts bf16/fp16 once per call; K values, negligible next to W).
// x rows must be readable up to 64*ceil(words/2) columns, zeros past K (the wrapper pads to a multiple of 64).
// Threads split the rows into ranges of equal estimated bytes (mask bytes + value bytes).

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { VT_F32 = 0, VT_BF16 = 1, VT_F16 = 2, VT_I8 = 3 };
enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_VNNI = 3 };  // ISA_VNNI: a flag bit only
enum { SL_OK = 0, SL_BAD_ARG = 1, SL_NO_ISA = 2 };

struct Problem {
    const float* x; int64_t ldx; int64_t B;
    const uint8_t* mask; int64_t words;
    const void* values; int64_t nnz;
    const int64_t* row_ptr; int64_t N; int64_t K;
    const float* scales; int64_t n_groups; int64_t group_size;
    float* y; int64_t ldy;
    int vtype;
};

static inline __attribute__((always_inline)) uint32_t load_u32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }
// Columns per AVX-512 decode step (Step512<VT>::COLS).
static inline int step_cols(int vt) { return vt == VT_I8 ? 64 : 32; }
static inline int value_bytes(int vt) { return vt == VT_F32 ? 4 : (vt == VT_I8 ? 1 : 2); }

// ---------------------------------------------------------------------------------------------- scalar path
static inline float half_to_float(uint16_t h) {
    // IEEE binary16 -> binary32, including subnormals, inf and NaN.
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else {  // subnormal: renormalise
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f; memcpy(&f, &bits, 4); return f;
}

static inline float value_at(const Problem& P, int64_t i) {
    switch (P.vtype) {
    case VT_F32: return ((const float*)P.values)[i];
    case VT_BF16: { uint32_t b = (uint32_t)((const uint16_t*)P.values)[i] << 16; float f; memcpy(&f, &b, 4); return f; }
    case VT_F16: return half_to_float(((const uint16_t*)P.values)[i]);
    default: return (float)((const int8_t*)P.values)[i];
    }
}

// Rows [r0, r1), any batch, any group size: the reference every SIMD path must match.
static void rows_scalar(const Problem& P, int64_t r0, int64_t r1) {
    const int TB = 16;  // batch tile: accumulators live on the stack
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t* mrow = P.mask + n * P.words * 4;
        const float* srow = P.vtype == VT_I8 ? P.scales + n * P.n_groups : nullptr;
        for (int64_t b0 = 0; b0 < P.B; b0 += TB) {
            int bt = (int)(P.B - b0 < TB ? P.B - b0 : TB);
            float acc[TB] = {0};
            int64_t q = P.row_ptr[n];
            for (int64_t w = 0; w < P.words; w++) {
                uint32_t m = load_u32(mrow + 4 * w);
                while (m) {
                    int64_t col = 32 * w + __builtin_ctz(m);
                    float v = value_at(P, q++);
                    if (srow) v *= srow[col / P.group_size];
                    for (int b = 0; b < bt; b++) acc[b] += v * P.x[(b0 + b) * P.ldx + col];
                    m &= m - 1;
                }
            }
            for (int b = 0; b < bt; b++) P.y[(b0 + b) * P.ldy + n] = acc[b];
        }
    }
}

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SL_X86 1

// ---------------------------------------------------------------------------------------------- AVX-512 path
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vbmi2,avx512dq,popcnt,bmi,bmi2,f16c,fma")

// One decode step: the mask bits of COLS columns -> NV vectors of 16 fp32 weights (zeros where bits are clear),
// by a plain load of the next packed values and a register expand under the mask (the memory-operand
// expand-loads are microcoded and ~4x slower on Zen 4 for 8/16-bit data).  The value pointer advances by the
// popcount.  Lane i of v[j] holds the column xcol(j, i) of the step: the x buffer is permuted to match
// (permute_x below), so narrow types need no lane shuffles.  Loads read up to MARGIN values past p.
template <int VT> struct Step512;

// Keeps a loaded vector in a register: without it GCC folds load + register expand back into the slow
// memory-operand form.
#define SL_INLINE inline __attribute__((always_inline))  // also across the per-ISA target regions
static SL_INLINE __m512i in_reg(__m512i v) { __asm__("" : "+v"(v)); return v; }
static SL_INLINE __m512 in_reg(__m512 v) { __asm__("" : "+v"(v)); return v; }

template <> struct Step512<VT_F32> {  // 2 x 16 columns, natural order
    static const int COLS = 32, NV = 2, MARGIN = 32;
    static inline void decode(uint64_t m, const char*& p, __m512* v) {
        const float* f = (const float*)p;
        __mmask16 lo = (__mmask16)m, hi = (__mmask16)(m >> 16);
        v[0] = _mm512_maskz_expand_ps(lo, in_reg(_mm512_loadu_ps(f)));
        v[1] = _mm512_maskz_expand_ps(hi, in_reg(_mm512_loadu_ps(f + _mm_popcnt_u32(lo))));
        p += 4 * _mm_popcnt_u64(m);
    }
    static inline int64_t xcol(int j, int i) { return 16 * j + i; }
};

template <> struct Step512<VT_BF16> {  // one 32 x 16-bit expand; bf16 -> fp32 is a shift (even) or a mask (odd)
    static const int COLS = 32, NV = 2, MARGIN = 32;
    static inline void decode(uint64_t m, const char*& p, __m512* v) {
        __m512i h = _mm512_maskz_expand_epi16((__mmask32)m, in_reg(_mm512_loadu_si512(p)));
        v[0] = _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
        v[1] = _mm512_castsi512_ps(_mm512_and_si512(h, _mm512_set1_epi32((int)0xffff0000u)));
        p += 2 * _mm_popcnt_u64(m);
    }
    static inline int64_t xcol(int j, int i) { return 2 * i + j; }
};

template <> struct Step512<VT_F16> {  // one 32 x 16-bit expand, two half -> float conversions
    static const int COLS = 32, NV = 2, MARGIN = 32;
    static inline void decode(uint64_t m, const char*& p, __m512* v) {
        __m512i h = _mm512_maskz_expand_epi16((__mmask32)m, in_reg(_mm512_loadu_si512(p)));
        v[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
        v[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
        p += 2 * _mm_popcnt_u64(m);
    }
    static inline int64_t xcol(int j, int i) { return 16 * j + i; }
};

template <> struct Step512<VT_I8> {  // one 64 x 8-bit expand; byte j of each 32-bit lane sign-extended by shifts
    static const int COLS = 64, NV = 4, MARGIN = 64;
    static inline void decode(uint64_t m, const char*& p, __m512* v) {
        __m512i q = _mm512_maskz_expand_epi8((__mmask64)m, in_reg(_mm512_loadu_si512(p)));
        v[0] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(q, 24), 24));
        v[1] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(q, 16), 24));
        v[2] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(q, 8), 24));
        v[3] = _mm512_cvtepi32_ps(_mm512_srai_epi32(q, 24));
        p += _mm_popcnt_u64(m);
    }
    static inline int64_t xcol(int j, int i) { return 4 * i + j; }
};

// Mask bits of step s (COLS/32 words; a last odd word of a 64-column step reads only its own 4 bytes).
template <int COLS> static SL_INLINE uint64_t step_bits(const uint8_t* mrow, int64_t s, int64_t words) {
    if (COLS == 32) return load_u32(mrow + 4 * s);
    if (2 * s + 1 < words) { uint64_t v; memcpy(&v, mrow + 8 * s, 8); return v; }
    return load_u32(mrow + 8 * s);
}

// R rows starting at n0 (rows past r1 repeat the last row and are not stored), BT batch rows from b0.
// xp: x permuted by permute_x (ldxp floats per batch row).  GROUPED: int8 with several groups per row; each
// group's partial sums are scaled when the group ends.  A = accumulators per (row, batch) to hide FMA latency.
template <int VT, int R, int BT, bool GROUPED>
static void block_avx512(const Problem& P, const float* xp, int64_t ldxp, int64_t n0, int64_t r1, int64_t b0) {
    typedef Step512<VT> S;
    const int NV = S::NV, A = BT == 1 ? 2 : 1;
    const bool PRELOAD = R > 1 && BT * NV <= 8;  // share x loads across rows while registers allow
    const uint8_t* mrow[R]; const char* vp[R]; int64_t row[R];
    for (int r = 0; r < R; r++) {
        row[r] = n0 + r < r1 ? n0 + r : r1 - 1;
        mrow[r] = P.mask + row[r] * P.words * 4;
        vp[r] = (const char*)P.values + P.row_ptr[row[r]] * value_bytes(VT);
    }
    const float* xb = xp + b0 * ldxp;
    const int64_t steps = (32 * P.words + S::COLS - 1) / S::COLS;
    const int64_t seg = GROUPED ? P.group_size / S::COLS : steps;  // steps per scaling segment
    __m512 tot[R][BT], acc[R][BT][A];
    for (int r = 0; r < R; r++) for (int b = 0; b < BT; b++) tot[r][b] = _mm512_setzero_ps();
    for (int64_t s0 = 0, g = 0; s0 < steps; s0 += seg, g++) {
        int64_t s1 = s0 + seg < steps ? s0 + seg : steps;
        for (int r = 0; r < R; r++) for (int b = 0; b < BT; b++) for (int a = 0; a < A; a++)
            acc[r][b][a] = _mm512_setzero_ps();
        for (int64_t s = s0; s < s1; s++) {
            const float* xs = xb + s * S::COLS;
            __m512 xv[PRELOAD ? BT : 1][NV];
            if (PRELOAD) for (int b = 0; b < BT; b++) for (int j = 0; j < NV; j++)
                xv[b][j] = _mm512_loadu_ps(xs + b * ldxp + 16 * j);
            for (int r = 0; r < R; r++) {
                __m512 v[NV];
                S::decode(step_bits<S::COLS>(mrow[r], s, P.words), vp[r], v);
                for (int b = 0; b < BT; b++) for (int j = 0; j < NV; j++) {
                    __m512 xj = PRELOAD ? xv[PRELOAD ? b : 0][j] : _mm512_loadu_ps(xs + b * ldxp + 16 * j);
                    acc[r][b][j % A] = _mm512_fmadd_ps(v[j], xj, acc[r][b][j % A]);
                }
            }
        }
        for (int r = 0; r < R; r++) {
            __m512 sc = _mm512_set1_ps(GROUPED ? P.scales[row[r] * P.n_groups + g] : 1.0f);
            for (int b = 0; b < BT; b++) {
                __m512 sum = A == 2 ? _mm512_add_ps(acc[r][b][0], acc[r][b][A - 1]) : acc[r][b][0];
                tot[r][b] = GROUPED ? _mm512_fmadd_ps(sum, sc, tot[r][b]) : sum;
            }
        }
    }
    for (int r = 0; r < R && n0 + r < r1; r++) {
        float sc = (VT == VT_I8 && !GROUPED) ? P.scales[row[r] * P.n_groups] : 1.0f;
        for (int b = 0; b < BT; b++) P.y[(b0 + b) * P.ldy + row[r]] = _mm512_reduce_add_ps(tot[r][b]) * sc;
    }
}

template <int VT, int R, int BT, bool GROUPED>
static void sweep_avx512(const Problem& P, const float* xp, int64_t ldxp, int64_t r0, int64_t r1, int64_t b0) {
    for (int64_t n = r0; n < r1; n += R) block_avx512<VT, R, BT, GROUPED>(P, xp, ldxp, n, r1, b0);
}

// Batch tiles of 8/4/2/1; more rows per block when the tile is small, so the 32 zmm registers stay busy.
template <int VT, bool GROUPED>
static void rows_avx512_vt(const Problem& P, const float* xp, int64_t ldxp, int64_t r0, int64_t r1) {
    for (int64_t b0 = 0; b0 < P.B;) {
        int64_t left = P.B - b0;
        if (left >= 8) { sweep_avx512<VT, 1, 8, GROUPED>(P, xp, ldxp, r0, r1, b0); b0 += 8; }
        else if (left >= 4) { sweep_avx512<VT, 2, 4, GROUPED>(P, xp, ldxp, r0, r1, b0); b0 += 4; }
        else if (left >= 2) { sweep_avx512<VT, 4, 2, GROUPED>(P, xp, ldxp, r0, r1, b0); b0 += 2; }
        else { sweep_avx512<VT, 4, 1, GROUPED>(P, xp, ldxp, r0, r1, b0); b0 += 1; }
    }
}

static int margin_avx512(int vtype) { return vtype == VT_I8 ? 64 : 32; }

// x (B, ldx) -> xp (B, ldxp) in the lane order of Step512<VT>::xcol (one gather per 16 lanes, from L1).
// Only called for the types whose order is not the natural one (bf16, int8).
template <int VT> static void permute_x_vt(const Problem& P, float* xp, int64_t ldxp) {
    typedef Step512<VT> S;
    for (int j = 0; j < S::NV; j++) {
        alignas(64) int32_t idx[16];
        for (int i = 0; i < 16; i++) idx[i] = (int32_t)S::xcol(j, i);
        __m512i vidx = _mm512_load_si512(idx);
        for (int64_t b = 0; b < P.B; b++)
            for (int64_t c = 0; c < ldxp; c += S::COLS)
                _mm512_storeu_ps(xp + b * ldxp + c + 16 * j, _mm512_i32gather_ps(vidx, P.x + b * P.ldx + c, 4));
    }
}
#pragma GCC pop_options

// ---------------------------------------------------------------------------------------------- AVX-512 VNNI path
// int8 values with dynamically quantized activations (act_quant=1):
//   xq[b, k] = clamp(round(x[b, k] / sx[b]), -127, 127),  sx[b] = max_k |x[b, k]| / 127        (per batch row)
//   y[b, n]  = sx[b] * sum_g scales[n, g] * sum_{k in g} xq[b, k] * q[n, k]                       (exact int32 dots)
// VPDPBUSD multiplies unsigned by signed bytes, so x is stored as xu = xq + 128 and the excess is removed with the
// per-lane sums of q (a second VPDPBUSD against all-ones):  sum xq*q = sum xu*q - 128 * sum q.
// One 64-column step = one 64-byte expand + two VPDPBUSD (vs 16 zmm ops for dequantizing to fp32).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vbmi2,avx512dq,avx512vnni,popcnt,bmi,bmi2,f16c,fma")

// AVX-512 version of quantize_x (below): same arithmetic, for the whole padded row (pads quantize to 0).
static void quantize_x_avx512(const Problem& P, uint8_t* xu, int64_t ldxu, float* sx, float* xhat) {
    for (int64_t b = 0; b < P.B; b++) {
        const float* xr = P.x + b * P.ldx;
        __m512 amax = _mm512_setzero_ps();
        for (int64_t k = 0; k < ldxu; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(xr + k)));
        float a = _mm512_reduce_max_ps(amax), s = a > 0.0f ? a / 127.0f : 1.0f;
        sx[b] = s;
        __m512 inv = _mm512_set1_ps(1.0f / s), vs = _mm512_set1_ps(s), lim = _mm512_set1_ps(127.0f);
        for (int64_t k = 0; k < ldxu; k += 16) {
            __m512 q = _mm512_mul_ps(_mm512_loadu_ps(xr + k), inv);
            q = _mm512_max_ps(_mm512_min_ps(q, lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
            q = _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm512_storeu_ps(xhat + b * P.ldx + k, _mm512_mul_ps(q, vs));
            __m512i u = _mm512_add_epi32(_mm512_cvtps_epi32(q), _mm512_set1_epi32(128));
            _mm_storeu_si128((__m128i*)(xu + b * ldxu + k), _mm512_cvtepi32_epi8(u));
        }
    }
}

template <int R, int BT, bool GROUPED>
static void block_vnni(const Problem& P, const uint8_t* xu, int64_t ldxu, const float* sx, int64_t n0, int64_t r1,
                       int64_t b0) {
    const uint8_t* mrow[R]; const char* vp[R]; int64_t row[R];
    for (int r = 0; r < R; r++) {
        row[r] = n0 + r < r1 ? n0 + r : r1 - 1;
        mrow[r] = P.mask + row[r] * P.words * 4;
        vp[r] = (const char*)P.values + P.row_ptr[row[r]];
    }
    const uint8_t* xb = xu + b0 * ldxu;
    const int64_t steps = (P.words + 1) / 2;
    const int64_t seg = GROUPED ? P.group_size / 64 : steps;
    const __m512i ones = _mm512_set1_epi8(1);
    __m512 tot[R][BT];
    __m512i acc[R][BT], qs[R];
    for (int r = 0; r < R; r++) for (int b = 0; b < BT; b++) tot[r][b] = _mm512_setzero_ps();
    for (int64_t s0 = 0, g = 0; s0 < steps; s0 += seg, g++) {
        int64_t s1 = s0 + seg < steps ? s0 + seg : steps;
        for (int r = 0; r < R; r++) {
            qs[r] = _mm512_setzero_si512();
            for (int b = 0; b < BT; b++) acc[r][b] = _mm512_setzero_si512();
        }
        for (int64_t s = s0; s < s1; s++) {
            __m512i xv[BT];
            for (int b = 0; b < BT; b++) xv[b] = _mm512_loadu_si512(xb + b * ldxu + 64 * s);
            for (int r = 0; r < R; r++) {
                uint64_t m = step_bits<64>(mrow[r], s, P.words);
                __m512i q = _mm512_maskz_expand_epi8((__mmask64)m, in_reg(_mm512_loadu_si512(vp[r])));
                vp[r] += _mm_popcnt_u64(m);
                qs[r] = _mm512_dpbusd_epi32(qs[r], ones, q);
                for (int b = 0; b < BT; b++) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], xv[b], q);
            }
        }
        for (int r = 0; r < R; r++) {
            __m512i excess = _mm512_slli_epi32(qs[r], 7);  // 128 * sum q
            __m512 sc = _mm512_set1_ps(GROUPED ? P.scales[row[r] * P.n_groups + g] : 1.0f);
            for (int b = 0; b < BT; b++) {
                __m512 d = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][b], excess));
                tot[r][b] = GROUPED ? _mm512_fmadd_ps(d, sc, tot[r][b]) : d;
            }
        }
    }
    for (int r = 0; r < R && n0 + r < r1; r++) {
        float sc = GROUPED ? 1.0f : P.scales[row[r] * P.n_groups];
        for (int b = 0; b < BT; b++)
            P.y[(b0 + b) * P.ldy + row[r]] = _mm512_reduce_add_ps(tot[r][b]) * sc * sx[b0 + b];
    }
}

template <int R, int BT, bool GROUPED>
static void sweep_vnni(const Problem& P, const uint8_t* xu, int64_t ldxu, const float* sx, int64_t r0, int64_t r1,
                       int64_t b0) {
    for (int64_t n = r0; n < r1; n += R) block_vnni<R, BT, GROUPED>(P, xu, ldxu, sx, n, r1, b0);
}

template <bool GROUPED>
static void rows_vnni_g(const Problem& P, const uint8_t* xu, int64_t ldxu, const float* sx, int64_t r0, int64_t r1) {
    for (int64_t b0 = 0; b0 < P.B;) {
        int64_t left = P.B - b0;
        if (left >= 8) { sweep_vnni<2, 8, GROUPED>(P, xu, ldxu, sx, r0, r1, b0); b0 += 8; }
        else if (left >= 4) { sweep_vnni<4, 4, GROUPED>(P, xu, ldxu, sx, r0, r1, b0); b0 += 4; }
        else if (left >= 2) { sweep_vnni<4, 2, GROUPED>(P, xu, ldxu, sx, r0, r1, b0); b0 += 2; }
        else { sweep_vnni<4, 1, GROUPED>(P, xu, ldxu, sx, r0, r1, b0); b0 += 1; }
    }
}
#pragma GCC pop_options

static void permute_x(const Problem& P, float* xp, int64_t ldxp) {
    if (P.vtype == VT_BF16) permute_x_vt<VT_BF16>(P, xp, ldxp);
    else permute_x_vt<VT_I8>(P, xp, ldxp);
}

// The loads read up to MARGIN values past the value pointer: the matrix's last rows, whose reads could run past
// the end of `values`, take the scalar path (a handful of rows at most).
static void rows_avx512(const Problem& P, const float* xp, int64_t ldxp, const uint8_t* xu, const float* sx,
                        int64_t r0, int64_t r1) {
    int64_t safe = r1;
    while (safe > r0 && P.row_ptr[safe] + margin_avx512(P.vtype) > P.nnz) safe--;
    if (safe > r0 && xu) {
        if (P.n_groups > 1) rows_vnni_g<true>(P, xu, ldxp, sx, r0, safe);
        else rows_vnni_g<false>(P, xu, ldxp, sx, r0, safe);
    } else if (safe > r0) {
        switch (P.vtype) {
        case VT_F32: rows_avx512_vt<VT_F32, false>(P, xp, ldxp, r0, safe); break;
        case VT_BF16: rows_avx512_vt<VT_BF16, false>(P, xp, ldxp, r0, safe); break;
        case VT_F16: rows_avx512_vt<VT_F16, false>(P, xp, ldxp, r0, safe); break;
        default:
            if (P.n_groups > 1) rows_avx512_vt<VT_I8, true>(P, xp, ldxp, r0, safe);
            else rows_avx512_vt<VT_I8, false>(P, xp, ldxp, r0, safe);
        }
    }
    if (safe < r1) rows_scalar(P, safe, r1);
}

// ---------------------------------------------------------------------------------------------- AVX2 path
// perm8[m][lane]: index (into the next 8 packed values) of the value for `lane`, or sign bit set when bit `lane`
// of m is clear (blendv then writes 0 there).  8 KiB, built once.
static int32_t perm8[256][8];
static void build_perm8(void) {
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int lane = 0; lane < 8; lane++) perm8[m][lane] = (m >> lane) & 1 ? k++ : (int32_t)0x80000000;
    }
}

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,popcnt,bmi,bmi2")

// Widen the next 8 packed values (whatever bits are set) to fp32; lanes past popcount hold the following values.
template <int VT> static inline __m256 load8(const char* p) {
    if (VT == VT_F32) return _mm256_loadu_ps((const float*)p);
    if (VT == VT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
    if (VT == VT_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}

template <int VT> static inline __m256 expand8(uint32_t m8, const char* p) {
    __m256i idx = _mm256_loadu_si256((const __m256i*)perm8[m8]);
    __m256 v = _mm256_permutevar8x32_ps(load8<VT>(p), idx);
    return _mm256_blendv_ps(v, _mm256_setzero_ps(), _mm256_castsi256_ps(idx));
}

template <int VT, int R, int BT, bool GROUPED>
static void block_avx2(const Problem& P, int64_t n0, int64_t r1, int64_t b0) {
    const int es = VT == VT_F32 ? 4 : (VT == VT_I8 ? 1 : 2);
    const uint8_t* mrow[R]; const char* vp[R]; int64_t row[R];
    for (int r = 0; r < R; r++) {
        row[r] = n0 + r < r1 ? n0 + r : r1 - 1;
        mrow[r] = P.mask + row[r] * P.words * 4;
        vp[r] = (const char*)P.values + P.row_ptr[row[r]] * es;
    }
    const float* xb = P.x + b0 * P.ldx;
    const int64_t seg = GROUPED ? P.group_size / 32 : P.words;
    __m256 tot[R][BT], acc[R][BT];
    for (int r = 0; r < R; r++) for (int b = 0; b < BT; b++) tot[r][b] = _mm256_setzero_ps();
    for (int64_t w0 = 0, g = 0; w0 < P.words; w0 += seg, g++) {
        int64_t w1 = w0 + seg < P.words ? w0 + seg : P.words;
        for (int r = 0; r < R; r++) for (int b = 0; b < BT; b++) acc[r][b] = _mm256_setzero_ps();
        for (int64_t w = w0; w < w1; w++) {
            for (int r = 0; r < R; r++) {
                uint32_t m = load_u32(mrow[r] + 4 * w);
                for (int c = 0; c < 4; c++) {
                    uint32_t m8 = (m >> (8 * c)) & 0xff;
                    __m256 v = expand8<VT>(m8, vp[r]);
                    vp[r] += _mm_popcnt_u32(m8) * es;
                    for (int b = 0; b < BT; b++)
                        acc[r][b] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xb + b * P.ldx + 32 * w + 8 * c), acc[r][b]);
                }
            }
        }
        for (int r = 0; r < R; r++) {
            __m256 s = _mm256_set1_ps(GROUPED ? P.scales[row[r] * P.n_groups + g] : 1.0f);
            for (int b = 0; b < BT; b++) tot[r][b] = GROUPED ? _mm256_fmadd_ps(acc[r][b], s, tot[r][b]) : acc[r][b];
        }
    }
    for (int r = 0; r < R && n0 + r < r1; r++) {
        float s = (VT == VT_I8 && !GROUPED) ? P.scales[row[r] * P.n_groups] : 1.0f;
        for (int b = 0; b < BT; b++) {
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(tot[r][b]), _mm256_extractf128_ps(tot[r][b], 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_movehdup_ps(h));
            P.y[(b0 + b) * P.ldy + row[r]] = _mm_cvtss_f32(h) * s;
        }
    }
}

template <int VT, int R, int BT, bool GROUPED>
static void sweep_avx2(const Problem& P, int64_t r0, int64_t r1, int64_t b0) {
    for (int64_t n = r0; n < r1; n += R) block_avx2<VT, R, BT, GROUPED>(P, n, r1, b0);
}

template <int VT, bool GROUPED>
static void rows_avx2_vt(const Problem& P, int64_t r0, int64_t r1) {
    for (int64_t b0 = 0; b0 < P.B;) {
        int64_t left = P.B - b0;
        if (left >= 4) { sweep_avx2<VT, 1, 4, GROUPED>(P, r0, r1, b0); b0 += 4; }
        else if (left >= 2) { sweep_avx2<VT, 2, 2, GROUPED>(P, r0, r1, b0); b0 += 2; }
        else { sweep_avx2<VT, 2, 1, GROUPED>(P, r0, r1, b0); b0 += 1; }
    }
}

static void rows_avx2_simd(const Problem& P, int64_t r0, int64_t r1) {
    bool grouped = P.vtype == VT_I8 && P.n_groups > 1;
    switch (P.vtype) {
    case VT_F32: rows_avx2_vt<VT_F32, false>(P, r0, r1); break;
    case VT_BF16: rows_avx2_vt<VT_BF16, false>(P, r0, r1); break;
    case VT_F16: rows_avx2_vt<VT_F16, false>(P, r0, r1); break;
    default:
        if (grouped) rows_avx2_vt<VT_I8, true>(P, r0, r1);
        else rows_avx2_vt<VT_I8, false>(P, r0, r1);
    }
}
#pragma GCC pop_options

// The AVX2 loads read 8 values past the value pointer: the last rows of the matrix, whose reads could run past
// the end of `values`, go to the scalar path instead (a handful of rows at most).
static void rows_avx2(const Problem& P, int64_t r0, int64_t r1) {
    int64_t safe = r1;
    while (safe > r0 && P.row_ptr[safe] + 8 > P.nnz) safe--;
    if (safe > r0) rows_avx2_simd(P, r0, safe);
    if (safe < r1) rows_scalar(P, safe, r1);
}
#endif  // x86

// ---------------------------------------------------------------------------------------------- dispatch
// Bit 1: AVX2 path usable, bit 2: AVX-512 path usable, bit 3: AVX-512 VNNI too (cpu *and* OS support, via libgcc's cpu model).
extern "C" int sl_isa_flags(void) {
    int f = 0;
#ifdef SL_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt") &&
        __builtin_cpu_supports("bmi2"))
        f |= 1 << ISA_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("popcnt")) {
        f |= 1 << ISA_AVX512;
        if (__builtin_cpu_supports("avx512vnni")) f |= 1 << ISA_VNNI;
    }
#endif
    return f;
}

extern "C" int sl_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

// Format check the kernels rely on (they trust row_ptr to match the mask): returns -1 when every row's popcount
// equals row_ptr[n+1] - row_ptr[n] and padding bits are clear, else the first bad row (N when row_ptr[0] != 0).
extern "C" int64_t sl_check(const uint8_t* mask, int64_t words, const int64_t* row_ptr, int64_t N, int64_t K) {
    if (N > 0 && row_ptr[0] != 0) return N;
    uint32_t pad = K % 32 ? ~((1u << (K % 32)) - 1) : 0;  // bits of the last word past column K-1
    for (int64_t n = 0; n < N; n++) {
        const uint8_t* m = mask + n * words * 4;
        int64_t count = 0;
        for (int64_t w = 0; w < words; w++) count += __builtin_popcount(load_u32(m + 4 * w));
        if (count != row_ptr[n + 1] - row_ptr[n] || (words && (load_u32(m + 4 * (words - 1)) & pad))) return n;
    }
    return -1;
}

// Row where the cumulative cost (mask bytes + value bytes of rows < n) first reaches `target`.
static int64_t split_row(const Problem& P, double target) {
    double row_bytes = 4.0 * (double)P.words, vb = value_bytes(P.vtype);
    int64_t lo = 0, hi = P.N;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if ((double)mid * row_bytes + (double)P.row_ptr[mid] * vb < target) lo = mid + 1; else hi = mid;
    }
    return lo;
}

// What one call runs: the row function of the chosen path, the permuted x of the AVX-512 path, and the
// biased bytes + per-row scales of the VNNI path.
struct Plan { int path; const float* xp; int64_t ldxp; const uint8_t* xu; const float* sx; };

static void run_rows(const Problem& P, const Plan& L, int64_t r0, int64_t r1) {
#ifdef SL_X86
    if (L.path == ISA_AVX512) { rows_avx512(P, L.xp, L.ldxp, L.xu, L.sx, r0, r1); return; }
    if (L.path == ISA_AVX2) { rows_avx2(P, r0, r1); return; }
#endif
    rows_scalar(P, r0, r1);
}

static void run_range(const Problem& P, const Plan& L, int t, int T) {
    double total = (double)P.N * 4.0 * (double)P.words + (double)P.nnz * value_bytes(P.vtype);
    int64_t r0 = t == 0 ? 0 : split_row(P, total * t / T);
    int64_t r1 = t == T - 1 ? P.N : split_row(P, total * (t + 1) / T);
    if (r1 > r0) run_rows(P, L, r0, r1);
}

// The path that runs a request: int8 groups must hold whole decode steps (64 columns on AVX-512, 32 on AVX2);
// other group sizes step down to AVX2, then to scalar.
static int choose_path(int isa, const Problem& P) {
    bool grouped = P.vtype == VT_I8 && P.n_groups > 1;
    int flags = sl_isa_flags();
    if (isa == ISA_AVX512 && (!grouped || P.group_size % 64 == 0)) return ISA_AVX512;
    if (isa >= ISA_AVX2 && (flags >> ISA_AVX2 & 1) && (!grouped || P.group_size % 32 == 0)) return ISA_AVX2;
    return ISA_SCALAR;
}

// Dynamic symmetric per-row int8 quantization of x (see the VNNI section): xu = xq + 128 (ldxu bytes per row,
// padding = 128, i.e. xq = 0), sx = max|x| / 127, and xhat = xq * sx (what every non-VNNI path then uses, so all
// paths compute the same quantity).
static void quantize_x(const Problem& P, uint8_t* xu, int64_t ldxu, float* sx, float* xhat) {
    for (int64_t b = 0; b < P.B; b++) {
        const float* xr = P.x + b * P.ldx;
        float amax = 0.0f;
        for (int64_t k = 0; k < P.K; k++) { float a = xr[k] < 0 ? -xr[k] : xr[k]; amax = a > amax ? a : amax; }
        float s = amax > 0.0f ? amax / 127.0f : 1.0f, inv = 1.0f / s;
        sx[b] = s;
        for (int64_t k = 0; k < ldxu; k++) {
            float q = 0.0f;
            if (k < P.K) {
                q = xr[k] * inv;
                q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
                // round half to even without a libm call: adding 1.5 * 2^23 leaves no fraction bits
                q = (q + 12582912.0f) - 12582912.0f;
            }
            xu[b * ldxu + k] = (uint8_t)((int)q + 128);
            if (k < P.ldx) xhat[b * P.ldx + k] = q * s;
        }
    }
}

extern "C" int sl_spmm(int isa, int vtype, const float* x, int64_t ldx, int64_t B, const uint8_t* mask,
                       int64_t words, const void* values, int64_t nnz, const int64_t* row_ptr, int64_t N, int64_t K,
                       const float* scales, int64_t n_groups, int64_t group_size, float* y, int64_t ldy,
                       int threads, int act_quant) {
    if (vtype < VT_F32 || vtype > VT_I8 || B < 0 || N < 0 || K < 0 || words * 32 < K || ldx < (words + 1) / 2 * 64 ||
        ldy < N || threads < 1 || (vtype == VT_I8 && (!scales || n_groups < 1 || group_size < 1)) ||
        (act_quant && vtype != VT_I8))
        return SL_BAD_ARG;
    if (isa < ISA_SCALAR || isa > ISA_AVX512 || (isa != ISA_SCALAR && !(sl_isa_flags() >> isa & 1)))
        return SL_NO_ISA;
    Problem P = {x, ldx, B, mask, words, values, nnz, row_ptr, N, K, scales, n_groups, group_size, y, ldy, vtype};
    if (N == 0 || B == 0) return SL_OK;
    Plan L = {choose_path(isa, P), nullptr, 0, nullptr, nullptr};
    float *xbuf = nullptr, *xhat = nullptr, *sx = nullptr;
    uint8_t* xu = nullptr;
    int cols = L.path == ISA_AVX512 ? step_cols(vtype) : 32;
    int64_t ldxp = (32 * words + cols - 1) / cols * cols;
    if (act_quant) {
        xu = (uint8_t*)malloc((size_t)(B * ldxp + 64));
        sx = (float*)malloc(sizeof(float) * (size_t)B);
        xhat = (float*)malloc(sizeof(float) * (size_t)(B * ldx + 16));
        if (!xu || !sx || !xhat) { free(xu); free(sx); free(xhat); return SL_BAD_ARG; }
#ifdef SL_X86
        if (sl_isa_flags() >> ISA_AVX512 & 1) quantize_x_avx512(P, xu, ldxp, sx, xhat); else
#endif
        quantize_x(P, xu, ldxp, sx, xhat);
        P.x = xhat;
        if (L.path == ISA_AVX512 && (sl_isa_flags() >> ISA_VNNI & 1)) { L.xu = xu; L.sx = sx; L.ldxp = ldxp; }
    }
#ifdef SL_X86
    if (L.path == ISA_AVX2) {
        static int built = 0;
        if (!built) { build_perm8(); built = 1; }  // idempotent: a racing second build writes the same bytes
    }
    if (L.path == ISA_AVX512 && !L.xu && (vtype == VT_F32 || vtype == VT_F16)) {
        L.ldxp = ldx; L.xp = x;  // natural lane order: x as given
    } else if (L.path == ISA_AVX512 && !L.xu) {
        L.ldxp = ldxp;
        xbuf = (float*)malloc(sizeof(float) * (size_t)(B * L.ldxp + 16));
        if (!xbuf) { free(xu); free(sx); free(xhat); return SL_BAD_ARG; }
        permute_x(P, xbuf, L.ldxp);
        L.xp = xbuf;
    }
#endif
    int T = threads;
    if ((int64_t)T > N) T = (int)N;
#ifdef _OPENMP
    if (T > 1) {
#pragma omp parallel num_threads(T)
        run_range(P, L, omp_get_thread_num(), omp_get_num_threads());
    } else
#endif
        run_range(P, L, 0, 1);
    free(xbuf); free(xu); free(sx); free(xhat);
    return SL_OK;
}
