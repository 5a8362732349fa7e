// Batched y = x W^T (batch 8-64) on tensor cores from a per-nonzero tiled layout ("tile16"): each warp zeroes a
// dense 16 x 128 tile of W in shared memory, scatters the tile's nonzeros into it (one 16-bit store each, at an
// address the entry carries) and reads the mma A fragments back with ldmatrix; x is the B operand, staged per
// 128-column chunk in shared memory by the block and read with ldmatrix too.
//
// Why (docs/notes/gpu.md, session 15): bitmask_mma.cu expands the mask per position, ~10 instructions per column
// pair (~20 per nonzero at 75%), and ran latency-bound at 0.64-0.81x cuBLAS at batch 16. Here a nonzero costs a
// store and its address (~3 instructions), a position ~0.1 (the zeroing), for 4 bytes per fp16 nonzero.
//
// Layout (FORMAT.md "tile16"): tiles t = band * n_chunks + chunk (16-row bands, 128-column chunks), each one's
// nonzeros in groups of 8 entries, 32 bytes a group: 8 values (16-bit), then 8 positions (16-bit: row-in-band * TS
// + column-in-chunk, the element offset in the shared tile). A tile's last group is padded with value 0 at position
// TC (row 0, a padding column ldmatrix never reads). gptr[t] = first group of tile t; gptr[n_tiles] = the total.
// Each warp owns one band and a range of chunks (split-K over blocks: mma_common.cuh store_rows); it loads the
// first MAXG groups per lane of the next tile while it multiplies the current one. The first version read x's B
// fragments from global memory through L1 and lost to bmma more the larger the batch
// (gpu_kernels_batched_tmma_first.json); this one stages x as bmma does: 0.81-0.95x cuBLAS at batch 16, 75%, and
// 0.92-1.13x at batch 8 (gpu_kernels_batched.json), ahead of bmma on 44 of 46 cases. The entries inside a tile are
// dealt across shared-memory banks by the builder (cuda_tile._bank_spread: ~1.5 instead of ~3 wavefronts per
// scatter store at 75%; untimed). A form that streamed each warp's entries through a shared-memory ring with
// cp.async was slower on every case (gpu_kernels_batched_tmma_ring.json) and was removed; its code is in the
// history (commit 444a1b6, with a race fix in 53c9930).
//
// The same file compiles as C++ (g++ -x c++): the zeroing, the scatter and the ldmatrix lane addresses are shared
// with the GPU build; the host emulation runs them lane by lane with ldmatrix and mma emulated (mma_common.cuh).
#include "mma_common.cuh"

enum { TC = 128, TS = TC + 8, TILE_HALVES = 16 * TS, MAXG = 4 };  // TS: 272-byte rows, conflict-free ldmatrix

// Zeroing a tile before its scatter: the 16 x 128 columns that ldmatrix reads, as 256 16-byte vectors, 8 per lane;
// this is lane's j-th. The 8 padding columns of each row are skipped (only padding zeros are ever written there).
// Why: a loop over all 272 vectors compiled to ~77 instructions per warp per chunk, about a fifth of the chunk's
// work; 8 stores at fixed offsets are 8 (offline sm_90 SASS, session 16; untimed).
SL_HD int zero_vec(int lane, int j) { return ((lane >> 4) + 2 * j) * (TS / 8) + (lane & 15); }

static_assert((int)TC == (int)XC, "x is staged in the chunks of mma_common.cuh");

// The element offset of the row each lane hands ldmatrix.x4 (lanes 8i..8i+7 give matrix i's 8 rows). The GPU build
// and the host emulation both use these, and the host reads the matrices by the same offsets, so the CPU tests
// check the addressing as well as the fragment layout.
// A, step ks: matrices rows 0-7 | 8-15, columns 16 ks | 16 ks + 8, in the order a0..a3 of mma.m16n8k16.
SL_HD int a_row(int lane, int ks) { return (lane & 15) * TS + ks * 16 + (lane >> 4) * 8; }
// B: mma_common.cuh b_row (b0, b1 of step ks, then of step ks + 1). Why: one ldmatrix.x4 replaces four 32-bit
// shared loads (32 -> 8 per warp per chunk at batch 16).

#ifdef __CUDACC__

// One 16 x 128 tile (shared address tb) times the staged x chunk (xsb) into acc, two k-steps per round.
template <int VT, int BP>
__device__ __forceinline__ void tile_mma_chunk(uint32_t tb, uint32_t xsb, int lane, float (*acc)[4]) {
#pragma unroll
  for (int ks = 0; ks < TC / 16; ks += 2) {
    uint32_t a0[4], a1[4];
    ldsm_x4(a0, tb + 2 * a_row(lane, ks));
    ldsm_x4(a1, tb + 2 * a_row(lane, ks + 1));
#pragma unroll
    for (int t = 0; t < BP / 8; ++t) {
      uint32_t b[4];
      ldsm_x4(b, xsb + 2 * b_row(lane, ks, t));
      mma16816<VT>(acc[t], a0, b);
      mma16816<VT>(acc[t], a1, b + 2);
    }
  }
}

// One group into the tile at shared address tb: 8 values (v), 8 element positions (p), two per word.
__device__ __forceinline__ void scatter8(uint32_t tb, const uint4& v, const uint4& p) {
  const uint32_t vv[4] = {v.x, v.y, v.z, v.w}, pp[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const unsigned short lo = (unsigned short)(vv[j] & 0xFFFFu), hi = (unsigned short)(vv[j] >> 16);
    asm volatile("st.shared.u16 [%0], %1;" ::"r"(tb + 2 * (pp[j] & 0xFFFFu)), "h"(lo));
    asm volatile("st.shared.u16 [%0], %1;" ::"r"(tb + 2 * (pp[j] >> 16)), "h"(hi));
  }
}

struct TArgs {
  const uint16_t* x;
  const uint4* ent;  // groups: 2 x 16 bytes each (values, positions)
  const int* gptr;   // (n_tiles + 1,)
  Out out;
  int K, ldx, n_chunks, per_split;
};

template <int VT, int BP, int W>
__global__ void __launch_bounds__(32 * W) tile_mma_kernel(const TArgs a) {
  extern __shared__ uint4 smem4[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2;
  const int band = blockIdx.x * W + warp, row0 = blockIdx.x * 16 * W;
  const int c_lo = blockIdx.y * a.per_split, c_hi = min(c_lo + a.per_split, a.n_chunks);
  constexpr int XBUF = BP * XS;  // halves per staged x chunk (two buffers, then the warps' tiles)
  uint16_t* xbuf = reinterpret_cast<uint16_t*>(smem4);
  uint4* tile = reinterpret_cast<uint4*>(xbuf + 2 * XBUF) + warp * (TILE_HALVES / 8);
  const uint32_t tb = (uint32_t)__cvta_generic_to_shared(tile);
  const bool active = 16 * band < a.out.N;  // every warp stages x and meets the barriers; active ones compute
  // the block copies x[0:BP, chunk] for the next chunk while it computes this one (16-byte copies, zero-filled)
  const XStage<BP, 32 * W> xst(a.x, a.ldx, a.out.bsz, tid);
  const auto stage_x = [&](int c, int buf) { xst(xbuf + buf * XBUF, a.x, c, a.K); };
  float acc[BP / 8][4];
#pragma unroll
  for (int t = 0; t < BP / 8; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
  const int* gp = a.gptr + (size_t)(active ? band : 0) * a.n_chunks;
  int g0 = 0, g1 = 0;
  uint4 pv[MAXG], pp[MAXG];
  if (active) {
    g0 = __ldg(gp + c_lo); g1 = __ldg(gp + c_lo + 1);
#pragma unroll
    for (int m = 0; m < MAXG; ++m) {
      const int gi = g0 + lane + 32 * m;
      if (gi < g1) { pv[m] = __ldg(a.ent + 2 * gi); pp[m] = __ldg(a.ent + 2 * gi + 1); }
    }
  }
  stage_x(c_lo, 0);
  for (int c = c_lo; c < c_hi; ++c) {
    const int buf = (c - c_lo) & 1;
    __syncthreads();  // everyone is done with the other buffer (chunk c - 1) before it is refilled
    if (c + 1 < c_hi) stage_x(c + 1, buf ^ 1);
    else cp_commit();  // an empty group keeps the count uniform
    cp_wait<1>();      // chunk c's x has landed (this thread's copies) ...
    __syncthreads();   // ... and every thread's
    if (active) {
      const int g2 = c + 1 < c_hi ? __ldg(gp + c + 2) : 0;  // the next tile's end, early
#pragma unroll
      for (int j = 0; j < 8; ++j) tile[zero_vec(lane, j)] = make_uint4(0u, 0u, 0u, 0u);
      __syncwarp();
#pragma unroll
      for (int m = 0; m < MAXG; ++m)
        if (g0 + lane + 32 * m < g1) scatter8(tb, pv[m], pp[m]);
      for (int gi = g0 + lane + 32 * MAXG; gi < g1; gi += 32)
        scatter8(tb, __ldg(a.ent + 2 * gi), __ldg(a.ent + 2 * gi + 1));
      __syncwarp();
      if (c + 1 < c_hi) {  // the next tile's first groups, in flight during this tile's mma
        g0 = g1; g1 = g2;
#pragma unroll
        for (int m = 0; m < MAXG; ++m) {
          const int gi = g0 + lane + 32 * m;
          if (gi < g1) { pv[m] = __ldg(a.ent + 2 * gi); pp[m] = __ldg(a.ent + 2 * gi + 1); }
        }
      }
      tile_mma_chunk<VT, BP>(tb, (uint32_t)__cvta_generic_to_shared(xbuf + buf * XBUF), lane, acc);
      __syncwarp();  // every lane's ldmatrix is done before the next tile is zeroed
    }
  }
  store_rows<VT, BP>(acc, true, row0 + 16 * warp + g, row0, 16 * W, a.out);
}

template <int VT, int BP, int W>
static int launch(const TArgs& a, int splits, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  const size_t smem = (size_t)(2 * BP * XS + W * TILE_HALVES) * 2;
  if (smem > opted) {
    const cudaError_t e = cudaFuncSetAttribute(tile_mma_kernel<VT, BP, W>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    opted = smem;
  }
  const dim3 grid((a.out.N + 16 * W - 1) / (16 * W), splits);
  tile_mma_kernel<VT, BP, W><<<grid, 32 * W, smem, stream>>>(a);
  return (int)cudaGetLastError();
}

template <int VT, int BP>
static int by_warps(int W, const TArgs& a, int splits, cudaStream_t s) {
  if (W == 4) return launch<VT, BP, 4>(a, splits, s);
  if (W == 8) return launch<VT, BP, 8>(a, splits, s);
  return -1;
}

template <int VT>
static int by_batch(int BP, int W, const TArgs& a, int splits, cudaStream_t s) {
  switch (BP) {
    case 8: return by_warps<VT, 8>(W, a, splits, s);
    case 16: return by_warps<VT, 16>(W, a, splits, s);
    case 32: return by_warps<VT, 32>(W, a, splits, s);
    case 64: return by_warps<VT, 64>(W, a, splits, s);
    default: return -1;
  }
}

// y (bsz, N) = x (bsz, K) W^T; BP = padded batch (8 / 16 / 32 / 64), W = warps (bands) per block (4 / 8),
// `splits` blocks along K of per_split chunks each (every split non-empty). Returns a cudaError_t or -1.
extern "C" int sl_tile_launch(int vt, int BP, int W, const void* x, const void* ent, const void* gptr, void* y,
                              void* ws, void* cnt, int N, int K, int bsz, int ldx, int ldy, int n_chunks,
                              int per_split, int splits, void* stream) {
  const TArgs a{static_cast<const uint16_t*>(x), static_cast<const uint4*>(ent), static_cast<const int*>(gptr),
                Out{static_cast<uint16_t*>(y), static_cast<float*>(ws), static_cast<int*>(cnt), N, bsz, ldy},
                K, ldx, n_chunks, per_split};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (vt == VT_F16) return by_batch<VT_F16>(BP, W, a, splits, s);
  if (vt == VT_BF16) return by_batch<VT_BF16>(BP, W, a, splits, s);
  return -1;
}

extern "C" const char* sl_tile_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

#else  // host emulation: zero, scatter, fragments by the ldmatrix / mma layouts, float32 output

static void scatter8_host(uint16_t* tile, const uint16_t* grp) {  // grp: 8 values then 8 positions
  for (int j = 0; j < 8; ++j) tile[grp[8 + j]] = grp[j];
}

extern "C" int sl_tile_host(int vt, int BP, const void* x, const void* ent, const void* gptr, float* y, int N,
                            int K, int bsz, int n_chunks) {
  if ((vt != VT_F16 && vt != VT_BF16) || BP % 8 || BP < bsz || BP > 64) return -1;
  const uint16_t* xx = static_cast<const uint16_t*>(x);
  const uint16_t* ee = static_cast<const uint16_t*>(ent);
  const int* gp = static_cast<const int*>(gptr);
  uint16_t* tile = new uint16_t[TILE_HALVES]();  // zero once; per tile only what the kernel zeroes
  uint16_t* xs = new uint16_t[(size_t)BP * XS];
  float(*d)[4] = new float[(size_t)(BP / 8) * 32][4];
  uint32_t a0[32][4], a1[32][4], bq[32][4], b0[32][2], b1[32][2];
  int off[32];
  for (int band = 0; 16 * band < N; ++band) {
    memset(d, 0, sizeof(float) * 4 * 32 * (BP / 8));
    for (int c = 0; c < n_chunks; ++c) {
      const int t = band * n_chunks + c;
      for (int l = 0; l < 32; ++l)  // the kernel's zeroing, so that a column it missed would keep a stale value
        for (int j = 0; j < 8; ++j) memset(tile + 8 * zero_vec(l, j), 0, 16);
      stage_x_host(xs, xx, BP, bsz, K, c);
      for (int gi = gp[t]; gi < gp[t + 1]; ++gi) scatter8_host(tile, ee + 16 * (size_t)gi);
      for (int ks = 0; ks < TC / 16; ks += 2) {  // as tile_mma_chunk: two k-steps per round
        for (int l = 0; l < 32; ++l) off[l] = a_row(l, ks);
        ldsm_x4_host(tile, off, a0);
        for (int l = 0; l < 32; ++l) off[l] = a_row(l, ks + 1);
        ldsm_x4_host(tile, off, a1);
        for (int nt = 0; nt < BP / 8; ++nt) {
          for (int l = 0; l < 32; ++l) off[l] = b_row(l, ks, nt);
          ldsm_x4_host(xs, off, bq);
          for (int l = 0; l < 32; ++l) {
            b0[l][0] = bq[l][0], b0[l][1] = bq[l][1], b1[l][0] = bq[l][2], b1[l][1] = bq[l][3];
          }
          host_mma(d + 32 * nt, a0, b0, vt);
          host_mma(d + 32 * nt, a1, b1, vt);
        }
      }
    }
    for (int nt = 0; nt < BP / 8; ++nt)
      for (int l = 0; l < 32; ++l)
        for (int j = 0; j < 4; ++j) {
          const int r = 16 * band + (l >> 2) + 8 * (j >> 1), b = 8 * nt + 2 * (l & 3) + (j & 1);
          if (r < N && b < bsz) y[(size_t)b * N + r] = d[32 * nt + l][j];
        }
  }
  delete[] tile;
  delete[] xs;
  delete[] d;
  return 0;
}
#endif
