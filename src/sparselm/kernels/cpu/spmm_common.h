// sparselm CPU sparse matmul: shared types and the portable scalar path.
// Part of sparse_matmul.cpp (included once, in order); not a stand-alone header.
#pragma once

enum { VT_F32 = 0, VT_BF16 = 1, VT_F16 = 2, VT_I8 = 3 };
enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_VNNI = 3, ISA_BF16 = 4 };  // VNNI, BF16: flag bits only
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

static inline __attribute__((always_inline)) uint32_t load_u32(const uint8_t* p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
// Columns per AVX-512 decode step (Step512<VT>::COLS).
static inline int step_cols(int vt) { return vt == VT_I8 ? 64 : 32; }
static inline int value_bytes(int vt) { return vt == VT_F32 ? 4 : (vt == VT_I8 ? 1 : 2); }
// The R rows of a row block at n0: rows past r1 repeat the last real row, so a partial block runs the same
// branch-free inner loop (its extra results are never stored); each row's mask words and first value (es bytes
// per value) are looked up once per block.
template <int R, typename V>
static inline void block_rows(const Problem& P, int64_t n0, int64_t r1, int es, int64_t row[R],
                              const uint8_t* mrow[R], const V* vp[R]) {
    for (int r = 0; r < R; r++) {
        row[r] = n0 + r < r1 ? n0 + r : r1 - 1;
        mrow[r] = P.mask + row[r] * P.words * 4;
        vp[r] = (const V*)((const char*)P.values + P.row_ptr[row[r]] * es);
    }
}

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

// What one call runs: the row function of the chosen path, x as that path reads it, and an alternative
// activation form: ALT_VNNI = biased int8 bytes + per-row scales, ALT_BF16DOT = bf16 copy of x.
enum { ALT_NONE = 0, ALT_VNNI = 1, ALT_BF16DOT = 2 };
struct Plan { int path; const float* xp; int64_t ldxp; int alt; const void* xalt; const float* sx; };
