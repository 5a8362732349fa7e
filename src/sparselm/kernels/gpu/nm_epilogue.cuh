// The batch-1 N:M kernel's epilogues (nm_gemv.cu): the decode step's elementwise work on a product's output, done
// inside the product's launch so that a launch per use goes away. Compiled by nvcc and, for the host twin the CPU
// tests run, by g++.
//
// glu: a fused gate / up matrix's two row sums become silu(g) * u (the MLP's silu * up kernel: ~1.2 us per 7B layer).
// Same-run A/Bs with the product's config: +1-3% per 7B step with fp16 values, -2-3.5% with int8, so the decoder
// uses it where gpu_backend.autotune_glu measured it faster, or untuned for 16-bit values only.
//
// add + RMSNorm ("norm"): after o_proj and after down_proj the decode step adds the product y to the residual stream
// and normalizes the sum for the next sub-block (kernels/gpu/fused.py add_rmsnorm: one launch each, 64 per 7B step,
// ~2.2 us apiece with its block start). Every block of the product owns a share of y's rows, so no block can
// normalize alone, and a norm recomputed by every block of the next product lost 5-8% (session 23). Here the last
// block to finish (an arrival counter per matrix, reset by that block; the pattern of CUDA's threadFenceReduction
// sample) reads y back from L2 and does add_rmsnorm's work: h = y + res rounded to the activation dtype (res_out),
// ss = the sum of h^2 (per thread over its 8-column chunks, each warp's in __shfl_xor's tree, then the warps' in
// order), inv = 1 / sqrt(ss / D + eps), xn = w * (h inv), rounded where HF's LlamaRMSNorm rounds. The host twin
// (sl_norm_host) sums in the same order for a given block size, so the CPU tests compare bits.
// Timed on the H200 (benchmarks/results/gpu_decode_norm_ab*.json, 7B at 1:4): 4-6% slower per decode step than the
// add_rmsnorm launch it replaces. The tail runs on one block after every other block is done, so its whole latency
// (a counter round trip, two dependent load rounds, a block reduction) lands on the step, while the separate launch
// overlaps its start with the product under PDL. The decoder leaves it off by default (norm_epilogue=False).
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

// m <= 8 activations at p: one 16-byte access on the GPU where all 8 are there and p is aligned, else one by one.
SL_HD void load8(const uint16_t* p, int m, uint16_t* v) {
#ifdef __CUDACC__
  if (m == 8 && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
    *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(p);
    return;
  }
#endif
  for (int j = 0; j < m; ++j) v[j] = p[j];
}
SL_HD void store8(uint16_t* p, int m, const uint16_t* v) {
#ifdef __CUDACC__
  if (m == 8 && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(v);
    return;
  }
#endif
  for (int j = 0; j < m; ++j) p[j] = v[j];
}

// Thread t of T owns the 8-column chunks t, t + T, ... (columns in order within a chunk): one 16-byte vector of
// y, res, w per chunk on the GPU when D % 8 == 0 (a loop of 2-byte loads, one after another, made the tail 4
// dependent load rounds long: the first build lost 15% of a 7B decode step), the same order of sums on the host.
// h = round(y + res) (stored to res_out) and the thread's sum of h^2.
template <int XT, typename Y>
SL_HD float norm_sum(const NormArgs& n, int D, int t, int T, Y y8) {
  float ss = 0.0f;
  for (int c = t; 8 * c < D; c += T) {
    float y[8], h[8];
    uint16_t r[8], o[8];
    const int m = D - 8 * c < 8 ? D - 8 * c : 8;
    y8(c, m, y);
    load8(n.res + 8 * c, m, r);
    for (int j = 0; j < m; ++j) {
      h[j] = round_act<XT>(y[j] + act_to_float<XT>(r[j]));
      o[j] = act_bits<XT>(h[j]);
      ss = fmaf(h[j], h[j], ss);
    }
    store8(n.res_out + 8 * c, m, o);
  }
  return ss;
}

// Thread t's normalized outputs (its chunks, as norm_sum) from the block's sum of squares (IEEE sqrt and division).
template <int XT>
SL_HD void norm_scale(const NormArgs& n, int D, int t, int T, float ss) {
  const float inv = 1.0f / sqrtf(ss / (float)D + n.eps);
  for (int c = t; 8 * c < D; c += T) {
    uint16_t h[8], w[8], o[8];
    const int m = D - 8 * c < 8 ? D - 8 * c : 8;
    load8(n.res_out + 8 * c, m, h);
    load8(n.w + 8 * c, m, w);
    for (int j = 0; j < m; ++j)
      o[j] = act_bits<XT>(act_to_float<XT>(w[j]) * round_act<XT>(act_to_float<XT>(h[j]) * inv));
    store8(n.xn + 8 * c, m, o);
  }
}

#ifdef __CUDACC__
// Called by every thread of every block after its rows' y stores; returns at once except in the last block.
// scratch: 32 floats of shared memory the block no longer reads. One thread per block fences and counts: the
// block's stores are ordered before thread 0's release by the barrier (PTX fences are cumulative); a fence in
// every thread cost a MEMBAR.SC.GPU per warp.
template <int XT>
__device__ void norm_epilogue(const NormArgs& n, const uint16_t* y, int D, float* scratch) {
  __syncthreads();
  int last = 0;
  if (threadIdx.x == 0) {
    __threadfence();  // release: this block's y
    last = atomicAdd(n.counter, 1) == (int)gridDim.x - 1;
    if (last) __threadfence();  // acquire: the other blocks' y, seen after their arrivals
  }
  if (!__syncthreads_or(last)) return;
  const int t = threadIdx.x, T = blockDim.x;
  float ss = norm_sum<XT>(n, D, t, T, [&](int c, int m, float* v) {
    uint16_t b[8];
    if (m == 8 && (reinterpret_cast<uintptr_t>(y) & 15) == 0) {
      *reinterpret_cast<uint4*>(b) = __ldcg(reinterpret_cast<const uint4*>(y) + c);  // L2: not L1's stale lines
    } else {
      for (int j = 0; j < m; ++j) b[j] = __ldcg(y + 8 * c + j);
    }
    for (int j = 0; j < m; ++j) v[j] = act_to_float<XT>(b[j]);
  });
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
      auto y8 = [&](int c, int m, float* v) {
        for (int j = 0; j < m; ++j) v[j] = xt == XT_F16 ? half_to_float(y[8 * c + j]) : bf16_to_float(y[8 * c + j]);
      };
      l[lane] = xt == XT_F16 ? norm_sum<XT_F16>(n, D, t, threads, y8) : norm_sum<XT_BF16>(n, D, t, threads, y8);
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
