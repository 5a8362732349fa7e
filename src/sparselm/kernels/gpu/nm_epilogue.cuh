// The batch-1 N:M kernel's epilogues (nm_gemv.cu): the decode step's elementwise work on a product's output, done
// inside the product's launch so that a launch per use goes away. Compiled by nvcc and, for the host twin the CPU
// tests run, by g++.
//
// glu: a fused gate / up matrix's two row sums become silu(g) * u (the MLP's silu * up kernel: ~1.2 us per 7B layer).
//
// add + RMSNorm ("norm"): after o_proj and after down_proj the decode step adds the product y to the residual stream
// and normalizes the sum for the next sub-block (kernels/gpu/fused.py add_rmsnorm: one launch each, 64 per 7B step,
// ~2.2 us apiece with its block start). Every block of the product owns a share of y's rows, so no block can
// normalize alone, and a norm recomputed by every block of the next product lost 5-8% (session 23). Here the last
// block to finish (an arrival counter per matrix, reset by that block; the pattern of CUDA's threadFenceReduction
// sample) reads y back from L2 and does add_rmsnorm's work: h = y + res rounded to the activation dtype (res_out),
// ss = the sum of h^2 (thread-strided partial sums, each warp's in __shfl_xor's tree, then the warps' in order),
// inv = 1 / sqrt(ss / D + eps), xn = w * (h inv), rounded where HF's LlamaRMSNorm rounds. The host twin
// (sl_norm_host) sums in the same order for a given block size, so the CPU tests compare bits.
#pragma once
#include "gemv_common.cuh"
#include "nm_pairs.cuh"

// f rounded to the activation dtype (its bits, or back as float): the device's conversion or its host twin.
template <int XT>
SL_HD uint16_t act_bits(float f) {
#ifdef __CUDACC__
  return float_to_act<XT>(f);
#else
  return (uint16_t)host_act_rn<XT>(f);
#endif
}
template <int XT>
SL_HD float round_act(float f) { return act_to_float<XT>(act_bits<XT>(f)); }

// silu(g) * u from the two rows' sums, rounded where the unfused path rounds: each product output to the
// activation dtype, silu's result, then the product (kernels/gpu/fused.py _silu_mul_kernel).
template <int XT>
SL_HD float glu_out(float g, float u) {
  const float gf = round_act<XT>(g), uf = round_act<XT>(u);
#ifdef __CUDACC__
  const float s = round_act<XT>(gf / (1.0f + __expf(-gf)));
#else
  const float s = round_act<XT>(gf / (1.0f + expf(-gf)));
#endif
  return round_act<XT>(s * uf);
}

struct NormArgs {
  const uint16_t* res;  // the residual stream (D activations), or null: no norm epilogue
  const uint16_t* w;    // the norm's weight (D, activation dtype)
  uint16_t* res_out;    // round(res + y); may be res itself (one thread reads, then writes, each element)
  uint16_t* xn;         // round(w * round((res + y) * inv))
  float eps;
  int* counter;         // blocks arrived; 0 between launches (the last block resets it)
};

// Thread t of T: h = round(y + res) for columns t, t + T, ... (stored to res_out), and the thread's sum of h^2.
template <int XT, typename Y>
SL_HD float norm_sum(const NormArgs& n, int D, int t, int T, Y y_at) {
  float ss = 0.0f;
  for (int i = t; i < D; i += T) {
    const float h = round_act<XT>(y_at(i) + act_to_float<XT>(n.res[i]));
    n.res_out[i] = act_bits<XT>(h);
    ss = fmaf(h, h, ss);
  }
  return ss;
}

// Thread t's normalized outputs from the block's sum of squares (IEEE sqrt and division on both builds).
template <int XT>
SL_HD void norm_scale(const NormArgs& n, int D, int t, int T, float ss) {
  const float inv = 1.0f / sqrtf(ss / (float)D + n.eps);
  for (int i = t; i < D; i += T)
    n.xn[i] = act_bits<XT>(act_to_float<XT>(n.w[i]) * round_act<XT>(act_to_float<XT>(n.res_out[i]) * inv));
}

#ifdef __CUDACC__
// Called by every thread of every block after its rows' y stores; returns at once except in the last block.
// scratch: 32 floats of shared memory the block no longer reads.
template <int XT>
__device__ void norm_epilogue(const NormArgs& n, const uint16_t* y, int D, float* scratch) {
  __threadfence();  // this block's y stores, visible device-wide before its arrival is counted
  __syncthreads();
  int last = 0;
  if (threadIdx.x == 0) last = atomicAdd(n.counter, 1) == (int)gridDim.x - 1;
  if (!__syncthreads_or(last)) return;
  __threadfence();  // the other blocks' stores, seen after their arrivals
  const int t = threadIdx.x, T = blockDim.x;
  float ss = norm_sum<XT>(n, D, t, T, [&](int i) { return act_to_float<XT>(__ldcg(y + i)); });  // L2: not L1's
#pragma unroll
  for (int m = 16; m; m >>= 1) ss += __shfl_xor_sync(0xFFFFFFFFu, ss, m);
  if ((t & 31) == 0) scratch[t >> 5] = ss;
  __syncthreads();
  ss = 0.0f;
  for (int w = 0; w < (T >> 5); ++w) ss += scratch[w];
  norm_scale<XT>(n, D, t, T, ss);
  if (t == 0) *n.counter = 0;
}
#else
// The host twin of norm_epilogue for a block of `threads` threads (a multiple of 32): y as the kernel stored it.
extern "C" int sl_norm_host(int xt, const uint16_t* y, const uint16_t* res, const uint16_t* w, uint16_t* res_out,
                            uint16_t* xn, int D, float eps, int threads) {
  if (threads < 32 || threads % 32 || threads > 1024 || D < 1 || (xt != XT_F16 && xt != XT_BF16)) return -1;
  const NormArgs n{res, w, res_out, xn, eps, nullptr};
  float total = 0.0f;
  for (int warp = 0; warp < threads / 32; ++warp) {
    float l[32], s[32];
    for (int lane = 0; lane < 32; ++lane) {
      const int t = 32 * warp + lane;
      l[lane] = xt == XT_F16 ? norm_sum<XT_F16>(n, D, t, threads, [&](int i) { return half_to_float(y[i]); })
                             : norm_sum<XT_BF16>(n, D, t, threads, [&](int i) { return bf16_to_float(y[i]); });
    }
    for (int m = 16; m; m >>= 1) {
      for (int lane = 0; lane < 32; ++lane) s[lane] = l[lane] + l[lane ^ m];
      memcpy(l, s, sizeof l);
    }
    total += l[0];
  }
  for (int t = 0; t < threads; ++t) {
    if (xt == XT_F16) norm_scale<XT_F16>(n, D, t, threads, total);
    else norm_scale<XT_BF16>(n, D, t, threads, total);
  }
  return 0;
}
#endif
