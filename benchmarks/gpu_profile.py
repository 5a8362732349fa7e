"""Hardware counters of the batch-1 decode kernels, to find what bounds them (run under Nsight Compute).

    bash benchmarks/device_profile.sh        # on the GPU machine: ncu around this script -> $OUT/gpu_profile.*

Why: every per-nonzero kernel tops out near the same nonzero rate (0.5-0.85 T nonzeros/s on an H200, lower at
90% sparsity than at 50%), whatever its bytes per nonzero (vc32 4 B, grp8i 3 B, int8 2 B), so bytes are not the
bound; offline instruction counts put the issue rate at ~40% of peak. Two hypotheses fit the timings: (1) the x
gather is bound by the L1's sector throughput (a warp's 32 gathers touch ~8-16 distinct 32-byte sectors; the
sparser the matrix, the wider the span, the lower the rate), (2) a fixed per-launch latency (the row_ptr -> words
-> x dependency chain, ramp and tail) of a few microseconds. The counters separate them: L1 sectors per request
and the lg/mio-throttle and long-scoreboard stall shares for (1), the duration of a 90%-sparse launch against its
bytes for (2). The kernels launched between cudaProfilerStart/Stop are exactly the list this script prints as
JSON, in order, so the ncu rows can be matched to (shape, sparsity, kernel config).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nm_ab import _build, nm_build  # noqa: E402

DEFAULT_CONFIGS = ("vc32v1-n1t512b1w2", "grp8v4-n1t1024b1w4-c16", "grp8v4-n1t512b1w2-c16", "n2k2048b1fs1w4p2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x11008,11008x4096", help="NxK, comma-separated")
    ap.add_argument("--sparsities", default="0.5,0.75,0.9")
    ap.add_argument("--values", default="float16,int8")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="SpmmConfig keys (batch-1 candidates)")
    ap.add_argument("--batch", type=int, default=1, help="activation rows (configs: that batch's candidates)")
    ap.add_argument("--pattern", default="", help="N:M masks (e.g. 1:4) instead of uniform random at --sparsities")
    ap.add_argument("--out", default=None, help="write the launch list as JSON here too")
    ap.add_argument("--nm-build", action="append", default=[], metavar="NAME=DIR", type=_build,
                    help="also launch every nmcu config with another build of nm_gemv.cu (DIR holds it and its "
                    "*.cuh, e.g. from `git show REV:...`); its rows' kernel is KEY@NAME (repeatable)")
    args = ap.parse_args()

    from sparselm.compress.format import compress_tensor, decompress
    from sparselm.kernels.gpu.ops import PackedBitmask, spmm
    from sparselm.runtime.gpu_backend import candidate_configs
    from sparselm.sparsity.masks import parse_pattern, select_nm

    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the Triton interpreter (a smoke test, no ncu)
    others = _nm_builds(args.nm_build)
    by_key = {c.key(): c for c in candidate_configs(args.batch, pipelined=True)}
    unknown = [k for k in args.configs.split(",") if k not in by_key]
    if unknown:
        raise SystemExit(f"unknown config keys {unknown}; batch-1 keys: {sorted(by_key)}")
    torch.manual_seed(0)
    plan, calls = [], []
    for shape in args.shapes.split(","):
        n, k = map(int, shape.lower().split("x"))
        x = torch.randn(args.batch, k, device=dev, dtype=torch.float16)
        dense = torch.randn(n, k, device=dev, dtype=torch.float16)
        calls.append(lambda x=x, d=dense: F.linear(x, d))
        plan.append({"N": n, "K": k, "sparsity": 0.0, "values": "float16", "kernel": "cublas"})
        nm = parse_pattern(args.pattern) if args.pattern else None
        for s in [1 - nm[0] / nm[1]] if nm else map(float, args.sparsities.split(",")):
            if nm:  # keep N of every M columns, by random scores
                w = torch.randn(n, k, device=dev) * ~select_nm(torch.rand(n, k, device=dev), *nm)
            else:
                w = torch.randn(n, k, device=dev) * (torch.rand(n, k, device=dev) >= s)
            for vname in args.values.split(","):
                ct = compress_tensor(w.half(), values_dtype=vname)
                p = PackedBitmask.from_compressed(ct)
                ref = x.float() @ decompress(ct, torch.float32).T
                for key in args.configs.split(","):
                    cfg = by_key[key]
                    if not p.supports(cfg):
                        continue
                    got = spmm(x, p, cfg).float()  # also builds the kernel's repack before profiling starts
                    err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
                    if err > 2e-2:
                        raise SystemExit(f"{shape} {s} {vname} {key}: relative error {err:.3g}, not profiled")
                    nbytes = p.nbytes(cfg.block_k, cfg.kernel, cfg.vec)  # the bytes this kernel reads
                    calls.append(lambda x=x, p=p, cfg=cfg: spmm(x, p, cfg))
                    plan.append({"N": n, "K": k, "sparsity": s, "values": vname, "kernel": key, "nnz": ct.nnz,
                                 "format_bytes": nbytes})
                    for name, lib in (others.items() if cfg.kernel == "nmcu" else ()):  # the same launch, old code
                        calls.append(lambda x=x, p=p, cfg=cfg, lib=lib: _with_build(lib, spmm, x, p, cfg))
                        plan.append(dict(plan[-1], kernel=f"{key}@{name}"))
    for fn in calls:  # compile and warm up outside the profiled range
        fn()
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
    for fn in calls:
        fn()
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
    text = json.dumps({"command": " ".join(["python"] + sys.argv), "launches": plan})
    print("LAUNCHES " + text, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def _nm_builds(specs: list[tuple[str, Path]]) -> dict:
    """(NAME, DIR) -> the cuda_build library of DIR/nm_gemv.cu (built now, so the build is not profiled)."""
    if not specs:
        return {}
    from sparselm.kernels.gpu import cuda_build, cuda_nm

    libs = {}
    for name, d in specs:
        if not (d / "nm_gemv.cu").is_file():
            raise SystemExit(f"--nm-build {name}: no {d / 'nm_gemv.cu'}")
        libs[name] = cuda_build.Library(d / "nm_gemv.cu", cuda_nm._declare)
        if not libs[name].available():
            raise SystemExit(f"--nm-build {name}: {libs[name].build_error()}")
    return libs


def _with_build(lib, fn, *args):
    with nm_build(lib):
        return fn(*args)


if __name__ == "__main__":
    main()
