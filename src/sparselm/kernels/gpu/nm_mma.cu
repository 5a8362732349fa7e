// Batched y = x W^T (batch 1-64) for N:M-sparse W on the sparse tensor cores: mma.sp m16n8k32, whose A operand is
// a 2:4-sparse 16 x 32 tile given as its 16 x 16 kept values plus 2-bit indices. Every matrix whose aligned groups of
// 4 columns hold at most 2 nonzeros qualifies (2:4, 1:4, 2:8, 1:8 masks): S = the most nonzeros any group holds.
//
// Why (docs/notes/gpu.md, session 25): the batched kernels over unstructured masks expand W into dense tiles in
// software (bmma ~20, tmma ~6.5 instructions per nonzero) and stayed at 0.8-0.95x cuBLAS at batch 16, 75%. An N:M
// mask needs no expansion for the tensor core: the hardware takes the values and their positions as they are.
//   S = 2 (2:4, 2:8): the kept values are mma.sp's A registers as stored, and the metadata words are stored in the
//     lanes' register order: 2 values + 4 bits per group of 4, 1.125 bytes per fp16 weight (1.78x fewer than dense).
//   S = 1 (1:4): one value and its 2-bit position per group, 0.5625 bytes per weight (3.56x fewer than dense); each
//     lane widens its value to the register {v, 0} or {0, v} by the position's low bit, and the metadata lanes
//     look their word up from the 8 high bits that are theirs (index pair (0, 1) or (2, 3); a 256-word table in
//     shared memory).
//
// Layout ("nmsp", built by cuda_nmsp.layout): N padded to 16-row bands, K to 128-column chunks; one record per
// (band, chunk), band-major, of REC(S) 16-byte vectors:
//   values: 2 S vectors per lane, vector j at j * 32 + lane. Lane (g, t) = (lane / 4, lane % 4) holds the A
//     registers r = 0..3 of mma.sp (row g + 8 (r & 1), group t + 4 (r >> 1) of the step's 8 groups) for the
//     chunk's 4 k32 steps: S = 2: vector s = step s's registers; S = 1: 16-bit values, vector s / 2, half
//     4 (s % 2) + r.
//   index: S = 1: 8 vectors, vector g = the 4 steps' position words P of quad g's rows (g, g + 8): for the 2-bit
//     position p of (row g + 8 h, group 4 q + t), p >> 1 at bit 8 q + 4 h + t (metadata lane q's byte) and p & 1 at
//     bit 16 + 4 t + h + 2 q (lane t's nibble, register r = h + 2 q). S = 2: 16 vectors, vector 2 g + j = the
//     4 steps' metadata words of the lane (g, j) that supplies them (sparsity selector 0: lanes t = 0, 1): bits
//     4 t + 16 h = (row g + 8 h, group 4 j + t)'s index pair, idx0 | idx1 << 2, idx0 < idx1.
// Each warp owns one band and a range of chunks, with D chunks' records in flight; x is staged per chunk by the
// block (mma_common.cuh XStage), D chunks ahead, and read with ldmatrix as tile_mma.cu does. Split-K over 2-8
// blocks: the blocks of one row block form a thread-block cluster and add their partial sums through distributed
// shared memory (cluster_store), in a fixed order: deterministic, no workspace. Over more blocks: fp32 atomics
// into a workspace (mma_common.cuh store_rows), which the long rows of 1:4 matrices ran faster with at 16-32
// splits (gpu_kernels_nmb_cluster.json against gpu_kernels_nmb_splits.json).
//
// The same file compiles as C++ (g++ -x c++): the register building (step_regs) is shared with the GPU build, and
// the host emulation runs it lane by lane with ldmatrix and mma.sp emulated by the PTX fragment layouts.
#include "mma_common.cuh"
#ifdef __CUDACC__
#include <cooperative_groups.h>
#endif

enum { STEPS = XC / 32 };  // k32 steps per chunk
enum { MAX_CLUSTER = 8 };   // split-K over up to this many blocks runs as one cluster (the portable cluster size)

template <int S>
struct Rec {
  enum { V = 2 * S, I = 8 * S, ALL = 32 * V + I };  // value vectors per lane, index vectors, vectors per record
};

// S = 1: the metadata word for the byte of 8 high position bits that lane (g, j) supplies: bit n picks the index pair
// (2, 3) (nibble 0b1110) over (0, 1) (0b0100) for nibble n. The kernel keeps the 256 words in shared memory.
// Why a table: spreading the bits in registers took ~10 instructions per step, a quarter of a step's ~38.
SL_HD uint32_t meta_word(uint32_t byte) {
  uint32_t m = 0;
  for (int n = 0; n < 8; ++n) m |= ((byte >> n) & 1u ? 0xEu : 0x4u) << (4 * n);
  return m;
}

// Step s's A registers and metadata word for `lane`, from the lane's value words vw (its 2 S vectors as 8 S words)
// and its index vector's words iw; lut = meta_word's table (S = 1). S = 1: register r = the 16-bit value shifted
// into the slot its position's low bit names (bit r of the lane's nibble).
template <int S>
SL_HD void step_regs(const uint32_t* vw, const uint32_t* iw, int s, int lane, const uint32_t* lut, uint32_t* a,
                     uint32_t& e) {
  if (S == 2) {
    for (int r = 0; r < 4; ++r) a[r] = vw[4 * s + r];
    e = iw[s];
    return;
  }
  const uint32_t P = iw[s], sb = P >> (16 + 4 * (lane & 3));
  const uint32_t w0 = vw[2 * s], w1 = vw[2 * s + 1];
  a[0] = (w0 & 0xFFFFu) << ((sb << 4) & 16u);
  a[1] = (w0 >> 16) << ((sb << 3) & 16u);
  a[2] = (w1 & 0xFFFFu) << ((sb << 2) & 16u);
  a[3] = (w1 >> 16) << ((sb << 1) & 16u);
  e = lut[(P >> (8 * (lane & 1))) & 0xFFu];
}

// Which index vector of a record the lane loads: its quad's (S = 1), or its metadata lane's (S = 2; lanes t = 2, 3
// load lane t - 2's, which they ignore).
template <int S>
SL_HD int index_vec(int lane) {
  return S == 1 ? lane >> 2 : 2 * (lane >> 2) + (lane & 1);
}

#ifdef __CUDACC__

template <int VT>
__device__ __forceinline__ void mma_sp16832(float* d, const uint32_t* a, const uint32_t* b, uint32_t e) {
  if (VT == VT_F16)
    asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  else
    asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
}

template <int S>
struct Chunk {  // one lane's share of a record, in registers
  uint4 v[Rec<S>::V], i;
};

template <int S>
__device__ __forceinline__ void load_chunk(Chunk<S>& c, const uint4* rec, int lane) {
#pragma unroll
  for (int j = 0; j < Rec<S>::V; ++j) c.v[j] = __ldg(rec + j * 32 + lane);
  c.i = __ldg(rec + 32 * Rec<S>::V + index_vec<S>(lane));
}

// One chunk's 4 k32 steps times the staged x chunk (shared address xsb) into acc.
template <int VT, int S, int BP>
__device__ __forceinline__ void chunk_mma(const Chunk<S>& c, uint32_t xsb, int lane, const uint32_t* lut,
                                          float (*acc)[4]) {
  uint32_t vw[4 * Rec<S>::V];
#pragma unroll
  for (int j = 0; j < Rec<S>::V; ++j) {
    vw[4 * j] = c.v[j].x; vw[4 * j + 1] = c.v[j].y; vw[4 * j + 2] = c.v[j].z; vw[4 * j + 3] = c.v[j].w;
  }
  const uint32_t iw[4] = {c.i.x, c.i.y, c.i.z, c.i.w};
#pragma unroll
  for (int s = 0; s < STEPS; ++s) {
    uint32_t a[4], e;
    step_regs<S>(vw, iw, s, lane, lut, a, e);
#pragma unroll
    for (int t = 0; t < BP / 8; ++t) {
      uint32_t b[4];
      ldsm_x4(b, xsb + 2 * b_row(lane, 2 * s, t));
      mma_sp16832<VT>(acc[t], a, b, e);
    }
  }
}

// The split-K sums of a cluster's blocks (the same rows, different chunks; cluster = grid.y): each block puts its
// warps' D fragments in its own shared memory (reusing the x buffers) as part[warp][t][j][lane], the cluster
// synchronizes, and block `rank` adds slice `rank` of every block's part, in rank order, and writes y.
// Why: the first form added fp32 atomics into a global workspace, then a fence and a per-row-block counter chose
// the block that wrote y: a few memory round trips at the end of every block, part of the 4.4-6.8 us of fixed cost
// per launch in gpu_kernels_nmb_splits.json (time against K: 2.5-2.9 TB/s per added byte). Clusters took 10-22% off
// the short rows and 2:4 (gpu_kernels_nmb_cluster.json).
template <int VT, int BP, int W>
__device__ __forceinline__ void cluster_store(const float (*acc)[4], float* part, int row0, const Out& o) {
  namespace cg = cooperative_groups;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  __syncthreads();  // every warp's last ldmatrix of the x buffers is done
#pragma unroll
  for (int t = 0; t < BP / 8; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) part[((warp * (BP / 8) + t) * 4 + j) * 32 + lane] = acc[t][j];
  cg::cluster_group cl = cg::this_cluster();
  cl.sync();
  constexpr int LEN = W * (BP / 8) * 4 * 32;
  const int S = (int)cl.num_blocks(), rank = (int)cl.block_rank(), per = (LEN + S - 1) / S;
  for (int i = rank * per + tid; i < min((rank + 1) * per, LEN); i += 32 * W) {
    float sum = 0.0f;
    for (int r = 0; r < S; ++r) sum += cl.map_shared_rank(part, r)[i];
    const int l = i & 31, j = (i >> 5) & 3, t = (i >> 7) % (BP / 8), w = (i >> 7) / (BP / 8);
    const int row = row0 + 16 * w + (l >> 2) + 8 * (j >> 1), b = 8 * t + 2 * (l & 3) + (j & 1);
    if (row < o.N && b < o.bsz) o.y[(size_t)b * o.ldy + row] = to_act<VT>(sum);
  }
  cl.sync();  // no block leaves while another still reads its shared memory
}

struct NArgs {
  const uint16_t* x;
  const uint4* rec;  // (bands * n_chunks * REC,)
  Out out;
  int K, ldx, n_chunks, per_split;
};

// D = chunks in flight per warp: each warp holds D chunks' records in registers (a ring, indexed statically by
// unrolling the chunk loop D times) and the block stages x D chunks ahead in D + 1 buffers, one barrier per chunk.
// Why: a warp's work per chunk is ~12 instructions per lane per step; the first form (one chunk ahead, two
// barriers per chunk) ran each chunk at about one memory latency, 0.9-1.5 TB/s at batch 16
// (gpu_kernels_nmb_first.json).
template <int VT, int S, int BP, int W, int D>
__global__ void __launch_bounds__(32 * W) nm_mma_kernel(const NArgs a) {
  extern __shared__ uint4 smem4[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2;
  const int band = blockIdx.x * W + warp, row0 = blockIdx.x * 16 * W;
  const int c_lo = blockIdx.y * a.per_split, c_hi = min(c_lo + a.per_split, a.n_chunks);
  constexpr int XBUF = BP * XS;
  uint16_t* xbuf = reinterpret_cast<uint16_t*>(smem4);
  const bool active = 16 * band < a.out.N;  // every warp stages x and meets the barriers; active ones compute
  const XStage<BP, 32 * W> xst(a.x, a.ldx, a.out.bsz, tid);
  __shared__ uint32_t lut[S == 1 ? 256 : 1];  // meta_word's table, ready at the first chunk's barrier
  if (S == 1)
    for (int i = tid; i < 256; i += 32 * W) lut[i] = meta_word(i);
  float acc[BP / 8][4];
#pragma unroll
  for (int t = 0; t < BP / 8; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
  const uint4* rec = a.rec + ((size_t)(active ? band : 0) * a.n_chunks) * Rec<S>::ALL;
  Chunk<S> w[D];
#pragma unroll
  for (int d = 0; d < D; ++d)  // the records first: DRAM is the longest wait
    if (active && c_lo + d < c_hi) load_chunk<S>(w[d], rec + (size_t)(c_lo + d) * Rec<S>::ALL, lane);
#pragma unroll
  for (int d = 0; d < D; ++d) {
    if (c_lo + d < c_hi) xst(xbuf + d * XBUF, a.x, c_lo + d, a.K);
    else cp_commit();  // empty groups keep the count uniform
  }
  for (int c0 = c_lo; c0 < c_hi; c0 += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int c = c0 + d;
      if (c >= c_hi) break;  // block-uniform
      cp_wait<D - 1>();  // chunk c's x has landed (this thread's copies; D groups committed after it) ...
      __syncthreads();   // ... and every thread's; every warp is done with chunk c - 1's buffer, refilled next
      if (c + D < c_hi) xst(xbuf + ((c - c_lo + D) % (D + 1)) * XBUF, a.x, c + D, a.K);
      else cp_commit();
      if (active) {
        chunk_mma<VT, S, BP>(w[d], (uint32_t)__cvta_generic_to_shared(xbuf + ((c - c_lo) % (D + 1)) * XBUF), lane,
                             lut, acc);
        if (c + D < c_hi) load_chunk<S>(w[d], rec + (size_t)(c + D) * Rec<S>::ALL, lane);
      }
    }
  }
  if (gridDim.y == 1 || gridDim.y > MAX_CLUSTER) store_rows<VT, BP>(acc, true, row0 + 16 * warp + g, row0, 16 * W, a.out);
  else cluster_store<VT, BP, W>(acc, reinterpret_cast<float*>(smem4), row0, a.out);
}

template <int VT, int S, int BP, int W, int D>
static int launch(const NArgs& a, int splits, cudaStream_t stream) {
  // D + 1 x buffers (139 KB at batch 64, D = 3), reused for the split-K partials (W x BP x 64 bytes: less)
  const size_t smem = (size_t)(D + 1) * BP * XS * 2;
  static_assert(W * BP * 64 <= 2 * BP * XS * 2, "the partials fit in two x buffers");
  static bool opted = false;
  if (smem > 48 * 1024 && !opted) {
    const cudaError_t e = cudaFuncSetAttribute(nm_mma_kernel<VT, S, BP, W, D>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    opted = true;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((a.out.N + 16 * W - 1) / (16 * W), splits);
  cfg.blockDim = dim3(32 * W);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = splits;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = splits > 1 && splits <= MAX_CLUSTER ? 1 : 0;
  return (int)cudaLaunchKernelEx(&cfg, nm_mma_kernel<VT, S, BP, W, D>, a);
}

template <int VT, int S, int BP, int W>
static int by_depth(int D, const NArgs& a, int splits, cudaStream_t s) {
  if (D == 1) return launch<VT, S, BP, W, 1>(a, splits, s);
  if (D == 2) return launch<VT, S, BP, W, 2>(a, splits, s);
  if (D == 3) return launch<VT, S, BP, W, 3>(a, splits, s);
  return -1;
}

template <int VT, int S, int BP>
static int by_warps(int W, int D, const NArgs& a, int splits, cudaStream_t s) {
  if (W == 4) return by_depth<VT, S, BP, 4>(D, a, splits, s);
  if (W == 8) return by_depth<VT, S, BP, 8>(D, a, splits, s);
  return -1;
}

template <int VT, int S>
static int by_batch(int BP, int W, int D, const NArgs& a, int splits, cudaStream_t s) {
  switch (BP) {
    case 8: return by_warps<VT, S, 8>(W, D, a, splits, s);
    case 16: return by_warps<VT, S, 16>(W, D, a, splits, s);
    case 32: return by_warps<VT, S, 32>(W, D, a, splits, s);
    case 64: return by_warps<VT, S, 64>(W, D, a, splits, s);
    default: return -1;
  }
}

// y (bsz, N) = x (bsz, K) W^T; S = slots per group of 4 (1 / 2), BP = padded batch (8 / 16 / 32 / 64), W = warps
// (bands) per block (4 / 8), D = chunks in flight (1-3), `splits` blocks along K (2-8: one cluster; more: the
// workspace ws and counters cnt) of per_split chunks each (every split non-empty). Returns a cudaError_t or -1.
extern "C" int sl_nmsp_launch(int vt, int S, int BP, int W, int D, const void* x, const void* rec, void* y, void* ws,
                              void* cnt, int N, int K, int bsz, int ldx, int ldy, int n_chunks, int per_split,
                              int splits, void* stream) {
  const NArgs a{static_cast<const uint16_t*>(x), static_cast<const uint4*>(rec),
                Out{static_cast<uint16_t*>(y), static_cast<float*>(ws), static_cast<int*>(cnt), N, bsz, ldy},
                K, ldx, n_chunks, per_split};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (S != 1 && S != 2) return -1;
  if (vt == VT_F16)
    return S == 1 ? by_batch<VT_F16, 1>(BP, W, D, a, splits, s) : by_batch<VT_F16, 2>(BP, W, D, a, splits, s);
  if (vt == VT_BF16)
    return S == 1 ? by_batch<VT_BF16, 1>(BP, W, D, a, splits, s) : by_batch<VT_BF16, 2>(BP, W, D, a, splits, s);
  return -1;
}

extern "C" const char* sl_nmsp_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

#else  // host emulation: the lanes' registers by step_regs, ldmatrix and mma.sp by the PTX layouts, float32 output

// D (16 x 8) += A (16 x 32, 2:4-sparse) B (32 x 8) by the mma.sp m16n8k32 layouts (sparsity selector 0):
// a[l][r] = the kept values of (row g + 8 (r & 1), group t + 4 (r >> 1)), low half = slot 0; e[4 g + j] (j < 2) =
// the index pairs, nibble 4 t + 16 h = (row g + 8 h, group 4 j + t): idx0 | idx1 << 2; b[l][i] = B[8 i + 2 t (+1)][g];
// d[l] = D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]. Returns false for an invalid pair (idx0 >= idx1: undefined
// on the GPU, and ordered metadata needs idx0 < idx1).
static bool host_mma_sp(float (*d)[4], uint32_t (*a)[4], uint32_t (*b)[4], const uint32_t* e, int vt) {
  float A[16][32] = {}, B[32][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r & 1), grp = t + 4 * (r >> 1);
      const uint32_t nib = (e[4 * g + (r >> 1)] >> (16 * (r & 1) + 4 * t)) & 0xF, i0 = nib & 3, i1 = nib >> 2;
      if (i0 >= i1) return false;
      A[row][4 * grp + i0] = act_to_float(a[l][r] & 0xFFFF, vt);
      A[row][4 * grp + i1] = act_to_float(a[l][r] >> 16, vt);
    }
    for (int i = 0; i < 4; ++i)
      for (int h = 0; h < 2; ++h) B[8 * i + 2 * t + h][g] = act_to_float((b[l][i] >> (16 * h)) & 0xFFFF, vt);
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    for (int j = 0; j < 4; ++j) {
      const int r = g + 8 * (j >> 1), n = 2 * t + (j & 1);
      float s = 0.0f;
      for (int k = 0; k < 32; ++k) s += A[r][k] * B[k][n];
      d[l][j] += s;
    }
  }
  return true;
}

template <int S>
static int host_run(int vt, int BP, const uint16_t* x, const uint32_t* rec, float* y, int N, int K, int bsz,
                    int n_chunks) {
  uint16_t* xs = new uint16_t[(size_t)BP * XS];
  float(*d)[4] = new float[(size_t)(BP / 8) * 32][4];
  uint32_t a[32][4], bq[32][4], e[32], lut[256];
  int off[32], bad = 0;
  for (uint32_t i = 0; i < 256; ++i) lut[i] = meta_word(i);
  for (int band = 0; 16 * band < N; ++band) {
    memset(d, 0, sizeof(float) * 4 * 32 * (BP / 8));
    for (int c = 0; c < n_chunks; ++c) {
      const uint32_t* r = rec + ((size_t)band * n_chunks + c) * Rec<S>::ALL * 4;
      stage_x_host(xs, x, BP, bsz, K, c);
      for (int s = 0; s < STEPS; ++s) {
        for (int l = 0; l < 32; ++l) {
          uint32_t vw[4 * Rec<S>::V];
          for (int j = 0; j < Rec<S>::V; ++j) memcpy(vw + 4 * j, r + 4 * (j * 32 + l), 16);
          step_regs<S>(vw, r + 4 * (32 * Rec<S>::V + index_vec<S>(l)), s, l, lut, a[l], e[l]);
        }
        for (int nt = 0; nt < BP / 8; ++nt) {
          for (int l = 0; l < 32; ++l) off[l] = b_row(l, 2 * s, nt);
          ldsm_x4_host(xs, off, bq);
          bad |= !host_mma_sp(d + 32 * nt, a, bq, e, vt);
        }
      }
    }
    for (int nt = 0; nt < BP / 8; ++nt)
      for (int l = 0; l < 32; ++l)
        for (int j = 0; j < 4; ++j) {
          const int row = 16 * band + (l >> 2) + 8 * (j >> 1), b = 8 * nt + 2 * (l & 3) + (j & 1);
          if (row < N && b < bsz) y[(size_t)b * N + row] = d[32 * nt + l][j];
        }
  }
  delete[] xs;
  delete[] d;
  return bad ? -2 : 0;
}

// The kernel's arithmetic on the CPU: 0, -1 (unsupported arguments) or -2 (a metadata pair the GPU rejects).
extern "C" int sl_nmsp_host(int vt, int S, int BP, const void* x, const void* rec, float* y, int N, int K, int bsz,
                            int n_chunks) {
  if ((vt != VT_F16 && vt != VT_BF16) || BP % 8 || BP < bsz || BP > 64) return -1;
  const uint16_t* xx = static_cast<const uint16_t*>(x);
  const uint32_t* rr = static_cast<const uint32_t*>(rec);
  if (S == 1) return host_run<1>(vt, BP, xx, rr, y, N, K, bsz, n_chunks);
  if (S == 2) return host_run<2>(vt, BP, xx, rr, y, N, K, bsz, n_chunks);
  return -1;
}
#endif
