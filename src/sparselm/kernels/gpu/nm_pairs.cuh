// 1:4 masks with fp16 activations (nm_gemv.cu's "pairs" staging): x staged as a table of index pairs, products in
// half2. Shared by the nvcc build and the g++ host emulation, as gemv_common.cuh.
//
// Why: the per-slot gather of nm_gemv.cu costs ~7 instructions per kept position (index shift + mask, LDS.U16, x to
// float, value to float (int8: PRMT + FADD), FFMA): at 1:4 int8 (1.25 bytes per slot) that is issue-bound, 1.06-1.13x
// fp16's speed for 1.8x fewer bytes (docs/notes/gpu.md, session 23). The two slots of one 4-bit index field (slots
// 2j and 2j + 1 of a lane's step: groups G and G + 32) have 16 index combinations; staging, per such pair of groups,
// all 16 half2 (x[4 G + i], x[4 (G + 32) + i']) makes one shift + mask + LDS.32 fetch both slots' x, ready for one
// HFMA2 with the two values (fp16: already one word; int8: one PRMT into fp16 bit patterns and one HSUB2). Per slot
// ~3.5 instructions instead of ~7. Cost: 8 bytes of shared memory per column of x (4x the 16-bit copy) and a staging
// pass of 16 PRMT + 16 STS per pair of groups.
//
// Table layout: entry (m, c, l), pair of groups G = 64 m + l and G + 32 (l < 32), index combination c = i | i' << 2,
// is the word at byte m PAIR_BLOCK + 128 c + 4 l: for any c the warp's lane l reads bank l (no conflicts), and a lane's
// step t (groups 256 t + l + 32 v, v = 0..7) reads blocks m = 4 t + j, j = 0..3, at its base 8192 t + 4 l, OR the
// field's 128 c, plus the immediate 2048 j. The table starts 2048-byte aligned, so the OR is the sum.
//
// Numerics: each half of the accumulator sums a step's 4 products in fp16 (fma.rn.f16x2, one rounding per FMA), then
// joins the float32 row sum. int8 values enter as v / 128, exact in fp16: the layout stores u = v + 128 (v ^ 0x80 as
// a byte), the fp16 bits 0x48uu are 8 + u / 128, so subtracting 9 gives v / 128 (|v / 128| <= 1: a product never
// exceeds |x|); the row sum is scaled back by 128. Overflow needs |x| > 16384.
#pragma once
#include "gemv_common.cuh"

constexpr uint32_t PAIR_BLOCK = 2048;  // bytes per 64 groups (256 columns): 16 combinations x 32 lanes x 4 bytes

#ifndef __CUDACC__
// IEEE binary16 bits of v, round to nearest even (the host twin of the device's .rn half arithmetic).
static inline uint32_t host_half_rn(double v) {
  const uint32_t sign = v < 0 ? 0x8000u : 0u;
  const double a = fabs(v);
  if (a != a) return 0x7E00u;
  if (a >= 65520.0) return sign | 0x7C00u;  // past the largest half's rounding boundary
  if (a < 6.103515625e-05) return sign | (uint32_t)nearbyint(a * 16777216.0);  // subnormal: units of 2^-24
  int e;
  frexp(a, &e);  // a = f 2^e, f in [0.5, 1)
  double q = nearbyint(ldexp(a, 11 - e));  // 11 significant bits: [1024, 2048]
  if (q == 2048.0) { q = 1024.0; ++e; }
  return sign | (uint32_t)(e + 14) << 10 | ((uint32_t)q - 1024u);
}

// The activation dtype's bits of f, round to nearest even (fp16 / bf16), as the device's float_to_act.
template <int XT>
static inline uint32_t host_act_rn(float f) {
  if (XT == XT_F16) return host_half_rn(f);
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;  // nan
  return (u + 0x7FFFu + (u >> 16 & 1u)) >> 16;
}

static inline uint32_t host_h2(uint32_t a, uint32_t b, uint32_t c, int op) {  // op 0: a b + c; 1: a - b
  uint32_t r = 0;
  for (int h = 0; h < 2; ++h) {
    const double x = half_to_float(a >> 16 * h & 0xFFFFu), y = half_to_float(b >> 16 * h & 0xFFFFu);
    // exact in double (11-bit significands), so the one rounding below is the instruction's
    r |= host_half_rn(op == 0 ? x * y + half_to_float(c >> 16 * h & 0xFFFFu) : x - y) << 16 * h;
  }
  return r;
}
#endif

SL_HD uint32_t h2_fma(uint32_t a, uint32_t b, uint32_t c) {  // per half: a b + c, one rounding
#ifdef __CUDACC__
  uint32_t d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  return host_h2(a, b, c, 0);
#endif
}

SL_HD uint32_t h2_sub(uint32_t a, uint32_t b) {
#ifdef __CUDACC__
  uint32_t d;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#else
  return host_h2(a, b, 0u, 1);
#endif
}

// prmt(a, b, SEL) with the selector as the instruction's immediate: given two constants, nvcc put the other one
// there and rebuilt the selector in a register before every PRMT (4 extra moves per int8 step, offline SASS).
template <uint32_t SEL>
SL_HD uint32_t prmt_imm(uint32_t a, uint32_t b) {
#ifdef __CUDACC__
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "n"(SEL));
  return d;
#else
  return host_prmt(a, b, SEL);
#endif
}

// Entry c of a pair of groups whose 4 activations each are the words (a01, a23) and (b01, b23): the low half is
// a's activation c & 3, the high half b's activation c >> 2.
SL_HD uint32_t pair_entry(uint32_t a01, uint32_t a23, uint32_t b01, uint32_t b23, int c) {
  const int ia = c & 3, ib = c >> 2;
  const uint32_t sel = ((ia & 1) ? 0x32u : 0x10u) | ((ib & 1) ? 0x7600u : 0x5400u);
  return byte_perm(ia < 2 ? a01 : a23, ib < 2 ? b01 : b23, sel);
}

// The table word at byte `addr` (on the GPU a shared-memory address, on the host an offset into `table`).
SL_HD uint32_t pair_at(const uint32_t* table, uint32_t addr) {
#ifdef __CUDACC__
  uint32_t r;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(r) : "r"(addr));
  return r;
#else
  uint32_t r;
  memcpy(&r, reinterpret_cast<const unsigned char*>(table) + addr, 4);
  return r;
#endif
}

// The 4 activations of group g as two words (zeros past K; K is a multiple of 4, so a group is all in or all out).
SL_HD void group_x(const uint16_t* x, int g, int K, bool aligned, uint32_t& lo, uint32_t& hi) {
  lo = hi = 0u;
  if (4 * g >= K) return;
#ifdef __CUDACC__
  if (aligned) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(x) + g);
    lo = v.x; hi = v.y;
    return;
  }
#endif
  const uint16_t* p = x + 4 * g;
  lo = (uint32_t)p[0] | (uint32_t)p[1] << 16;
  hi = (uint32_t)p[2] | (uint32_t)p[3] << 16;
}

// The activations of table item (m, l): groups 64 m + l and 64 m + 32 + l, two words each (xr[0..3]).
SL_HD void pair_x(const uint16_t* x, int K, bool aligned, int m, int l, uint32_t* xr) {
  group_x(x, 64 * m + l, K, aligned, xr[0], xr[1]);
  group_x(x, 64 * m + 32 + l, K, aligned, xr[2], xr[3]);
}

// Entries (m, *, l) of the table (32-bit words, m PAIR_BLOCK / 4 + 32 c + l) from the item's activations.
SL_HD void pair_store(uint32_t* table, int m, int l, const uint32_t* xr) {
  uint32_t* w = table + m * (PAIR_BLOCK / 4) + l;
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int c = 0; c < 16; ++c) w[32 * c] = pair_entry(xr[0], xr[1], xr[2], xr[3], c);
}

SL_HD void pair_fill(uint32_t* table, const uint16_t* x, int K, bool aligned, int m, int l) {
  uint32_t xr[4];
  pair_x(x, K, aligned, m, l, xr);
  pair_store(table, m, l, xr);
}

// One lane's step of 8 slots (values w: fp16, 4 words; int8, 2 words of biased codes u = v + 128; index word `code`,
// 2 bits per slot) against the table at `base` + `imm` (the lane's 8192 t + 4 l; imm, a multiple of 8192 above the
// fields' bits, is the step's place in its round: a load's immediate, where base + imm cost an add per step): 4 HFMA2,
// then the two halves join (acc0, acc1). int8 sums are v / 128. k48 is 0x48484848 from a kernel argument: as a
// literal, ptxas made it the PRMT's immediate and rebuilt both byte selectors in registers every step (UMOV + IMAD
// each: 4 of ~45 instructions per int8 step, offline sm_90 SASS); as an opaque register the selectors stay immediates.
template <int VT>
SL_HD void pair_step(const uint32_t* w, uint32_t code, const uint32_t* table, uint32_t base, uint32_t imm,
                     uint32_t k48, float& acc0, float& acc1) {
  uint32_t h = 0u;
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int j = 0; j < 4; ++j) {
    // field j (slots 2j, 2j + 1: bits 4j..4j+3) as the byte offset 128 c
    const uint32_t off = (j < 2 ? code << (7 - 4 * j) : code >> (4 * j - 7)) & 0x780u;
    const uint32_t xp = pair_at(table, (base | off) + imm + j * PAIR_BLOCK);
    uint32_t v;
    if (VT == VT_I8) v = h2_sub(j & 1 ? prmt_imm<0x4342>(w[j >> 1], k48) : prmt_imm<0x4140>(w[j >> 1], k48),
                                0x48804880u);
    else v = w[j];
    h = h2_fma(v, xp, h);
  }
  acc0 += half_to_float(h & 0xFFFFu);
  acc1 += half_to_float(h >> 16);
}

// One load round of a lane: U steps' values (fp16: 4 words per step; int8: 2, w[u][2..3] unused) and index words.
template <int VT, int U>
struct PairRound {
  uint32_t w[U][4];
  uint32_t code[U];
};

// The lane's values and index words at step `step` of the layout (nm_gemv.cu: 256 slots per step, 8 per lane).
template <int VT>
SL_HD const unsigned char* pair_vp(const void* vals, size_t step, int lane) {
  return static_cast<const unsigned char*>(vals) + (step * 256 + 8 * (size_t)lane) * (VT == VT_I8 ? 1 : 2);
}
SL_HD const uint16_t* pair_ip(const void* idx, size_t step, int lane) {
  return static_cast<const uint16_t*>(idx) + step * 32 + lane;
}

// The loads of n <= U consecutive steps from the lane's pointers (n = U: unguarded once inlined).
template <int VT, int U>
SL_HD void pair_load(PairRound<VT, U>& r, const unsigned char* vp, const uint16_t* ip, int n) {
  constexpr int VB = VT == VT_I8 ? 8 : 16;  // a lane's value bytes per step
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int u = 0; u < U; ++u) {
    if (u >= n) break;
#ifdef __CUDACC__
    if (VT == VT_I8) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(vp + u * 32 * VB));
      r.w[u][0] = v.x; r.w[u][1] = v.y;
    } else {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(vp + u * 32 * VB));
      r.w[u][0] = v.x; r.w[u][1] = v.y; r.w[u][2] = v.z; r.w[u][3] = v.w;
    }
    r.code[u] = __ldg(ip + 32 * u);
#else
    memcpy(r.w[u], vp + u * 32 * VB, VB);
    r.code[u] = ip[32 * u];
#endif
  }
}

// One lane's partial dot product over one row of a 1:4 matrix (`steps` steps; vp, ip: the lane's values and index
// words at the row's first step, pair_vp / pair_ip), x staged as the pair table at `tbase` (the table's byte address +
// 4 lane). int8 sums are in units of v / 128: the caller scales the row's sum by 128 (exact, so where it happens does
// not change a bit) together with the row's scale. `r` holds the row's first round already when `loaded` (the kernel
// loads a warp's first one while it stages x). The walk advances pointers: nm_walk's size_t step index, inlined here,
// cost ~15 instructions of 64-bit address arithmetic per step (offline SASS). Whole rounds of U steps run unguarded
// and only a last, partial round checks each step against the row's end: the per-step guards were ~3 of ~45
// instructions of an int8 step (offline SASS).
template <int VT, int U>
SL_HD float nm_lane_pairs(const unsigned char* vp, const uint16_t* ip, const uint32_t* table, uint32_t tbase,
                          uint32_t k48, int steps, PairRound<VT, U>& r, bool loaded) {
  constexpr int VB = VT == VT_I8 ? 8 : 16;
  float acc0 = 0.0f, acc1 = 0.0f;
  auto round = [&](int n) {  // n = U (a whole round: the guards fold away) or the row's last n < U steps
    if (!loaded) pair_load<VT, U>(r, vp, ip, n);
    loaded = false;
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int u = 0; u < U; ++u)
      if (u < n) pair_step<VT>(r.w[u], r.code[u], table, tbase, u * 4 * PAIR_BLOCK, k48, acc0, acc1);
  };
  int t = 0;
  for (; t + U <= steps; t += U, vp += U * 32 * VB, ip += U * 32, tbase += U * 4 * PAIR_BLOCK) round(U);
  if (U > 1 && t < steps) round(steps - t);
  return acc0 + acc1;
}

#ifdef __CUDACC__
// The whole table from x's 16-bit loads, one item per iteration, then a block barrier (the 1-step-round launches).
__device__ __forceinline__ void stage_pairs_direct(uint32_t* table, const uint16_t* x, int K, int kx) {
  const bool aligned = (reinterpret_cast<uintptr_t>(x) & 7) == 0;
  for (int e = threadIdx.x; e < kx / 256 * 32; e += blockDim.x) pair_fill(table, x, K, aligned, e >> 5, e & 31);
  __syncthreads();
}

// Entries (m, *, l) from x's copy in shared memory (xc: the K activations, 8-byte aligned; zeros past K).
__device__ __forceinline__ void pair_fill_copy(uint32_t* table, const uint16_t* xc, int K, int m, int l) {
  uint32_t xr[4] = {0u, 0u, 0u, 0u};
  const int ga = 64 * m + l, gb = ga + 32;
  if (4 * ga < K) {
    const uint2 v = reinterpret_cast<const uint2*>(xc)[ga];
    xr[0] = v.x; xr[1] = v.y;
  }
  if (4 * gb < K) {
    const uint2 v = reinterpret_cast<const uint2*>(xc)[gb];
    xr[2] = v.x; xr[3] = v.y;
  }
  pair_store(table, m, l, xr);
}

// The whole table for kx columns (kx / 256 blocks), zeros past K, then a block barrier. `table` is 2048-byte aligned;
// xc, K 16-bit words of scratch (8-byte aligned), receives x first. `early()` runs while x is on its way: the kernel
// issues a warp's first weight round there, so its DRAM latency covers x's L2 round trip, the table build and both
// barriers (a copy of the kernel without the staging ran 0.5-1.2 us faster: nm_probe.json).
// Why x goes through cp.async: loaded into registers (the first form of this change), ptxas tracked x's loads and the
// weights' on one scoreboard, so the table build waited for the weights' DRAM round trip (offline SASS: the first
// PRMT waits on the scoreboard of both) and int8 got 4-8% slower (nm_ab_stage.json). cp.async completes on its own
// counter (cp.async.wait_group). Same-run A/B against the staging before (nm_ab_early_round.json): fp16 1.04-1.11x,
// int8 1.00-1.09x.
template <typename Early>
__device__ __forceinline__ void stage_pairs(uint32_t* table, uint16_t* xc, const uint16_t* x, int K, int kx,
                                            Early early) {
  const int items = kx / 256 * 32;
  const bool copy = (reinterpret_cast<uintptr_t>(x) & 7) == 0;  // else 16-bit loads (pair_fill)
  if (copy) {
    const uint32_t dst = (uint32_t)__cvta_generic_to_shared(xc);
    for (int g = threadIdx.x; g < K / 4; g += blockDim.x)
      asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst + 8 * g), "l"(x + 4 * g));
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  }
  asm volatile("" ::: "memory");  // early()'s loads after x's: one call, so nvcc cannot hoist it over the copy
  early();
  if (copy) {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();
    for (int e = threadIdx.x; e < items; e += blockDim.x) pair_fill_copy(table, xc, K, e >> 5, e & 31);
  } else {
    for (int e = threadIdx.x; e < items; e += blockDim.x) pair_fill(table, x, K, false, e >> 5, e & 31);
  }
  __syncthreads();
}
#endif
