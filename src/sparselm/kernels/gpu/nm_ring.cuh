// The 1:4 pair-table kernel with its weights fed through a per-warp ring in shared memory (cp.async), staging mode
// XS_RING of nm_gemv.cu. Included by nm_gemv.cu after NMArgs; the nvcc build gets the kernel and its launch, the g++
// build the host twin.
//
// Why: the register rounds of nm_lane_pairs keep a warp's loads in flight only between a round's issue and its use,
// and every round's registers count against residency. int8 steps carry 1.8x fewer bytes than fp16's for about the
// same instructions, so int8 reached 2.1-2.5 TB/s on its compressed bytes where fp16 reached 3.0-3.4 on the same
// shapes (nm_ab_minb3.json): its bytes in flight per SM were capped by registers, not by the memory system. Here a
// warp walks the steps of all its rows as one stream (row r0, r0 + S, ...; with glu the gate row, then the up row),
// D slots of one step each: before using step i it issues the copies of step i + D - 1 into the slot step i - 1 used,
// so D - 1 steps stay in flight across row ends, and the ring costs shared memory instead of registers.
//
// Slot layout (SLOT bytes, 16-byte aligned): the step's values as lanes load them (32 lanes x 8 bytes int8 / 16 bytes
// fp16: lane l's at 8 l / 16 l), then the step's 32 index words (64 bytes; lanes 0-15 copy 4 bytes each). Every lane
// copies with cp.async and commits one group per step (empty past the stream's end), so `cp.async.wait_group D - 1`
// means step i has landed for this lane; a __syncwarp then makes the other lanes' index bytes visible, and a second
// one, before the slot is reissued, orders every lane's reads of it before the new copies.
#pragma once
#include "nm_pairs.cuh"

template <int VT>
struct Ring {
  static constexpr uint32_t VB = VT == VT_I8 ? 8 : 16;  // a lane's value bytes per step
  static constexpr uint32_t VALS = 32 * VB, SLOT = VALS + 64;
};

// Position in a warp's stream: output row r (rows r0, r0 + S, ...), part (glu: 0 the gate row, 1 the up row), step t.
#ifdef __CUDACC__
#define SL_RING_FN __host__ __device__ __forceinline__
#else
#define SL_RING_FN inline
#endif
struct RingCursor {
  int r, part, t;
  SL_RING_FN void next(int steps, int parts, int S) {
    if (++t < steps) return;
    t = 0;
    if (++part < parts) return;
    part = 0;
    r += S;
  }
  SL_RING_FN size_t step(int rows, int steps) const { return (size_t)(r + part * rows) * steps + t; }
};

// Lane `lane`'s copies of layout step `step` into the slot at `slot` (GPU: a shared-memory address; host: an offset
// into `host`): its values, and for lanes 0-15 4 bytes of the index words.
template <int VT>
SL_HD void ring_issue(unsigned char* host, uint32_t slot, const void* vals, const void* idx, size_t step, int lane) {
  const unsigned char* vs = pair_vp<VT>(vals, step, lane);
  const unsigned char* is = static_cast<const unsigned char*>(idx) + step * 64 + 4 * lane;
#ifdef __CUDACC__
  (void)host;
  if (VT == VT_I8)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(slot + 8 * lane), "l"(vs) : "memory");
  else  // .cg: 16-byte copies may skip L1, and the weights are read once
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(slot + 16 * lane), "l"(vs) : "memory");
  if (lane < 16)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(slot + Ring<VT>::VALS + 4 * lane), "l"(is)
                 : "memory");
#else
  memcpy(host + slot + Ring<VT>::VB * lane, vs, Ring<VT>::VB);
  if (lane < 16) memcpy(host + slot + Ring<VT>::VALS + 4 * lane, is, 4);
#endif
}

// Lane `lane`'s values (w[0..1] int8, w[0..3] fp16) and index word from the slot at `slot`.
template <int VT>
SL_HD void ring_read(const unsigned char* host, uint32_t slot, int lane, uint32_t* w, uint32_t& code) {
#ifdef __CUDACC__
  (void)host;
  if (VT == VT_I8)
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "r"(slot + 8 * lane) : "memory");
  else
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "r"(slot + 16 * lane) : "memory");
  unsigned short c;
  asm volatile("ld.shared.u16 %0, [%1];" : "=h"(c) : "r"(slot + Ring<VT>::VALS + 2 * lane) : "memory");
  code = c;
#else
  memcpy(w, host + slot + Ring<VT>::VB * lane, Ring<VT>::VB);
  uint16_t c;
  memcpy(&c, host + slot + Ring<VT>::VALS + 2 * lane, 2);
  code = c;
#endif
}

// Shared memory of a ring launch: the pair table (+ its alignment slack), x's copy, `warps` rings of D slots.
template <int VT>
SL_HD size_t ring_smem(int kx, int K, int warps, int D) {
  return (size_t)kx / 256 * PAIR_BLOCK + PAIR_BLOCK + ((size_t)K * 2 + 15) / 16 * 16
         + (size_t)warps * D * Ring<VT>::SLOT;
}

#ifdef __CUDACC__
template <int VT, int D, int MINB>
__global__ void __launch_bounds__(MINB == 3 ? 512 : 1024, MINB) nm_ring_kernel(const NMArgs a) {
  extern __shared__ uint4 rs4[];
  constexpr uint32_t SLOT = Ring<VT>::SLOT;
  const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(rs4), pad = (0u - sbase) & (PAIR_BLOCK - 1);
  uint32_t* table = reinterpret_cast<uint32_t*>(reinterpret_cast<unsigned char*>(rs4) + pad);
  const uint32_t tbytes = (uint32_t)a.kx / 256 * PAIR_BLOCK;
  uint16_t* xc = reinterpret_cast<uint16_t*>(reinterpret_cast<unsigned char*>(table) + tbytes);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int rows = a.glu ? a.N >> 1 : a.N, parts = 1 + a.glu, S = gridDim.x * warps;
  const int r0 = blockIdx.x * warps + warp;
  const uint32_t ring = sbase + pad + tbytes + ((uint32_t)a.K * 2 + 15) / 16 * 16 + (uint32_t)warp * D * SLOT;
  RingCursor in{r0, 0, 0};
  auto issue = [&](int slot) {  // the next stream step into `slot`, and one group either way
    if (in.r < rows) {
      ring_issue<VT>(nullptr, ring + slot * SLOT, a.vals, a.idx, in.step(rows, a.steps), lane);
      in.next(a.steps, parts, S);
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  };
  pdl_trigger();
  pdl_wait();  // x is the previous kernel's output
  // x's copy first (its own group), then the ring's first D - 1 steps, then a wait for x's group only: the weights'
  // DRAM latency covers x's round trip and the table build (nm_pairs.cuh stage_pairs says why the copy is cp.async)
  const bool copy = (reinterpret_cast<uintptr_t>(a.x) & 7) == 0;
  if (copy) {
    const uint32_t dst = (uint32_t)__cvta_generic_to_shared(xc);
    for (int g = threadIdx.x; g < a.K / 4; g += blockDim.x)
      asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst + 8 * g), "l"(a.x + 4 * g) : "memory");
  }
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#pragma unroll
  for (int s = 0; s < D - 1; ++s) issue(s);
  asm volatile("cp.async.wait_group %0;\n" ::"n"(D - 1) : "memory");
  __syncthreads();
  const int items = a.kx / 256 * 32;
  for (int e = threadIdx.x; e < items; e += blockDim.x) {
    if (copy) pair_fill_copy(table, xc, a.K, e >> 5, e & 31);
    else pair_fill(table, a.x, a.K, false, e >> 5, e & 31);
  }
  __syncthreads();
  const uint32_t tbase = sbase + pad + 4 * lane;
  RingCursor c{r0, 0, 0};
  int slot = 0;
  float acc0 = 0.0f, acc1 = 0.0f, out0 = 0.0f, sc = 1.0f;
  while (c.r < rows) {
    const int row = c.r + c.part * rows;
    if (c.t == 0 && a.scales) sc = __ldg(a.scales + row);  // used at the row's end: its latency hides behind it
    __syncwarp();  // every lane's reads of the previous slot are done: it may be refilled
    issue(slot == 0 ? D - 1 : slot - 1);
    asm volatile("cp.async.wait_group %0;\n" ::"n"(D - 1) : "memory");
    __syncwarp();  // the other lanes' index bytes of this slot are visible
    uint32_t w[4], code;
    ring_read<VT>(nullptr, ring + slot * SLOT, lane, w, code);
    pair_step<VT>(w, code, table, tbase + c.t * 4 * PAIR_BLOCK, a.k48, acc0, acc1);
    slot = slot + 1 == D ? 0 : slot + 1;
    if (c.t + 1 == a.steps) {
      float acc = (acc0 + acc1) * (VT == VT_I8 ? 128.0f : 1.0f);
      acc0 = acc1 = 0.0f;
#pragma unroll
      for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, m);
      acc = a.scales ? acc * sc : acc;
      if (c.part + 1 == parts) {
        if (lane == 0) a.y[c.r] = float_to_act<XT_F16>(a.glu ? glu_out<XT_F16>(out0, acc) : acc);
      } else {
        out0 = acc;
      }
    }
    c.next(a.steps, parts, S);
  }
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  if (a.norm.res) norm_epilogue<XT_F16>(a.norm, a.y, a.N, reinterpret_cast<float*>(rs4));
}

template <int VT, int D, int MINB>
static int nm_ring_launch_d(const NMArgs& a, int blocks, int threads, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  if (MINB == 3 && threads > 512) return -1;
  const size_t smem = ring_smem<VT>(a.kx, a.K, threads / 32, D);
  if (const int e = opt_in(nm_ring_kernel<VT, D, MINB>, smem, &opted)) return e;
  return sl_launch(nm_ring_kernel<VT, D, MINB>, blocks, threads, smem, stream, a);
}

// D (steps in flight + 1) in RING_DEPTHS; minb 1 or 3 (nm_gemv.cu's 40-register bound, blocks of <= 512 threads).
template <int VT>
static int nm_ring_launch(const NMArgs& a, int depth, int minb, int blocks, int threads, cudaStream_t s) {
  switch (depth * 10 + minb) {
    case 41: return nm_ring_launch_d<VT, 4, 1>(a, blocks, threads, s);
    case 81: return nm_ring_launch_d<VT, 8, 1>(a, blocks, threads, s);
    case 121: return nm_ring_launch_d<VT, 12, 1>(a, blocks, threads, s);
    case 43: return nm_ring_launch_d<VT, 4, 3>(a, blocks, threads, s);
    case 83: return nm_ring_launch_d<VT, 8, 3>(a, blocks, threads, s);
    case 123: return nm_ring_launch_d<VT, 12, 3>(a, blocks, threads, s);
    default: return -1;
  }
}

#else  // the host twin: a grid of `W` warps, each walking its stream through a D-slot ring, 32 lanes in lockstep

template <int VT>
static int nm_host_ring(const NMArgs& a, int D, int W, float* y) {
  if (D != 4 && D != 8 && D != 12) return -1;
  if (W < 1) return -1;
  constexpr uint32_t SLOT = Ring<VT>::SLOT;
  const int kb = a.kx / 256, rows = a.glu ? a.N / 2 : a.N, parts = 1 + a.glu;
  uint32_t* table = new uint32_t[(size_t)(kb > 0 ? kb : 1) * (PAIR_BLOCK / 4)];
  for (int m = 0; m < kb; ++m)
    for (int l = 0; l < 32; ++l) pair_fill(table, a.x, a.K, false, m, l);
  unsigned char* ring = new unsigned char[(size_t)D * SLOT]();
  for (int w = 0; w < W; ++w) {
    RingCursor in{w, 0, 0}, c{w, 0, 0};
    auto issue = [&](int slot) {
      if (in.r >= rows) return;
      for (int lane = 0; lane < 32; ++lane)
        ring_issue<VT>(ring, slot * SLOT, a.vals, a.idx, in.step(rows, a.steps), lane);
      in.next(a.steps, parts, W);
    };
    for (int s = 0; s < D - 1; ++s) issue(s);
    float acc0[32] = {}, acc1[32] = {}, out0 = 0.0f;
    int slot = 0;
    while (c.r < rows) {
      issue(slot == 0 ? D - 1 : slot - 1);
      for (int lane = 0; lane < 32; ++lane) {
        uint32_t wv[4], code;
        ring_read<VT>(ring, slot * SLOT, lane, wv, code);
        pair_step<VT>(wv, code, table, 4u * lane + c.t * 4 * PAIR_BLOCK, a.k48, acc0[lane], acc1[lane]);
      }
      slot = slot + 1 == D ? 0 : slot + 1;
      if (c.t + 1 == a.steps) {
        float l[32];
        for (int lane = 0; lane < 32; ++lane) {
          l[lane] = (acc0[lane] + acc1[lane]) * (VT == VT_I8 ? 128.0f : 1.0f);
          acc0[lane] = acc1[lane] = 0.0f;
        }
        float acc = host_xor_tree(l);
        if (a.scales) acc *= a.scales[c.r + c.part * rows];
        if (c.part + 1 == parts) y[c.r] = a.glu ? glu_out<XT_F16>(out0, acc) : acc;
        else out0 = acc;
      }
      c.next(a.steps, parts, W);
    }
  }
  delete[] ring;
  delete[] table;
  return 0;
}
#endif
