"""Same-run A/B of two builds of the batch-1 N:M kernel (nm_gemv.cu, "nmcu"): this tree's and another version's.

    git show REV:src/sparselm/kernels/gpu/nm_gemv.cu > OLD/nm_gemv.cu     # + every *.cuh of that directory
    PYTHONPATH=src python benchmarks/nm_ab.py --old OLD --out $OUT/nm_ab.json           # 1:4, fp16 + int8, ~2 min
    ... nm_ab.py --build nostage=DIR1 --build empty=DIR2 --shapes 4096x4096 --out ...   # any number of builds

Why: absolute kernel times move a few percent between machine starts, more than a change of a few instructions per
step is worth. Here both builds run on the same matrices in the same process, config by config in alternation
(round-robin, `--rounds` times), and each build's best config is compared with its own median, beside cuBLAS dense
timed in the same run. Every launch candidate of autotune's batch-1 nmcu grid (pair table and 16-bit staging) is
timed for both builds.

Only this tree's outputs are checked against a float64 reference: the other build reads this tree's layout, which
may differ from its own (int8 codes are stored biased since session 30), so its outputs can be wrong while its time
is still its time (the kernel has no data-dependent control flow). `floor_us` is the graph-replay time of a
one-element kernel: the per-launch cost no kernel can go under. Builds other than this tree launch 16-warp
pair-table blocks at 3 per SM with the 1-block bound unless named by `--forty` (older sources lack the 40-register
instance). `copy_GBps` is the device-to-device copy
bandwidth of the same run (read + written bytes); each build's `copy_frac` is its bandwidth on the compressed
bytes over it (the issue's goal: 0.8).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_kernels import ROTATE_BYTES, random_sparse  # noqa: E402

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008), (14336, 4096), (4096, 14336)]


def run(args) -> dict:
    from torch.nn import functional as F

    from sparselm.compress.format import compress_tensor, decompress
    from sparselm.kernels.gpu import cuda_build, cuda_nm
    from sparselm.kernels.gpu.ops import PackedBitmask, spmm
    from sparselm.kernels.gpu.timing import copy_bandwidth_gbps, time_graph
    from sparselm.runtime.gpu_backend import nmcu_configs

    new_lib = cuda_nm._LIB
    builds = dict(args.build or [])
    if args.old:
        builds["old"] = args.old
    if not builds or "new" in builds:
        raise SystemExit("give --old DIR and / or --build NAME=DIR (NAME not 'new': that is this tree)")
    libs = {"new": new_lib, **{name: cuda_build.Library(Path(d) / "nm_gemv.cu", cuda_nm._declare)
                               for name, d in builds.items()}}
    # other builds keep the 1-block launch where this tree has the 40-register one, unless named by --forty
    forty = {name: name == "new" or name in (args.forty or []) for name in libs}
    failed = {name: lib.build_error() for name, lib in libs.items() if not lib.available()}
    if failed:
        raise SystemExit(f"build failed: {failed}")
    one = torch.zeros(1, device="cuda")
    floor_ms = time_graph([lambda: one.add_(1.0) for _ in range(64)])
    copy_gbps = copy_bandwidth_gbps()  # the bandwidth goal: 80% of this, on the compressed bytes
    rows = []
    for n, k in args.shapes:
        dense = [torch.randn(n, k, device="cuda", dtype=torch.float16)
                 for _ in range(max(2, math.ceil(ROTATE_BYTES / (n * k * 2))))]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        dense_ms = [time_graph([lambda d=d: F.linear(x, d) for d in dense])]
        for values in args.values.split(","):
            ct = compress_tensor(random_sparse(n, k, 0.75, "1:4"), values_dtype=values)
            p = PackedBitmask.from_compressed(ct)
            ref = x.double() @ decompress(ct, torch.float64).to("cuda").T
            cfgs = [c for c in nmcu_configs(1) if p.supports(c)]
            fb = p.nbytes(kernel="nmcu")
            ps = [p] + [p.clone() for _ in range(max(2, math.ceil(ROTATE_BYTES / fb)) - 1)]
            times: dict = {(lib, c.key()): [] for lib in libs for c in cfgs}
            errs = {}
            for c in cfgs:  # this tree's build must be right before it is timed
                y = spmm(x, p, c)
                errs[c.key()] = ((y.double() - ref).norm() / ref.norm()).item()
                if not errs[c.key()] < 2e-3:
                    raise SystemExit(f"{n}x{k} {values} {c.key()}: rel err {errs[c.key()]:.2e}")
            for _ in range(args.rounds):
                for c in cfgs:
                    for name, lib in libs.items():
                        with nm_build(lib, forty[name]):
                            times[name, c.key()].append(time_graph([lambda q=q: spmm(x, q, c) for q in ps]))
                dense_ms.append(time_graph([lambda d=d: F.linear(x, d) for d in dense]))
            med = {key: statistics.median(v) for key, v in times.items()}
            best = {name: min(((cfg, t) for (lib, cfg), t in med.items() if lib == name), key=lambda r: r[1])
                    for name in libs}
            d = statistics.median(dense_ms)
            row = dict(N=n, K=k, batch=1, sparsity=0.75, pattern="1:4", values=values, dense_ms=round(d, 5),
                       format_bytes=fb, rounds=args.rounds,
                       **{f"{name}_{f}": v for name, (cfg, t) in best.items()
                          for f, v in (("ms", round(t, 5)), ("cfg", cfg), ("speedup", round(d / t, 3)),
                                       ("GBps", round(fb / (t * 1e-3) / 1e9, 1)),
                                       ("copy_frac", round(fb / (t * 1e-3) / 1e9 / copy_gbps, 3)))},
                       **{f"new_vs_{name}": round(best[name][1] / best["new"][1], 4) for name in builds},
                       rel_err=max(errs.values()),
                       ms_by_cfg={f"{lib}:{cfg}": round(t, 5) for (lib, cfg), t in med.items()})
            rows.append(row)
            print(f"{n:>6}x{k:<6} {values:>8} dense {d * 1e3:6.2f}us " + " ".join(
                f"{name} {t * 1e3:6.2f}us (x{d / t:.3f}, {cfg})" for name, (cfg, t) in best.items()), flush=True)
            del ps
        del dense
    return {"command": " ".join(["python"] + sys.argv), "device": torch.cuda.get_device_name(),
            "floor_us": round(floor_ms * 1e3, 3), "copy_GBps": round(copy_gbps, 1),
            "builds": {name: str(d) for name, d in builds.items()},
            **({"old": str(args.old)} if args.old else {}), "rows": rows}


@contextmanager
def nm_build(lib, forty: bool = True):
    """Inside, cuda_nm launches its kernels from `lib` (a cuda_build.Library of another nm_gemv.cu); forty: that
    build has the 40-register pair-table instance (cuda_nm.min_blocks; sources from session 32 on)."""
    from sparselm.kernels.gpu import cuda_nm

    kept = cuda_nm._LIB, cuda_nm.min_blocks
    cuda_nm._LIB, cuda_nm.min_blocks = lib, functools.partial(kept[1], forty=forty)
    try:
        yield
    finally:
        cuda_nm._LIB, cuda_nm.min_blocks = kept


def _build(text: str) -> tuple[str, Path]:
    name, sep, d = text.partition("=")
    if not sep or not name.isidentifier() or not d:
        raise argparse.ArgumentTypeError(f"NAME=DIR, got {text!r}")
    return name, Path(d)


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in s.split("x", 1)) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"NxK,..., got {text!r}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, help="a directory with the other nm_gemv.cu and its *.cuh (build 'old')")
    ap.add_argument("--build", type=_build, action="append", help="NAME=DIR: one more build to time (repeatable)")
    ap.add_argument("--forty", action="append",
                    help="NAME: a build that has the 40-register pair-table launch (cuda_nm.min_blocks; repeatable)")
    ap.add_argument("--shapes", type=_shapes, default=SHAPES, help="NxK,... (default: the six 7B / 8B shapes)")
    ap.add_argument("--values", default="float16,int8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("nm_ab.py needs a CUDA GPU")
    t0 = time.time()
    out = run(args)
    out["wall_s"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} ({out['wall_s']} s)")


if __name__ == "__main__":
    main()
