// Batch-1 y = x W^T over the delta4 layout (cuda_delta4.py builds it from the bitmask format), in CUDA C++.
//
// Why a second per-nonzero layout: grp8 spends 3.2 bytes per fp16 nonzero at 75% (2 value + 1 column offset + the
// group bases and padding), which caps it at 2.5x cuBLAS's 2 bytes per weight; it runs at 80-89% of that cap.
// delta4 stores each nonzero's column as a 4-bit step from the previous one: 2 + 0.5 + 2 / 16 (the chunk's base)
// = 2.63 bytes per fp16 nonzero plus the zero-valued stepping stones that bridge gaps over 15 columns (~1.3% of
// entries at 75%, independent of K), and 1.63 with int8 values. The column is a running sum within a lane's chunk,
// so decoding costs one bit-field extract and one add per nonzero, no more than grp8's offset unpacking.
//
// Layout: a row's entries (its nonzeros in column order, with stepping stones) are cut into chunks of 16; the last
// chunk is padded with zero values that repeat the last column (step 0). Per chunk c of T = cptr[N] chunks:
//   vals   16 values, codes unscaled: fp16 / bf16 in two planes, values 0-7 at 16 c and values 8-15 at 16 (T + c)
//          (so a warp's 16-byte loads of consecutive chunks are contiguous: one 32-byte stride per lane cost the
//          first timing 11 L1 sectors per request and 47% occupancy); int8: 16 bytes at 16 c;
//   steps  a 64-bit word (two uint32 at 2 c): nibble i (bits 4i..4i+3), i = 1..15, is column[i] - column[i - 1];
//          nibble 0 is unused (the first column is the base);
//   base   the first entry's column, uint16 (K <= 65536);
// cptr[n] is row n's first chunk. int8 values carry per-row scales, applied to the row's sum.
// L lanes per row (32: one warp per row, as grp8_gemv.cu; 16 or 8: a warp holds 32 / L rows): lane l of a row takes
// chunks cptr[n] + l, + L, ... and the row's lanes sum their parts. Fewer lanes tested a hypothesis: at 75% a
// 4096-column row is ~65 chunks, so with 32 lanes one lane walks 3 chunks while the others walk 2. Measured on the
// H200, 16 or 8 lanes were no faster (slower on 4096-row shapes): lane imbalance is not the bound.
// x is staged per block as float32 (4K bytes of shared memory), so a nonzero costs no activation conversion:
// 7.1 SASS instructions per fp16 nonzero at sm_90 (benchmarks/sass_count.py --d4cu).
//
// The same file compiles as plain C++ (g++ -x c++) with a host emulation entry point: the lane arithmetic, the
// step decoding and the value decoders are shared with the GPU build, so CPU tests check them bit for bit.
#include "gemv_common.cuh"

enum { D4_CHUNK = 16 };

// One chunk as loaded: value words (fp16 / bf16: 8 words; int8: 4), the step word, the base column.
struct Chunk {
  uint32_t w[8];
  uint32_t lo, hi, base;
};

template <int VT>
SL_HD void load_chunk(const void* vals, const uint32_t* steps, const uint16_t* base, int nch, int c, Chunk& ch) {
#ifdef __CUDACC__
  const uint4* v4 = reinterpret_cast<const uint4*>(vals);
  const uint4 a = __ldg(v4 + c);  // one 16-byte load per plane: two per fp16 chunk, one per int8 chunk
  ch.w[0] = a.x; ch.w[1] = a.y; ch.w[2] = a.z; ch.w[3] = a.w;
  if (VT != VT_I8) {
    const uint4 b = __ldg(v4 + nch + c);
    ch.w[4] = b.x; ch.w[5] = b.y; ch.w[6] = b.z; ch.w[7] = b.w;
  }
  const uint2 s = __ldg(reinterpret_cast<const uint2*>(steps) + c);
  ch.lo = s.x; ch.hi = s.y;
  ch.base = __ldg(base + c);
#else
  memcpy(ch.w, static_cast<const unsigned char*>(vals) + (size_t)c * 16, 16);
  if (VT != VT_I8) memcpy(ch.w + 4, static_cast<const unsigned char*>(vals) + (size_t)(nch + c) * 16, 16);
  ch.lo = steps[2 * c]; ch.hi = steps[2 * c + 1];
  ch.base = base[c];
#endif
}

// x[column] from its byte offset: SMEM, the block's float32 copy in shared memory (4 bytes per column: the
// conversion is paid once per block at staging, not once per nonzero); else the activations in global memory
// through L1 (2 bytes per column).
template <int XT, bool SMEM>
SL_HD float d4_x(const unsigned char* xs, uint32_t off) {
  if (SMEM) return *reinterpret_cast<const float*>(xs + off);
  return load_x<XT, false>(xs, off);
}

// The chunk's 16 values as float (quantized codes unscaled), 4 at a time through the shared decoders.
template <int VT>
SL_HD void decode_chunk(const Chunk& ch, float* v) {
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int j = 0; j < 4; ++j) {
    const Raw r = VT == VT_I8 ? Raw{ch.w[j], 0u} : Raw{ch.w[2 * j], ch.w[2 * j + 1]};
    decode_values<VT>(r, v + 4 * j);
  }
}

// Column step i (1..15) times 2^SH bytes, x's bytes per column: the nibble scaled in place, one shift, one mask.
template <int SH>
SL_HD uint32_t step_bytes(const Chunk& ch, int i) {
  const uint32_t word = i < 8 ? ch.lo : ch.hi;
  const int at = 4 * (i & 7) - SH;
  return (at >= 0 ? word >> at : word << -at) & (15u << SH);
}

// The chunk's 16 products with x, in two accumulators (even / odd entries). off = column * XB, x's byte offset
// (XB = 4 in shared memory, 2 through L1).
template <int VT, int XT, bool SMEM>
SL_HD float d4_chunk(const Chunk& ch, const unsigned char* xs) {
  constexpr int SH = SMEM ? 2 : 1;  // log2 of the bytes per x column
  uint32_t off = ch.base << SH;
  float acc0 = 0.0f, acc1 = 0.0f;  // fma(v, x, 0) is the rounded product: the sums of the first timing, bit for bit
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int j = 0; j < 4; ++j) {  // 4 values decoded just before their use: fewer live registers than 16
    float v[4];
    decode_values<VT>(VT == VT_I8 ? Raw{ch.w[j], 0u} : Raw{ch.w[2 * j], ch.w[2 * j + 1]}, v);
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int t = 0; t < 4; ++t) {
      const int i = 4 * j + t;
      if (i) off += step_bytes<SH>(ch, i);
      if (i & 1) acc1 = fmaf(v[t], d4_x<XT, SMEM>(xs, off), acc1);
      else acc0 = fmaf(v[t], d4_x<XT, SMEM>(xs, off), acc0);
    }
  }
  return acc0 + acc1;
}

// Lane `lane` (of the row's L)'s chunks [c0, c1) of one row, U per step: every load of the step is issued before
// the first use (bytes in flight per lane; the tail step loads only what exists), then each chunk goes to use(chunk).
template <int VT, int U, int L, typename Use>
SL_HD void d4_walk(const void* vals, const uint32_t* steps, const uint16_t* base, int nch, int c0, int c1, int lane,
                   Use use) {
  for (int c = c0 + lane; c < c1; c += L * U) {
    Chunk ch[U];
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int u = 0; u < U; ++u)
      if (U == 1 || c + L * u < c1) load_chunk<VT>(vals, steps, base, nch, c + L * u, ch[u]);
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int u = 0; u < U; ++u)
      if (U == 1 || c + L * u < c1) use(ch[u]);
  }
}

// Lane `lane` (of L)'s partial dot product over chunks [c0, c1) of one row.
template <int VT, int XT, bool SMEM, int U, int L = 32>
SL_HD float d4_lane(const void* vals, const uint32_t* steps, const uint16_t* base, int nch, const unsigned char* xs,
                    int c0, int c1, int lane) {
  float acc = 0.0f;
  d4_walk<VT, U, L>(vals, steps, base, nch, c0, c1, lane,
                    [&](const Chunk& ch) { acc += d4_chunk<VT, XT, SMEM>(ch, xs); });
  return acc;
}

// Batches 2-8: x staged transposed as float32, xt[k * B + b], so a nonzero's B activations are one vector load
// (float2 / float4 / two float4) and B fused multiply-adds; offsets are column * 4B bytes.
template <int B>
SL_HD void load_xt(const unsigned char* xs, uint32_t off, float* xv) {
#ifdef __CUDACC__
  if (B == 2) {
    const float2 t = *reinterpret_cast<const float2*>(xs + off);
    xv[0] = t.x; xv[1] = t.y;
  } else {
#pragma unroll
    for (int q = 0; q < B / 4; ++q) {
      const float4 t = reinterpret_cast<const float4*>(xs + off)[q];
      xv[4 * q] = t.x; xv[4 * q + 1] = t.y; xv[4 * q + 2] = t.z; xv[4 * q + 3] = t.w;
    }
  }
#else
  memcpy(xv, xs + off, 4 * B);
#endif
}

template <int VT, int B>
SL_HD void d4_chunk_b(const Chunk& ch, const unsigned char* xs, float* acc) {
  constexpr int SH = B == 2 ? 3 : B == 4 ? 4 : 5;  // log2(4 B): bytes per column of the transposed copy
  float v[D4_CHUNK];
  decode_chunk<VT>(ch, v);
  uint32_t off = ch.base << SH;
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int i = 0; i < D4_CHUNK; ++i) {
    if (i) off += step_bytes<SH>(ch, i);
    float xv[B];
    load_xt<B>(xs, off, xv);
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int b = 0; b < B; ++b) acc[b] = fmaf(v[i], xv[b], acc[b]);
  }
}

template <int VT, int B, int U>
SL_HD void d4_lane_b(const void* vals, const uint32_t* steps, const uint16_t* base, int nch, const unsigned char* xs,
                     int c0, int c1, int lane, float* acc) {
  d4_walk<VT, U, 32>(vals, steps, base, nch, c0, c1, lane, [&](const Chunk& ch) { d4_chunk_b<VT, B>(ch, xs, acc); });
}

#ifdef __CUDACC__
struct D4Args {
  const uint16_t* x;
  const void* vals;
  const uint32_t* steps;
  const uint16_t* base;
  const int* cptr;
  const float* scales;  // per-row (int8), or null
  uint16_t* y;
  int N, K, bsz, ldx, ldy;  // batches 2-8: bsz <= B rows of x (stride ldx) and of y (stride ldy)
};

// Persistent blocks: each stages x in shared memory once (SMEM) or reads it through L1, then its warps take row
// groups of G = 32 / L rows, (blockIdx * warps + warp) * G, + gridDim * warps * G, ...; lanes [g L, g L + L) own the
// group's row g. The loop runs per warp (every lane takes part in the shuffles, a row past N adds nothing); the
// next rows' chunk ranges and scales are loaded before this group's work. The row's first lane writes y[row].
// MINB = 2 caps the kernel at 32 registers per thread so that two 1024-thread blocks stay resident per SM: at its
// natural 40, a 32-warp block ran alone on its SM (47% occupancy against grp8cu's 86%, H200 profile, session 21);
// ptxas then spills 28 bytes per thread with 16-bit values, none with int8 (sm_90, nvcc 13). Untimed.
template <int VT, int XT, bool SMEM, int U, int L, int MINB = 1>
__global__ void __launch_bounds__(1024, MINB) d4_gemv_kernel(const D4Args a) {
  extern __shared__ float4 xs4f[];
  float* xsf = reinterpret_cast<float*>(xs4f);
  pdl_trigger();
  pdl_wait();  // x is the previous kernel's output
  if (SMEM) stage_x_f32<XT>(xsf, a.x, a.K, a.K);  // x as float32, converted once per block
  const unsigned char* xs = SMEM ? reinterpret_cast<const unsigned char*>(xsf)
                                 : reinterpret_cast<const unsigned char*>(a.x);
  constexpr int G = 32 / L;
  const int lane = threadIdx.x & 31, sub = lane & (L - 1), warps = blockDim.x >> 5, stride = gridDim.x * warps * G;
  int r0 = (blockIdx.x * warps + (threadIdx.x >> 5)) * G;  // the warp's first row: uniform across its lanes
  int r = r0 + lane / L, c0 = 0, c1 = 0;
  const int nch = __ldg(a.cptr + a.N);  // chunks in all: where the second value plane starts
  float sc = 1.0f;
  if (r < a.N) {
    c0 = __ldg(a.cptr + r); c1 = __ldg(a.cptr + r + 1);
    if (a.scales) sc = __ldg(a.scales + r);
  }
  for (; r0 < a.N; r0 += stride, r += stride) {
    const int rn = r + stride;
    int n0 = 0, n1 = 0;
    float nsc = 1.0f;
    if (rn < a.N) {
      n0 = __ldg(a.cptr + rn); n1 = __ldg(a.cptr + rn + 1);
      if (a.scales) nsc = __ldg(a.scales + rn);
    }
    float acc = d4_lane<VT, XT, SMEM, U, L>(a.vals, a.steps, a.base, nch, xs, c0, c1, sub);  // c0 = c1 past N
#pragma unroll
    for (int m = L / 2; m; m >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, m);  // within the row's lanes
    if (sub == 0 && r < a.N) a.y[r] = float_to_act<XT>(a.scales ? acc * sc : acc);
    c0 = n0; c1 = n1; sc = nsc;
  }
}

// Batches 2-8: x (bsz rows) staged transposed as float32 (rows past bsz zero), one warp per row, B sums per lane;
// lane 0 writes y[b, row] for b < bsz.
template <int VT, int XT, int B, int U>
__global__ void d4_gemm_kernel(const D4Args a) {
  extern __shared__ float xsf[];
  for (int i = threadIdx.x; i < a.K * B; i += blockDim.x) {
    const int k = i / B, b = i % B;
    xsf[i] = b < a.bsz ? act_to_float<XT>(a.x[(size_t)b * a.ldx + k]) : 0.0f;
  }
  __syncthreads();
  const unsigned char* xs = reinterpret_cast<const unsigned char*>(xsf);
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5, nch = __ldg(a.cptr + a.N);
  for (int r = blockIdx.x * warps + (threadIdx.x >> 5); r < a.N; r += gridDim.x * warps) {
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] = 0.0f;
    d4_lane_b<VT, B, U>(a.vals, a.steps, a.base, nch, xs, __ldg(a.cptr + r), __ldg(a.cptr + r + 1), lane, acc);
    store_row_sums<XT, B>(acc, lane, a.scales, r, a.y, a.ldy, a.bsz);
  }
}

template <int VT, int XT, int B, int U>
static int d4_launch_b(const D4Args& a, int blocks, int threads, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  const size_t smem = (size_t)a.K * B * 4;
  if (const int e = opt_in(d4_gemm_kernel<VT, XT, B, U>, smem, &opted)) return e;
  d4_gemm_kernel<VT, XT, B, U><<<blocks, threads, smem, stream>>>(a);
  return (int)cudaGetLastError();
}

template <int VT, int XT, bool SMEM, int U, int L = 32, int MINB = 1>
static int d4_launch(const D4Args& a, int blocks, int threads, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  const size_t smem = SMEM ? (size_t)a.K * 4 : 0;
  if (const int e = opt_in(d4_gemv_kernel<VT, XT, SMEM, U, L, MINB>, smem, &opted)) return e;
  return sl_launch(d4_gemv_kernel<VT, XT, SMEM, U, L, MINB>, blocks, threads, smem, stream, a);
}

template <int VT, int XT>
static int d4_unrolled(const D4Args& a, int B, int smem, int unroll, int lanes, int minb, int blocks, int threads,
                       cudaStream_t s) {
  if (unroll != 1 && unroll != 2) return -1;
  if (minb != 1) {  // two resident 1024-thread blocks per SM: batch 1, x staged, 32 lanes, 1 chunk per step
    if (minb != 2 || B != 1 || !smem || unroll != 1 || lanes != 32) return -1;
    return d4_launch<VT, XT, true, 1, 32, 2>(a, blocks, threads, s);
  }
  if (lanes != 32) {  // 16 or 8 lanes per row: batch 1 with x staged
    if (B != 1 || !smem) return -1;
    switch (lanes * 10 + unroll) {
      case 161: return d4_launch<VT, XT, true, 1, 16>(a, blocks, threads, s);
      case 162: return d4_launch<VT, XT, true, 2, 16>(a, blocks, threads, s);
      case 81: return d4_launch<VT, XT, true, 1, 8>(a, blocks, threads, s);
      case 82: return d4_launch<VT, XT, true, 2, 8>(a, blocks, threads, s);
      default: return -1;
    }
  }
  if (B == 1 && unroll == 1) return smem ? d4_launch<VT, XT, true, 1>(a, blocks, threads, s)
                                         : d4_launch<VT, XT, false, 1>(a, blocks, threads, s);
  if (B == 1) return smem ? d4_launch<VT, XT, true, 2>(a, blocks, threads, s)
                          : d4_launch<VT, XT, false, 2>(a, blocks, threads, s);
  if (!smem) return -1;  // the batched kernel always stages x
  switch (B * 10 + unroll) {
    case 21: return d4_launch_b<VT, XT, 2, 1>(a, blocks, threads, s);
    case 22: return d4_launch_b<VT, XT, 2, 2>(a, blocks, threads, s);
    case 41: return d4_launch_b<VT, XT, 4, 1>(a, blocks, threads, s);
    case 42: return d4_launch_b<VT, XT, 4, 2>(a, blocks, threads, s);
    case 81: return d4_launch_b<VT, XT, 8, 1>(a, blocks, threads, s);
    case 82: return d4_launch_b<VT, XT, 8, 2>(a, blocks, threads, s);
    default: return -1;
  }
}

// y (bsz, N) = x (bsz, K) W^T; vt: VT_F16 (x fp16), VT_BF16 (x bf16) or VT_I8 (either); B: the kernel's padded
// batch (1, 2, 4, 8; bsz <= B); unroll 1 or 2 chunks per load step; smem: x staged per block (always when B > 1);
// lanes per row 32, or 16 / 8 (batch 1, smem); minb 1, or 2 (the 32-register build: batch 1, smem, unroll 1, 32
// lanes). Returns a cudaError_t (0 = launched) or -1 for an unsupported combination.
extern "C" int sl_d4_launch(int vt, int xt, int B, int smem, int unroll, int lanes, int minb, const void* x,
                            const void* vals, const void* steps, const void* base, const void* cptr,
                            const void* scales, void* y, int N, int K, int bsz, int ldx, int ldy, int blocks,
                            int threads, void* stream) {
  const D4Args a{static_cast<const uint16_t*>(x), vals, static_cast<const uint32_t*>(steps),
                 static_cast<const uint16_t*>(base), static_cast<const int*>(cptr),
                 static_cast<const float*>(scales), static_cast<uint16_t*>(y), N, K, bsz, ldx, ldy};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int u = unroll, l = lanes, m = minb;
  if (xt == XT_F16 && vt == VT_F16) return d4_unrolled<VT_F16, XT_F16>(a, B, smem, u, l, m, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_BF16) return d4_unrolled<VT_BF16, XT_BF16>(a, B, smem, u, l, m, blocks, threads, s);
  if (xt == XT_F16 && vt == VT_I8) return d4_unrolled<VT_I8, XT_F16>(a, B, smem, u, l, m, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_I8) return d4_unrolled<VT_I8, XT_BF16>(a, B, smem, u, l, m, blocks, threads, s);
  return -1;
}

#else  // host emulation: the same lane arithmetic, lanes summed in order (float32 output)

// SMEM: x converted to the float32 copy the kernel stages (4-byte offsets); else x as it is (the L1 path's
// 2-byte offsets)
template <int VT, int XT, bool SMEM, int U, int L = 32>
static void d4_host_rows(const uint16_t* x, const void* vals, const uint32_t* steps, const uint16_t* base,
                         const int* cptr, const float* scales, float* y, int N, int K) {
  float* xf = new float[K > 0 ? K : 1];
  for (int k = 0; k < K; ++k) xf[k] = act_to_float<XT>(x[k]);
  const unsigned char* xs = SMEM ? reinterpret_cast<const unsigned char*>(xf)
                                 : reinterpret_cast<const unsigned char*>(x);
  for (int r = 0; r < N; ++r) {
    float acc = 0.0f;
    for (int lane = 0; lane < L; ++lane)
      acc += d4_lane<VT, XT, SMEM, U, L>(vals, steps, base, cptr[N], xs, cptr[r], cptr[r + 1], lane);
    y[r] = scales ? acc * scales[r] : acc;
  }
  delete[] xf;
}

struct D4Host {
  const uint16_t* x;
  const void* vals;
  const uint32_t* steps;
  const uint16_t* base;
  const int* cptr;
  const float* scales;
  float* y;
  int N, K, bsz;
};

// Batches 2-8: x (bsz rows, contiguous) transposed into the float32 copy the kernel stages, rows past bsz zero;
// y (bsz, N)
template <int VT, int XT, int B, int U>
static void d4_host_rows_b(const D4Host& h) {
  float* xt = new float[(size_t)(h.K > 0 ? h.K : 1) * B]();
  for (int k = 0; k < h.K; ++k)
    for (int b = 0; b < h.bsz; ++b) xt[(size_t)k * B + b] = act_to_float<XT>(h.x[(size_t)b * h.K + k]);
  for (int r = 0; r < h.N; ++r) {
    float acc[B] = {0.0f};
    for (int lane = 0; lane < 32; ++lane) {
      float part[B] = {0.0f};
      d4_lane_b<VT, B, U>(h.vals, h.steps, h.base, h.cptr[h.N], reinterpret_cast<const unsigned char*>(xt),
                          h.cptr[r], h.cptr[r + 1], lane, part);
      for (int b = 0; b < B; ++b) acc[b] += part[b];
    }
    for (int b = 0; b < h.bsz; ++b) h.y[(size_t)b * h.N + r] = h.scales ? acc[b] * h.scales[r] : acc[b];
  }
  delete[] xt;
}

template <int VT, int XT>
static int d4_host_variant(const D4Host& h, int B, int smem, int unroll, int lanes) {
#define SL_D4H(S, U, L) d4_host_rows<VT, XT, S, U, L>(h.x, h.vals, h.steps, h.base, h.cptr, h.scales, h.y, h.N, h.K)
  if (unroll != 1 && unroll != 2) return -1;
  if (lanes != 32) {
    if (B != 1 || !smem || (lanes != 16 && lanes != 8)) return -1;
    if (lanes == 16) unroll == 1 ? SL_D4H(true, 1, 16) : SL_D4H(true, 2, 16);
    else unroll == 1 ? SL_D4H(true, 1, 8) : SL_D4H(true, 2, 8);
    return 0;
  }
  if (B == 1) {
    if (unroll == 1) smem ? SL_D4H(true, 1, 32) : SL_D4H(false, 1, 32);
    else smem ? SL_D4H(true, 2, 32) : SL_D4H(false, 2, 32);
    return 0;
  }
#undef SL_D4H
  if (!smem) return -1;
  switch (B * 10 + unroll) {
    case 21: d4_host_rows_b<VT, XT, 2, 1>(h); return 0;
    case 22: d4_host_rows_b<VT, XT, 2, 2>(h); return 0;
    case 41: d4_host_rows_b<VT, XT, 4, 1>(h); return 0;
    case 42: d4_host_rows_b<VT, XT, 4, 2>(h); return 0;
    case 81: d4_host_rows_b<VT, XT, 8, 1>(h); return 0;
    case 82: d4_host_rows_b<VT, XT, 8, 2>(h); return 0;
    default: return -1;
  }
}

// The host twin of sl_d4_launch: x (bsz, K) row-major, y (bsz, N) float32.
extern "C" int sl_d4_host(int vt, int xt, int B, int smem, int unroll, int lanes, const void* x, const void* vals,
                          const void* steps, const void* base, const void* cptr, const void* scales, float* y, int N,
                          int K, int bsz) {
  const D4Host h{static_cast<const uint16_t*>(x), vals, static_cast<const uint32_t*>(steps),
                 static_cast<const uint16_t*>(base), static_cast<const int*>(cptr), static_cast<const float*>(scales),
                 y, N, K, bsz};
  if (xt == XT_F16 && vt == VT_F16) return d4_host_variant<VT_F16, XT_F16>(h, B, smem, unroll, lanes);
  if (xt == XT_BF16 && vt == VT_BF16) return d4_host_variant<VT_BF16, XT_BF16>(h, B, smem, unroll, lanes);
  if (xt == XT_F16 && vt == VT_I8) return d4_host_variant<VT_I8, XT_F16>(h, B, smem, unroll, lanes);
  if (xt == XT_BF16 && vt == VT_I8) return d4_host_variant<VT_I8, XT_BF16>(h, B, smem, unroll, lanes);
  return -1;
}
#endif
