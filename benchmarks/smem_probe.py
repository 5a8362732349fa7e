"""Is the per-nonzero decode GEMV bound by its x gather through L1? A CUDA C++ probe over the vc32 words.

    python benchmarks/smem_probe.py --out $OUT/smem_probe.json      # GPU machine (nvcc + ninja), ~2 min

The same batch-1 kernel (one warp per row, each lane one 32-bit word = column << 16 | fp16 value per step, UNROLL
words in flight, a warp-shuffle reduction) is built twice: gathering x through L1 (`__ldg`, as the Triton vc32
kernel does) and gathering it from a copy of x in shared memory, staged once per persistent block with 16-byte
loads. If the shared-memory variant streams the words measurably faster at the same bytes, the L1 gather is the
bound (docs/notes/gpu.md, hypothesis 1) and the product kernels should stage x; if both run alike, it is not.
A third kernel reads the issue's own format (mask words + packed fp16 values: 2.5 bytes per nonzero at 75%
against vc32's 4), one mask word per lane with per-nonzero bit enumeration, x from L1 or shared memory: if the
gather is the bound, this is the kernel that can approach the 3.2x byte ratio of that format.
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

// The issue's own format: per row ceil(K/32) mask words + the nonzeros packed in row order (2.5 bytes per nonzero
// at 75%, vc32: 4). A warp walks a row 32 mask words (1,024 columns) per step: each lane takes one word, a warp
// scan of popcounts gives each lane its first value, the step's values are staged into the warp's shared buffer
// with coalesced loads (so the per-lane reads below are shared-memory reads, not scattered global ones), and each
// lane enumerates its set bits (ffs, clear) — work per nonzero, not per position.
template <bool SMEM>
__global__ void bm_gemv(const __half* __restrict__ x, const unsigned* __restrict__ words,
                        const __half* __restrict__ vals, const int* __restrict__ rp, __half* __restrict__ y,
                        int N, int W, int K8) {
  extern __shared__ int4 sh4[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const __half* xs = reinterpret_cast<const __half*>(sh4);
  __half* vbuf = reinterpret_cast<__half*>(sh4) + (SMEM ? K8 * 8 : 0) + warp * 1024;
  if (SMEM) {
    const int4* src = reinterpret_cast<const int4*>(x);
    for (int i = threadIdx.x; i < K8; i += blockDim.x) sh4[i] = __ldg(src + i);
    __syncthreads();
  }
  for (int r = blockIdx.x * nwarps + warp; r < N; r += gridDim.x * nwarps) {
    int base = __ldg(rp + r);
    const unsigned* wr = words + (size_t)r * W;
    float acc = 0.f;
    for (int w0 = 0; w0 < W; w0 += 32) {
      const int wi = w0 + lane;
      unsigned m = wi < W ? __ldg(wr + wi) : 0u;
      const int c = __popc(m);
      int incl = c;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
      }
      const int total = __shfl_sync(0xffffffffu, incl, 31);
      for (int i = lane; i < total; i += 32) vbuf[i] = vals[base + i];
      __syncwarp();
      int off = incl - c;
      const int col0 = wi * 32;
      while (m) {
        const int b = __ffs(m) - 1;
        m &= m - 1;
        const __half xv = SMEM ? xs[col0 + b] : __ldg(x + col0 + b);
        acc = fmaf(__half2float(vbuf[off++]), __half2float(xv), acc);
      }
      __syncwarp();
      base += total;
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) y[r] = __float2half(acc);
  }
}

torch::Tensor bm_gemv_run(torch::Tensor x, torch::Tensor words, torch::Tensor vals, torch::Tensor rp,
                          torch::Tensor y, int64_t smem, int64_t blocks, int64_t threads) {
  const int N = y.size(0), W = words.size(1), K8 = x.size(0) / 8;
  const size_t shm = (smem ? (size_t)K8 * 16 : 0) + (size_t)(threads / 32) * 1024 * 2;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const __half* xp = reinterpret_cast<const __half*>(x.data_ptr<at::Half>());
  const __half* vp = reinterpret_cast<const __half*>(vals.data_ptr<at::Half>());
  __half* yp = reinterpret_cast<__half*>(y.data_ptr<at::Half>());
  const unsigned* wp = reinterpret_cast<const unsigned*>(words.data_ptr<int>());
  const int* rpp = rp.data_ptr<int>();
  // raise the dynamic shared-memory limit once per size (the first, uncaptured call), never inside a graph capture
  static size_t allowed[2] = {0, 0};
  if (shm > allowed[smem ? 1 : 0]) {
    if (smem) cudaFuncSetAttribute(bm_gemv<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm);
    else cudaFuncSetAttribute(bm_gemv<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm);
    allowed[smem ? 1 : 0] = shm;
  }
  if (smem) bm_gemv<true><<<blocks, threads, shm, stream>>>(xp, wp, vp, rpp, yp, N, W, K8);
  else bm_gemv<false><<<blocks, threads, shm, stream>>>(xp, wp, vp, rpp, yp, N, W, K8);
  return y;
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
            "int64_t smem, int64_t unroll, int64_t blocks, int64_t threads);\n"
            "torch::Tensor bm_gemv_run(torch::Tensor x, torch::Tensor words, torch::Tensor vals, torch::Tensor rp, "
            "torch::Tensor y, int64_t smem, int64_t blocks, int64_t threads);")
ROTATE_BYTES = 512 << 20  # weight copies per timing: well past the 60 MB L2


def build():
    from torch.utils.cpp_extension import load_inline

    return load_inline(name="sparselm_smem_probe", cpp_sources=CPP_DECL, cuda_sources=CUDA_SRC,
                       functions=["vc32_gemv_run", "bm_gemv_run"], extra_cuda_cflags=["-O3", "--use_fast_math"],
                       verbose=False)


FAMILIES = {"cuda-l1": "vc32 words, x via L1", "cuda-smem": "vc32 words, x in shared memory",
            "triton": "Triton vc32", "cuda-bitmask": "bitmask + packed values"}


def plot(data: dict, path: Path) -> None:
    """Best speedup over cuBLAS per kernel family, one group of bars per (shape, sparsity)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[tuple, dict[str, float]] = {}
    for r in data["rows"]:
        fam = next((f for f in ("cuda-bitmask", "cuda-smem", "cuda-l1", "triton") if r["variant"].startswith(f)), None)
        case = best.setdefault((r["N"], r["K"], r["sparsity"]), {})
        if fam is not None:
            case[fam] = max(case.get(fam, 0.0), r["speedup"])
    cases = sorted(best)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(cases)), 4))
    width = 0.8 / len(FAMILIES)
    for i, (fam, label) in enumerate(FAMILIES.items()):
        ax.bar([c + i * width for c in range(len(cases))], [best[c].get(fam, 0.0) for c in cases], width, label=label)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))],
                  [f"{n}x{k}\n{s:.0%}" for n, k, s in cases], fontsize=8)
    ax.set_ylabel("speedup over cuBLAS fp16 (batch 1)")
    ax.set_title(f"x gathered through L1 vs shared memory ({data.get('device', '')})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x11008,11008x4096,4096x4096")
    ap.add_argument("--sparsities", default="0.5,0.75,0.9")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="only plot a recorded JSON (PNG beside it); no GPU")
    args = ap.parse_args()
    if args.plot is not None:
        plot(json.loads(args.plot.read_text()), args.plot.with_suffix(".png"))
        return

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
                if err > 1e-2:  # recorded, not timed: one wrong variant must not lose the others
                    rows.append({**base, "variant": f"cuda-vc32-smem{smem}-u{unroll}", "error": f"rel err {err:.3g}"})
                    continue
                ms = time_graph([lambda q=q: ext.vc32_gemv_run(xpad, q, rp, y, smem, unroll, blocks, threads)
                                 for q in wcopies])
                rows.append({**base, "variant": f"cuda-{'smem' if smem else 'l1'}-u{unroll}-b{bps}x{threads}",
                             "ms": ms, "rel_err": err})
            del wcopies
            # the bitmask format itself: mask words + packed values (+ row starts)
            bm_words, bm_vals, bm_rp = p.words.contiguous(), p.values.contiguous(), p.row_ptr.to(torch.int32)
            bbytes = bm_words.numel() * 4 + bm_vals.numel() * 2 + bm_rp.numel() * 4
            nb = max(2, math.ceil(ROTATE_BYTES / bbytes))
            bcopies = [(bm_words, bm_vals)] + [(bm_words.clone(), bm_vals.clone()) for _ in range(nb - 1)]
            for smem in (0, 1):
                for bps, threads in ((2, 512), (4, 256), (8, 128)):
                    blocks = min(sms * bps, math.ceil(n / (threads // 32)))
                    ext.bm_gemv_run(xpad, bm_words, bm_vals, bm_rp, y, smem, blocks, threads)
                    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
                    if err > 1e-2:
                        rows.append({**base, "variant": f"cuda-bitmask-smem{smem}", "error": f"rel err {err:.3g}"})
                        continue
                    ms = time_graph([lambda q=q: ext.bm_gemv_run(xpad, q[0], q[1], bm_rp, y, smem, blocks, threads)
                                     for q in bcopies])
                    rows.append({**base, "variant": f"cuda-bitmask-{'smem' if smem else 'l1'}-b{bps}x{threads}",
                                 "ms": ms, "rel_err": err, "format_bytes": bbytes})
            del bcopies
            for r in rows:
                if r["N"] == n and r["K"] == k and r["sparsity"] == s and "speedup" not in r and "ms" in r:
                    r["speedup"] = round(dense_ms / r["ms"], 3)
                    r["T_nnz_per_s"] = round(ct.nnz / (r["ms"] * 1e-3) / 1e12, 3)
                    r["GBps_own_bytes"] = round(r.get("format_bytes", wbytes) / (r["ms"] * 1e-3) / 1e9)
            best = sorted((r for r in rows if r["N"] == n and r["K"] == k and r["sparsity"] == s and "ms" in r),
                          key=lambda r: r["ms"])[:4]
            print(f"{n}x{k} {s:.2f} dense {dense_ms * 1e3:.1f} us | " + " | ".join(
                f"{r['variant']} {r['ms'] * 1e3:.1f} us {r['speedup']}x" for r in best), flush=True)
    out = {"device": torch.cuda.get_device_name(0), "what": "vc32 words, batch 1, fp16: x gathered through L1 vs "
           "from shared memory (CUDA C++ probe), the Triton vc32 kernel and cuBLAS in the same run",
           "command": "python benchmarks/smem_probe.py", "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        plot(out, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
