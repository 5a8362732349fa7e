"""Bytes each per-nonzero GPU layout reads per nonzero, and the speedup ceiling that puts on a memory-bound GEMV
against cuBLAS's 2 bytes per fp16 weight (dense bytes / layout bytes), for uniform random masks and for N:M masks
(where the nmcu layout applies). Computed on the CPU from the layouts the kernels read (`PackedBitmask.nbytes`),
not timed:

    python benchmarks/layout_bytes.py --out benchmarks/results/layout_bytes.json

Why: the batch-1 kernels run at 80-89% of such ceilings (BENCHMARKS.md section 4), so a layout's bytes bound what
any kernel over it can reach before it is written or timed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sparselm.compress import compress_tensor
from sparselm.kernels.gpu import PackedBitmask, cuda_delta4
from sparselm.sparsity.masks import parse_pattern, select_nm

KERNELS = ("grp8cu", "d4cu")


def _stones(w: torch.Tensor) -> int:
    """Zero entries delta4 inserts: (gap - 1) // 15 before each nonzero more than 15 columns past the previous one
    of its row (counted here from the mask, independently of the layout builder)."""
    r, c = (w != 0).nonzero(as_tuple=True)
    same = r[1:] == r[:-1]
    return int(((c[1:] - c[:-1] - 1).clamp(min=0) // cuda_delta4.MAX_STEP)[same].sum())


def measure(n: int, k: int, sparsities, values, seed: int = 0) -> list[dict]:
    rows = []
    for s in sparsities:
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n, k, generator=g)
        w[torch.rand(n, k, generator=g) < s] = 0  # uniform random mask
        nnz = int((w != 0).sum())
        for v in values:
            p = PackedBitmask.from_compressed(compress_tensor(w, v))
            for kern in KERNELS:
                b = p.nbytes(kernel=kern)
                row = {"N": n, "K": k, "sparsity": s, "values": v, "kernel": kern, "bytes": b,
                       "bytes_per_nnz": round(b / nnz, 3), "ceiling_vs_fp16_dense": round(2 * n * k / b, 2)}
                if kern == "d4cu":  # entries beyond the nonzeros: stepping stones (gaps > 15) and chunk tails
                    slots = int(cuda_delta4.layout(p)[3][-1]) * cuda_delta4.CHUNK
                    stones = _stones(w)
                    row.update(stones_per_nnz=round(stones / nnz, 4), tail_slots_per_nnz=round((slots - nnz - stones)
                                                                                                / nnz, 4))
                rows.append(row)
    return rows


def measure_nm(n: int, k: int, patterns, values, seed: int = 0) -> list[dict]:
    """N:M masks (random scores): the nmcu layout's bytes beside the unstructured layouts' on the same matrices."""
    rows = []
    for pat in patterns:
        keep, m = parse_pattern(pat)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n, k, generator=g).masked_fill(select_nm(torch.rand(n, k, generator=g), keep, m), 0.0)
        nnz = int((w != 0).sum())
        for v in values:
            p = PackedBitmask.from_compressed(compress_tensor(w, v))
            for kern in KERNELS + ("nmcu",):
                b = p.nbytes(kernel=kern)
                rows.append({"N": n, "K": k, "sparsity": 1 - keep / m, "mask": pat, "values": v, "kernel": kern,
                             "bytes": b, "bytes_per_nnz": round(b / nnz, 3),
                             "ceiling_vs_fp16_dense": round(2 * n * k / b, 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--k", type=int, default=4096)
    args = ap.parse_args()
    rows = measure(args.n, args.k, (0.5, 0.6, 0.7, 0.75, 0.8, 0.9), ("float16", "int8"))
    rows += measure_nm(args.n, args.k, ("2:4", "1:4", "2:8"), ("float16", "int8"))
    for r in rows:
        extra = f"  stones {r['stones_per_nnz']:.4f} / nnz" if "stones_per_nnz" in r else ""
        print(f"{r['sparsity']:.2f} {r.get('mask', 'uniform'):7s} {r['values']:8s} {r['kernel']:7s} "
              f"{r['bytes_per_nnz']:6.3f} B/nnz  "
              f"ceiling {r['ceiling_vs_fp16_dense']:.2f}x{extra}")
    if args.out is not None:
        args.out.write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "computed": "CPU, not timed",
                                        "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
