// Shared by the tensor-core kernels (bitmask_mma.cu, tile_mma.cu, nm_mma.cu): value types, mma.sync m16n8k16,
// cp.async, x staged per chunk and its B fragments (ldmatrix), the split-K epilogue, and the host emulation of mma
// and ldmatrix by the PTX fragment layouts (what the CPU tests run).
#pragma once
#include "sl_common.cuh"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

enum { VT_F16 = 0, VT_BF16 = 1 };

// x staged per 128-column chunk as [BP][XS] halves (rows past the batch and columns past K zero-filled). XS = 272
// bytes: the 8 rows an ldmatrix reads start on 8 distinct bank quads, conflict-free.
enum { XC = 128, XS = XC + 8 };

// B fragments by ldmatrix.x4, steps ks and ks + 1 of k16 (or one k32 step at ks = 2 s), batch rows 8 nt..8 nt + 7:
// x's [batch][k] rows are B's columns, so no transpose; matrices at columns 16 ks, 16 ks + 8, 16 ks + 16,
// 16 ks + 24. The element offset of the row each lane hands ldmatrix (lanes 8i..8i+7 give matrix i's 8 rows); the
// host emulation reads the matrices by the same offsets, so the CPU tests check the addressing too.
SL_HD int b_row(int lane, int ks, int nt) {
  return (nt * 8 + (lane & 7)) * XS + (ks + (lane >> 4)) * 16 + ((lane >> 3) & 1) * 8;
}

#ifdef __CUDACC__

template <int VT>
__device__ __forceinline__ void mma16816(float* d, const uint32_t* a, const uint32_t* b) {
  if (VT == VT_F16)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async4(void* dst, const void* src, int bytes) {
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// A block's staging of x (bsz rows, row stride ldx) one XC-column chunk at a time into [BP][XS] buffers, with
// 16-byte cp.async copies (zero-filled past the batch and K; K a multiple of 8). Each thread's sources and targets
// are fixed across chunks, so they are computed once.
template <int BP, int THREADS>
struct XStage {
  enum { PER = (BP * (XC / 8) + THREADS - 1) / THREADS };
  const uint16_t* src[PER];
  int dst[PER], col[PER];
  __device__ __forceinline__ XStage(const uint16_t* x, int ldx, int bsz, int tid) {
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int i = tid + j * THREADS, b = i / (XC / 8), v = i % (XC / 8);
      src[j] = i < BP * (XC / 8) && b < bsz ? x + (size_t)b * ldx + 8 * v : nullptr;
      dst[j] = i < BP * (XC / 8) ? b * XS + 8 * v : -1;
      col[j] = 8 * v;
    }
  }
  // chunk c into buf, as one cp.async group (x: any valid address, the source of the zero-fills)
  __device__ __forceinline__ void operator()(uint16_t* buf, const uint16_t* x, int c, int K) const {
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      if (dst[j] < 0) continue;
      const bool ok = src[j] != nullptr && c * XC + col[j] < K;
      cp_async16(buf + dst[j], ok ? src[j] + c * XC : x, ok ? 16 : 0);
    }
    cp_commit();
  }
};

template <int VT>
__device__ __forceinline__ uint16_t to_act(float f) {
  if (VT == VT_F16) return __half_as_ushort(__float2half_rn(f));
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

// Where a block's sums go: y directly (one split along K), or fp32 atomics into the workspace, after which the
// block that arrives last for its rows (a per-block counter) writes y and zeroes the workspace and the counter
// again for the next call (one launch; CUDA-graph safe).
struct Out {
  uint16_t* y;
  float* ws;  // (BP, N) fp32, zero between calls
  int* cnt;   // per row block, zero between calls
  int N, bsz, ldy;
};

// acc = the D fragments of 16 rows from ra - g (acc[t][0..1] = row ra, batch 8t + 2q (+1); [2..3] = row ra + 8);
// `writer`: this warp holds the final sums of its rows; the block's rows are [row0, row0 + rows). Every thread of
// the block must call this (it synchronizes the block when split).
template <int VT, int BP>
__device__ __forceinline__ void store_rows(const float (*acc)[4], bool writer, int ra, int row0, int rows,
                                           const Out& o) {
  const int lane = threadIdx.x & 31, q = lane & 3;
  if (gridDim.y == 1) {
    if (!writer) return;
#pragma unroll
    for (int t = 0; t < BP / 8; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = ra + (j >> 1) * 8, b = 8 * t + 2 * q + (j & 1);
        if (r < o.N && b < o.bsz) o.y[(size_t)b * o.ldy + r] = to_act<VT>(acc[t][j]);
      }
    return;
  }
  if (writer) {
#pragma unroll
    for (int t = 0; t < BP / 8; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = ra + (j >> 1) * 8, b = 8 * t + 2 * q + (j & 1);
        if (r < o.N && b < o.bsz) atomicAdd(o.ws + (size_t)b * o.N + r, acc[t][j]);
      }
  }
  __threadfence();
  __syncthreads();
  __shared__ int last;
  if (threadIdx.x == 0) last = atomicAdd(o.cnt + blockIdx.x, 1) == (int)gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = threadIdx.x; i < rows * o.bsz; i += blockDim.x) {
    const int b = i / rows, r = row0 + i % rows;
    if (r < o.N) {
      float* p = o.ws + (size_t)b * o.N + r;
      o.y[(size_t)b * o.ldy + r] = to_act<VT>(__ldcg(p));
      *p = 0.0f;
    }
  }
  if (threadIdx.x == 0) o.cnt[blockIdx.x] = 0;
}

#else  // host emulation

// ldmatrix.x4 (b16, no transpose) by its addresses: lane l hands the row at element offset off[l] of base; matrix
// i's rows come from lanes 8i..8i+7, and lane l receives row l / 4, columns 2 (l % 4) and + 1 of each matrix.
static void ldsm_x4_host(const uint16_t* base, const int* off, uint32_t (*out)[4]) {
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) memcpy(&out[l][i], base + off[8 * i + (l >> 2)] + 2 * (l & 3), 4);
}

// The staged chunk c of x (bsz rows of K) as the kernels' [BP][XS] buffer: zero past the batch and K.
static void stage_x_host(uint16_t* xs, const uint16_t* x, int BP, int bsz, int K, int c) {
  memset(xs, 0, sizeof(uint16_t) * BP * XS);
  for (int b = 0; b < bsz; ++b)
    for (int k = 0; k < XC && c * XC + k < K; ++k) xs[b * XS + k] = x[(size_t)b * K + c * XC + k];
}

static float act_to_float(uint32_t h, int vt) {
  uint32_t u;
  if (vt == VT_BF16) {
    u = h << 16;
  } else {
    const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F) u = sign | 0x7F800000u | (man << 13);
    else if (exp != 0) u = sign | ((exp + 112) << 23) | (man << 13);
    else {
      const float sub = (float)man * (1.0f / 16777216.0f);
      return sign ? -sub : sub;
    }
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// D (16 x 8) += A (16 x 16) B (16 x 8) from the 32 lanes' fragments (mma.m16n8k16 .row.col layouts):
// a[l][0] = A[g][2q..2q+1], a[l][1] = A[g+8][2q..], a[l][2] = A[g][2q+8..], a[l][3] = A[g+8][2q+8..];
// b[l][0] = B[2q..2q+1][g], b[l][1] = B[2q+8..2q+9][g]; d[l] = D[g][2q], D[g][2q+1], D[g+8][2q], D[g+8][2q+1].
static void host_mma(float (*d)[4], uint32_t (*a)[4], uint32_t (*b)[2], int vt) {
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, q = l & 3;
    for (int h = 0; h < 2; ++h) {
      A[g][2 * q + h] = act_to_float((a[l][0] >> (16 * h)) & 0xFFFF, vt);
      A[g + 8][2 * q + h] = act_to_float((a[l][1] >> (16 * h)) & 0xFFFF, vt);
      A[g][2 * q + 8 + h] = act_to_float((a[l][2] >> (16 * h)) & 0xFFFF, vt);
      A[g + 8][2 * q + 8 + h] = act_to_float((a[l][3] >> (16 * h)) & 0xFFFF, vt);
      B[2 * q + h][g] = act_to_float((b[l][0] >> (16 * h)) & 0xFFFF, vt);
      B[2 * q + 8 + h][g] = act_to_float((b[l][1] >> (16 * h)) & 0xFFFF, vt);
    }
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, q = l & 3;
    for (int j = 0; j < 4; ++j) {
      const int r = g + 8 * (j >> 1), n = 2 * q + (j & 1);
      float s = 0.0f;
      for (int k = 0; k < 16; ++k) s += A[r][k] * B[k][n];
      d[l][j] += s;
    }
  }
}
#endif
