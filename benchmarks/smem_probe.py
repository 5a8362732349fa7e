"""Is the per-nonzero decode GEMV bound by its x gather through L1? A CUDA C++ probe over the vc32 words.

    python benchmarks/smem_probe.py --out $OUT/smem_probe.json      # GPU machine (nvcc + ninja), ~2 min

The same batch-1 kernel (one warp per row, each lane one 32-bit word = column << 16 | fp16 value per step, UNROLL
words in flight, a warp-shuffle reduction) is built twice: gathering x through L1 (`__ldg`, as the Triton vc32
kernel does) and gathering it from a copy of x in shared memory, staged once per persistent block with 16-byte
loads. If the shared-memory variant streams the words measurably faster at the same bytes, the L1 gather is the
bound (docs/notes/gpu.md, hypothesis 1) and the product kernels should stage x; if both run alike, it is not.
The Triton vc32 kernel and cuBLAS are timed in the same run on the same matrices (CUDA-graph replay over weight
copies that exceed the L2, as benchmarks/gpu_kernels.py), after a correctness check against a dense reference.

A probe, not product code: it is compiled at run time with torch.utils.cpp_extension.load_inline.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch.nn import functional as F

CUDA_SRC = r"""
#include <cuda_fp16.h>
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

// y[r] = sum over row r's words of value(word) * x[column(word)]; rows walked by warps, persistent blocks.
template <bool SMEM, int UNROLL>
__global__ void vc32_gemv(const __half* __restrict__ x, const int* __restrict__ words, const int* __restrict__ rp,
                          __half* __restrict__ y, int N, int K8) {
  extern __shared__ int4 xs4[];
  const __half* xs = reinterpret_cast<const __half*>(xs4);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (SMEM) {  // x (K padded to a multiple of 8 halves) copied once per block, 16 bytes per thread per step
    const int4* src = reinterpret_cast<const int4*>(x);
    for (int i = threadIdx.x; i < K8; i += blockDim.x) xs4[i] = __ldg(src + i);
    __syncthreads();
  }
  for (int r = blockIdx.x * nwarps + warp; r < N; r += gridDim.x * nwarps) {
    const int s = __ldg(rp + r), e = __ldg(rp + r + 1);
    float acc = 0.f;
    for (int i = s + lane; i < e; i += 32 * UNROLL) {
      unsigned w[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int j = i + 32 * u;
        w[u] = j < e ? (unsigned)__ldg(words + j) : 0u;  // word 0 = value 0 at column 0: harmless
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int col = w[u] >> 16;
        const __half v = __ushort_as_half((unsigned short)(w[u] & 0xFFFFu));
        const __half xv = SMEM ? xs[col] : __ldg(x + col);
        acc = fmaf(__half2float(v), __half2float(xv), acc);
      }
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) y[r] = __float2half(acc);
  }
}

torch::Tensor vc32_gemv_run(torch::Tensor x, torch::Tensor words, torch::Tensor rp, torch::Tensor y,
                            int64_t smem, int64_t unroll, int64_t blocks, int64_t threads) {
  const int N = y.size(0), K8 = x.size(0) / 8;
  const size_t shm = smem ? (size_t)K8 * 16 : 0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const __half* xp = reinterpret_cast<const __half*>(x.data_ptr<at::Half>());
  __half* yp = reinterpret_cast<__half*>(y.data_ptr<at::Half>());
  const int* wp = words.data_ptr<int>();
  const int* rpp = rp.data_ptr<int>();
#define LAUNCH(S, U) do { \
    if (shm > 48 * 1024) cudaFuncSetAttribute(vc32_gemv<S, U>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm); \
    vc32_gemv<S, U><<<blocks, threads, shm, stream>>>(xp, wp, rpp, yp, N, K8); } while (0)
  if (smem) { if (unroll == 4) LAUNCH(true, 4); else if (unroll == 2) LAUNCH(true, 2); else LAUNCH(true, 1); }
  else { if (unroll == 4) LAUNCH(false, 4); else if (unroll == 2) LAUNCH(false, 2); else LAUNCH(false, 1); }
#undef LAUNCH
  return y;
}
"""
CPP_DECL = ("torch::Tensor vc32_gemv_run(torch::Tensor x, torch::Tensor words, torch::Tensor rp, torch::Tensor y, "
            "int64_t smem, int64_t unroll, int64_t blocks, int64_t threads);")
ROTATE_BYTES = 512 << 20  # weight copies per timing: well past the 60 MB L2


def build():
    from torch.utils.cpp_extension import load_inline

    return load_inline(name="sparselm_smem_probe", cpp_sources=CPP_DECL, cuda_sources=CUDA_SRC,
                       functions=["vc32_gemv_run"], extra_cuda_cflags=["-O3", "--use_fast_math"], verbose=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x11008,11008x4096,4096x4096")
    ap.add_argument("--sparsities", default="0.5,0.75,0.9")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from sparselm.compress.format import compress_tensor, decompress
    from sparselm.kernels.gpu.ops import PackedBitmask, SpmmConfig, spmm
    from sparselm.kernels.gpu.timing import time_graph

    t0 = time.time()
    ext = build()
    print(f"built in {time.time() - t0:.0f} s", flush=True)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    variants = [(smem, unroll, blocks_per_sm, threads) for smem in (0, 1) for unroll in (1, 4)
                for blocks_per_sm, threads in ((2, 512), (4, 256), (8, 128))]
    triton_cfgs = [SpmmConfig(kernel="vc32", block_n=1, block_k=t, num_warps=w) for t, w in ((512, 2), (1024, 4))]
    rows = []
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        xpad = torch.zeros(math.ceil(k / 8) * 8, device="cuda", dtype=torch.float16)
        xpad[:k] = x[0]
        copies = max(2, math.ceil(ROTATE_BYTES / (n * k * 2)))
        dense = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(copies)]
        dense_ms = time_graph([lambda d=d: F.linear(x, d) for d in dense])
        del dense
        for s in map(float, args.sparsities.split(",")):
            w = (torch.randn(n, k, device="cuda") * (torch.rand(n, k, device="cuda") >= s)).half()
            ct = compress_tensor(w, values_dtype="float16")
            p = PackedBitmask.from_compressed(ct)
            words, rp = p.vc32(1)
            ref = (x.double() @ decompress(ct, torch.float32).double().T)[0]
            wbytes = words.numel() * 4 + rp.numel() * 4
            ncopy = max(2, math.ceil(ROTATE_BYTES / wbytes))
            base = {"N": n, "K": k, "sparsity": s, "nnz": ct.nnz, "word_bytes": wbytes, "dense_ms": dense_ms}
            for cfg in triton_cfgs:
                ps = [p] + [p.clone() for _ in range(min(ncopy, 8) - 1)]
                ms = time_graph([lambda q=q, c=cfg: spmm(x, q, c) for q in ps])
                rows.append({**base, "variant": "triton-" + cfg.key(), "ms": ms})
                del ps
            wcopies = [words] + [words.clone() for _ in range(ncopy - 1)]
            y = torch.empty(n, device="cuda", dtype=torch.float16)
            for smem, unroll, bps, threads in variants:
                blocks = min(sms * bps, math.ceil(n / (threads // 32)))
                ext.vc32_gemv_run(xpad, words, rp, y, smem, unroll, blocks, threads)
                err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
                if err > 1e-2:
                    raise SystemExit(f"{shape} {s} smem={smem} unroll={unroll}: relative error {err:.3g}")
                ms = time_graph([lambda q=q: ext.vc32_gemv_run(xpad, q, rp, y, smem, unroll, blocks, threads)
                                 for q in wcopies])
                rows.append({**base, "variant": f"cuda-{'smem' if smem else 'l1'}-u{unroll}-b{bps}x{threads}",
                             "ms": ms, "rel_err": err})
            del wcopies
            for r in rows:
                if r["N"] == n and r["K"] == k and r["sparsity"] == s and "speedup" not in r:
                    r["speedup"] = round(dense_ms / r["ms"], 3)
                    r["T_nnz_per_s"] = round(ct.nnz / (r["ms"] * 1e-3) / 1e12, 3)
                    r["GBps_words"] = round(wbytes / (r["ms"] * 1e-3) / 1e9)
            best = sorted((r for r in rows if r["N"] == n and r["K"] == k and r["sparsity"] == s),
                          key=lambda r: r["ms"])[:4]
            print(f"{n}x{k} {s:.2f} dense {dense_ms * 1e3:.1f} us | " + " | ".join(
                f"{r['variant']} {r['ms'] * 1e3:.1f} us {r['speedup']}x" for r in best), flush=True)
    out = {"device": torch.cuda.get_device_name(0), "what": "vc32 words, batch 1, fp16: x gathered through L1 vs "
           "from shared memory (CUDA C++ probe), the Triton vc32 kernel and cuBLAS in the same run",
           "command": "python benchmarks/smem_probe.py", "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
