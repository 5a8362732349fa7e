// Batch-1 y = x W^T over the delta4 layout, streamed through shared memory by the Hopper bulk-copy engine (TMA).
//
// Why: the per-row kernel (delta4_gemv.cu) reads 18% fewer bytes than grp8cu but ran at 0.83-0.99x its speed on the
// H200. Its loads are issued by the lanes that consume them, so the bytes in flight per SM are bounded by resident
// warps x what each lane fetches before it must compute (Nsight: 2.19 TB/s DRAM against grp8cu's 3.30, 47%
// occupancy at 40 registers; a 32-register build spilled and was slower still). Here one thread per block issues
// `cp.async.bulk` copies of whole tiles into a ring of shared-memory stages, so `stages - 1` tiles (tens of KB
// per SM) stay in flight whatever the occupancy, and the warps decode from shared memory.
//
// Work split: block b owns rows [split[b], split[b + 1]), chosen on the host so each block holds about the same
// number of chunks (cuda_delta4_tma.splits). Its chunk span, widened to multiples of 8 chunks (the copies need 16-byte
// aligned sizes; cuda_delta4.layout pads the chunk count to a multiple of 8), is streamed in tiles of `cap`
// chunks. Per tile: each thread takes chunk j (j += blockDim) and stores its 16-entry dot product in part[j]; after a
// barrier, warp w sums the parts of the tile's rows w, w + warps, ... into ys (shared, one float per row of the
// block), and thread 0 refills the consumed stage with the tile `stages` ahead. Chunks outside the block's rows (the
// alignment overlap with a neighbour) are computed and ignored. The block writes its rows (times int8 per-row scales)
// at the end.
//
// Shared memory (bytes): 128 (mbarriers) + stages * tile_bytes(cap) + 4 cap (parts) + 4 r4(R) (row sums) +
// 4 r4(R + 1) (the block's chunk starts) + 4 K (x as float32), R = the most rows in a block, r4 = rounded up to 4.
//
// The same file compiles as plain C++ (g++ -x c++): the host emulation walks blocks, tiles, chunks and rows in the
// kernel's order and sums as the warps do (lane strides, then the xor-shuffle tree), through the same ring offsets.
#include "delta4_common.cuh"
#ifndef __CUDACC__
#include <algorithm>
#endif

SL_HD int r4(int n) { return (n + 3) & ~3; }

// The kernel's dynamic shared memory, as laid out above (cuda_delta4_tma.smem_bytes is the Python twin; a host
// function in both builds, so its arithmetic is written out rather than calling the device helpers).
extern "C" int sl_d4t_smem(int vt, int stages, int cap, int rows, int K) {
  const int tb = cap * ((vt == VT_I8 ? 16 : 32) + 10);
  return 128 + stages * tb + 4 * cap + 4 * ((rows + 3) & ~3) + 4 * ((rows + 4) & ~3) + 4 * K;
}

// A block's chunk span [a0, a1), widened to multiples of 8, for rows [rb0, rb1) with chunks [c0, c1).
SL_HD void span8(int rb0, int rb1, int c0, int c1, int& a0, int& a1) {
  a0 = rb0 < rb1 ? (c0 & ~7) : 0;
  a1 = rb0 < rb1 ? ((c1 + 7) & ~7) : 0;
}

// One lane's share of a row's parts in a tile: j = lo + lane, + 32, ... (the warp then sums its lanes).
SL_HD float lane_part(const float* part, int lo, int hi, int lane) {
  float acc = 0.0f;
  for (int j = lo + lane; j < hi; j += 32) acc += part[j];
  return acc;
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
  const int* split;     // (blocks + 1) row boundaries
  const float* scales;  // per-row (int8), or null
  uint16_t* y;
  int N, K, R, stages, cap;  // R: the most rows in a block (sizes ys); cap: chunks per tile (a multiple of 8)
};

#ifdef __CUDACC__
template <int VT, int XT>
__global__ void __launch_bounds__(1024, 1) d4t_kernel(const D4TArgs a) {
  extern __shared__ __align__(128) unsigned char sm[];
  uint64_t* bar = reinterpret_cast<uint64_t*>(sm);
  const int tb = tile_bytes<VT>(a.cap);
  unsigned char* ring = sm + 128;
  float* part = reinterpret_cast<float*>(ring + (size_t)a.stages * tb);
  float* ys = part + a.cap;
  int* cps = reinterpret_cast<int*>(ys + r4(a.R));
  float* xs = reinterpret_cast<float*>(cps + r4(a.R + 1));
  const int T = __ldg(a.cptr + a.N);
  const int rb0 = __ldg(a.split + blockIdx.x), rb1 = __ldg(a.split + blockIdx.x + 1), nr = rb1 - rb0;
  int a0, a1;
  span8(rb0, rb1, __ldg(a.cptr + rb0), __ldg(a.cptr + rb1), a0, a1);
  const int ntiles = (a1 - a0 + a.cap - 1) / a.cap;
  if (threadIdx.x == 0) {
    for (int s = 0; s < a.stages; ++s) bar_init(bar + s, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x == 0)  // the first stages' copies fly while x is staged
    for (int s = 0; s < a.stages && s < ntiles; ++s)
      stage_tile<VT>(ring + (size_t)s * tb, a.cap, a.vals, a.steps, a.base, T, a0 + s * a.cap,
                     min(a.cap, a1 - a0 - s * a.cap), bar + s);
  for (int i = threadIdx.x; i < a.K; i += blockDim.x) xs[i] = act_to_float<XT>(__ldg(a.x + i));
  for (int i = threadIdx.x; i <= nr; i += blockDim.x) {
    cps[i] = __ldg(a.cptr + rb0 + i);
    if (i < nr) ys[i] = 0.0f;
  }
  __syncthreads();
  const unsigned char* xb = reinterpret_cast<const unsigned char*>(xs);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int ra = 0;  // the block's first row (index from rb0) not yet complete: uniform across the block
  for (int it = 0; it < ntiles; ++it) {
    const int s = it % a.stages, t0 = a0 + it * a.cap, cnt = min(a.cap, a1 - t0);
    bar_wait(bar + s, (uint32_t)(it / a.stages) & 1u);
    const unsigned char* tile = ring + (size_t)s * tb;
    for (int j = threadIdx.x; j < cnt; j += blockDim.x) {
      Chunk ch;
      tile_chunk<VT>(tile, a.cap, j, ch);
      part[j] = d4_chunk<VT, XT, true>(ch, xb);
    }
    __syncthreads();  // parts complete, stage s consumed
    if (threadIdx.x == 0 && it + a.stages < ntiles) {
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      stage_tile<VT>(ring + (size_t)s * tb, a.cap, a.vals, a.steps, a.base, T, t0 + a.stages * a.cap,
                     min(a.cap, a1 - t0 - a.stages * a.cap), bar + s);
    }
    while (ra < nr && cps[ra + 1] <= t0) ++ra;
    for (int r = ra + warp; r < nr && cps[r] < t0 + cnt; r += warps) {
      const int lo = max(cps[r], t0) - t0, hi = min(cps[r + 1], t0 + cnt) - t0;
      float acc = lane_part(part, lo, hi, lane);
#pragma unroll
      for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, m);
      if (lane == 0) ys[r] += acc;
    }
    __syncthreads();  // parts read before the next tile overwrites them; ys updated
  }
  for (int i = threadIdx.x; i < nr; i += blockDim.x)
    a.y[rb0 + i] = float_to_act<XT>(a.scales ? ys[i] * __ldg(a.scales + rb0 + i) : ys[i]);
}

template <int VT, int XT>
static int d4t_launch(const D4TArgs& a, int blocks, int threads, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  const size_t smem = (size_t)sl_d4t_smem(VT, a.stages, a.cap, a.R, a.K);
  if (const int e = opt_in(d4t_kernel<VT, XT>, smem, &opted)) return e;
  d4t_kernel<VT, XT><<<blocks, threads, smem, stream>>>(a);
  return (int)cudaGetLastError();
}

// y (1, N) = x (1, K) W^T; vt / xt as sl_d4_launch; blocks = len(split) - 1; R = the most rows in a block; cap a
// multiple of 8; stages 1-12. Returns a cudaError_t (0 = launched) or -1 for an unsupported combination.
extern "C" int sl_d4t_launch(int vt, int xt, int stages, int cap, const void* x, const void* vals, const void* steps,
                             const void* base, const void* cptr, const void* split, const void* scales, void* y, int N,
                             int K, int R, int blocks, int threads, void* stream) {
  if (cap <= 0 || cap % 8 || stages < 1 || stages > 12) return -1;
  const D4TArgs a{static_cast<const uint16_t*>(x), static_cast<const unsigned char*>(vals),
                  static_cast<const unsigned char*>(steps), static_cast<const unsigned char*>(base),
                  static_cast<const int*>(cptr), static_cast<const int*>(split), static_cast<const float*>(scales),
                  static_cast<uint16_t*>(y), N, K, R, stages, cap};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (xt == XT_F16 && vt == VT_F16) return d4t_launch<VT_F16, XT_F16>(a, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_BF16) return d4t_launch<VT_BF16, XT_BF16>(a, blocks, threads, s);
  if (xt == XT_F16 && vt == VT_I8) return d4t_launch<VT_I8, XT_F16>(a, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_I8) return d4t_launch<VT_I8, XT_BF16>(a, blocks, threads, s);
  return -1;
}

#else  // host emulation: blocks one after another, the kernel's tiles, ring stages, chunks and warp sums

template <int VT, int XT>
static void d4t_host(const D4TArgs& a, int blocks, int threads, float* y) {
  const int tb = tile_bytes<VT>(a.cap), T = a.cptr[a.N], warps = threads / 32;
  unsigned char* ring = new unsigned char[(size_t)a.stages * tb];
  float* part = new float[a.cap];
  float* xs = new float[a.K > 0 ? a.K : 1];
  for (int k = 0; k < a.K; ++k) xs[k] = act_to_float<XT>(a.x[k]);
  const unsigned char* xb = reinterpret_cast<const unsigned char*>(xs);
  for (int b = 0; b < blocks; ++b) {
    const int rb0 = a.split[b], rb1 = a.split[b + 1], nr = rb1 - rb0;
    const int* cps = a.cptr + rb0;
    int a0, a1;
    span8(rb0, rb1, a.cptr[rb0], a.cptr[rb1], a0, a1);
    const int ntiles = (a1 - a0 + a.cap - 1) / a.cap;
    float* ys = new float[nr > 0 ? nr : 1]();
    int ra = 0;
    for (int it = 0; it < ntiles; ++it) {
      const int t0 = a0 + it * a.cap, cnt = std::min(a.cap, a1 - t0);
      unsigned char* tile = ring + (size_t)(it % a.stages) * tb;
      stage_tile<VT>(tile, a.cap, a.vals, a.steps, a.base, T, t0, cnt, nullptr);
      for (int j = 0; j < cnt; ++j) {
        Chunk ch;
        tile_chunk<VT>(tile, a.cap, j, ch);
        part[j] = d4_chunk<VT, XT, true>(ch, xb);
      }
      while (ra < nr && cps[ra + 1] <= t0) ++ra;
      for (int r = ra; r < nr && cps[r] < t0 + cnt; ++r) {  // warp (r - ra) % warps: the order does not matter
        const int lo = std::max(cps[r], t0) - t0, hi = std::min(cps[r + 1], t0 + cnt) - t0;
        float l[32], t[32];
        for (int lane = 0; lane < 32; ++lane) l[lane] = lane_part(part, lo, hi, lane);
        for (int m = 16; m; m >>= 1) {  // __shfl_xor_sync's tree
          for (int lane = 0; lane < 32; ++lane) t[lane] = l[lane] + l[lane ^ m];
          memcpy(l, t, sizeof l);
        }
        ys[r] += l[0];
      }
      (void)warps;
    }
    for (int i = 0; i < nr; ++i) y[rb0 + i] = a.scales ? ys[i] * a.scales[rb0 + i] : ys[i];
    delete[] ys;
  }
  delete[] ring;
  delete[] part;
  delete[] xs;
}

// The host twin of sl_d4t_launch: float32 y (N,).
extern "C" int sl_d4t_host(int vt, int xt, int stages, int cap, const void* x, const void* vals, const void* steps,
                           const void* base, const void* cptr, const void* split, const void* scales, float* y, int N,
                           int K, int R, int blocks, int threads) {
  if (cap <= 0 || cap % 8 || stages < 1 || stages > 12 || threads % 32) return -1;
  const D4TArgs a{static_cast<const uint16_t*>(x), static_cast<const unsigned char*>(vals),
                  static_cast<const unsigned char*>(steps), static_cast<const unsigned char*>(base),
                  static_cast<const int*>(cptr), static_cast<const int*>(split), static_cast<const float*>(scales),
                  nullptr, N, K, R, stages, cap};
  if (xt == XT_F16 && vt == VT_F16) d4t_host<VT_F16, XT_F16>(a, blocks, threads, y);
  else if (xt == XT_BF16 && vt == VT_BF16) d4t_host<VT_BF16, XT_BF16>(a, blocks, threads, y);
  else if (xt == XT_F16 && vt == VT_I8) d4t_host<VT_I8, XT_F16>(a, blocks, threads, y);
  else if (xt == XT_BF16 && vt == VT_I8) d4t_host<VT_I8, XT_BF16>(a, blocks, threads, y);
  else return -1;
  return 0;
}
#endif
