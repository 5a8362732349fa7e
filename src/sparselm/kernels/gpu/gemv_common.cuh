// Shared by the per-nonzero CUDA GEMV kernels (grp8_gemv.cu, delta4_gemv.cu): value and activation types, the
// fp16 / bf16 / int8 / int4 decoders, x loads. Compiled both by nvcc and, for the host emulation the CPU tests
// run, by g++ as plain C++ (SL_HD marks what both builds share).
#pragma once
#include <math.h>
#include "sl_common.cuh"

#ifdef __CUDACC__
#include <cuda_fp16.h>
#endif

enum { VT_F16 = 0, VT_BF16 = 1, VT_I8 = 2, VT_I4 = 3 };  // values (int4: a lane's 4 codes in one 16-bit word)
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
  return host_prmt(a, b, sel);
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

// One lane's raw value words of quad entry i (fp16 / bf16: 8 bytes; int8: 4; int4: 2). Loading is apart from
// decoding so the batch-1 loop can issue the loads of several quads before it uses any of them (memory-level
// parallelism: the H200 timings showed the kernel latency-bound, fp16 and int8 values taking the same time).
struct Raw {
  uint32_t w0, w1;
};

template <int VT>
SL_HD Raw load_raw(const void* vals, int i) {
  Raw r{0u, 0u};
#ifdef __CUDACC__
  if (VT == VT_I8) r.w0 = __ldg(reinterpret_cast<const uint32_t*>(vals) + i);
  else if (VT == VT_I4) r.w0 = __ldg(reinterpret_cast<const uint16_t*>(vals) + i);
  else {
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(vals) + i);
    r.w0 = w.x; r.w1 = w.y;
  }
#else
  if (VT == VT_I8) r.w0 = reinterpret_cast<const uint32_t*>(vals)[i];
  else if (VT == VT_I4) r.w0 = reinterpret_cast<const uint16_t*>(vals)[i];
  else {
    r.w0 = reinterpret_cast<const uint32_t*>(vals)[2 * i];
    r.w1 = reinterpret_cast<const uint32_t*>(vals)[2 * i + 1];
  }
#endif
  return r;
}

// The 4 values (group j = 0..3) of a lane's quad entry, as stored (quantized codes unscaled). int8 -> float in two
// full-rate instructions: with u = s ^ 0x80 (s + 128 as an unsigned byte), the float with bits 0x4B0000uu is
// 2^23 + u, so subtracting 2^23 + 128 gives s exactly (no quarter-rate I2F); int4 the same with a bias of 8.
// BIASED: the int8 codes are stored as u already (nm_gemv.cu's layout), one XOR per word less.
template <int VT, bool BIASED = false>
SL_HD void decode_values(const Raw& r, float* v) {
  if (VT == VT_I8 || VT == VT_I4) {
    uint32_t t;
    if (VT == VT_I8) t = BIASED ? r.w0 : r.w0 ^ 0x80808080u;
    else {  // 4 nibbles n0..n3 (two's complement); ^ 0x8888 biases each by 8, then spread to bytes n0 n2 n1 n3
      const uint32_t w = r.w0 ^ 0x8888u;
      t = (w & 0x0F0Fu) | ((w & 0xF0F0u) << 12);
    }
    // int8: bytes 0..3 hold the biased codes in order; int4: bytes 0, 2, 1, 3 (see the spread above)
    const float bias = VT == VT_I8 ? 8388736.0f : 8388616.0f;  // 2^23 + 128 / 2^23 + 8
    v[0] = as_float(byte_perm(t, 0x4B000000u, 0x7540)) - bias;
    v[1] = as_float(byte_perm(t, 0x4B000000u, VT == VT_I8 ? 0x7541 : 0x7542)) - bias;
    v[2] = as_float(byte_perm(t, 0x4B000000u, VT == VT_I8 ? 0x7542 : 0x7541)) - bias;
    v[3] = as_float(byte_perm(t, 0x4B000000u, 0x7543)) - bias;
  } else {
    constexpr int vt = VT == VT_F16 ? XT_F16 : XT_BF16;
    v[0] = act_to_float<vt>(r.w0 & 0xFFFFu); v[1] = act_to_float<vt>(r.w0 >> 16);
    v[2] = act_to_float<vt>(r.w1 & 0xFFFFu); v[3] = act_to_float<vt>(r.w1 >> 16);
  }
}

#ifdef __CUDACC__
#include <cuda_bf16.h>

template <int XT>
__device__ __forceinline__ uint16_t float_to_act(float f) {
  if (XT == XT_F16) return __half_as_ushort(__float2half_rn(f));
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

// x (K activations) into shared memory, with 16-byte copies when x is 16-byte aligned; then a block barrier.
__device__ __forceinline__ void stage_x(uint4* xs4, const uint16_t* x, int K) {
  if ((reinterpret_cast<uintptr_t>(x) & 15) == 0) {
    const int n16 = K >> 3;
    for (int i = threadIdx.x; i < n16; i += blockDim.x) xs4[i] = __ldg(reinterpret_cast<const uint4*>(x) + i);
    for (int i = (n16 << 3) + threadIdx.x; i < K; i += blockDim.x) reinterpret_cast<uint16_t*>(xs4)[i] = x[i];
  } else {
    for (int i = threadIdx.x; i < K; i += blockDim.x) reinterpret_cast<uint16_t*>(xs4)[i] = x[i];
  }
  __syncthreads();
}

// x (K activations) into shared memory as float32, zeros in [K, kx); then a block barrier. 16-byte loads (8
// activations) when x is 16-byte aligned and K a multiple of 8: a one-element loop made each thread wait K / blockDim
// dependent L2 round trips before the first nonzero (14 at K = 14336 with 1024 threads).
template <int XT>
__device__ __forceinline__ void stage_x_f32(float* xs, const uint16_t* x, int K, int kx) {
  int done = 0;
  if ((reinterpret_cast<uintptr_t>(x) & 15) == 0 && (K & 7) == 0) {
    for (int i = threadIdx.x; i < (K >> 3); i += blockDim.x) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(x) + i);
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
      float f[8];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        f[2 * j] = act_to_float<XT>(w[j] & 0xFFFFu);
        f[2 * j + 1] = act_to_float<XT>(w[j] >> 16);
      }
      reinterpret_cast<float4*>(xs)[2 * i] = make_float4(f[0], f[1], f[2], f[3]);
      reinterpret_cast<float4*>(xs)[2 * i + 1] = make_float4(f[4], f[5], f[6], f[7]);
    }
    done = K;
  }
  for (int i = done + threadIdx.x; i < kx; i += blockDim.x) xs[i] = i < K ? act_to_float<XT>(__ldg(x + i)) : 0.0f;
  __syncthreads();
}

// Batched kernels (one warp per row, B partial sums per lane): each sum over the warp's lanes, then lane 0 writes
// y[b, r] (times the row's scale, if any) for the bsz real batch rows.
template <int XT, int B>
__device__ __forceinline__ void store_row_sums(float* acc, int lane, const float* scales, int r, uint16_t* y, int ldy,
                                               int bsz) {
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

// Raise a kernel's dynamic shared-memory limit once per instantiation, as far as a launch needs.
template <typename Kernel>
static int opt_in(Kernel kernel, size_t smem, size_t* opted) {
  if (smem <= *opted) return 0;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return (int)e;
  *opted = smem;
  return 0;
}

extern "C" const char* sl_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

// Programmatic dependent launch (Hopper). In a decode step every kernel is short (5-30 us) and the launch, block
// start and x staging of each are paid in full between kernels: ~2.2 us per product (docs/notes/gpu.md, session 23).
// Launched with the attribute, a kernel may be scheduled while the kernel before it still runs; its blocks then wait
// in pdl_wait() until that kernel's writes are visible. pdl_trigger() lets the next kernel be scheduled as soon as
// every block of this one has started. Both are no-ops in a normal launch, so the kernels always carry them.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The library's launch mode, set from Python (kernels/gpu/pdl.py) before launches are recorded: one flag per loaded
// library, read on the launching thread. Every kernel launched with it on must call pdl_wait() before it touches
// memory another kernel writes, on every path.
static int g_pdl = 0;
extern "C" void sl_set_pdl(int on) { g_pdl = on != 0; }

// kernel<<<blocks, threads, smem, stream>>>(a), with the programmatic-serialization attribute when g_pdl is set.
template <typename Args>
static int sl_launch(void (*kernel)(Args), int blocks, int threads, size_t smem, cudaStream_t stream, const Args& a) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = g_pdl ? 1 : 0;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, a);
  return e != cudaSuccess ? (int)e : (int)cudaGetLastError();
}
#endif
