// Batched y = x W^T (batch 2-64) with W in the bitmask format (FORMAT.md), on tensor cores (mma.sync m16n8k16).
//
// Why: the per-nonzero kernels (grp8_gemv.cu) multiply each nonzero by B activations on CUDA cores and load them
// from shared memory, B loads per nonzero: at batch 16 they ran at 0.4x cuBLAS (gpu_kernels_session14.json). Here W
// is expanded straight into the mma A fragments (16 rows x 16 columns per instruction) and x is the B operand, so
// the cost per weight position is the expansion (~13 SASS instructions per column pair, the same at batch 8 or 64)
// and the batch costs one mma per 8 batch rows per 16 x 16 tile. Measured on the H200: 0.64-0.81x cuBLAS at batch
// 16, 75% (BENCHMARKS.md section 4, session 15: latency-bound, ~3.7 warps per scheduler).
//
// Expansion, per lane (g = lane / 4, q = lane % 4): mma's A fragment holds rows g and g + 8 at k = 2q, 2q + 1 and
// 2q + 8, 2q + 9 of a 16-column step; k is a summation index, so those hold columns 4q .. 4q + 3 here (x's B
// fragment uses the same order). For a pair of columns (c, c + 1) of one row, with w the row's 32-bit mask word
// and vs the row's packed values:
//     i = base(word) + popc(w & (2^c - 1))            the index of the first nonzero at or after column c
//     (v0, v1) = vs[i], vs[i + 1]                     both read unconditionally (a shared-memory buffer, see below)
//     pair = prmt(v0, v1, sel(bits c, c + 1 of w))    (v0, 0), (0, v0), (v0, v1) or (0, 0), as 16-bit halves
// sel picks zero bytes (the high halves of the zero-extended loads) wherever a bit is 0: no predicates, no branches.
//
// Staging (cp.async, 3 chunks in flight): per 128-column chunk, the block copies x[0:BP, chunk] (BP = padded batch;
// rows past the real batch zero-filled), and each 16-row band copies its rows' 4 mask words and their values: row
// r's nonzeros of the chunk are values[cp[r, c] : cp[r, c + 1]] (cp = chunk_ptr at 128 columns plus the row end),
// copied as the 16-byte vectors that cover them, rows back to back in the band's buffer at offsets precomputed per
// matrix (dst); `off` = where each row's first nonzero lands. The buffer holds `cap` vectors: the most any 16-row
// band's chunk needs in this matrix, so at 75% sparsity a stage is ~1/3 of the dense worst case.
// Blocks own W / KS bands (KS warps per band split each chunk's words) and a range of chunks (split-K): each split
// adds its fp32 partial sums into a workspace, and the split that arrives last (a per-block counter) writes y and
// zeroes the workspace and the counter again for the next call (one launch; CUDA-graph safe).
//
// The same file compiles as C++ (g++ -x c++): the staging index math, the expansion and the fragment layouts are
// shared with the GPU build, and a host emulation of mma (by the PTX fragment layout) lets CPU tests check them.
#include "mma_common.cuh"

enum { CH = 128, WPC = CH / 32, XSB = CH + 16 };  // XSB: x's row stride in halves (288 B: conflict-free 8-byte loads)
// per band and stage: mask words [16][WPC], value offsets [16], then the value buffer (cap x 16 bytes)
enum { MW_BYTES = 16 * WPC * 4, OFF_BYTES = 16 * 4 };

SL_HD uint32_t popc32(uint32_t v) {
#ifdef __CUDACC__
  return __popc(v);
#else
  return (uint32_t)__builtin_popcount(v);
#endif
}

SL_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {  // PTX prmt, default mode; every selector nibble < 8
#ifdef __CUDACC__
  uint32_t d;  // inline PTX: __byte_perm would mask the selector to 3 bits per nibble first (one more instruction)
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
#else
  return host_prmt(a, b, sel);
#endif
}

// A row's packed values in shared memory, addressed in bytes: on the GPU a 32-bit shared-window address (one
// address add per pair, no 64-bit generic pointers), on the host a plain pointer.
#ifdef __CUDACC__
typedef uint32_t VPtr;
SL_HD VPtr vptr(const uint16_t* p) { return (uint32_t)__cvta_generic_to_shared(p); }
SL_HD void load2(VPtr p, uint32_t* v0, uint32_t* v1) {
  unsigned short a, b;
  asm volatile("ld.shared.u16 %0, [%2];\n\tld.shared.u16 %1, [%2+2];" : "=h"(a), "=h"(b) : "r"(p));
  *v0 = a; *v1 = b;
}
#else
typedef const unsigned char* VPtr;
SL_HD VPtr vptr(const uint16_t* p) { return reinterpret_cast<const unsigned char*>(p); }
SL_HD void load2(VPtr p, uint32_t* v0, uint32_t* v1) {
  uint16_t a, b;
  memcpy(&a, p, 2);
  memcpy(&b, p + 2, 2);
  *v0 = a; *v1 = b;
}
#endif

// Columns c, c + 1 of one row as an A-fragment register (column c in the low half). below = 2^c - 1; vb = the row's
// slot advanced to the word's first nonzero. The selector for the final prmt comes from a 4-entry byte table (itself a
// prmt): f = bits c, c + 1 -> 0x3232 (0, 0), 0x3210 (v0, 0), 0x1032 (0, v0), 0x5410 (v0, v1); bytes 2-3 and 6-7 of
// the zero-extended loads are the zeros.
SL_HD uint32_t pair_of(uint32_t w, uint32_t c, uint32_t below, VPtr vb) {
  uint32_t v0, v1;
  load2(vb + 2 * popc32(w & below), &v0, &v1);
  const uint32_t f = (w >> c) & 3u;
  const uint32_t sel = prmt(0x10321032u, 0x54103232u, f * 0x11u + 0x40u);
  return prmt(v0, v1, sel);
}

// The A fragments (16 rows x 16 columns each) of one lane for words [j0, j0 + nj) of one staged chunk: mw = the
// band's mask words [16][WPC], off = where each row's first nonzero sits in the band's value buffer vs (in halves).
SL_HD void chunk_frags(int lane, const uint32_t* mw, const int* off, const uint16_t* vs, uint32_t (*a)[4], int j0 = 0,
                       int nj = WPC) {
  const int g = lane >> 2, q = lane & 3;
  uint32_t w0[WPC], w1[WPC];  // the two rows' mask words of the chunk (one 16-byte shared load each on the GPU)
#ifdef __CUDACC__
  static_assert(WPC == 4, "one uint4 per row");
  const uint4 m0 = *reinterpret_cast<const uint4*>(mw + g * WPC);
  const uint4 m1 = *reinterpret_cast<const uint4*>(mw + (g + 8) * WPC);
  w0[0] = m0.x; w0[1] = m0.y; w0[2] = m0.z; w0[3] = m0.w;
  w1[0] = m1.x; w1[1] = m1.y; w1[2] = m1.z; w1[3] = m1.w;
#else
  for (int j = 0; j < WPC; ++j) { w0[j] = mw[g * WPC + j]; w1[j] = mw[(g + 8) * WPC + j]; }
#endif
  // nonzeros of the words before j0 (another warp's share of the chunk); constant indices only (see below)
  const uint32_t skip0 = (j0 > 0 ? popc32(w0[0]) : 0u) + (j0 > 1 ? popc32(w0[1]) : 0u) + (j0 > 2 ? popc32(w0[2]) : 0u);
  const uint32_t skip1 = (j0 > 0 ? popc32(w1[0]) : 0u) + (j0 > 1 ? popc32(w1[1]) : 0u) + (j0 > 2 ? popc32(w1[2]) : 0u);
  VPtr v0 = vptr(vs + off[g] + skip0);  // each row's next word's first nonzero
  VPtr v1 = vptr(vs + off[g + 8] + skip1);
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int jj = 0; jj < nj; ++jj) {
    // word j0 + jj picked by selects, not an index: j0 differs per warp at run time, and an indexed register
    // array would go to local memory
    const int j = j0 + jj;
    const uint32_t x0 = j & 2 ? (j & 1 ? w0[3] : w0[2]) : (j & 1 ? w0[1] : w0[0]);
    const uint32_t x1 = j & 2 ? (j & 1 ? w1[3] : w1[2]) : (j & 1 ? w1[1] : w1[0]);
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int s = 0; s < 2; ++s) {
      // mma's k index is a sum index, so any column order serves if A and B agree: the fragment's k = 2q, 2q + 1
      // hold columns c, c + 1 and k = 2q + 8, 2q + 9 hold c + 2, c + 3 (c = 4q + 16 s): a lane's 4 columns are
      // contiguous, and its B fragment (x_frag) is one 8-byte load
      const uint32_t c = 4 * q + 16 * s;
      const uint32_t lo = (1u << c) - 1u, hi = (1u << (c + 2)) - 1u;
      a[2 * jj + s][0] = pair_of(x0, c, lo, v0);      // row g,     columns c, c + 1
      a[2 * jj + s][1] = pair_of(x1, c, lo, v1);      // row g + 8, columns c, c + 1
      a[2 * jj + s][2] = pair_of(x0, c + 2, hi, v0);  // row g,     columns c + 2, c + 3
      a[2 * jj + s][3] = pair_of(x1, c + 2, hi, v1);  // row g + 8, columns c + 2, c + 3
    }
    v0 += 2 * popc32(x0);
    v1 += 2 * popc32(x1);
  }
}

// The B fragment of 16 columns (step ks of the chunk) x 8 batch rows (tile nt): x staged as [BP][XSB] halves; columns
// 4q .. 4q + 3 in the order chunk_frags uses.
SL_HD void x_frag(int lane, const uint16_t* xs, int ks, int nt, uint32_t* b) {
  const uint16_t* r = xs + (nt * 8 + (lane >> 2)) * XSB + ks * 16 + 4 * (lane & 3);
#ifdef __CUDACC__
  const uint2 v = *reinterpret_cast<const uint2*>(r);
  b[0] = v.x; b[1] = v.y;
#else
  memcpy(b, r, 8);
#endif
}

// Staging of one row's values: the 16-byte vectors covering values[start:end) (8 halves each), from `al`.
struct Span {  // 32-bit: a matrix has < 2^31 nonzeros (cuda_mma.supports)
  int al;    // first element of the first vector (a multiple of 8)
  int off;   // start - al: where values[start] lands in the row's first vector
  int nvec;  // vectors to copy (<= 17 for 128 columns)
};

SL_HD Span span_of(int start, int end) {
  Span s;
  s.al = start & ~7;
  s.off = start - s.al;
  s.nvec = (end - s.al + 7) >> 3;
  return s;
}

// Bytes of vector v of a span that exist in values (nnz elements): the rest of the 16 bytes is zero-filled.
SL_HD int vec_bytes(const Span& s, int v, int nnz) {
  const int left = nnz - (s.al + 8 * v);
  return left >= 8 ? 16 : left > 0 ? 2 * left : 0;
}

#ifdef __CUDACC__

struct Args {
  const uint16_t* x;
  const uint16_t* vals;
  const uint32_t* words;
  const int* cp;   // (N, n_chunks + 1)
  const int* dst;  // (N, n_chunks): row's first vector in its warp's buffer (prefix over its 16-row band)
  uint16_t* y;
  float* ws;      // (BP, N) fp32 zeros between calls (split-K)
  int* cnt;       // per row block: splits done (zero between calls)
  int nnz;
  int N, K, bsz, ldx, ldy, n_words, n_chunks, per_split;
  int cap;        // 16-byte value vectors per warp buffer: the most any 16-row band's chunk needs
};

// W warps per block in W / KS bands of 16 rows; the KS warps of a band split each chunk's 4 mask words (more warps
// per row, so more warps per SM on layers with few rows: the profile found ~3.7 warps per scheduler, latency-bound),
// stage its rows together, and add their sums at the end.
template <int VT, int BP, int W, int KS>
__global__ void __launch_bounds__(32 * W) bmma_kernel(const Args a) {
  constexpr int NS = 4, R = W / KS, RPW = 16 / KS, LPR = 32 / RPW;  // bands; rows a warp stages; lanes per row
  extern __shared__ uint4 smem4[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem4);
  const int XS_BYTES = BP * XSB * 2, WARP_BYTES = MW_BYTES + OFF_BYTES + 16 * a.cap, STAGE = XS_BYTES + R * WARP_BYTES;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, band = warp / KS, kp = warp % KS;
  const int row0 = blockIdx.x * 16 * R;
  const int c_lo = blockIdx.y * a.per_split, c_hi = min(c_lo + a.per_split, a.n_chunks), nch = c_hi - c_lo;
  // the block's rows' chunk starts (+ row ends) and staging offsets for its chunks, copied once with cp.async (a
  // loop of plain loads stored to shared memory would wait out one memory latency per iteration): no global load
  // on the staging path afterwards
  int* cps = reinterpret_cast<int*>(smem + NS * STAGE + 16);  // + 16: slack for the last buffer's vs[i + 1]
  int* dsts = cps + 16 * R * (nch + 1);
  for (int i = tid; i < 16 * R * (nch + 1); i += 32 * W) {
    const int r = i / (nch + 1), j = i - r * (nch + 1), row = row0 + r;
    const bool ok = row < a.N;
    cp_async4(cps + i, ok ? a.cp + (size_t)row * (a.n_chunks + 1) + c_lo + j : a.cp, ok ? 4 : 0);
    if (j < nch) cp_async4(dsts + r * nch + j, ok ? a.dst + (size_t)row * a.n_chunks + c_lo + j : a.dst, ok ? 4 : 0);
  }
  cp_commit();
  cp_wait<0>();
  __syncthreads();

  // this thread's share of each chunk's x copy (BP rows x 16 vectors), fixed across chunks: sources and targets
  constexpr int XPER = (BP * (CH / 8) + 32 * W - 1) / (32 * W);
  const uint16_t* xsrc[XPER];
  int xdst[XPER], xcol[XPER];
#pragma unroll
  for (int j = 0; j < XPER; ++j) {
    const int i = tid + j * 32 * W, b = i >> 4, v = i & 15;
    const bool ok = i < BP * (CH / 8) && b < a.bsz;
    xsrc[j] = ok ? a.x + (size_t)b * a.ldx + v * 8 : nullptr;
    xdst[j] = i < BP * (CH / 8) ? (b * XSB + v * 8) * 2 : -1;
    xcol[j] = v * 8;
  }
  // this lane stages row r of its band (LPR lanes per row, h = which one)
  const int r = kp * RPW + lane / LPR, h = lane % LPR, row = row0 + 16 * band + r;
  const bool words16 = (a.n_words & 3) == 0;  // K % 128 == 0: a row's 4 words of a chunk are one aligned vector
  const uint32_t* wrow = a.words + (size_t)(row < a.N ? row : 0) * a.n_words;
  const int* rcs = cps + (16 * band + r) * (nch + 1) - c_lo;
  const int* rds = dsts + (16 * band + r) * nch - c_lo;

  const auto issue = [&](int st, int c) {
    unsigned char* S = smem + st * STAGE;
#pragma unroll
    for (int j = 0; j < XPER; ++j) {
      if (xdst[j] < 0) continue;
      const bool ok = xsrc[j] != nullptr && c * CH + xcol[j] < a.K;
      cp_async16(S + xdst[j], ok ? xsrc[j] + c * CH : a.x, ok ? 16 : 0);
    }
    unsigned char* Wp = S + XS_BYTES + band * WARP_BYTES;
    if (words16) {
      if (h == 0) cp_async16(Wp + r * WPC * 4, row < a.N ? wrow + c * WPC : a.words, row < a.N ? 16 : 0);
    } else {
      for (int j = h; j < WPC; j += LPR) {
        const int wi = c * WPC + j;
        const bool ok = row < a.N && wi < a.n_words;
        cp_async4(Wp + (r * WPC + j) * 4, ok ? wrow + wi : a.words, ok ? 4 : 0);
      }
    }
    const Span sp = span_of(rcs[c], rcs[c + 1]);
    const int first = rds[c];  // row r's first vector in the warp's buffer
    if (h == 0) reinterpret_cast<int*>(Wp + MW_BYTES)[r] = 8 * first + sp.off;
    uint16_t* buf = reinterpret_cast<uint16_t*>(Wp + MW_BYTES + OFF_BYTES) + 8 * first;
    // every vector starts inside values (al + 8 v < end <= nnz); only the matrix's very last one can run past it
    const uint16_t* src = a.vals + sp.al;
    const int last = sp.nvec - 1, tail = vec_bytes(sp, last, a.nnz);
    for (int v = h; v < sp.nvec; v += LPR) cp_async16(buf + 8 * v, src + 8 * v, v == last ? tail : 16);
  };

  float acc[BP / 8][4];
#pragma unroll
  for (int t = 0; t < BP / 8; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
#pragma unroll
  for (int s = 0; s < NS - 1; ++s) {
    if (c_lo + s < c_hi) issue(s, c_lo + s);
    cp_commit();
  }
  for (int c = c_lo; c < c_hi; ++c) {
    const int it = c - c_lo;
    if (c + NS - 1 < c_hi) issue((it + NS - 1) % NS, c + NS - 1);
    cp_commit();
    cp_wait<NS - 1>();  // chunk c's group is complete
    __syncthreads();
    const unsigned char* S = smem + (it % NS) * STAGE;
    const unsigned char* Wp = S + XS_BYTES + band * WARP_BYTES;
    uint32_t af[2 * WPC / KS][4];
    chunk_frags(lane, reinterpret_cast<const uint32_t*>(Wp), reinterpret_cast<const int*>(Wp + MW_BYTES),
                reinterpret_cast<const uint16_t*>(Wp + MW_BYTES + OFF_BYTES), af, kp * (WPC / KS), WPC / KS);
#pragma unroll
    for (int ks = 0; ks < 2 * WPC / KS; ++ks) {
#pragma unroll
      for (int t = 0; t < BP / 8; ++t) {
        uint32_t b[2];
        x_frag(lane, reinterpret_cast<const uint16_t*>(S), kp * (2 * WPC / KS) + ks, t, b);
        mma16816<VT>(acc[t], af[ks], b);
      }
    }
    __syncthreads();  // every warp is done with this stage before a later issue() overwrites it
  }

  if (KS > 1) {  // the band's other warps hand their sums to its first warp (the stages are free now)
    float* red = reinterpret_cast<float*>(smem);
    if (kp) {
#pragma unroll
      for (int t = 0; t < BP / 8; ++t)
#pragma unroll
        for (int j = 0; j < 4; ++j) red[((warp * (BP / 8) + t) * 4 + j) * 32 + lane] = acc[t][j];
    }
    __syncthreads();
    if (!kp) {
#pragma unroll
      for (int o = 1; o < KS; ++o)
#pragma unroll
        for (int t = 0; t < BP / 8; ++t)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[t][j] += red[(((warp + o) * (BP / 8) + t) * 4 + j) * 32 + lane];
    }
  }
  // the band's first warp holds its rows' sums (D fragment rows g and g + 8)
  store_rows<VT, BP>(acc, kp == 0, row0 + 16 * band + (lane >> 2), row0, 16 * R, Out{a.y, a.ws, a.cnt, a.N, a.bsz, a.ldy});
}

static size_t smem_bytes(int BP, int W, int KS, int cap, int per_split) {
  const int R = W / KS, NS = 4;
  return (size_t)NS * (BP * XSB * 2 + R * (MW_BYTES + OFF_BYTES + 16 * cap)) + 16 +
         (size_t)16 * R * (2 * per_split + 1) * 4;
}

template <int VT, int BP, int W, int KS>
static int launch(const Args& a, int splits, cudaStream_t stream) {
  static size_t opted = 48 * 1024;
  const size_t smem = smem_bytes(BP, W, KS, a.cap, a.per_split);
  if (smem > opted) {
    const cudaError_t e = cudaFuncSetAttribute(bmma_kernel<VT, BP, W, KS>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    opted = smem;
  }
  const int rows = 16 * (W / KS);
  const dim3 grid((a.N + rows - 1) / rows, splits);
  bmma_kernel<VT, BP, W, KS><<<grid, 32 * W, smem, stream>>>(a);
  return (int)cudaGetLastError();
}

template <int VT, int BP, int W>
static int by_split(int KS, const Args& a, int splits, cudaStream_t s) {
  if (KS == 1) return launch<VT, BP, W, 1>(a, splits, s);
  if (KS == 2) return launch<VT, BP, W, 2>(a, splits, s);
  if (KS == 4) return launch<VT, BP, W, 4>(a, splits, s);
  return -1;
}

template <int VT, int BP>
static int by_warps(int W, int KS, const Args& a, int splits, cudaStream_t s) {
  if (W == 4) return by_split<VT, BP, 4>(KS, a, splits, s);
  if (W == 8) return by_split<VT, BP, 8>(KS, a, splits, s);
  return -1;
}

template <int VT>
static int by_batch(int BP, int W, int KS, const Args& a, int splits, cudaStream_t s) {
  switch (BP) {
    case 8: return by_warps<VT, 8>(W, KS, a, splits, s);
    case 16: return by_warps<VT, 16>(W, KS, a, splits, s);
    case 32: return by_warps<VT, 32>(W, KS, a, splits, s);
    case 64: return by_warps<VT, 64>(W, KS, a, splits, s);
    default: return -1;
  }
}

// y (bsz, N) = x (bsz, K) W^T; BP = padded batch (8 / 16 / 32 / 64), W = warps per block (4 / 8), KS = warps per
// 16-row band (1 / 2 / 4), cap = value vectors per warp buffer, `splits` blocks along K of per_split chunks each (every split
// non-empty). Returns a cudaError_t (0 = launched) or -1.
extern "C" int sl_bmma_launch(int vt, int BP, int W, int KS, const void* x, const void* vals, const void* words,
                              const void* cp, const void* dst, void* y, void* ws, void* cnt, long long nnz, int N, int K, int bsz,
                              int ldx, int ldy, int n_words, int n_chunks, int per_split, int splits, int cap,
                              void* stream) {
  const Args a{static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(vals),
               static_cast<const uint32_t*>(words), static_cast<const int*>(cp), static_cast<const int*>(dst),
               static_cast<uint16_t*>(y),
               static_cast<float*>(ws), static_cast<int*>(cnt), (int)nnz, N, K, bsz, ldx, ldy, n_words, n_chunks,
               per_split, cap};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (vt == VT_F16) return by_batch<VT_F16>(BP, W, KS, a, splits, s);
  if (vt == VT_BF16) return by_batch<VT_BF16>(BP, W, KS, a, splits, s);
  return -1;
}

extern "C" size_t sl_bmma_smem(int BP, int W, int KS, int cap, int per_split) {
  return smem_bytes(BP, W, KS, cap, per_split);
}

extern "C" const char* sl_bmma_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

#else  // host emulation: the staging and expansion above, mma by the PTX fragment layout, float32 output

// The host twin of sl_bmma_launch (one split): x (bsz, K) row-major, y (bsz, N) float32; BP the padded batch.
extern "C" int sl_bmma_host(int vt, int BP, int KS, const void* x, const void* vals, const void* words, const void* cp,
                            const void* dst, float* y, long long nnz, int N, int K, int bsz, int n_words, int n_chunks) {
  if ((vt != VT_F16 && vt != VT_BF16) || BP % 8 || BP < bsz || BP > 64 || (KS != 1 && KS != 2 && KS != 4))
    return -1;
  const uint16_t* xx = static_cast<const uint16_t*>(x);
  const uint16_t* vv = static_cast<const uint16_t*>(vals);
  const uint32_t* ww = static_cast<const uint32_t*>(words);
  const int* cc = static_cast<const int*>(cp);
  const int* dd = static_cast<const int*>(dst);
  uint16_t* xs = new uint16_t[(size_t)BP * XSB];
  uint32_t mw[16 * WPC];
  int off[16];
  uint16_t* vs = new uint16_t[16 * 17 * 8 + 8];  // the worst case: 17 vectors per row
  float(*d)[4] = new float[(size_t)(BP / 8) * 32][4];
  uint32_t af[32][2 * WPC][4], a1[32][4], bf[32][2];
  for (int r0 = 0; r0 < N; r0 += 16) {
    memset(d, 0, sizeof(float) * 4 * 32 * (BP / 8));
    for (int c = 0; c < n_chunks; ++c) {
      // stage as the kernel does: zero-filled x rows / columns, mask words, rows' value vectors back to back
      memset(xs, 0, sizeof(uint16_t) * BP * XSB);
      for (int b = 0; b < bsz; ++b)
        for (int k = 0; k < CH && c * CH + k < K; ++k) xs[b * XSB + k] = xx[(size_t)b * K + c * CH + k];
      memset(vs, 0xFF, sizeof(uint16_t) * (16 * 17 * 8 + 8));  // stale buffer contents: never selected
      for (int r = 0; r < 16; ++r) {
        const int row = r0 + r;
        for (int j = 0; j < WPC; ++j)
          mw[r * WPC + j] = row < N && c * WPC + j < n_words ? ww[(size_t)row * n_words + c * WPC + j] : 0u;
        const int s0 = row < N ? cc[(size_t)row * (n_chunks + 1) + c] : 0;
        const int s1 = row < N ? cc[(size_t)row * (n_chunks + 1) + c + 1] : 0;
        const Span sp = span_of(s0, s1);
        const int first = row < N ? dd[(size_t)row * n_chunks + c] : 0;
        off[r] = 8 * first + sp.off;
        for (int v = 0; v < sp.nvec; ++v) {
          const int nb = vec_bytes(sp, v, (int)nnz);
          memset(vs + 8 * (first + v), 0, 16);
          if (nb) memcpy(vs + 8 * (first + v), vv + sp.al + 8 * v, nb);
        }
      }
      // KS warps per band, each expanding WPC / KS words (its share of the k steps): summed as the kernel does
      const int nj = WPC / KS;
      for (int kp = 0; kp < KS; ++kp) {
        for (int l = 0; l < 32; ++l) chunk_frags(l, mw, off, vs, af[l], kp * nj, nj);
        for (int ks = 0; ks < 2 * nj; ++ks)
          for (int t = 0; t < BP / 8; ++t) {
            for (int l = 0; l < 32; ++l) {
              memcpy(a1[l], af[l][ks], sizeof(a1[l]));
              x_frag(l, xs, kp * 2 * nj + ks, t, bf[l]);
            }
            host_mma(d + 32 * t, a1, bf, vt);
          }
      }
    }
    for (int t = 0; t < BP / 8; ++t)
      for (int l = 0; l < 32; ++l)
        for (int j = 0; j < 4; ++j) {
          const int r = r0 + (l >> 2) + 8 * (j >> 1), b = 8 * t + 2 * (l & 3) + (j & 1);
          if (r < N && b < bsz) y[(size_t)b * N + r] = d[32 * t + l][j];
        }
  }
  delete[] xs;
  delete[] vs;
  delete[] d;
  return 0;
}
#endif
