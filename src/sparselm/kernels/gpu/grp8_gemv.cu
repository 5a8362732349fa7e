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
#include <stdint.h>
#include <math.h>
#include <string.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define SL_HD __device__ __forceinline__
#else
#define SL_HD static inline
#endif

enum { VT_F16 = 0, VT_BF16 = 1, VT_I8 = 2 };  // values
enum { XT_F16 = 0, XT_BF16 = 1 };             // activations (and the output)

SL_HD float as_float(uint32_t u) {
#ifdef __CUDACC__
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, 4);
  return f;
#endif
}

SL_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t sel) {  // PTX prmt without the sign-replicate mode
#ifdef __CUDACC__
  return __byte_perm(a, b, sel);
#else
  const uint64_t v = ((uint64_t)b << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= (uint32_t)((v >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}

SL_HD float half_to_float(uint32_t h) {  // the low 16 bits, IEEE binary16
#ifdef __CUDACC__
  return __half2float(__ushort_as_half((unsigned short)h));
#else
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  if (exp == 0x1F) return as_float(sign | 0x7F800000u | (man << 13));  // inf / nan
  if (exp != 0) return as_float(sign | ((exp + 112) << 23) | (man << 13));
  const float sub = (float)man * (1.0f / 16777216.0f);  // subnormal: man * 2^-24, exact in float
  return sign ? -sub : sub;
#endif
}

SL_HD float bf16_to_float(uint32_t h) { return as_float(h << 16); }

template <int T>
SL_HD float act_to_float(uint32_t h) { return T == XT_F16 ? half_to_float(h) : bf16_to_float(h & 0xFFFFu); }

// x[col] from its byte offset: from the shared-memory copy (SMEM), or straight from global memory through the
// read-only L1 path (no staging: each block would otherwise copy all of x, 2K bytes, from L2)
template <int XT, bool SMEM>
SL_HD float load_x(const unsigned char* xs, uint32_t byte_offset) {
#ifdef __CUDACC__
  if (!SMEM) return act_to_float<XT>(__ldg(reinterpret_cast<const uint16_t*>(xs + byte_offset)));
#endif
  return act_to_float<XT>(*reinterpret_cast<const uint16_t*>(xs + byte_offset));
}

// int8 -> float in two full-rate instructions: with u = s ^ 0x80 (s + 128 as an unsigned byte), the float with
// bits 0x4B0000uu is 2^23 + u, so subtracting 2^23 + 128 gives s exactly (no quarter-rate I2F).
SL_HD float i8_to_float(uint32_t biased_word, uint32_t sel) {
  return as_float(byte_perm(biased_word, 0x4B000000u, sel)) - 8388736.0f;
}

// Lane `lane`'s partial dot product over quads [q0, q1) of one row.
template <int VT, int XT, bool SMEM = true>
SL_HD float grp8_lane(const void* vals, const uint32_t* offs, const uint32_t* base2, const unsigned char* xs,
                      int q0, int q1, int lane) {
  float acc0 = 0.0f, acc1 = 0.0f;
#ifdef __CUDACC__
#pragma unroll 2
#endif
  for (int q = q0; q < q1; ++q) {
    const int i = q * 32 + lane;
#ifdef __CUDACC__
    const uint32_t o = __ldg(offs + i);
    const uint32_t b01 = __ldg(base2 + 2 * q), b23 = __ldg(base2 + 2 * q + 1);  // the same for all 32 lanes
#else
    const uint32_t o = offs[i], b01 = base2[2 * q], b23 = base2[2 * q + 1];
#endif
    // (offset0, offset1) and (offset2, offset3) in 16-bit lanes, doubled and added to the doubled bases: the byte
    // offsets into x of the 4 nonzeros, two per register (no carry: every 2 * column < 65536)
    const uint32_t c01 = (byte_perm(o, 0, 0x4140) << 1) + b01;
    const uint32_t c23 = (byte_perm(o, 0, 0x4342) << 1) + b23;
    const float x0 = load_x<XT, SMEM>(xs, c01 & 0xFFFFu), x1 = load_x<XT, SMEM>(xs, c01 >> 16);
    const float x2 = load_x<XT, SMEM>(xs, c23 & 0xFFFFu), x3 = load_x<XT, SMEM>(xs, c23 >> 16);
    float v0, v1, v2, v3;
    if (VT == VT_I8) {
#ifdef __CUDACC__
      const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(vals) + i) ^ 0x80808080u;
#else
      const uint32_t w = reinterpret_cast<const uint32_t*>(vals)[i] ^ 0x80808080u;
#endif
      v0 = i8_to_float(w, 0x7540); v1 = i8_to_float(w, 0x7541);
      v2 = i8_to_float(w, 0x7542); v3 = i8_to_float(w, 0x7543);
    } else {
#ifdef __CUDACC__
      const uint2 w = __ldg(reinterpret_cast<const uint2*>(vals) + i);
      const uint32_t w0 = w.x, w1 = w.y;
#else
      const uint32_t w0 = reinterpret_cast<const uint32_t*>(vals)[2 * i];
      const uint32_t w1 = reinterpret_cast<const uint32_t*>(vals)[2 * i + 1];
#endif
      constexpr int vt = VT == VT_F16 ? XT_F16 : XT_BF16;
      v0 = act_to_float<vt>(w0 & 0xFFFFu); v1 = act_to_float<vt>(w0 >> 16);
      v2 = act_to_float<vt>(w1 & 0xFFFFu); v3 = act_to_float<vt>(w1 >> 16);
    }
    acc0 = fmaf(v0, x0, acc0);
    acc1 = fmaf(v1, x1, acc1);
    acc0 = fmaf(v2, x2, acc0);
    acc1 = fmaf(v3, x3, acc1);
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

template <int VT, int XT, int B>
SL_HD void grp8_lane_b(const void* vals, const uint32_t* offs, const uint32_t* base2, const unsigned char* xt,
                       int q0, int q1, int lane, float* acc) {
  for (int q = q0; q < q1; ++q) {
    const int i = q * 32 + lane;
#ifdef __CUDACC__
    const uint32_t o = __ldg(offs + i);
    const uint32_t b01 = __ldg(base2 + 2 * q), b23 = __ldg(base2 + 2 * q + 1);
#else
    const uint32_t o = offs[i], b01 = base2[2 * q], b23 = base2[2 * q + 1];
#endif
    const uint32_t c01 = (byte_perm(o, 0, 0x4140) << 1) + b01;
    const uint32_t c23 = (byte_perm(o, 0, 0x4342) << 1) + b23;
    const uint32_t c[4] = {c01 & 0xFFFFu, c01 >> 16, c23 & 0xFFFFu, c23 >> 16};
    float v[4];
    if (VT == VT_I8) {
#ifdef __CUDACC__
      const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(vals) + i) ^ 0x80808080u;
#else
      const uint32_t w = reinterpret_cast<const uint32_t*>(vals)[i] ^ 0x80808080u;
#endif
      v[0] = i8_to_float(w, 0x7540); v[1] = i8_to_float(w, 0x7541);
      v[2] = i8_to_float(w, 0x7542); v[3] = i8_to_float(w, 0x7543);
    } else {
#ifdef __CUDACC__
      const uint2 w = __ldg(reinterpret_cast<const uint2*>(vals) + i);
      const uint32_t w0 = w.x, w1 = w.y;
#else
      const uint32_t w0 = reinterpret_cast<const uint32_t*>(vals)[2 * i];
      const uint32_t w1 = reinterpret_cast<const uint32_t*>(vals)[2 * i + 1];
#endif
      constexpr int vt = VT == VT_F16 ? XT_F16 : XT_BF16;
      v[0] = act_to_float<vt>(w0 & 0xFFFFu); v[1] = act_to_float<vt>(w0 >> 16);
      v[2] = act_to_float<vt>(w1 & 0xFFFFu); v[3] = act_to_float<vt>(w1 >> 16);
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
#include <cuda_bf16.h>

template <int XT>
__device__ __forceinline__ uint16_t float_to_act(float f) {
  if (XT == XT_F16) return __half_as_ushort(__float2half_rn(f));
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

// Persistent blocks: each stages x into shared memory once (16-byte copies; SMEM) or reads it through L1, then
// its warps take rows blockIdx * warps + warp, + gridDim * warps, ... One warp per row; lane 0 writes y[row].
template <int VT, int XT, bool SMEM>
__global__ void grp8_gemv_kernel(const uint16_t* __restrict__ x, const void* __restrict__ vals,
                                 const uint32_t* __restrict__ offs, const uint32_t* __restrict__ base2,
                                 const int* __restrict__ gptr, const float* __restrict__ scales,
                                 uint16_t* __restrict__ y, int N, int K) {
  extern __shared__ uint4 xs4[];
  const unsigned char* xs = SMEM ? reinterpret_cast<const unsigned char*>(xs4)
                                 : reinterpret_cast<const unsigned char*>(x);
  if (!SMEM) {
  } else if ((reinterpret_cast<uintptr_t>(x) & 15) == 0) {
    const int n16 = K >> 3;
    for (int i = threadIdx.x; i < n16; i += blockDim.x) xs4[i] = __ldg(reinterpret_cast<const uint4*>(x) + i);
    for (int i = (n16 << 3) + threadIdx.x; i < K; i += blockDim.x) reinterpret_cast<uint16_t*>(xs4)[i] = x[i];
  } else {
    for (int i = threadIdx.x; i < K; i += blockDim.x) reinterpret_cast<uint16_t*>(xs4)[i] = x[i];
  }
  if (SMEM) __syncthreads();
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int r = blockIdx.x * warps + (threadIdx.x >> 5); r < N; r += gridDim.x * warps) {
    const int q0 = __ldg(gptr + r) >> 2, q1 = __ldg(gptr + r + 1) >> 2;
    float acc = grp8_lane<VT, XT, SMEM>(vals, offs, base2, xs, q0, q1, lane);
#pragma unroll
    for (int m = 16; m; m >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, m);
    if (lane == 0) y[r] = float_to_act<XT>(scales ? acc * __ldg(scales + r) : acc);
  }
}

template <int VT, int XT, bool SMEM>
static int launch(const void* x, const void* vals, const void* offs, const void* base2, const void* gptr,
                  const void* scales, void* y, int N, int K, int blocks, int threads, cudaStream_t stream) {
  const size_t smem = SMEM ? ((size_t)K * 2 + 15) / 16 * 16 : 0;
  auto kernel = grp8_gemv_kernel<VT, XT, SMEM>;
  if constexpr (SMEM) {
    static size_t opted = 48 * 1024;  // per instantiation: raise the dynamic shared-memory limit once, as needed
    if (smem > opted) {
      const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
      if (e != cudaSuccess) return (int)e;
      opted = smem;
    }
  }
  kernel<<<blocks, threads, smem, stream>>>(
      static_cast<const uint16_t*>(x), vals, static_cast<const uint32_t*>(offs), static_cast<const uint32_t*>(base2),
      static_cast<const int*>(gptr), static_cast<const float*>(scales), static_cast<uint16_t*>(y), N, K);
  return (int)cudaGetLastError();
}

template <bool SMEM>
static int dispatch(int vt, int xt, const void* x, const void* vals, const void* offs, const void* base2,
                    const void* gptr, const void* scales, void* y, int N, int K, int blocks, int threads,
                    cudaStream_t s) {
  if (xt == XT_F16 && vt == VT_F16)
    return launch<VT_F16, XT_F16, SMEM>(x, vals, offs, base2, gptr, scales, y, N, K, blocks, threads, s);
  if (xt == XT_F16 && vt == VT_I8)
    return launch<VT_I8, XT_F16, SMEM>(x, vals, offs, base2, gptr, scales, y, N, K, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_BF16)
    return launch<VT_BF16, XT_BF16, SMEM>(x, vals, offs, base2, gptr, scales, y, N, K, blocks, threads, s);
  if (xt == XT_BF16 && vt == VT_I8)
    return launch<VT_I8, XT_BF16, SMEM>(x, vals, offs, base2, gptr, scales, y, N, K, blocks, threads, s);
  return -1;  // an unsupported (values, activations) pair: the caller checks first
}

extern "C" int sl_grp8_gemv(int vt, int xt, int smem, const void* x, const void* vals, const void* offs,
                            const void* base2, const void* gptr, const void* scales, void* y, int N, int K,
                            int blocks, int threads, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return smem ? dispatch<true>(vt, xt, x, vals, offs, base2, gptr, scales, y, N, K, blocks, threads, s)
              : dispatch<false>(vt, xt, x, vals, offs, base2, gptr, scales, y, N, K, blocks, threads, s);
}

// Batch 2-16: x (bsz <= B rows, stride ldx) copied transposed into shared memory (zero rows past bsz), then one
// warp per row as in the batch-1 kernel; lane 0 writes y[b, row] for b < bsz (stride ldy).
template <int VT, int XT, int B>
__global__ void grp8_gemm_kernel(const uint16_t* __restrict__ x, const void* __restrict__ vals,
                                 const uint32_t* __restrict__ offs, const uint32_t* __restrict__ base2,
                                 const int* __restrict__ gptr, const float* __restrict__ scales,
                                 uint16_t* __restrict__ y, int N, int K, int bsz, int ldx, int ldy) {
  extern __shared__ uint4 xs4[];
  uint16_t* xt = reinterpret_cast<uint16_t*>(xs4);
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
#pragma unroll
    for (int b = 0; b < B; ++b) xt[k * B + b] = b < bsz ? x[(size_t)b * ldx + k] : (uint16_t)0;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int r = blockIdx.x * warps + (threadIdx.x >> 5); r < N; r += gridDim.x * warps) {
    const int q0 = __ldg(gptr + r) >> 2, q1 = __ldg(gptr + r + 1) >> 2;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] = 0.0f;
    grp8_lane_b<VT, XT, B>(vals, offs, base2, reinterpret_cast<const unsigned char*>(xt), q0, q1, lane, acc);
#pragma unroll
    for (int b = 0; b < B; ++b) {
#pragma unroll
      for (int m = 16; m; m >>= 1) acc[b] += __shfl_xor_sync(0xFFFFFFFFu, acc[b], m);
    }
    if (lane == 0) {
      const float sc = scales ? __ldg(scales + r) : 1.0f;
#pragma unroll
      for (int b = 0; b < B; ++b)
        if (b < bsz) y[(size_t)b * ldy + r] = float_to_act<XT>(acc[b] * sc);
    }
  }
}

template <int VT, int XT, int B>
static int launch_b(const void* x, const void* vals, const void* offs, const void* base2, const void* gptr,
                    const void* scales, void* y, int N, int K, int bsz, int ldx, int ldy, int blocks, int threads,
                    cudaStream_t stream) {
  const size_t smem = ((size_t)K * B * 2 + 15) / 16 * 16;
  auto kernel = grp8_gemm_kernel<VT, XT, B>;
  static size_t opted = 48 * 1024;
  if (smem > opted) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    opted = smem;
  }
  kernel<<<blocks, threads, smem, stream>>>(
      static_cast<const uint16_t*>(x), vals, static_cast<const uint32_t*>(offs), static_cast<const uint32_t*>(base2),
      static_cast<const int*>(gptr), static_cast<const float*>(scales), static_cast<uint16_t*>(y), N, K, bsz, ldx,
      ldy);
  return (int)cudaGetLastError();
}

template <int B>
static int dispatch_b(int vt, int xt, const void* x, const void* vals, const void* offs, const void* base2,
                      const void* gptr, const void* scales, void* y, int N, int K, int bsz, int ldx, int ldy,
                      int blocks, int threads, cudaStream_t s) {
#define SL_LAUNCH_B(V, X) \
  return launch_b<V, X, B>(x, vals, offs, base2, gptr, scales, y, N, K, bsz, ldx, ldy, blocks, threads, s)
  if (xt == XT_F16 && vt == VT_F16) SL_LAUNCH_B(VT_F16, XT_F16);
  if (xt == XT_F16 && vt == VT_I8) SL_LAUNCH_B(VT_I8, XT_F16);
  if (xt == XT_BF16 && vt == VT_BF16) SL_LAUNCH_B(VT_BF16, XT_BF16);
  if (xt == XT_BF16 && vt == VT_I8) SL_LAUNCH_B(VT_I8, XT_BF16);
#undef SL_LAUNCH_B
  return -1;
}

extern "C" int sl_grp8_gemm(int vt, int xt, int B, const void* x, const void* vals, const void* offs,
                            const void* base2, const void* gptr, const void* scales, void* y, int N, int K, int bsz,
                            int ldx, int ldy, int blocks, int threads, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
#define SL_CASE(NB) \
  case NB: return dispatch_b<NB>(vt, xt, x, vals, offs, base2, gptr, scales, y, N, K, bsz, ldx, ldy, blocks, threads, s)
  switch (B) {
    SL_CASE(2);
    SL_CASE(4);
    SL_CASE(8);
    SL_CASE(16);
#undef SL_CASE
    default: return -1;
  }
}

extern "C" const char* sl_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

#else  // host emulation: the same lane arithmetic, lanes summed in order (float32 output)

template <int VT, int XT>
static void host_rows(const void* x, const void* vals, const void* offs, const void* base2, const void* gptr,
                      const float* scales, float* y, int N) {
  const int* gp = static_cast<const int*>(gptr);
  for (int r = 0; r < N; ++r) {
    float acc = 0.0f;
    for (int lane = 0; lane < 32; ++lane)
      acc += grp8_lane<VT, XT>(vals, static_cast<const uint32_t*>(offs), static_cast<const uint32_t*>(base2),
                               static_cast<const unsigned char*>(x), gp[r] >> 2, gp[r + 1] >> 2, lane);
    y[r] = scales ? acc * scales[r] : acc;
  }
}

template <int VT, int XT, int B>
static void host_rows_b(const uint16_t* x, const void* vals, const void* offs, const void* base2, const void* gptr,
                        const float* scales, float* y, int N, int K, int bsz) {
  uint16_t* xt = new uint16_t[(size_t)K * B]();
  for (int k = 0; k < K; ++k)
    for (int b = 0; b < bsz; ++b) xt[(size_t)k * B + b] = x[(size_t)b * K + k];
  const int* gp = static_cast<const int*>(gptr);
  for (int r = 0; r < N; ++r) {
    float acc[B] = {0.0f};
    for (int lane = 0; lane < 32; ++lane) {
      float part[B] = {0.0f};
      grp8_lane_b<VT, XT, B>(vals, static_cast<const uint32_t*>(offs), static_cast<const uint32_t*>(base2),
                             reinterpret_cast<const unsigned char*>(xt), gp[r] >> 2, gp[r + 1] >> 2, lane, part);
      for (int b = 0; b < B; ++b) acc[b] += part[b];
    }
    for (int b = 0; b < bsz; ++b) y[(size_t)b * N + r] = scales ? acc[b] * scales[r] : acc[b];
  }
  delete[] xt;
}

template <int B>
static int host_b(int vt, int xt, const void* x, const void* vals, const void* offs, const void* base2,
                  const void* gptr, const float* sc, float* y, int N, int K, int bsz) {
  const uint16_t* xx = static_cast<const uint16_t*>(x);
  if (xt == XT_F16 && vt == VT_F16) host_rows_b<VT_F16, XT_F16, B>(xx, vals, offs, base2, gptr, sc, y, N, K, bsz);
  else if (xt == XT_F16 && vt == VT_I8) host_rows_b<VT_I8, XT_F16, B>(xx, vals, offs, base2, gptr, sc, y, N, K, bsz);
  else if (xt == XT_BF16 && vt == VT_BF16) host_rows_b<VT_BF16, XT_BF16, B>(xx, vals, offs, base2, gptr, sc, y, N, K, bsz);
  else if (xt == XT_BF16 && vt == VT_I8) host_rows_b<VT_I8, XT_BF16, B>(xx, vals, offs, base2, gptr, sc, y, N, K, bsz);
  else return -1;
  return 0;
}

// x (bsz, K) row-major, y (bsz, N) float32; B the kernel's padded batch (2, 4, 8, 16)
extern "C" int sl_grp8_gemm_host(int vt, int xt, int B, const void* x, const void* vals, const void* offs,
                                 const void* base2, const void* gptr, const void* scales, float* y, int N, int K,
                                 int bsz) {
  const float* sc = static_cast<const float*>(scales);
  switch (B) {
    case 2: return host_b<2>(vt, xt, x, vals, offs, base2, gptr, sc, y, N, K, bsz);
    case 4: return host_b<4>(vt, xt, x, vals, offs, base2, gptr, sc, y, N, K, bsz);
    case 8: return host_b<8>(vt, xt, x, vals, offs, base2, gptr, sc, y, N, K, bsz);
    case 16: return host_b<16>(vt, xt, x, vals, offs, base2, gptr, sc, y, N, K, bsz);
    default: return -1;
  }
}

extern "C" int sl_grp8_gemv_host(int vt, int xt, const void* x, const void* vals, const void* offs,
                                 const void* base2, const void* gptr, const void* scales, float* y, int N) {
  const float* sc = static_cast<const float*>(scales);
  if (xt == XT_F16 && vt == VT_F16) host_rows<VT_F16, XT_F16>(x, vals, offs, base2, gptr, sc, y, N);
  else if (xt == XT_F16 && vt == VT_I8) host_rows<VT_I8, XT_F16>(x, vals, offs, base2, gptr, sc, y, N);
  else if (xt == XT_BF16 && vt == VT_BF16) host_rows<VT_BF16, XT_BF16>(x, vals, offs, base2, gptr, sc, y, N);
  else if (xt == XT_BF16 && vt == VT_I8) host_rows<VT_I8, XT_BF16>(x, vals, offs, base2, gptr, sc, y, N);
  else return -1;
  return 0;
}
#endif
