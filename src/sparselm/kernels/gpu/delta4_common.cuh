// The delta4 chunk (cuda_delta4.py builds the layout; delta4_gemv.cu says why and how it is laid out): loading
// one from global memory, decoding its 16 values and 15 column steps, and its dot product with x. Shared by the
// per-row kernel (delta4_gemv.cu) and the streamed one (delta4_tma.cu); compiled by nvcc and, for the host
// emulation the CPU tests run, by g++ as plain C++.
#pragma once
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

// A streamed tile of `cap` chunks as staged in shared memory (delta4_tma.cu): the first value plane (cap x 16
// bytes), the second (16-bit values only), the step words (cap x 8), the bases (cap x 2). Every part starts at a
// 16-byte boundary when cap is a multiple of 8, as the bulk copies that fill it require.
template <int VT>
SL_HD int tile_bytes(int cap) { return cap * ((VT == VT_I8 ? 16 : 32) + 8 + 2); }

template <int VT>
SL_HD void tile_chunk(const unsigned char* t, int cap, int j, Chunk& ch) {
  constexpr int PL = VT == VT_I8 ? 1 : 2;
#ifdef __CUDACC__
  const uint4 a = reinterpret_cast<const uint4*>(t)[j];
  ch.w[0] = a.x; ch.w[1] = a.y; ch.w[2] = a.z; ch.w[3] = a.w;
  if (PL == 2) {
    const uint4 b = reinterpret_cast<const uint4*>(t + 16 * cap)[j];
    ch.w[4] = b.x; ch.w[5] = b.y; ch.w[6] = b.z; ch.w[7] = b.w;
  }
  const uint2 s = reinterpret_cast<const uint2*>(t + 16 * PL * cap)[j];
  ch.lo = s.x; ch.hi = s.y;
  ch.base = reinterpret_cast<const uint16_t*>(t + (16 * PL + 8) * cap)[j];
#else
  memcpy(ch.w, t + (size_t)j * 16, 16);
  if (PL == 2) memcpy(ch.w + 4, t + (size_t)(cap + j) * 16, 16);
  memcpy(&ch.lo, t + (size_t)16 * PL * cap + 8 * j, 4);
  memcpy(&ch.hi, t + (size_t)16 * PL * cap + 8 * j + 4, 4);
  uint16_t b;
  memcpy(&b, t + (size_t)(16 * PL + 8) * cap + 2 * j, 2);
  ch.base = b;
#endif
}
