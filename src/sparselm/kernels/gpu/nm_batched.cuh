// Batches 2 and 4 of nm_gemv.cu's layout (kernel, launch and host twin): included by nm_gemv.cu after NMArgs,
// whose lane arithmetic (nm_walk, nm_slots, by_pattern) it shares; not a standalone header.
#pragma once

// Batches 2 and 4: x staged transposed as float32, xt[col B + b], so a slot's B activations are one vector load and B
// multiply-adds; the weights' bytes are the same as at batch 1.
template <int VT, int M, int N, int B>
SL_HD void nm_use_b(const NMStep& s, const float* xt, int g0, float* acc) {
  nm_slots<VT, M, N>(s, g0, [&](int, float v, int col) {
    float xv[B];
#ifdef __CUDACC__
    if (B == 2) {
      const float2 t = *reinterpret_cast<const float2*>(xt + (size_t)col * B);
      xv[0] = t.x; xv[1] = t.y;
    } else {
      const float4 t = *reinterpret_cast<const float4*>(xt + (size_t)col * B);
      xv[0] = t.x; xv[1] = t.y; xv[2] = t.z; xv[3] = t.w;
    }
#else
    memcpy(xv, xt + (size_t)col * B, sizeof xv);
#endif
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int b = 0; b < B; ++b) acc[b] = fmaf(v, xv[b], acc[b]);
  });
}

template <int VT, int M, int N, int B, int U>
SL_HD void nm_lane_b(const void* vals, const void* idx, const float* xt, size_t first, int steps, int lane,
                     float* acc) {
  nm_walk<VT, M, N, U>(vals, idx, first, steps, lane,
                       [&](const NMStep& s, int g0) { nm_use_b<VT, M, N, B>(s, xt, g0, acc); });
}

#ifdef __CUDACC__
// Batches 2-4: x (bsz rows) staged transposed as float32 (rows past bsz and columns past K zero), one warp per row, B
// sums per lane; lane 0 writes y[b, row] for b < bsz. Untimed when written (session 22).
template <int VT, int XT, int M, int N, int B, int U>
__global__ void nm_gemm_kernel(const NMArgs a) {
  extern __shared__ float4 xt4[];
  float* xt = reinterpret_cast<float*>(xt4);
  for (int k = threadIdx.x; k < a.kx; k += blockDim.x) {
#pragma unroll
    for (int b = 0; b < B; ++b)
      xt[k * B + b] = b < a.bsz && k < a.K ? act_to_float<XT>(a.x[(size_t)b * a.ldx + k]) : 0.0f;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int r = blockIdx.x * warps + (threadIdx.x >> 5); r < a.N; r += gridDim.x * warps) {
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] = 0.0f;
    nm_lane_b<VT, M, N, B, U>(a.vals, a.idx, xt, (size_t)r * a.steps, a.steps, lane, acc);
    store_row_sums<XT, B>(acc, lane, a.scales, r, a.y, a.ldy, a.bsz);
  }
}

// One opted-in size per kernel: cudaFuncSetAttribute is per function, so (B, U) instances may not share the record
// (a shared one let B=4 U=2 skip its opt-in after B=4 U=1 and fail with "invalid argument").
template <int VT, int XT, int M, int N, int B, int U>
static int nm_launch_bu(const NMArgs& a, int blocks, int threads, cudaStream_t s) {
  static size_t opted = 48 * 1024;
  const size_t smem = (size_t)a.kx * B * 4;
  if (const int e = opt_in(nm_gemm_kernel<VT, XT, M, N, B, U>, smem, &opted)) return e;
  nm_gemm_kernel<VT, XT, M, N, B, U><<<blocks, threads, smem, s>>>(a);
  return (int)cudaGetLastError();
}

template <int VT, int XT, int M, int N>
static int nm_launch_b(const NMArgs& a, int B, int unroll, int blocks, int threads, cudaStream_t s) {
  switch (B * 10 + unroll) {
    case 21: return nm_launch_bu<VT, XT, M, N, 2, 1>(a, blocks, threads, s);
    case 22: return nm_launch_bu<VT, XT, M, N, 2, 2>(a, blocks, threads, s);
    case 41: return nm_launch_bu<VT, XT, M, N, 4, 1>(a, blocks, threads, s);
    case 42: return nm_launch_bu<VT, XT, M, N, 4, 2>(a, blocks, threads, s);
    default: return -1;
  }
}

template <int VT, int XT>
static int nm_pattern_b(const NMArgs& a, int m, int n, int B, int unroll, int blocks, int threads, cudaStream_t s) {
  return by_pattern(m, n, [&](auto M, auto N) {
    return nm_launch_b<VT, XT, decltype(M)::value, decltype(N)::value>(a, B, unroll, blocks, threads, s);
  });
}

#else  // host emulation

// Batches 2-4: x (bsz rows, contiguous) transposed into the float32 copy the kernel stages, y (bsz, N).
template <int VT, int XT, int M, int N, int B, int U>
static void nm_host_rows_b(const NMArgs& a, float* y) {
  float* xt = new float[(size_t)(a.kx > 0 ? a.kx : 1) * B]();
  for (int k = 0; k < a.K; ++k)
    for (int b = 0; b < a.bsz; ++b) xt[(size_t)k * B + b] = act_to_float<XT>(a.x[(size_t)b * a.K + k]);
  for (int r = 0; r < a.N; ++r) {
    float l[32][B], t[32][B];
    for (int lane = 0; lane < 32; ++lane) {
      for (int b = 0; b < B; ++b) l[lane][b] = 0.0f;
      nm_lane_b<VT, M, N, B, U>(a.vals, a.idx, xt, (size_t)r * a.steps, a.steps, lane, l[lane]);
    }
    for (int m = 16; m; m >>= 1) {
      for (int lane = 0; lane < 32; ++lane)
        for (int b = 0; b < B; ++b) t[lane][b] = l[lane][b] + l[lane ^ m][b];
      memcpy(l, t, sizeof l);
    }
    for (int b = 0; b < a.bsz; ++b) y[(size_t)b * a.N + r] = a.scales ? l[0][b] * a.scales[r] : l[0][b];
  }
  delete[] xt;
}

template <int VT, int XT>
static int nm_host_batched(const NMArgs& a, int m, int n, int B, int unroll, float* y) {
  return by_pattern(m, n, [&](auto M, auto N) {
    constexpr int MM = decltype(M)::value, NN = decltype(N)::value;
    switch (B * 10 + unroll) {
      case 21: nm_host_rows_b<VT, XT, MM, NN, 2, 1>(a, y); return 0;
      case 22: nm_host_rows_b<VT, XT, MM, NN, 2, 2>(a, y); return 0;
      case 41: nm_host_rows_b<VT, XT, MM, NN, 4, 1>(a, y); return 0;
      case 42: nm_host_rows_b<VT, XT, MM, NN, 4, 2>(a, y); return 0;
      default: return -1;
    }
  });
}

#endif
