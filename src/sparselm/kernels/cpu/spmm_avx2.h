// sparselm CPU sparse matmul: the AVX2 table-shuffle path.
// Part of sparse_matmul.cpp (included once, in order); not a stand-alone header.
#pragma once

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
    block_rows<R>(P, n0, r1, es, row, mrow, vp);
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
