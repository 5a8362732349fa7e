// Batch-1 y = x W^T over the delta4 layout, streamed into shared memory by the Hopper bulk-copy engine (TMA).
//
// Why: the per-row kernel (delta4_gemv.cu) reads 18% fewer bytes than grp8cu but ran at 0.83-0.99x its speed on the
// H200. Its lanes issue the loads they consume, so the bytes in flight per SM are bounded by resident warps x what a
// lane fetches before it must compute (Nsight: 2.19 TB/s DRAM against grp8cu's 3.30, 47% occupancy at 40
// registers; a 32-register build spilled and was slower still). Here lane 0 of each warp issues `cp.async.bulk`
// copies of the warp's next stages into its own ring in shared memory, so `stages - 1` stages per warp stay in
// flight whatever the registers, and the lanes decode from shared memory.
// A first form shared one ring per block (a thread per chunk, block barriers around a per-tile row reduction): it
// ran at 0.5-0.6x grp8cu, fp16 and int8 alike (gpu_kernels_decode_d4tma_first.json), the barriers serializing
// decode, reduction and waits. Per-warp rings keep the warps independent, as in d4cu.
//
// Work split: warp w of the grid owns rows [split[w], split[w + 1]), chosen on the host so each warp holds about the
// same number of chunks (cuda_delta4_tma.splits). Its chunk span, widened to multiples of 8 chunks (the copies need
// 16-byte aligned sizes; cuda_delta4.layout pads the chunk count to a multiple of 8), is streamed in stages of
// CAP = 32 U chunks (U per lane). Per stage each lane takes chunks lane, lane + 32, ... and keeps the running sum of
// its current row's chunks; for each row that ends in the stage, the lanes holding its last chunks add them, the warp
// sums (xor shuffles) and lane 0 writes y[row] (times the int8 per-row scale). Chunks outside the warp's rows (the
// alignment overlap with a neighbour) count as zero. The row ends and scales of 32 rows at a time sit one per lane.
//
// Shared memory (bytes): r128(8 warps stages) (mbarriers) + warps * stages * tile_bytes(CAP) + 4 K (x as float32).
//
// The same file compiles as plain C++ (g++ -x c++): the host emulation walks each warp's stages through the same ring
// offsets and sums as the lanes and shuffles do.
#include "delta4_common.cuh"
#ifndef __CUDACC__
#include <algorithm>
#endif

// The kernel's dynamic shared memory, as laid out above (cuda_delta4_tma.smem_bytes is the Python twin; a host
// function in both builds, so its arithmetic is written out rather than calling the device helpers).
extern "C" int sl_d4t_smem(int vt, int stages, int cap, int warps, int K) {
  const int bars = (8 * warps * stages + 127) & ~127;
  return bars + warps * stages * cap * ((vt == VT_I8 ? 16 : 32) + 10) + 4 * K;
}

// A block's chunk span [a0, a1), widened to multiples of 8, for rows [rb0, rb1) with chunks [c0, c1).
SL_HD void span8(int rb0, int rb1, int c0, int c1, int& a0, int& a1) {
  a0 = rb0 < rb1 ? (c0 & ~7) : 0;
  a1 = rb0 < rb1 ? ((c1 + 7) & ~7) : 0;
}

#ifdef __CUDACC__
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void bar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}

// One arrival that also announces the bytes the stage's copies will deliver (the phase completes when all land).
__device__ __forceinline__ void bar_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void bar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// global -> shared, `bytes` a multiple of 16, both addresses 16-byte aligned; completion counted on `bar`
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}
#endif

// Stage chunks [t0, t0 + cnt) (t0, cnt multiples of 8) into tile `dst` of `cap` chunks; T = all chunks (the second
// value plane's offset). On the GPU: bulk copies completing on `bar`; on the host: memcpy.
template <int VT>
SL_HD void stage_tile(unsigned char* dst, int cap, const unsigned char* vals, const unsigned char* steps,
                      const unsigned char* base, int T, int t0, int cnt, uint64_t* bar) {
  constexpr int PL = VT == VT_I8 ? 1 : 2;
#ifdef __CUDACC__
  bar_expect(bar, (uint32_t)cnt * (16 * PL + 10));
  bulk_copy(dst, vals + 16 * (size_t)t0, 16 * cnt, bar);
  if (PL == 2) bulk_copy(dst + 16 * cap, vals + 16 * ((size_t)T + t0), 16 * cnt, bar);
  bulk_copy(dst + 16 * PL * cap, steps + 8 * (size_t)t0, 8 * cnt, bar);
  bulk_copy(dst + (16 * PL + 8) * cap, base + 2 * (size_t)t0, 2 * cnt, bar);
#else
  (void)bar;
  memcpy(dst, vals + 16 * (size_t)t0, 16 * (size_t)cnt);
  if (PL == 2) memcpy(dst + 16 * cap, vals + 16 * ((size_t)T + t0), 16 * (size_t)cnt);
  memcpy(dst + 16 * PL * cap, steps + 8 * (size_t)t0, 8 * (size_t)cnt);
  memcpy(dst + (16 * PL + 8) * cap, base + 2 * (size_t)t0, 2 * (size_t)cnt);
#endif
}

struct D4TArgs {
  const uint16_t* x;
  const unsigned char* vals;
  const unsigned char* steps;
  const unsigned char* base;
  const int* cptr;
  const int* split;     // (parts + 1) row boundaries, one range per warp of the grid
  const float* scales;  // per-row (int8), or null
  uint16_t* y;
  int N, K, parts, stages;
};

// Lane `lane`'s U chunk products of stage [t0, t0 + cnt) (zero for chunks outside [lo, hi), the warp's rows).
template <int VT, int XT, int U>
SL_HD void stage_parts(const unsigned char* tile, const unsigned char* xb, int t0, int cnt, int lo, int hi, int lane,
                       float* p) {
  for (int u = 0; u < U; ++u) {
    const int j = lane + 32 * u, c = t0 + j;
    p[u] = 0.0f;
    if (j < cnt && c >= lo && c < hi) {
      Chunk ch;
      tile_chunk<VT>(tile, 32 * U, j, ch);
      p[u] = d4_chunk<VT, XT, true>(ch, xb);
    }
  }
}

#ifdef __CUDACC__
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = 16; m; m >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, m);
  return v;
}

template <int VT, int XT, int U>
__global__ void __launch_bounds__(1024, 1) d4t_kernel(const D4TArgs a) {
  constexpr int CAP = 32 * U;
  extern __shared__ __align__(128) unsigned char sm[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, S = a.stages;
  const int tb = tile_bytes<VT>(CAP), bars = (8 * warps * S + 127) & ~127;
  uint64_t* bar = reinterpret_cast<uint64_t*>(sm) + warp * S;
  unsigned char* ring = sm + bars + (size_t)warp * S * tb;
  float* xs = reinterpret_cast<float*>(sm + bars + (size_t)warps * S * tb);
  const int T = __ldg(a.cptr + a.N), gw = blockIdx.x * warps + warp;
  const int wr0 = gw < a.parts ? __ldg(a.split + gw) : 0, wr1 = gw < a.parts ? __ldg(a.split + gw + 1) : 0;
  const int lo = __ldg(a.cptr + wr0), hi = __ldg(a.cptr + wr1);
  int a0, a1;
  span8(wr0, wr1, lo, hi, a0, a1);
  const int nst = (a1 - a0 + CAP - 1) / CAP;
  if (lane == 0) {  // the warp's barriers, then its first stages: they fly while the block stages x
    for (int s = 0; s < S; ++s) bar_init(bar + s, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    for (int s = 0; s < S && s < nst; ++s)
      stage_tile<VT>(ring + (size_t)s * tb, CAP, a.vals, a.steps, a.base, T, a0 + s * CAP,
                     min(CAP, a1 - a0 - s * CAP), bar + s);
  }
  for (int i = threadIdx.x; i < a.K; i += blockDim.x) xs[i] = act_to_float<XT>(__ldg(a.x + i));
  __syncthreads();
  const unsigned char* xb = reinterpret_cast<const unsigned char*>(xs);
  int ra = wr0, rbase = wr0, my_end = 0;  // rows [rbase, rbase + 32): lane l holds row rbase + l's end and scale
  float my_sc = 1.0f, acc = 0.0f;
  auto cache = [&]() {
    const int r = rbase + lane;
    my_end = r < wr1 ? __ldg(a.cptr + r + 1) : 0x7FFFFFFF;
    my_sc = (a.scales && r < wr1) ? __ldg(a.scales + r) : 1.0f;
  };
  auto flush = [&]() {  // row ra is complete: acc holds each lane's share
    const float v = warp_sum(acc), sc = __shfl_sync(0xFFFFFFFFu, my_sc, ra - rbase);
    if (lane == 0) a.y[ra] = float_to_act<XT>(a.scales ? v * sc : v);
    acc = 0.0f;
    if (++ra - rbase == 32) { rbase = ra; cache(); }
  };
  cache();
  int end = __shfl_sync(0xFFFFFFFFu, my_end, 0);
  for (int it = 0; it < nst; ++it) {
    const int s = it % S, t0 = a0 + it * CAP, cnt = min(CAP, a1 - t0);
    bar_wait(bar + s, (uint32_t)(it / S) & 1u);
    float p[U];
    stage_parts<VT, XT, U>(ring + (size_t)s * tb, xb, t0, cnt, lo, hi, lane, p);
    __syncwarp();  // every lane has read stage s
    if (lane == 0 && it + S < nst) {
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      stage_tile<VT>(ring + (size_t)s * tb, CAP, a.vals, a.steps, a.base, T, t0 + S * CAP,
                     min(CAP, a1 - t0 - S * CAP), bar + s);
    }
    while (ra < wr1 && end <= t0 + CAP) {  // rows ending in this stage: their last chunks, then the warp's sum
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (t0 + lane + 32 * u < end) { acc += p[u]; p[u] = 0.0f; }
      flush();
      end = __shfl_sync(0xFFFFFFFFu, my_end, ra - rbase);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) acc += p[u];
  }
  while (ra < wr1) flush();  // rows without chunks (a warp whose rows are all empty streams nothing)
}

template <int VT, int XT, int U>
static int d4t_launch(const D4TArgs& a, int blocks, int threads, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  const size_t smem = (size_t)sl_d4t_smem(VT, a.stages, 32 * U, threads / 32, a.K);
  if (const int e = opt_in(d4t_kernel<VT, XT, U>, smem, &opted)) return e;
  d4t_kernel<VT, XT, U><<<blocks, threads, smem, stream>>>(a);
  return (int)cudaGetLastError();
}

template <int VT, int XT>
static int d4t_lanes(const D4TArgs& a, int cap, int blocks, int threads, cudaStream_t s) {
  if (cap == 32) return d4t_launch<VT, XT, 1>(a, blocks, threads, s);
  if (cap == 64) return d4t_launch<VT, XT, 2>(a, blocks, threads, s);
  return -1;
}

// y (1, N) = x (1, K) W^T; vt / xt as sl_d4_launch; parts = len(split) - 1 <= blocks * threads / 32; cap = chunks
// per stage (32 or 64); stages 1-12. Returns a cudaError_t (0 = launched) or -1 for an unsupported combination.
extern "C" int sl_d4t_launch(int vt, int xt, int stages, int cap, const void* x, const void* vals, const void* steps,
                             const void* base, const void* cptr, const void* split, const void* scales, void* y, int N,
                             int K, int parts, int blocks, int threads, void* stream) {
  if (stages < 1 || stages > 12 || threads % 32 || (long long)blocks * (threads / 32) < parts) return -1;
  const D4TArgs a{static_cast<const uint16_t*>(x), static_cast<const unsigned char*>(vals),
                  static_cast<const unsigned char*>(steps), static_cast<const unsigned char*>(base),
                  static_cast<const int*>(cptr), static_cast<const int*>(split), static_cast<const float*>(scales),
                  static_cast<uint16_t*>(y), N, K, parts, stages};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (xt == XT_F16 && vt == VT_F16) return d4t_lanes<VT_F16, XT_F16>(a, cap, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_BF16) return d4t_lanes<VT_BF16, XT_BF16>(a, cap, blocks, threads, s);
  if (xt == XT_F16 && vt == VT_I8) return d4t_lanes<VT_I8, XT_F16>(a, cap, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_I8) return d4t_lanes<VT_I8, XT_BF16>(a, cap, blocks, threads, s);
  return -1;
}

#else  // host emulation: each warp's walk in turn, its 32 lanes as arrays, the kernel's ring offsets and sums

static float host_warp_sum(const float* acc) {  // __shfl_xor_sync's tree; lane 0's result
  float l[32], t[32];
  memcpy(l, acc, sizeof l);
  for (int m = 16; m; m >>= 1) {
    for (int lane = 0; lane < 32; ++lane) t[lane] = l[lane] + l[lane ^ m];
    memcpy(l, t, sizeof l);
  }
  return l[0];
}

template <int VT, int XT, int U>
static void d4t_host(const D4TArgs& a, float* y) {
  constexpr int CAP = 32 * U;
  const int S = a.stages, tb = tile_bytes<VT>(CAP), T = a.cptr[a.N];
  unsigned char* ring = new unsigned char[(size_t)S * tb];
  float* xs = new float[a.K > 0 ? a.K : 1];
  for (int k = 0; k < a.K; ++k) xs[k] = act_to_float<XT>(a.x[k]);
  const unsigned char* xb = reinterpret_cast<const unsigned char*>(xs);
  for (int w = 0; w < a.parts; ++w) {
    const int wr0 = a.split[w], wr1 = a.split[w + 1], lo = a.cptr[wr0], hi = a.cptr[wr1];
    int a0, a1;
    span8(wr0, wr1, lo, hi, a0, a1);
    const int nst = (a1 - a0 + CAP - 1) / CAP;
    float acc[32] = {0.0f};
    int ra = wr0;
    auto flush = [&]() {
      const float v = host_warp_sum(acc);
      y[ra] = a.scales ? v * a.scales[ra] : v;
      for (int lane = 0; lane < 32; ++lane) acc[lane] = 0.0f;
      ++ra;
    };
    for (int it = 0; it < nst; ++it) {
      const int t0 = a0 + it * CAP, cnt = std::min(CAP, a1 - t0);
      unsigned char* tile = ring + (size_t)(it % S) * tb;
      stage_tile<VT>(tile, CAP, a.vals, a.steps, a.base, T, t0, cnt, nullptr);
      float p[32][U];
      for (int lane = 0; lane < 32; ++lane) stage_parts<VT, XT, U>(tile, xb, t0, cnt, lo, hi, lane, p[lane]);
      while (ra < wr1 && a.cptr[ra + 1] <= t0 + CAP) {
        for (int lane = 0; lane < 32; ++lane)
          for (int u = 0; u < U; ++u)
            if (t0 + lane + 32 * u < a.cptr[ra + 1]) { acc[lane] += p[lane][u]; p[lane][u] = 0.0f; }
        flush();
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int u = 0; u < U; ++u) acc[lane] += p[lane][u];
    }
    while (ra < wr1) flush();
  }
  delete[] ring;
  delete[] xs;
}

// The host twin of sl_d4t_launch: float32 y (N,).
extern "C" int sl_d4t_host(int vt, int xt, int stages, int cap, const void* x, const void* vals, const void* steps,
                           const void* base, const void* cptr, const void* split, const void* scales, float* y, int N,
                           int K, int parts) {
  if (stages < 1 || stages > 12 || (cap != 32 && cap != 64)) return -1;
  const D4TArgs a{static_cast<const uint16_t*>(x), static_cast<const unsigned char*>(vals),
                  static_cast<const unsigned char*>(steps), static_cast<const unsigned char*>(base),
                  static_cast<const int*>(cptr), static_cast<const int*>(split), static_cast<const float*>(scales),
                  nullptr, N, K, parts, stages};
#define SL_D4T(V, X) (cap == 32 ? d4t_host<V, X, 1>(a, y) : d4t_host<V, X, 2>(a, y))
  if (xt == XT_F16 && vt == VT_F16) SL_D4T(VT_F16, XT_F16);
  else if (xt == XT_BF16 && vt == VT_BF16) SL_D4T(VT_BF16, XT_BF16);
  else if (xt == XT_F16 && vt == VT_I8) SL_D4T(VT_I8, XT_F16);
  else if (xt == XT_BF16 && vt == VT_I8) SL_D4T(VT_I8, XT_BF16);
  else return -1;
#undef SL_D4T
  return 0;
}
#endif
