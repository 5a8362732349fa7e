// sparselm CPU sparse matmul: the AVX-512 (VBMI2 expand) and AVX-512 VNNI paths.
// Part of sparse_matmul.cpp (included once, in order); not a stand-alone header.
#pragma once

// ---------------------------------------------------------------------------------------------- AVX-512 path
// Software prefetch into L2 for the row-block kernels, carried across the blocks of one sweep.  Values: the bytes
// DIST ahead of the block's first value, issued at the rate the block consumes its values (block bytes / steps);
// mask: the rows ROWS rows past the block, one line per step.  The hardware prefetchers alone leave DRAM-resident
// weights ~1.4x slower than L3-resident ones (rows of a few KiB: many short streams, restarting at page borders);
// with this, 2 threads reach ~29 GB/s (fp32, 4096x4096 and 11008x4096, 75 %) instead of ~21.  Measured on Zen 4:
// L2 hint (T1) > T0 or NTA (T0: +5-10 %, T1: +20-30 %); distance 16-96 KiB all alike, 1-8 KiB no gain.
// Not used by the bf16 dot path: no gain cold with 2 threads, and 1.5x slower when W sits in L3.
struct Prefetch {
    static const int64_t DIST = 32768, ROWS = 16, CHUNK = 8;  // CHUNK: steps per chunk()
    uintptr_t pf = 0, target = 0, mnext = 0;  // integers: the addresses may lie past the arrays (prefetch is harmless)
    int64_t rate = 0, mlines = 0;
    // Rows [n0, n1) are about to be swept in `steps` steps.
    inline __attribute__((always_inline)) void block(const Problem& P, int64_t n0, int64_t n1, int64_t steps) {
        int vb = value_bytes(P.vtype);
        uintptr_t v0 = (uintptr_t)P.values + (uintptr_t)(P.row_ptr[n0] * vb);
        uintptr_t v1 = (uintptr_t)P.values + (uintptr_t)(P.row_ptr[n1] * vb);
        rate = (int64_t)(v1 - v0) / (steps > 0 ? steps : 1) + 1;
        target = v0 + DIST;
        if (pf < target) pf = target;
        mnext = (uintptr_t)P.mask + (uintptr_t)((n1 + ROWS) * P.words * 4);
        mlines = (n1 - n0) * P.words * 4 / 64;
    }
    // Before step s (every step: the fp32 kernel, whose loop stays as tight).
    inline __attribute__((always_inline)) void step(int64_t s) {
        target += rate;
        while (pf < target) { _mm_prefetch((const char*)pf, _MM_HINT_T1); pf += 64; }
        if (s < mlines) _mm_prefetch((const char*)(mnext + 64 * s), _MM_HINT_T1);
    }
    // Before steps [s, s + n), for the kernels whose step loop must stay branch-free (a per-step branch pushed their
    // accumulators out of registers: int8 1.2x slower hot).
    inline __attribute__((always_inline)) void chunk(int64_t s, int64_t n) {
        target += n * rate;
        while (pf < target) { _mm_prefetch((const char*)pf, _MM_HINT_T1); pf += 64; }
        for (int64_t i = s; i < s + n && i < mlines; i++) _mm_prefetch((const char*)(mnext + 64 * i), _MM_HINT_T1);
    }
};

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
static void block_avx512(const Problem& P, const float* xp, int64_t ldxp, int64_t n0, int64_t r1, int64_t b0,
                         Prefetch& pf_io) {
    Prefetch pf = pf_io;  // a local copy stays in registers (through the reference: a store every step)
    typedef Step512<VT> S;
    const int NV = S::NV, A = BT == 1 ? 2 : 1;
    const bool PRELOAD = R > 1 && BT * NV <= 8;  // share x loads across rows while registers allow
    const uint8_t* mrow[R]; const char* vp[R]; int64_t row[R];
    block_rows<R>(P, n0, r1, value_bytes(VT), row, mrow, vp);
    const float* xb = xp + b0 * ldxp;
    const int64_t steps = (32 * P.words + S::COLS - 1) / S::COLS;
    const int64_t seg = GROUPED ? P.group_size / S::COLS : steps;  // steps per scaling segment
    pf.block(P, n0, n0 + R < r1 ? n0 + R : r1, steps);
    __m512 tot[R][BT], acc[R][BT][A];
    for (int r = 0; r < R; r++) for (int b = 0; b < BT; b++) tot[r][b] = _mm512_setzero_ps();
    for (int64_t s0 = 0, g = 0; s0 < steps; s0 += seg, g++) {
        int64_t s1 = s0 + seg < steps ? s0 + seg : steps;
        for (int r = 0; r < R; r++) for (int b = 0; b < BT; b++) for (int a = 0; a < A; a++)
            acc[r][b][a] = _mm512_setzero_ps();
        for (int64_t c = s0; c < s1; c += Prefetch::CHUNK) {
          const int64_t c1 = c + Prefetch::CHUNK < s1 ? c + Prefetch::CHUNK : s1;
          pf.chunk(c, c1 - c);
          for (int64_t s = c; s < c1; s++) {
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
    pf_io = pf;
}

template <int VT, int R, int BT, bool GROUPED>
static void sweep_avx512(const Problem& P, const float* xp, int64_t ldxp, int64_t r0, int64_t r1, int64_t b0) {
    Prefetch pf;
    for (int64_t n = r0; n < r1; n += R) block_avx512<VT, R, BT, GROUPED>(P, xp, ldxp, n, r1, b0, pf);
}

// fp32 values, one batch row (the decode case): 4 rows per block, 32 columns per step, like block_avx512<VT_F32,
// 4, 1> but with less per-step overhead: no x-tile/accumulator arrays to keep in registers through the generic
// template, the two 16-bit mask halves loaded separately (two `kmovw` from a GPR, no 64-bit kmov + kshift), popcount
// of the low half from the same word.  (`kmovw k, m16` straight from memory measured 30 % slower on Zen 4.)
// 7.3 cycles per row and 32 columns from L2 (was 8.1), against ~6.1 for 2 x (kmov + expand + FMA) alone: on Zen 4 a
// zmm expand takes ~1.6 cycles and shares a pipe with the FMAs (expand + FMA pair: 2.6 cycles).
template <int R>
static void block_f32b1(const Problem& P, const float* x, float* y, int64_t n0, int64_t r1, Prefetch& pf_io) {
    Prefetch pf = pf_io;  // a local copy stays in registers (through the reference: a store every step)
    const uint8_t* mrow[R]; const float* vp[R]; int64_t row[R];
    block_rows<R>(P, n0, r1, 4, row, mrow, vp);
    const int64_t words = P.words;
    pf.block(P, n0, n0 + R < r1 ? n0 + R : r1, words);
    __m512 acc[R][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t s = 0; s < words; s++) {
        pf.step(s);
        __m512 x0 = _mm512_loadu_ps(x + 32 * s), x1 = _mm512_loadu_ps(x + 32 * s + 16);
        for (int r = 0; r < R; r++) {
            uint16_t h[2];
            memcpy(h, mrow[r] + 4 * s, 4);
            uint32_t m = load_u32(mrow[r] + 4 * s);
            __m512 a = _mm512_maskz_expand_ps((__mmask16)h[0], in_reg(_mm512_loadu_ps(vp[r])));
            __m512 b = _mm512_maskz_expand_ps((__mmask16)h[1], in_reg(_mm512_loadu_ps(vp[r] + _mm_popcnt_u32(h[0]))));
            vp[r] += _mm_popcnt_u32(m);
            acc[r][0] = _mm512_fmadd_ps(a, x0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(b, x1, acc[r][1]);
        }
    }
    for (int r = 0; r < R && n0 + r < r1; r++)
        y[row[r]] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
    pf_io = pf;
}

// Batch tiles of 4/2/1 (3/4/4 rows per block): x vectors are loaded once per step and shared by the rows;
// 8-wide tiles with one row measured 1.1-1.6x slower (one x load per FMA saturates the load ports).
template <int VT, bool GROUPED>
static void rows_avx512_vt(const Problem& P, const float* xp, int64_t ldxp, int64_t r0, int64_t r1) {
    for (int64_t b0 = 0; b0 < P.B;) {
        int64_t left = P.B - b0;
        if (left >= 4) { sweep_avx512<VT, 3, 4, GROUPED>(P, xp, ldxp, r0, r1, b0); b0 += 4; }
        else if (left >= 2) { sweep_avx512<VT, 4, 2, GROUPED>(P, xp, ldxp, r0, r1, b0); b0 += 2; }
        else if (VT == VT_F32) {
            Prefetch pf;
            for (int64_t n = r0; n < r1; n += 4) block_f32b1<4>(P, xp + b0 * ldxp, P.y + b0 * P.ldy, n, r1, pf);
            b0 += 1;
        } else { sweep_avx512<VT, 4, 1, GROUPED>(P, xp, ldxp, r0, r1, b0); b0 += 1; }
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
                       int64_t b0, Prefetch& pf_io) {
    Prefetch pf = pf_io;  // a local copy stays in registers (through the reference: a store every step)
    const uint8_t* mrow[R]; const char* vp[R]; int64_t row[R];
    block_rows<R>(P, n0, r1, 1, row, mrow, vp);
    const uint8_t* xb = xu + b0 * ldxu;
    const int64_t steps = (P.words + 1) / 2;
    const int64_t seg = GROUPED ? P.group_size / 64 : steps;
    pf.block(P, n0, n0 + R < r1 ? n0 + R : r1, steps);
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
        for (int64_t c = s0; c < s1; c += Prefetch::CHUNK) {
          const int64_t c1 = c + Prefetch::CHUNK < s1 ? c + Prefetch::CHUNK : s1;
          pf.chunk(c, c1 - c);
          for (int64_t s = c; s < c1; s++) {
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
    pf_io = pf;
}

template <int R, int BT, bool GROUPED>
static void sweep_vnni(const Problem& P, const uint8_t* xu, int64_t ldxu, const float* sx, int64_t r0, int64_t r1,
                       int64_t b0) {
    Prefetch pf;
    for (int64_t n = r0; n < r1; n += R) block_vnni<R, BT, GROUPED>(P, xu, ldxu, sx, n, r1, b0, pf);
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

// ---------------------------------------------------------------------------------------------- AVX-512 BF16 path
// bf16 values with bf16 activations: one 32 x 16-bit expand per mask word, then one VDPBF16PS, which adds the
// products of lanes (2i, 2i+1) into fp32 lane i: natural column order on both sides, products exact in fp32.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vbmi2,avx512dq,avx512vnni,avx512bf16,popcnt,bmi,bmi2,f16c,fma")

template <int R, int BT>
static void block_bf16dot(const Problem& P, const uint16_t* xb, int64_t ldxb, int64_t n0, int64_t r1, int64_t b0) {
    const int A = BT == 1 ? 2 : 1;
    const uint8_t* mrow[R]; const uint16_t* vp[R]; int64_t row[R];
    block_rows<R>(P, n0, r1, 2, row, mrow, vp);
    const uint16_t* x0 = xb + b0 * ldxb;
    __m512 acc[R][BT][A];
    for (int r = 0; r < R; r++) for (int b = 0; b < BT; b++) for (int a = 0; a < A; a++)
        acc[r][b][a] = _mm512_setzero_ps();
    for (int64_t w = 0; w < P.words; w++) {
        __m512i xv[BT];
        for (int b = 0; b < BT; b++) xv[b] = _mm512_loadu_si512(x0 + b * ldxb + 32 * w);
        for (int r = 0; r < R; r++) {
            uint32_t m = load_u32(mrow[r] + 4 * w);
            __m512i h = _mm512_maskz_expand_epi16((__mmask32)m, in_reg(_mm512_loadu_si512(vp[r])));
            vp[r] += _mm_popcnt_u32(m);
            for (int b = 0; b < BT; b++)
                acc[r][b][w % A] = _mm512_dpbf16_ps(acc[r][b][w % A], (__m512bh)h, (__m512bh)xv[b]);
        }
    }
    for (int r = 0; r < R && n0 + r < r1; r++)
        for (int b = 0; b < BT; b++) {
            __m512 sum = A == 2 ? _mm512_add_ps(acc[r][b][0], acc[r][b][A - 1]) : acc[r][b][0];
            P.y[(b0 + b) * P.ldy + row[r]] = _mm512_reduce_add_ps(sum);
        }
}

template <int R, int BT>
static void sweep_bf16dot(const Problem& P, const uint16_t* xb, int64_t ldxb, int64_t r0, int64_t r1, int64_t b0) {
    for (int64_t n = r0; n < r1; n += R) block_bf16dot<R, BT>(P, xb, ldxb, n, r1, b0);
}

static void rows_bf16dot(const Problem& P, const uint16_t* xb, int64_t ldxb, int64_t r0, int64_t r1) {
    for (int64_t b0 = 0; b0 < P.B;) {
        int64_t left = P.B - b0;
        if (left >= 8) { sweep_bf16dot<2, 8>(P, xb, ldxb, r0, r1, b0); b0 += 8; }
        else if (left >= 4) { sweep_bf16dot<4, 4>(P, xb, ldxb, r0, r1, b0); b0 += 4; }
        else if (left >= 2) { sweep_bf16dot<4, 2>(P, xb, ldxb, r0, r1, b0); b0 += 2; }
        else { sweep_bf16dot<4, 1>(P, xb, ldxb, r0, r1, b0); b0 += 1; }
    }
}
#pragma GCC pop_options

static void permute_x(const Problem& P, float* xp, int64_t ldxp) {
    if (P.vtype == VT_BF16) permute_x_vt<VT_BF16>(P, xp, ldxp);
    else permute_x_vt<VT_I8>(P, xp, ldxp);
}

// The loads read up to MARGIN values past the value pointer: the matrix's last rows, whose reads could run past
// the end of `values`, take the scalar path (a handful of rows at most).
static void rows_avx512(const Problem& P, const Plan& L, int64_t r0, int64_t r1) {
    const float* xp = L.xp;
    int64_t ldxp = L.ldxp, safe = r1;
    while (safe > r0 && P.row_ptr[safe] + margin_avx512(P.vtype) > P.nnz) safe--;
    if (safe > r0 && L.alt == ALT_VNNI) {
        const uint8_t* xu = (const uint8_t*)L.xalt;
        if (P.n_groups > 1) rows_vnni_g<true>(P, xu, ldxp, L.sx, r0, safe);
        else rows_vnni_g<false>(P, xu, ldxp, L.sx, r0, safe);
    } else if (safe > r0 && L.alt == ALT_BF16DOT) {
        rows_bf16dot(P, (const uint16_t*)L.xalt, ldxp, r0, safe);
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
