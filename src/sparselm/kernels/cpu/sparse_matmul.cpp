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
// Threads (spmm_pool.h) take chunks of rows of equal estimated bytes (mask bytes + value bytes).

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spmm_common.h"
#include "spmm_pool.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SL_X86 1

#include "spmm_avx512.h"
#include "spmm_avx2.h"
#endif  // x86

// ---------------------------------------------------------------------------------------------- dispatch
// Bit 1: AVX2 path usable, bit 2: AVX-512 path usable, bit 3: AVX-512 VNNI too, bit 4: AVX-512 BF16 too
// (CPU *and* OS support, via libgcc's CPU model).
static int isa_flags_uncached(void) {
    int f = 0;
#ifdef SL_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt") &&
        __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c"))
        f |= 1 << ISA_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("f16c")) {
        f |= 1 << ISA_AVX512;
        if (__builtin_cpu_supports("avx512vnni")) f |= 1 << ISA_VNNI;
        if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16")) f |= 1 << ISA_BF16;
    }
#endif
    return f;
}

extern "C" int sl_isa_flags(void) {
    static int cached = -1;  // benign race: every thread computes the same value
    if (cached < 0) cached = isa_flags_uncached();
    return cached;
}

// Threads come from spmm_pool.h (pthreads); kept for callers that ask whether the build is multithreaded.
extern "C" int sl_has_openmp(void) { return 1; }

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


static void run_rows(const Problem& P, const Plan& L, int64_t r0, int64_t r1) {
#ifdef SL_X86
    if (L.path == ISA_AVX512) { rows_avx512(P, L, r0, r1); return; }
    if (L.path == ISA_AVX2) { rows_avx2(P, r0, r1); return; }
#endif
    rows_scalar(P, r0, r1);
}

// Rows are cut into chunks of equal estimated bytes; the pool hands them out.
struct Job { const Problem* P; const Plan* L; int64_t chunks; double total; };

static void run_chunk(const void* job, int64_t c) {
    const Job& J = *(const Job*)job;
    int64_t r0 = c == 0 ? 0 : split_row(*J.P, J.total * (double)c / (double)J.chunks);
    int64_t r1 = c == J.chunks - 1 ? J.P->N : split_row(*J.P, J.total * (double)(c + 1) / (double)J.chunks);
    if (r1 > r0) run_rows(*J.P, *J.L, r0, r1);
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

// act_mode: 0 = x as given; 1 = int8 values with dynamically int8-quantized activations (quantize_x);
// 2 = x holds bf16 values exactly (bf16 activations): with bf16 weights the AVX-512 BF16 dot path may run.
extern "C" int sl_spmm(int isa, int vtype, const float* x, int64_t ldx, int64_t B, const uint8_t* mask,
                       int64_t words, const void* values, int64_t nnz, const int64_t* row_ptr, int64_t N, int64_t K,
                       const float* scales, int64_t n_groups, int64_t group_size, float* y, int64_t ldy,
                       int threads, int act_mode) {
    if (vtype < VT_F32 || vtype > VT_I8 || B < 0 || N < 0 || K < 0 || words * 32 < K || ldx < (words + 1) / 2 * 64 ||
        ldy < N || threads < 1 || (vtype == VT_I8 && (!scales || n_groups < 1 || group_size < 1)) ||
        act_mode < 0 || act_mode > 2 || (act_mode == 1 && vtype != VT_I8))
        return SL_BAD_ARG;
    if (isa < ISA_SCALAR || isa > ISA_AVX512 || (isa != ISA_SCALAR && !(sl_isa_flags() >> isa & 1)))
        return SL_NO_ISA;
    Problem P = {x, ldx, B, mask, words, values, nnz, row_ptr, N, K, scales, n_groups, group_size, y, ldy, vtype};
    if (N == 0 || B == 0) return SL_OK;
    Plan L = {choose_path(isa, P), x, ldx, ALT_NONE, nullptr, nullptr};
    float *xbuf = nullptr, *xhat = nullptr, *sx = nullptr;
    void* xalt = nullptr;
    int flags = sl_isa_flags();
    int cols = L.path == ISA_AVX512 ? step_cols(vtype) : 32;
    int64_t ldxp = (32 * words + cols - 1) / cols * cols;
    if (act_mode == 1) {
        uint8_t* xu = (uint8_t*)(xalt = malloc((size_t)(B * ldxp + 64)));
        sx = (float*)malloc(sizeof(float) * (size_t)B);
        xhat = (float*)malloc(sizeof(float) * (size_t)(B * ldx + 16));
        if (!xu || !sx || !xhat) { free(xu); free(sx); free(xhat); return SL_BAD_ARG; }
#ifdef SL_X86
        if (flags >> ISA_AVX512 & 1) quantize_x_avx512(P, xu, ldxp, sx, xhat); else
#endif
        quantize_x(P, xu, ldxp, sx, xhat);
        P.x = L.xp = xhat;
        if (L.path == ISA_AVX512 && (flags >> ISA_VNNI & 1)) {
            L.alt = ALT_VNNI; L.xalt = xu; L.sx = sx; L.ldxp = ldxp;
        }
    }
#ifdef SL_X86
    if (act_mode == 2 && vtype == VT_BF16 && L.path == ISA_AVX512 && (flags >> ISA_BF16 & 1)) {
        uint16_t* xb = (uint16_t*)(xalt = malloc(sizeof(uint16_t) * (size_t)(B * ldxp + 32)));
        if (!xb) return SL_BAD_ARG;
        for (int64_t b = 0; b < B; b++)  // exact: x holds bf16 values, so the low 16 bits are zero
            for (int64_t k = 0; k < ldxp; k++) {
                uint32_t u;
                memcpy(&u, x + b * ldx + k, 4);
                xb[b * ldxp + k] = (uint16_t)(u >> 16);
            }
        L.alt = ALT_BF16DOT; L.xalt = xb; L.ldxp = ldxp;
    }
    if (L.path == ISA_AVX2) {
        static int built = 0;
        if (!built) { build_perm8(); built = 1; }  // idempotent: a racing second build writes the same bytes
    }
    if (L.path == ISA_AVX512 && L.alt == ALT_NONE && (vtype == VT_BF16 || vtype == VT_I8)) {
        L.ldxp = ldxp;  // these decode steps want x in their lane order (Step512<VT>::xcol)
        xbuf = (float*)malloc(sizeof(float) * (size_t)(B * L.ldxp + 16));
        if (!xbuf) { free(xalt); free(sx); free(xhat); return SL_BAD_ARG; }
        permute_x(P, xbuf, L.ldxp);
        L.xp = xbuf;
    }
#endif
    // Chunks: 8 per thread, so a thread that starts late (shared machine) costs at most a few chunks' time;
    // below ~256 KiB of weight bytes a single thread is faster than waking others.
    double total = (double)N * 4.0 * (double)words + (double)nnz * value_bytes(vtype);
    int T = total < 262144.0 ? 1 : threads;
    int64_t chunks = T <= 1 ? 1 : (int64_t)T * 8;
    if (chunks > N) chunks = N;
    Job J = {&P, &L, chunks, total};
    pool_run(run_chunk, &J, chunks, T);
    free(xbuf); free(xalt); free(sx); free(xhat);
    return SL_OK;
}
