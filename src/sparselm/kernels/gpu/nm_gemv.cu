// Batch-1 y = x W^T for N:M-sparse W (every group of M consecutive columns of a row holds at most N nonzeros), in
// CUDA C++; cuda_nm.py builds the layout from the bitmask format when a matrix is N:M.
//
// Why a kernel for structured masks: the per-nonzero layouts for unstructured masks spend 2.7-3.3 bytes per fp16
// nonzero on column positions, group bases and padding (grp8cu, d4cu), capping 75% sparsity at 2.5-3.0x cuBLAS. An
// N:M row has the same number of slots everywhere, so a slot needs only its index inside its group: 2 bits for
// M = 4, 4 bits for M = 8. At 1:4 that is 2.25 bytes per fp16 nonzero (0.5625 per weight: a 3.56x byte ceiling), at
// 2:8 2.5 (3.2x), at 2:4 2.25 (1.78x). Rows need no start pointers (all have `steps` steps), every warp does the same
// work, and the column of a slot is group * M + index: no running sums, no bases.
//
// Layout. A row's (K / M) N slots (value + index; unused slots: value 0, index 0) are padded with zero slots to
// `steps` steps of 256 = 32 lanes x 8 slots. In step t of row r, lane l's 8 slots are 16 contiguous bytes of fp16 /
// bf16 values (8 of int8) at slot 256 (r steps + t) + 8 l. Slot v of lane l is position v % N of group
// 32 J t + l + 32 (v / N), J = 8 / N groups per lane per step: at each v the warp's 32 lanes read x over 32
// consecutive groups. Its index is bits [B v, B v + B) of the lane's index word 32 (r steps + t) + l (B = 2: 16-bit
// words for M = 4; B = 4: 32-bit words for M = 8). int8 values carry per-row scales, applied to the row's sum, and
// are stored biased, v + 128 as a byte (zero slots 0x80): both decoders want that byte, and the layout's one XOR
// saves two per step of 8 slots.
//
// x is staged per block (XM, the staging mode) as float32 (XS_F32), zero-padded to the padded groups' columns (kx =
// steps 256 M / N), or (XS_16) as its 16-bit activations: half the bytes, so a warp's gathers at a slot (32
// consecutive groups) spread over twice as many banks (M = 4: at most 2 lanes per bank instead of 4; M = 8: 4 instead
// of 8), for one conversion per nonzero. 1:4 masks with fp16 x may stage it as a pair table (XS_PAIRS, nm_pairs.cuh):
// one shared-memory load per two slots and half2 products.
//
// The same file compiles as plain C++ (g++ -x c++) with a host emulation entry point: the lane arithmetic, index
// decoding and value decoders are shared with the GPU build, so CPU tests check them bit for bit.
#include <type_traits>

#include "gemv_common.cuh"
#include "nm_epilogue.cuh"
#include "nm_pairs.cuh"

enum { XS_F32 = 0, XS_16 = 1, XS_PAIRS = 2 };  // how a block stages x

// The (M, slots per group) pairs the kernel is built for: f(M, N) with both as compile-time constants
// (std::integral_constant) for the pair (m, n), -1 for any other. One table for the device launch and the host
// emulation, batch 1 and batched.
template <typename F>
static int by_pattern(int m, int n, F f) {
  using std::integral_constant;
  switch (m * 10 + n) {
    case 41: return f(integral_constant<int, 4>{}, integral_constant<int, 1>{});
    case 42: return f(integral_constant<int, 4>{}, integral_constant<int, 2>{});
    case 81: return f(integral_constant<int, 8>{}, integral_constant<int, 1>{});
    case 82: return f(integral_constant<int, 8>{}, integral_constant<int, 2>{});
    case 84: return f(integral_constant<int, 8>{}, integral_constant<int, 4>{});
    default: return -1;
  }
}

// One lane's step as loaded: its 8 values (fp16 / bf16: 4 words; int8: 2) and its index word.
struct NMStep {
  uint32_t w[4];
  uint32_t code;
};

template <int VT, int M>
SL_HD void nm_load(const void* vals, const void* idx, size_t step, int lane, NMStep& s) {
  const size_t slot = step * 256 + 8 * (size_t)lane, word = step * 32 + lane;
#ifdef __CUDACC__
  if (VT == VT_I8) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(static_cast<const unsigned char*>(vals) + slot));
    s.w[0] = v.x; s.w[1] = v.y;
  } else {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(static_cast<const unsigned char*>(vals) + 2 * slot));
    s.w[0] = v.x; s.w[1] = v.y; s.w[2] = v.z; s.w[3] = v.w;
  }
  s.code = M == 4 ? (uint32_t)__ldg(static_cast<const uint16_t*>(idx) + word)
                  : __ldg(static_cast<const uint32_t*>(idx) + word);
#else
  memcpy(s.w, static_cast<const unsigned char*>(vals) + (VT == VT_I8 ? 1 : 2) * slot, VT == VT_I8 ? 8 : 16);
  if (M == 4) {
    uint16_t c;
    memcpy(&c, static_cast<const unsigned char*>(idx) + 2 * word, 2);
    s.code = c;
  } else {
    memcpy(&s.code, static_cast<const unsigned char*>(idx) + 4 * word, 4);
  }
#endif
}

// x[col] from the staged copy: float32, or the 16-bit activations converted here.
template <int XT>
SL_HD float x_at(const float* xs, int col) { return xs[col]; }
template <int XT>
SL_HD float x_at(const uint16_t* xs, int col) { return act_to_float<XT>(xs[col]); }

// f(slot, value) for the lane's 8 slots of one step, values decoded 4 at a time.
template <int VT, typename F>
SL_HD void nm_values(const NMStep& s, F f) {
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int h = 0; h < 2; ++h) {
    float v[4];
    decode_values<VT, true>(VT == VT_I8 ? Raw{s.w[h], 0u} : Raw{s.w[2 * h], s.w[2 * h + 1]}, v);
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int q = 0; q < 4; ++q) f(4 * h + q, v[q]);
  }
}

// f(q, value, column) for the lane's 8 slots of one step (its first group g0 = 32 J t + lane), slot 4 h + q: a slot's
// column = its group's first column + its index. The batch-1 (fp16 / bf16 values) and batched products.
template <int VT, int M, int N, typename F>
SL_HD void nm_slots(const NMStep& s, int g0, F f) {
  constexpr int B = M == 4 ? 2 : 4;  // index bits per slot
  nm_values<VT>(s, [&](int slot, float v) {
    f(slot & 3, v, (g0 + 32 * (slot / N)) * M + (int)((s.code >> (B * slot)) & (M - 1)));
  });
}

// x from the staged copy at byte address `addr`: on the GPU a shared-memory address (ld.shared: the generic pointer
// arithmetic this replaces lost the address space, and nvcc emitted 64-bit generic loads), on the host an offset into
// xs.
template <int XT>
SL_HD float x_staged(const uint16_t* xs, uint32_t addr) {
#ifdef __CUDACC__
  unsigned short r;
  asm volatile("ld.shared.u16 %0, [%1];" : "=h"(r) : "r"(addr));
#else
  uint16_t r;
  memcpy(&r, reinterpret_cast<const unsigned char*>(xs) + addr, 2);
#endif
  return act_to_float<XT>(r);
}
template <int XT>
SL_HD float x_staged(const float* xs, uint32_t addr) {
  float r;
#ifdef __CUDACC__
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(r) : "r"(addr));
#else
  memcpy(&r, reinterpret_cast<const unsigned char*>(xs) + addr, 4);
#endif
  return r;
}

// The lane's 8 products of one step, in two accumulators (even / odd slots). int8 values: a slot's x is read at the
// lane's group base OR its index's byte offset: the base (x's address + M g0 elements; the copy is 16-byte aligned, on
// the host too) is aligned to M sizeof(XS) <= 16 bytes, so the OR is the sum, and per slot nvcc emits SHF + LOP3
// instead of SHF + LOP3 + IADD3 (offline sm_90 SASS: an int8 1:4 step 79 -> 70 instructions); slot v's group offset
// (32 M (v / N) elements) is the load's immediate. H200, same run (gpu_kernels_nm_s24_or*.json): int8 1:4 kernels
// 3-7.5% faster; fp16 / bf16 unchanged (0.98-1.03x, median 1.00), so they keep nm_slots' column arithmetic, as does
// wider staging (M = 8 with float32 x). 7B decode at 1:4 int8: 562 -> 613-618 tok/s (gpu_decode_or.json).
template <int VT, int XT, int M, int N, typename XS>
SL_HD void nm_use(const NMStep& s, const XS* xs, int g0, float& acc0, float& acc1) {
  if constexpr (VT != VT_I8 || M * sizeof(XS) > 16) {
    nm_slots<VT, M, N>(s, g0, [&](int q, float v, int col) {
      if (q & 1) acc1 = fmaf(v, x_at<XT>(xs, col), acc1);
      else acc0 = fmaf(v, x_at<XT>(xs, col), acc0);
    });
  } else {
    constexpr int B = M == 4 ? 2 : 4, L = sizeof(XS) == 2 ? 1 : 2;  // index bits; log2 of x's bytes
    constexpr uint32_t MASK = (uint32_t)(M - 1) << L;
#ifdef __CUDACC__
    const uint32_t base = (uint32_t)__cvta_generic_to_shared(xs) + (uint32_t)g0 * (M * sizeof(XS));
#else
    const uint32_t base = (uint32_t)g0 * (M * sizeof(XS));
#endif
    nm_values<VT>(s, [&](int slot, float v) {
      const int sh = B * slot - L;  // the slot's index field, shifted to a byte offset
      const uint32_t off = (sh >= 0 ? s.code >> sh : s.code << -sh) & MASK;
      const float xv = x_staged<XT>(xs, (base | off) + 32 * (slot / N) * M * (uint32_t)sizeof(XS));
      if (slot & 1) acc1 = fmaf(v, xv, acc1);
      else acc0 = fmaf(v, xv, acc0);
    });
  }
}

// Lane `lane`'s walk over one row's `steps` steps (the row starts at step `first`): U steps' loads issued before
// the first use, then use(step, the lane's first group in it) for each.
template <int VT, int M, int N, int U, typename Use>
SL_HD void nm_walk(const void* vals, const void* idx, size_t first, int steps, int lane, Use use) {
  constexpr int J = 8 / N;  // groups per lane per step
  for (int t = 0; t < steps; t += U) {
    NMStep s[U];
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int u = 0; u < U; ++u)
      if (U == 1 || t + u < steps) nm_load<VT, M>(vals, idx, first + t + u, lane, s[u]);
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int u = 0; u < U; ++u)
      if (U == 1 || t + u < steps) use(s[u], 32 * J * (t + u) + lane);
  }
}

// Lane `lane`'s partial dot product over one row.
template <int VT, int XT, int M, int N, int U, typename XS>
SL_HD float nm_lane(const void* vals, const void* idx, const XS* xs, size_t first, int steps, int lane) {
  float acc0 = 0.0f, acc1 = 0.0f;
  nm_walk<VT, M, N, U>(vals, idx, first, steps, lane,
                       [&](const NMStep& s, int g0) { nm_use<VT, XT, M, N>(s, xs, g0, acc0, acc1); });
  return acc0 + acc1;
}

struct NMArgs {
  const uint16_t* x;
  const void *vals, *idx;
  const float* scales;  // per-row (int8), or null
  uint16_t* y;
  int N, K, steps, kx;  // kx: staged x columns (steps * 256 * M / N >= K)
  int bsz, ldx, ldy;    // batches 2-4: bsz <= B rows of x (stride ldx) and of y (stride ldy)
  int glu;              // batch 1: y[r] = silu(row r) * row (r + N / 2), N / 2 outputs (a fused gate / up matrix)
  NormArgs norm;        // batch 1, norm.res set: y's add + RMSNorm by the last block (nm_epilogue.cuh)
  uint32_t k48;         // 0x48484848, the pair table's int8 decoding constant, opaque to ptxas (nm_pairs.cuh)
};

#include "nm_batched.cuh"  // batches 2-4: needs NMArgs and the lane arithmetic above

#ifdef __CUDACC__
// The pair table's rows r0, r0 + stride, ... (glu: gate row r, up row r + rows). A row's first slot is a 32-bit
// product (supports: N steps 256 < 2^32): the size_t one was ~12 of ~70 instructions around a 4-step row (offline
// SASS); loop-carried 64-bit pointers cost registers the 40-register build lacks. A row's scale is loaded before its
// round, not after its sum (a second memory latency per row), and int8's 128 applied after it (sc 128 put an FMUL
// waiting on the load ahead of the round: 1-2-step rounds 2-5% slower, H200). x 128 is exact: the twin's bits.
template <int VT, int XT, int U, bool GLU>
__device__ __forceinline__ void pair_rows(const NMArgs& a, const uint32_t* table, uint32_t tbase, int lane, int r0,
                                          int stride, int rows, PairRound<VT, U>& round, bool loaded) {
  constexpr float UNIT = VT == VT_I8 ? 128.0f : 1.0f;
  asm("mov.b32 %0, %0;" : "+r"(tbase));  // opaque: ptxas rebuilt it per row from the block's window (8 instructions)
  for (int r = r0; r < rows; r += stride) {
    float out0 = 0.0f, out1 = 0.0f;
#pragma unroll
    for (int part = 0; part <= (int)GLU; ++part) {
      const int row = r + part * rows;
      // used after the sum: no wait before the round. int8 launches always carry scales (cuda_nm.gemv passes ones
      // where the matrix has none), so their null check (3 instructions per row) is gone
      const float sc = VT == VT_I8 || a.scales ? __ldg(a.scales + row) : 1.0f;
      const uint32_t slot = (uint32_t)row * ((uint32_t)a.steps * 256u) + 8u * (uint32_t)lane;
      float acc = nm_lane_pairs<VT, U>(static_cast<const unsigned char*>(a.vals) + (size_t)slot * (VT == VT_I8 ? 1 : 2),
                                       static_cast<const uint16_t*>(a.idx) + (slot >> 3), table, tbase, a.k48,
                                       a.steps, round, loaded);
      loaded = false;
#pragma unroll
      for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, m);
      (part ? out1 : out0) = acc * sc * UNIT;  // (acc sc) 128: scaling by 128 is exact, these are the twin's bits
    }
    // lane 0, read off tbase (2048-byte aligned + 4 lane): `lane` itself was re-read from SR_TID per row (S2R + 2).
    // With the scale's null check gone: 0.997-1.007x, neutral (H200, same run: nm_ab_lane_scale.json)
    if ((tbase & 0x7Cu) == 0u) a.y[r] = float_to_act<XT>(GLU ? glu_out<XT>(out0, out1) : out0);
  }
}

// Persistent blocks: x staged (XM: float32 or 16-bit, zeros past K, or the pair table), then warp w takes rows w, w
// + all warps, ...; lane 0 of the row's warp writes y[row]. MINB = 2 (configs asking for 2048 threads per SM, 1-2
// steps per round) caps the kernel at 32 registers so that two 1024-thread blocks stay resident: the first H200
// timing ran at 2.3-2.6 TB/s against grp8cu's 3.3 with at most 32 warps per SM at 36-56 registers (ptxas: no spills
// at 32 with U <= 2). MINB = 3 (pair table only; 16-warp blocks, three per SM) caps it at 40: int8's 1-step rounds
// need 40 and fit three such blocks, but its 2-8-step rounds (the early round, the copy's address) took 46+ and lost
// the third block.
template <int VT, int XT, int M, int N, int U, int MINB, int XM>
__global__ void __launch_bounds__(MINB == 3 ? 512 : 1024, MINB) nm_gemv_kernel(const NMArgs a) {
  extern __shared__ uint4 xs4[];  // 16-byte aligned for the staging's vector stores
  float* xsf = reinterpret_cast<float*>(xs4);
  uint16_t* xs16 = reinterpret_cast<uint16_t*>(xs4);
  // the pair table starts at the first 2048-byte boundary of the window (nm_launch allots the slack)
  const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(xs4), pad = (0u - sbase) & (PAIR_BLOCK - 1);
  uint32_t* table = reinterpret_cast<uint32_t*>(reinterpret_cast<unsigned char*>(xs4) + pad);
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5, rows = a.glu ? a.N >> 1 : a.N;
  const int r0 = blockIdx.x * warps + (threadIdx.x >> 5);
  pdl_trigger();
  pdl_wait();  // x is the previous kernel's output
  PairRound<VT, U> round;  // the pair table's load round, the warp's first loaded during the staging (U >= 2 only,
  // and only they stage through x's copy: 1-step rounds lost 10-60% with both, nm_ab_cpasync.json)
  constexpr bool EARLY = U > 1;
  if (XM == XS_16) {  // the activations as they are (16-byte copies), zeros in [K, kx)
    stage_x(xs4, a.x, a.K);
    for (int i = a.K + threadIdx.x; i < a.kx; i += blockDim.x) xs16[i] = 0;
    __syncthreads();
  } else if (XM == XS_PAIRS && !EARLY) {
    stage_pairs_direct(table, a.x, a.K, a.kx);
  } else if (XM == XS_PAIRS) {
    stage_pairs(table, reinterpret_cast<uint16_t*>(table + a.kx / 256 * (PAIR_BLOCK / 4)), a.x, a.K, a.kx, [&] {
      if (r0 < rows) pair_load<VT, U>(round, pair_vp<VT>(a.vals, (size_t)r0 * a.steps, lane),
                                      pair_ip(a.idx, (size_t)r0 * a.steps, lane), a.steps < U ? a.steps : U);
    });
  } else {
    stage_x_f32<XT>(xsf, a.x, a.K, a.kx);
  }
  // glu as a template argument: its runtime part loop and output select were ~13 of ~69 SASS instructions per row of
  // the plain launch. H200, same run (nm_ab_glu_template_r8.json): int8 +3.6-5.6% at K = 4096 (4-step rows), -1.5% at
  // K = 11008-14336 (not understood), fp16 +0.4-1.2%.
  if constexpr (XM == XS_PAIRS) {
    const uint32_t tb = sbase + pad + 4 * lane;
    const int stride = gridDim.x * warps;
    if (a.glu) pair_rows<VT, XT, U, true>(a, table, tb, lane, r0, stride, rows, round, EARLY);
    else pair_rows<VT, XT, U, false>(a, table, tb, lane, r0, stride, rows, round, EARLY);
  } else for (int r = r0; r < rows; r += gridDim.x * warps) {
    float out0 = 0.0f, out1 = 0.0f;
    for (int part = 0; part <= a.glu; ++part) {  // glu: the gate row r, then the up row r + rows
      const int row = r + part * rows;
      float acc;
      if constexpr (XM == XS_16)
        acc = nm_lane<VT, XT, M, N, U>(a.vals, a.idx, xs16, (size_t)row * a.steps, a.steps, lane);
      else
        acc = nm_lane<VT, XT, M, N, U>(a.vals, a.idx, xsf, (size_t)row * a.steps, a.steps, lane);
#pragma unroll
      for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, m);
      (part ? out1 : out0) = a.scales ? acc * __ldg(a.scales + row) : acc;
    }
    if (lane == 0) a.y[r] = float_to_act<XT>(a.glu ? glu_out<XT>(out0, out1) : out0);
  }
  if (a.norm.res) norm_epilogue<XT>(a.norm, a.y, a.N, reinterpret_cast<float*>(xs4));
}

template <int VT, int XT, int M, int N, int U, int MINB, int XM>
static int nm_launch(const NMArgs& a, int blocks, int threads, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  const size_t smem = XM == XS_16 ? ((size_t)a.kx * 2 + 15) / 16 * 16
                      : XM == XS_PAIRS ? (size_t)a.kx / 256 * PAIR_BLOCK + PAIR_BLOCK  // + the alignment slack
                                             + (U > 1 ? ((size_t)a.K * 2 + 15) / 16 * 16 : 0)  // + x's copy
                                       : (size_t)a.kx * 4;
  if (const int e = opt_in(nm_gemv_kernel<VT, XT, M, N, U, MINB, XM>, smem, &opted)) return e;
  return sl_launch(nm_gemv_kernel<VT, XT, M, N, U, MINB, XM>, blocks, threads, smem, stream, a);
}

template <int VT, int XT, int M, int N, int XM>
static int nm_unrolled(const NMArgs& a, int unroll, int minb, int blocks, int threads, cudaStream_t s) {
  switch (unroll * 10 + minb) {
    case 11: return nm_launch<VT, XT, M, N, 1, 1, XM>(a, blocks, threads, s);
    case 21: return nm_launch<VT, XT, M, N, 2, 1, XM>(a, blocks, threads, s);
    case 41: return nm_launch<VT, XT, M, N, 4, 1, XM>(a, blocks, threads, s);
    case 12: return nm_launch<VT, XT, M, N, 1, 2, XM>(a, blocks, threads, s);
    case 22: return nm_launch<VT, XT, M, N, 2, 2, XM>(a, blocks, threads, s);
    case 81:  // the pair table only: a short row (K = 11008: 11 steps) in 2 load rounds instead of 3
      if constexpr (XM == XS_PAIRS) return nm_launch<VT, XT, M, N, 8, 1, XM>(a, blocks, threads, s);
      return -1;
    case 13: case 23: case 43: case 83:  // the pair table's 40-register build: blocks of at most 512 threads
      if constexpr (XM == XS_PAIRS) {
        if (threads > 512) return -1;
        switch (unroll) {
          case 1: return nm_launch<VT, XT, M, N, 1, 3, XM>(a, blocks, threads, s);
          case 2: return nm_launch<VT, XT, M, N, 2, 3, XM>(a, blocks, threads, s);
          case 4: return nm_launch<VT, XT, M, N, 4, 3, XM>(a, blocks, threads, s);
          default: return nm_launch<VT, XT, M, N, 8, 3, XM>(a, blocks, threads, s);
        }
      }
      return -1;
    default: return -1;
  }
}

template <int VT, int XT, int M, int N>
static int nm_staged(const NMArgs& a, int unroll, int minb, int x16, int blocks, int threads, cudaStream_t s) {
  if (x16 == XS_PAIRS) {  // 1:4 with fp16 x (fp16 or int8 values) only
    if constexpr (M == 4 && N == 1 && XT == XT_F16 && VT != VT_BF16)
      return nm_unrolled<VT, XT, M, N, XS_PAIRS>(a, unroll, minb, blocks, threads, s);
    return -1;
  }
  return x16 ? nm_unrolled<VT, XT, M, N, XS_16>(a, unroll, minb, blocks, threads, s)
             : nm_unrolled<VT, XT, M, N, XS_F32>(a, unroll, minb, blocks, threads, s);
}

template <int VT, int XT>
static int nm_pattern(const NMArgs& a, int m, int n, int unroll, int minb, int x16, int blocks, int threads,
                      cudaStream_t s) {
  return by_pattern(m, n, [&](auto M, auto N) {
    return nm_staged<VT, XT, decltype(M)::value, decltype(N)::value>(a, unroll, minb, x16, blocks, threads, s);
  });
}

// y (bsz, N) = x (bsz, K) W^T; vt / xt as grp8_gemv.cu; (m, n) in {4:1, 4:2, 8:1, 8:2, 8:4} (the layout's M and slots
// per group); B: the kernel's padded batch, 1 (unroll 1, 2 or 4 steps per load round; minb 1, or 2 (the 32-register
// build, unroll 1 or 2); x16: x staged as 16-bit activations (1), or as the pair table (2: 1:4 masks, fp16 x, fp16 or
// int8 values; nm_pairs.cuh)) or 2 / 4 (unroll 1 or 2, minb 1, no x16); glu or (res set) the norm epilogue: batch
// 1 only, not both (nm_epilogue.cuh: res, w, res_out, xn of N activations, counter one zeroed int). Returns a
// cudaError_t (0 = launched) or -1 when unsupported.
extern "C" int sl_nm_launch(int vt, int xt, int m, int n, int B, int unroll, int minb, int x16, const void* x,
                            const void* vals, const void* idx, const void* scales, void* y, int N, int K, int steps,
                            int kx, int bsz, int ldx, int ldy, int glu, int blocks, int threads, const void* res,
                            const void* w, void* res_out, void* xn, float eps, int* counter, void* stream) {
  const NMArgs a{static_cast<const uint16_t*>(x), vals, idx, static_cast<const float*>(scales),
                 static_cast<uint16_t*>(y), N, K, steps, kx, bsz, ldx, ldy, glu != 0,
                 {static_cast<const uint16_t*>(res), static_cast<const uint16_t*>(w), static_cast<uint16_t*>(res_out),
                  static_cast<uint16_t*>(xn), eps, counter}, 0x48484848u};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int u = unroll, h = x16;
  if (h < XS_F32 || h > XS_PAIRS) return -1;  // an unknown staging mode, not a silent fall-through to XS_16
  if (vt == VT_I8 && h == XS_PAIRS && !scales) return -1;  // pair_rows reads int8 scales without a null check
  if ((glu && (B != 1 || N % 2)) || (res && (B != 1 || glu || !w || !res_out || !xn || !counter))) return -1;
  if (B != 1) {
    if (minb != 1 || h || bsz > B) return -1;
    if (xt == XT_F16 && vt == VT_F16) return nm_pattern_b<VT_F16, XT_F16>(a, m, n, B, u, blocks, threads, s);
    if (xt == XT_BF16 && vt == VT_BF16) return nm_pattern_b<VT_BF16, XT_BF16>(a, m, n, B, u, blocks, threads, s);
    if (xt == XT_F16 && vt == VT_I8) return nm_pattern_b<VT_I8, XT_F16>(a, m, n, B, u, blocks, threads, s);
    if (xt == XT_BF16 && vt == VT_I8) return nm_pattern_b<VT_I8, XT_BF16>(a, m, n, B, u, blocks, threads, s);
    return -1;
  }
  if (xt == XT_F16 && vt == VT_F16) return nm_pattern<VT_F16, XT_F16>(a, m, n, u, minb, h, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_BF16) return nm_pattern<VT_BF16, XT_BF16>(a, m, n, u, minb, h, blocks, threads, s);
  if (xt == XT_F16 && vt == VT_I8) return nm_pattern<VT_I8, XT_F16>(a, m, n, u, minb, h, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_I8) return nm_pattern<VT_I8, XT_BF16>(a, m, n, u, minb, h, blocks, threads, s);
  return -1;
}

#else  // host emulation: the same lane arithmetic, the warp's shuffle tree per row (float32 output)

// y[r] from the lanes' sums lane_sum(r, lane), summed in __shfl_xor_sync's tree, times the row's scale; with glu,
// N / 2 outputs glu_out(row r, row r + N / 2) (rounded to the activation dtype, as the kernel stores them).
template <int XT, typename F>
static void nm_host_reduce(const NMArgs& a, float* y, F lane_sum) {
  auto row_sum = [&](int r) {
    float l[32], t[32];
    for (int lane = 0; lane < 32; ++lane) l[lane] = lane_sum(r, lane);
    for (int m = 16; m; m >>= 1) {
      for (int lane = 0; lane < 32; ++lane) t[lane] = l[lane] + l[lane ^ m];
      memcpy(l, t, sizeof l);
    }
    return a.scales ? l[0] * a.scales[r] : l[0];
  };
  const int rows = a.glu ? a.N / 2 : a.N;
  for (int r = 0; r < rows; ++r) y[r] = a.glu ? glu_out<XT>(row_sum(r), row_sum(r + rows)) : row_sum(r);
}

template <int VT, int XT, int M, int N, int U, typename XS>
static void nm_host_rows(const NMArgs& a, float* y) {
  XS* xs = new XS[a.kx > 0 ? a.kx : 1];  // the staged copy: float32, or the 16-bit activations (XS_16)
  for (int i = 0; i < a.kx; ++i) {
    if constexpr (sizeof(XS) == 4) xs[i] = i < a.K ? act_to_float<XT>(a.x[i]) : 0.0f;
    else xs[i] = i < a.K ? a.x[i] : (uint16_t)0;
  }
  nm_host_reduce<XT>(a, y, [&](int r, int lane) {
    return nm_lane<VT, XT, M, N, U>(a.vals, a.idx, xs, (size_t)r * a.steps, a.steps, lane);
  });
  delete[] xs;
}

// 1:4, fp16 x staged as the pair table (XS_PAIRS), the table at offset 0.
template <int VT, int U>
static void nm_host_pairs(const NMArgs& a, float* y) {
  const int blocks = a.kx / 256;
  uint32_t* table = new uint32_t[(size_t)(blocks > 0 ? blocks : 1) * (PAIR_BLOCK / 4)];
  for (int m = 0; m < blocks; ++m)
    for (int l = 0; l < 32; ++l) pair_fill(table, a.x, a.K, false, m, l);
  nm_host_reduce<XT_F16>(a, y, [&](int r, int lane) {
    PairRound<VT, U> round;  // the kernel's warps load their first row's first round while x is staged
    const bool early = r % 3 == 0;
    const unsigned char* vp = pair_vp<VT>(a.vals, (size_t)r * a.steps, lane);
    const uint16_t* ip = pair_ip(a.idx, (size_t)r * a.steps, lane);
    if (early) pair_load<VT, U>(round, vp, ip, a.steps < U ? a.steps : U);
    // int8: the sums' 128 (exact) before the reduction, where the kernel applies it after: the same bits
    return nm_lane_pairs<VT, U>(vp, ip, table, 4u * lane, a.k48, a.steps, round, early) * (VT == VT_I8 ? 128.0f : 1.0f);
  });
  delete[] table;
}

template <int VT, int XT, typename XS>
static int nm_host_pattern(const NMArgs& a, int m, int n, int unroll, float* y) {
  if (unroll != 1 && unroll != 2 && unroll != 4) return -1;
  return by_pattern(m, n, [&](auto M, auto N) {
    constexpr int MM = decltype(M)::value, NN = decltype(N)::value;
    if (unroll == 1) nm_host_rows<VT, XT, MM, NN, 1, XS>(a, y);
    else if (unroll == 2) nm_host_rows<VT, XT, MM, NN, 2, XS>(a, y);
    else nm_host_rows<VT, XT, MM, NN, 4, XS>(a, y);
    return 0;
  });
}

// The host twin of sl_nm_launch: x (bsz, K) contiguous, float32 y (bsz, N).
template <int VT, int XT>
static int nm_host_staged(const NMArgs& a, int m, int n, int B, int unroll, int x16, float* y) {
  if (B != 1) return x16 ? -1 : nm_host_batched<VT, XT>(a, m, n, B, unroll, y);
  if (x16 == XS_PAIRS) {
    if constexpr (XT != XT_F16 || VT == VT_BF16) return -1;
    if (m != 4 || n != 1) return -1;
    switch (unroll) {
      case 1: nm_host_pairs<VT, 1>(a, y); return 0;
      case 2: nm_host_pairs<VT, 2>(a, y); return 0;
      case 4: nm_host_pairs<VT, 4>(a, y); return 0;
      case 8: nm_host_pairs<VT, 8>(a, y); return 0;
      default: return -1;
    }
  }
  if (x16 != XS_F32 && x16 != XS_16) return -1;
  return x16 ? nm_host_pattern<VT, XT, uint16_t>(a, m, n, unroll, y)
             : nm_host_pattern<VT, XT, float>(a, m, n, unroll, y);
}

extern "C" int sl_nm_host(int vt, int xt, int m, int n, int B, int unroll, int x16, const void* x, const void* vals,
                          const void* idx, const void* scales, float* y, int N, int K, int steps, int kx, int bsz,
                          int glu) {
  const NMArgs a{static_cast<const uint16_t*>(x), vals, idx, static_cast<const float*>(scales), nullptr, N, K, steps,
                 kx, bsz, K, N, glu != 0, {}, 0x48484848u};
  if (bsz < 1 || bsz > B || (glu && (B != 1 || N % 2))) return -1;
  if (xt == XT_F16 && vt == VT_F16) return nm_host_staged<VT_F16, XT_F16>(a, m, n, B, unroll, x16, y);
  if (xt == XT_BF16 && vt == VT_BF16) return nm_host_staged<VT_BF16, XT_BF16>(a, m, n, B, unroll, x16, y);
  if (xt == XT_F16 && vt == VT_I8) return nm_host_staged<VT_I8, XT_F16>(a, m, n, B, unroll, x16, y);
  if (xt == XT_BF16 && vt == VT_I8) return nm_host_staged<VT_I8, XT_BF16>(a, m, n, B, unroll, x16, y);
  return -1;
}
#endif
