// Batch-1 y = x W^T over the interleaved grp8 layout (grp8_spmv.py, FORMAT.md "Auxiliary arrays"), in CUDA C++.
//
// Why CUDA here when every other GPU kernel is Triton: the H200 profile (benchmarks/results/gpu_profile_h200.json)
// found the Triton per-nonzero kernels under 58-80% issue pressure at 20-30 executed SASS instructions per nonzero
// (masked tail steps, cross-warp reductions, 64-bit gather addresses, 16-bit column repacking: not ours to control).
// Here x sits in shared memory (32-bit addresses), the column sum is done two nonzeros per instruction in 16-bit
// lanes, and one warp owns a row (no cross-warp reduction): ~9 instructions per nonzero at sm_90.
//
// Layout, per row (rows padded to whole quads of 4 groups of 32 slots): in quad q, the slot of group j and lane l
// is at 128 q + 4 l + j, so lane l's 4 nonzeros of quad q are 4 consecutive entries of
//   vals   (fp16 / bf16: 8 bytes; int8: 4 bytes),  offs (uint8 column - base: 4 bytes),
// and base2 holds each group's base column times 2 (x's byte offset) as uint16, two per 32-bit word, so the quad's
// 4 bases are words 2q and 2q + 1. gptr[n] is row n's first group (a multiple of 4). Every 2 * column < 65536, so
// K <= 32768 and adding (offset << 1) to a pair of bases never carries from the low 16 bits into the high ones.
//
// The same file compiles as plain C++ (g++ -x c++) with a host emulation entry point: the per-lane arithmetic,
// the index math and the decoders are shared with the GPU build, so CPU tests check them bit for bit.
#include "gemv_common.cuh"

// Per-group scales (int8 / int4, group_size g columns): the scale of the nonzero at byte offset c2 = 2 * column
// is rs[c2 / (2 g)], with the division as a multiply-high by magic = ceil(2^32 / (2 g)): exact for every
// c2 < 2^16 (the error term stays below 1 / (2 g)), one instruction for any g, not only powers of two. rs = the
// row's scales: GS = 1, in global memory (a few hundred bytes that stay in L1; 64-bit addresses); GS = 2, a copy
// in the warp's slice of shared memory (32-bit addresses: the H200 profile counted 23 instructions per int4
// nonzero with GS = 1 against 13 without scales). (Groups are not cut at scale boundaries: that layout padded 1.5
// slots per nonzero at 75%.)
template <int GS>
SL_HD float group_scale(const float* rs, uint32_t magic, uint32_t c2) {
#ifdef __CUDACC__
  if (GS == 2) return rs[__umulhi(c2, magic)];
  return __ldg(rs + __umulhi(c2, magic));
#else
  return rs[(uint32_t)(((uint64_t)c2 * magic) >> 32)];
#endif
}

// The most per-group scales per row that GS = 2 stages (4 per lane, prefetched in registers a row ahead).
enum { MAX_STAGED_SCALES = 128 };

// The quad's 4 doubled bases (words 2q, 2q + 1: the same for all 32 lanes), one 8-byte load.
SL_HD void load_bases(const uint32_t* base2, int q, uint32_t* b01, uint32_t* b23) {
#ifdef __CUDACC__
  const uint2 b = __ldg(reinterpret_cast<const uint2*>(base2) + q);
  *b01 = b.x; *b23 = b.y;
#else
  *b01 = base2[2 * q]; *b23 = base2[2 * q + 1];
#endif
}

// Lane `lane`'s partial dot product over quads [q0, q1) of one row. U quads per step: every load of the step is
// issued before the first use (the tail step loads only what exists), so U quads' bytes are in flight per lane.
template <int VT, int XT, bool SMEM = true, int GS = 0, int U = 1>
SL_HD float grp8_lane(const void* vals, const float* rs, uint32_t magic, const uint32_t* offs, const uint32_t* base2,
                      const unsigned char* xs, int q0, int q1, int lane) {
  float acc0 = 0.0f, acc1 = 0.0f;
#ifdef __CUDACC__
#pragma unroll (U == 1 ? 2 : 1)
#endif
  for (int q = q0; q < q1; q += U) {
    uint32_t o[U], b01[U], b23[U];
    Raw raw[U];
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int u = 0; u < U; ++u) {
      if (U == 1 || q + u < q1) {
#ifdef __CUDACC__
        o[u] = __ldg(offs + (q + u) * 32 + lane);
#else
        o[u] = offs[(q + u) * 32 + lane];
#endif
        load_bases(base2, q + u, &b01[u], &b23[u]);
        raw[u] = load_raw<VT>(vals, (q + u) * 32 + lane);
      }
    }
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int u = 0; u < U; ++u) {
      if (U == 1 || q + u < q1) {
        // (offset0, offset1) and (offset2, offset3) in 16-bit lanes, doubled and added to the doubled bases: the
        // byte offsets into x of the 4 nonzeros, two per register (no carry: every 2 * column < 65536)
        const uint32_t c01 = (byte_perm(o[u], 0, 0x4140) << 1) + b01[u];
        const uint32_t c23 = (byte_perm(o[u], 0, 0x4342) << 1) + b23[u];
        const float x0 = load_x<XT, SMEM>(xs, c01 & 0xFFFFu), x1 = load_x<XT, SMEM>(xs, c01 >> 16);
        const float x2 = load_x<XT, SMEM>(xs, c23 & 0xFFFFu), x3 = load_x<XT, SMEM>(xs, c23 >> 16);
        float v[4];
        decode_values<VT>(raw[u], v);
        if (GS) {  // a template flag, not a pointer test: per-row-scaled int8 must not pay for it in the loop
          v[0] *= group_scale<GS>(rs, magic, c01 & 0xFFFFu); v[1] *= group_scale<GS>(rs, magic, c01 >> 16);
          v[2] *= group_scale<GS>(rs, magic, c23 & 0xFFFFu); v[3] *= group_scale<GS>(rs, magic, c23 >> 16);
        }
        acc0 = fmaf(v[0], x0, acc0);
        acc1 = fmaf(v[1], x1, acc1);
        acc0 = fmaf(v[2], x2, acc0);
        acc1 = fmaf(v[3], x3, acc1);
      }
    }
  }
  return acc0 + acc1;
}

// Batched form: B activation rows, x stored transposed (K, B) so one nonzero's B activations are B consecutive
// 16-bit words (one vector load). acc[b] += value * x[b, col] for lane `lane` over quads [q0, q1).
template <int B, int XT>
SL_HD void load_xb(const unsigned char* xt, uint32_t col2, float* xv) {  // col2 = 2 * column
  const unsigned char* src = xt + col2 * B;  // byte offset of (col, 0) in the (K, B) copy
  alignas(16) uint32_t w[B / 2 > 0 ? B / 2 : 1];
  if (B == 1) {
    w[0] = *reinterpret_cast<const uint16_t*>(src);
  } else {
#ifdef __CUDACC__
    if (B == 2) *reinterpret_cast<uint32_t*>(w) = *reinterpret_cast<const uint32_t*>(src);
    else if (B == 4) *reinterpret_cast<uint2*>(w) = *reinterpret_cast<const uint2*>(src);
    else for (int v = 0; v < B / 8; ++v) reinterpret_cast<uint4*>(w)[v] = reinterpret_cast<const uint4*>(src)[v];
#else
    memcpy(w, src, 2 * B);
#endif
  }
  for (int b = 0; b < B; ++b) xv[b] = act_to_float<XT>(b & 1 ? w[b / 2] >> 16 : w[b / 2] & 0xFFFFu);
}

template <int VT, int XT, int B, bool GS = false>
SL_HD void grp8_lane_b(const void* vals, const float* rs, uint32_t magic, const uint32_t* offs, const uint32_t* base2,
                       const unsigned char* xt, int q0, int q1, int lane, float* acc) {
  for (int q = q0; q < q1; ++q) {
    const int i = q * 32 + lane;
#ifdef __CUDACC__
    const uint32_t o = __ldg(offs + i);
#else
    const uint32_t o = offs[i];
#endif
    uint32_t b01, b23;
    load_bases(base2, q, &b01, &b23);
    const uint32_t c01 = (byte_perm(o, 0, 0x4140) << 1) + b01;
    const uint32_t c23 = (byte_perm(o, 0, 0x4342) << 1) + b23;
    const uint32_t c[4] = {c01 & 0xFFFFu, c01 >> 16, c23 & 0xFFFFu, c23 >> 16};
    float v[4];
    decode_values<VT>(load_raw<VT>(vals, i), v);
    if (GS) {
#ifdef __CUDACC__
#pragma unroll
#endif
      for (int j = 0; j < 4; ++j) v[j] *= group_scale<1>(rs, magic, c[j]);
    }
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int j = 0; j < 4; ++j) {
      float xv[B];
      load_xb<B, XT>(xt, c[j], xv);
#ifdef __CUDACC__
#pragma unroll
#endif
      for (int b = 0; b < B; ++b) acc[b] = fmaf(v[j], xv[b], acc[b]);
    }
  }
}

#ifdef __CUDACC__
// The arrays of one launch (pointers as the caller passes them; scales: per-row (or null), gscale: per-group
// (or null)).
struct Args {
  const uint16_t* x;
  const void* vals;
  const float* gscale;
  const uint32_t* offs;
  const uint32_t* base2;
  const int* gptr;
  const float* scales;
  uint16_t* y;
  int N, K, bsz, ldx, ldy;
  int G;           // per-group scales per row (gscale is (N, G) row-major)
  uint32_t magic;  // ceil(2^32 / (2 * group_size)): group_scale()
};

// Persistent blocks: each stages x into shared memory once (16-byte copies; SMEM) or reads it through L1, then
// its warps take rows blockIdx * warps + warp, + gridDim * warps, ... One warp per row; lane 0 writes y[row].
// The next row's group range (and per-row scale) is loaded before this row's work, so a row starts without
// waiting on them; U: quads per load step (grp8_lane). GS: per-group scales, none (0), looked up in global memory
// (1), or (2) copied per row into the warp's slice of shared memory after x (MAX_STAGED_SCALES floats per warp),
// the next row's prefetched into registers while this row computes.
template <int VT, int XT, bool SMEM, int GS, int U>
__global__ void grp8_gemv_kernel(const Args a) {
  extern __shared__ uint4 xs4[];
  const unsigned char* xs = SMEM ? reinterpret_cast<const unsigned char*>(xs4)
                                 : reinterpret_cast<const unsigned char*>(a.x);
  pdl_trigger();
  pdl_wait();  // x is the previous kernel's output
  if (SMEM) stage_x(xs4, a.x, a.K);
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5, stride = gridDim.x * warps;
  int r = blockIdx.x * warps + (threadIdx.x >> 5);
  float* slice = nullptr;  // GS = 2: this warp's copy of its row's scales
  float snext[MAX_STAGED_SCALES / 32];
  const auto fetch_scales = [&](int row) {  // GS = 2: a row's scales, 4 per lane, into registers
#pragma unroll
    for (int i = 0; i < MAX_STAGED_SCALES / 32; ++i) {
      const int j = lane + 32 * i;
      snext[i] = row < a.N && j < a.G ? __ldg(a.gscale + (size_t)row * a.G + j) : 0.0f;
    }
  };
  const auto stage_scales = [&]() {  // after every lane's last read of the slice
    __syncwarp();
#pragma unroll
    for (int i = 0; i < MAX_STAGED_SCALES / 32; ++i) slice[lane + 32 * i] = snext[i];
    __syncwarp();
  };
  if (GS == 2) {
    const int xbytes = SMEM ? (a.K * 2 + 15) / 16 * 16 : 0;
    slice = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(xs4) + xbytes) +
            (threadIdx.x >> 5) * MAX_STAGED_SCALES;
    fetch_scales(r);
    stage_scales();
  }
  int g0 = 0, g1 = 0;
  float sc = 1.0f;
  if (r < a.N) {
    g0 = __ldg(a.gptr + r); g1 = __ldg(a.gptr + r + 1);
    if (a.scales) sc = __ldg(a.scales + r);
  }
  for (; r < a.N; r += stride) {
    const int rn = r + stride;
    int n0 = 0, n1 = 0;
    float nsc = 1.0f;
    if (rn < a.N) {
      n0 = __ldg(a.gptr + rn); n1 = __ldg(a.gptr + rn + 1);
      if (a.scales) nsc = __ldg(a.scales + rn);
    }
    if (GS == 2) fetch_scales(rn);
    const float* rs = GS == 2 ? slice : GS == 1 ? a.gscale + (size_t)r * a.G : nullptr;
    float acc = grp8_lane<VT, XT, SMEM, GS, U>(a.vals, rs, a.magic, a.offs, a.base2, xs, g0 >> 2, g1 >> 2, lane);
#pragma unroll
    for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, m);
    if (lane == 0) a.y[r] = float_to_act<XT>(a.scales ? acc * sc : acc);
    if (GS == 2) stage_scales();
    g0 = n0; g1 = n1; sc = nsc;
  }
}

// Batch 2-16: x (bsz <= B rows, stride ldx) copied transposed into shared memory (zero rows past bsz), then one
// warp per row as in the batch-1 kernel; lane 0 writes y[b, row] for b < bsz (stride ldy).
template <int VT, int XT, int B, bool GS>
__global__ void grp8_gemm_kernel(const Args a) {
  extern __shared__ uint4 xs4[];
  uint16_t* xt = reinterpret_cast<uint16_t*>(xs4);
  for (int k = threadIdx.x; k < a.K; k += blockDim.x) {
#pragma unroll
    for (int b = 0; b < B; ++b) xt[k * B + b] = b < a.bsz ? a.x[(size_t)b * a.ldx + k] : (uint16_t)0;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int r = blockIdx.x * warps + (threadIdx.x >> 5); r < a.N; r += gridDim.x * warps) {
    const int q0 = __ldg(a.gptr + r) >> 2, q1 = __ldg(a.gptr + r + 1) >> 2;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] = 0.0f;
    const float* rs = GS ? a.gscale + (size_t)r * a.G : nullptr;
    grp8_lane_b<VT, XT, B, GS>(a.vals, rs, a.magic, a.offs, a.base2, reinterpret_cast<const unsigned char*>(xt), q0,
                               q1, lane, acc);
    store_row_sums<XT, B>(acc, lane, a.scales, r, a.y, a.ldy, a.bsz);
  }
}

template <int VT, int XT, bool SMEM, int GS, int U>
static int launch_gemv(const Args& a, int blocks, int threads, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  const size_t smem = (SMEM ? ((size_t)a.K * 2 + 15) / 16 * 16 : 0) +
                      (GS == 2 ? (size_t)(threads / 32) * MAX_STAGED_SCALES * sizeof(float) : 0);
  if (const int e = opt_in(grp8_gemv_kernel<VT, XT, SMEM, GS, U>, smem, &opted)) return e;
  return sl_launch(grp8_gemv_kernel<VT, XT, SMEM, GS, U>, blocks, threads, smem, stream, a);
}

template <int VT, int XT, int B, bool SMEM, bool GS>  // B = 1: the batch-1 kernel (SMEM chooses x's path)
static int launch_one(const Args& a, int unroll, int blocks, int threads, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  if constexpr (B == 1) {
    if constexpr (GS) {
      if (a.G <= MAX_STAGED_SCALES) {  // scales staged per row in shared memory
        switch (unroll) {
          case 1: return launch_gemv<VT, XT, SMEM, 2, 1>(a, blocks, threads, stream);
          case 2: return launch_gemv<VT, XT, SMEM, 2, 2>(a, blocks, threads, stream);
          case 4: return launch_gemv<VT, XT, SMEM, 2, 4>(a, blocks, threads, stream);
          case 8: return launch_gemv<VT, XT, SMEM, 2, 8>(a, blocks, threads, stream);
          default: return -1;
        }
      }
    }
    constexpr int gs = GS ? 1 : 0;
    switch (unroll) {
      case 1: return launch_gemv<VT, XT, SMEM, gs, 1>(a, blocks, threads, stream);
      case 2: return launch_gemv<VT, XT, SMEM, gs, 2>(a, blocks, threads, stream);
      case 4: return launch_gemv<VT, XT, SMEM, gs, 4>(a, blocks, threads, stream);
      case 8: return launch_gemv<VT, XT, SMEM, gs, 8>(a, blocks, threads, stream);
      default: return -1;
    }
  } else {
    const size_t smem = ((size_t)a.K * B * 2 + 15) / 16 * 16;
    if (const int e = opt_in(grp8_gemm_kernel<VT, XT, B, GS>, smem, &opted)) return e;
    grp8_gemm_kernel<VT, XT, B, GS><<<blocks, threads, smem, stream>>>(a);
  }
  return (int)cudaGetLastError();
}

template <int VT, int XT, int B, bool SMEM>  // per-group scales exist for the quantized values only
static int launch(const Args& a, int unroll, int blocks, int threads, cudaStream_t stream) {
  if constexpr (VT == VT_I8 || VT == VT_I4) {
    if (a.gscale) return launch_one<VT, XT, B, SMEM, true>(a, unroll, blocks, threads, stream);
  }
  return launch_one<VT, XT, B, SMEM, false>(a, unroll, blocks, threads, stream);
}

template <int B, bool SMEM>
static int by_types(int vt, int xt, const Args& a, int unroll, int blocks, int threads, cudaStream_t s) {
  if (xt == XT_F16) {
    if (vt == VT_F16) return launch<VT_F16, XT_F16, B, SMEM>(a, unroll, blocks, threads, s);
    if (vt == VT_I8) return launch<VT_I8, XT_F16, B, SMEM>(a, unroll, blocks, threads, s);
    if (vt == VT_I4) return launch<VT_I4, XT_F16, B, SMEM>(a, unroll, blocks, threads, s);
  } else if (xt == XT_BF16) {
    if (vt == VT_BF16) return launch<VT_BF16, XT_BF16, B, SMEM>(a, unroll, blocks, threads, s);
    if (vt == VT_I8) return launch<VT_I8, XT_BF16, B, SMEM>(a, unroll, blocks, threads, s);
    if (vt == VT_I4) return launch<VT_I4, XT_BF16, B, SMEM>(a, unroll, blocks, threads, s);
  }
  return -1;  // an unsupported (values, activations) pair: the caller checks first
}

// y (bsz, N) = x (bsz, K) W^T. B: the kernel's padded batch (1: the batch-1 kernel, smem chooses x's path;
// 2 / 4 / 8 / 16: the batched one, x always in shared memory). Returns a cudaError_t (0 = launched) or -1.
extern "C" int sl_grp8_launch(int vt, int xt, int B, int smem, int unroll, const void* x, const void* vals,
                              const void* gscale, int G, unsigned int magic,
                              const void* offs, const void* base2, const void* gptr, const void* scales, void* y,
                              int N, int K, int bsz, int ldx, int ldy, int blocks, int threads, void* stream) {
  const Args a{static_cast<const uint16_t*>(x), vals, static_cast<const float*>(gscale),
               static_cast<const uint32_t*>(offs), static_cast<const uint32_t*>(base2), static_cast<const int*>(gptr),
               static_cast<const float*>(scales), static_cast<uint16_t*>(y), N, K, bsz, ldx, ldy, G, magic};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (B) {
    case 1: return smem ? by_types<1, true>(vt, xt, a, unroll, blocks, threads, s)
                        : by_types<1, false>(vt, xt, a, unroll, blocks, threads, s);
    case 2: return by_types<2, true>(vt, xt, a, unroll, blocks, threads, s);
    case 4: return by_types<4, true>(vt, xt, a, unroll, blocks, threads, s);
    case 8: return by_types<8, true>(vt, xt, a, unroll, blocks, threads, s);
    case 16: return by_types<16, true>(vt, xt, a, unroll, blocks, threads, s);
    default: return -1;
  }
}


#else  // host emulation: the same lane arithmetic, lanes summed in order (float32 output)

// Per-group scales as the kernels see them: the (N, G) table and the division's magic number.
struct HostGS {
  const float* table;
  int G;
  uint32_t magic;
  const float* row(int r) const { return table ? table + (size_t)r * G : nullptr; }
};

template <int VT, int XT, bool GS, int U>
static void host_gemv(const uint16_t* x, const void* vals, const HostGS& gs, const uint32_t* offs,
                      const uint32_t* base2, const int* gp, const float* scales, float* y, int N) {
  for (int r = 0; r < N; ++r) {  // the batch-1 kernel's lane function on x as it is
    float acc = 0.0f;
    for (int lane = 0; lane < 32; ++lane)
      acc += grp8_lane<VT, XT, true, GS ? 1 : 0, U>(vals, gs.row(r), gs.magic, offs, base2,
                                            reinterpret_cast<const unsigned char*>(x), gp[r] >> 2, gp[r + 1] >> 2,
                                            lane);
    y[r] = scales ? acc * scales[r] : acc;
  }
}

template <int VT, int XT, int B, bool GS>
static void host_rows(const uint16_t* x, const void* vals, const HostGS& gscale, const uint32_t* offs,
                      const uint32_t* base2, const int* gp, const float* scales, float* y, int N, int K, int bsz,
                      int unroll) {
  if constexpr (B == 1) {
    if (unroll == 1) host_gemv<VT, XT, GS, 1>(x, vals, gscale, offs, base2, gp, scales, y, N);
    else if (unroll == 2) host_gemv<VT, XT, GS, 2>(x, vals, gscale, offs, base2, gp, scales, y, N);
    else if (unroll == 4) host_gemv<VT, XT, GS, 4>(x, vals, gscale, offs, base2, gp, scales, y, N);
    else host_gemv<VT, XT, GS, 8>(x, vals, gscale, offs, base2, gp, scales, y, N);
    return;
  }
  uint16_t* xt = new uint16_t[(size_t)K * B]();  // x transposed, rows past bsz zero: as the batched kernel stages it
  for (int k = 0; k < K; ++k)
    for (int b = 0; b < bsz; ++b) xt[(size_t)k * B + b] = x[(size_t)b * K + k];
  for (int r = 0; r < N; ++r) {
    float acc[B > 1 ? B : 1] = {0.0f};
    for (int lane = 0; lane < 32; ++lane) {
      float part[B > 1 ? B : 1] = {0.0f};
      grp8_lane_b<VT, XT, B, GS>(vals, gscale.row(r), gscale.magic, offs, base2,
                                 reinterpret_cast<const unsigned char*>(xt), gp[r] >> 2,
                                 gp[r + 1] >> 2, lane, part);
      for (int b = 0; b < B; ++b) acc[b] += part[b];
    }
    for (int b = 0; b < bsz; ++b) y[(size_t)b * N + r] = scales ? acc[b] * scales[r] : acc[b];
  }
  delete[] xt;
}

template <int B>
static int host_types(int vt, int xt, const uint16_t* x, const void* vals, const HostGS& gs, const uint32_t* offs,
                      const uint32_t* base2, const int* gp, const float* sc, float* y, int N, int K, int bsz,
                      int un) {
#define SL_HOST(V, X) (gs.table ? host_rows<V, X, B, true>(x, vals, gs, offs, base2, gp, sc, y, N, K, bsz, un) \
                          : host_rows<V, X, B, false>(x, vals, gs, offs, base2, gp, sc, y, N, K, bsz, un))
  if (xt == XT_F16 && vt == VT_F16) SL_HOST(VT_F16, XT_F16);
  else if (xt == XT_F16 && vt == VT_I8) SL_HOST(VT_I8, XT_F16);
  else if (xt == XT_F16 && vt == VT_I4) SL_HOST(VT_I4, XT_F16);
  else if (xt == XT_BF16 && vt == VT_BF16) SL_HOST(VT_BF16, XT_BF16);
  else if (xt == XT_BF16 && vt == VT_I8) SL_HOST(VT_I8, XT_BF16);
  else if (xt == XT_BF16 && vt == VT_I4) SL_HOST(VT_I4, XT_BF16);
  else return -1;
#undef SL_HOST
  return 0;
}

// The host twin of sl_grp8_launch: x (bsz, K) row-major, y (bsz, N) float32.
extern "C" int sl_grp8_host(int vt, int xt, int B, int unroll, const void* x, const void* vals, const void* gscale,
                            int G, unsigned int magic,
                            const void* offs, const void* base2, const void* gptr, const void* scales, float* y,
                            int N, int K, int bsz) {
  const uint16_t* xx = static_cast<const uint16_t*>(x);
  const HostGS gs{static_cast<const float*>(gscale), G, magic};
  const float* sc = static_cast<const float*>(scales);
  const uint32_t* of = static_cast<const uint32_t*>(offs);
  const uint32_t* b2 = static_cast<const uint32_t*>(base2);
  const int* gp = static_cast<const int*>(gptr);
  if (B == 1 && unroll != 1 && unroll != 2 && unroll != 4 && unroll != 8) return -1;
  switch (B) {
    case 1: return host_types<1>(vt, xt, xx, vals, gs, of, b2, gp, sc, y, N, K, bsz, unroll);
    case 2: return host_types<2>(vt, xt, xx, vals, gs, of, b2, gp, sc, y, N, K, bsz, unroll);
    case 4: return host_types<4>(vt, xt, xx, vals, gs, of, b2, gp, sc, y, N, K, bsz, unroll);
    case 8: return host_types<8>(vt, xt, xx, vals, gs, of, b2, gp, sc, y, N, K, bsz, unroll);
    case 16: return host_types<16>(vt, xt, xx, vals, gs, of, b2, gp, sc, y, N, K, bsz, unroll);
    default: return -1;
  }
}
#endif
