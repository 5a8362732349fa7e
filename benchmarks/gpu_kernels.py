"""Bitmask sparse GEMV/GEMM (Triton) vs cuBLAS dense fp16 on one GPU: correctness at full shapes, then timings.

    PYTHONPATH=src python benchmarks/gpu_kernels.py --out $OUT/gpu_kernels.json          # the full grid (~4 min)
    PYTHONPATH=src python benchmarks/gpu_kernels.py --quick --out /tmp/k.json            # 1 shape, smoke
    PYTHONPATH=src python benchmarks/gpu_kernels.py --grid decode --kernels vc32,vc32t,grp8 --out $OUT/k.json
                                                        # the decode shapes (fused qkv / gate-up too), batch <= 16
    PYTHONPATH=src python benchmarks/gpu_kernels.py --grid batched --kernels bmma,grp8cu --all-configs --out $OUT/k.json
    PYTHONPATH=src python benchmarks/gpu_kernels.py --grid nmb --kernels nmsp,tmma,nmcu --out $OUT/k.json
                                                        # N:M masks at batch 1-64 (sparse tensor cores, mma.sp)
    python benchmarks/gpu_kernels.py --plot benchmarks/results/gpu_kernels.json          # PNG beside the JSON

Protocol (BENCHMARKS.md): random values, random uniform mask at the stated sparsity (plus one non-uniform
"magnitude" mask), dense cuBLAS baseline in the same run; each timing replays a CUDA graph over enough weight
copies that their total exceeds 200 MB (> 3x the 60 MB L2), median of 20 replays. format_bytes counts everything
the kernel reads for W: mask words, values, scales and chunk_ptr (bitmask kernel), or values, scales, cols8 and
cp256 (csr8 kernel; the mask is not read), or the 32-bit words and row starts (vc32), or the groups' values,
offsets, bases and starts (grp8). Every row also lists the best time of each kernel family.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROTATE_BYTES = 256 << 20  # weight copies per timing total at least this much: > 4x the H200's 60 MB L2
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336)]
SPARSITIES = [0.5, 0.6, 0.7, 0.75, 0.8, 0.9]
BATCHES = [1, 2, 4, 8, 16, 32, 64]


def random_sparse(n: int, k: int, sparsity: float, mask: str = "uniform", seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g) * 0.02
    if mask == "uniform":
        keep = torch.rand(n, k, device="cuda", generator=g) >= sparsity
    elif ":" in mask:  # N:M ("1:4": keep 1 of every 4 consecutive columns, by random scores); sparsity = 1 - N/M
        from sparselm.sparsity.masks import parse_pattern, select_nm
        keep = ~select_nm(torch.rand(n, k, device="cuda", generator=g), *parse_pattern(mask))
    else:  # layer-wise magnitude with row and column scales: rows/cols differ in density, like real masks
        score = w.abs() * torch.rand(n, 1, device="cuda", generator=g).add(0.2) * torch.rand(
            1, k, device="cuda", generator=g).add(0.2)
        thresh = score.flatten().kthvalue(max(1, int(sparsity * n * k))).values
        keep = score > thresh
    return (w * keep).half()


def grid(quick: bool, name: str = "full") -> list[dict]:
    """(shape, batch, sparsity, values, act, mask) cases; the full sweep fits one ~5-minute device call.
    "batched": batch 4-64 on the Llama shapes (the tensor-core kernel's range). "decode": the shapes a 7B/8B decode
    step runs, with fused q/k/v (12288x4096) and gate/up (22016x4096). "nm": those shapes with N:M masks (1:4, 2:8:
    75%; 2:4: 50%). "nmb": N:M masks at batch 1-64 on the Llama shapes (the sparse-tensor-core kernel's range)."""
    cases = []
    add = lambda n, k, b, s, v="float16", a="float16", m="uniform": cases.append(  # noqa: E731
        dict(N=n, K=k, batch=b, sparsity=s, values=v, act=a, mask=m))
    if name == "batched":  # batch 8-64, where the tensor-core kernel (bmma) competes with cuBLAS
        for b in (16, 8, 32, 64):
            for n, k in SHAPES:
                for s in (0.75, 0.5):
                    add(n, k, b, s)
        for n, k in SHAPES[:2]:
            add(n, k, 16, 0.75, "bfloat16", "bfloat16")
            add(n, k, 16, 0.9)
            add(n, k, 4, 0.75)
        return cases
    if name == "nm":  # N:M masks (the nmcu kernel's), the decode shapes, against grp8cu and cuBLAS
        for n, k in [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008), (14336, 4096), (4096, 14336)]:
            for pat in ("1:4", "2:8", "2:4"):
                add(n, k, 1, 1 - int(pat[0]) / int(pat[2]), m=pat)
        for n, k in [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008), (14336, 4096), (4096, 14336)]:
            add(n, k, 1, 0.75, "int8", m="1:4")
        add(4096, 4096, 1, 0.75, "bfloat16", "bfloat16", m="2:8")
        for n, k in [(4096, 4096), (22016, 4096)]:  # batches 2 and 4 (nmcu's batched form)
            for b in (2, 4):
                add(n, k, b, 0.75, m="1:4")
        return cases
    if name == "nmb":  # N:M masks at every batch: nmsp (mma.sp) against tmma / nmcu and cuBLAS
        for b in (16, 8, 32, 64, 4, 2, 1):
            for n, k in SHAPES:
                for pat in ("1:4", "2:4"):
                    add(n, k, b, 1 - int(pat[0]) / int(pat[2]), m=pat)
        add(4096, 4096, 16, 0.75, "bfloat16", "bfloat16", m="1:4")
        add(11008, 4096, 16, 0.75, m="2:8")
        return cases
    if name == "decode":
        for n, k in [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008), (14336, 4096), (4096, 14336)]:
            for s in (0.5, 0.7, 0.75, 0.8, 0.9):
                add(n, k, 1, s)
        for b in (2, 4, 8, 16):
            for n, k in [(4096, 4096), (22016, 4096)]:
                add(n, k, b, 0.75)
        add(11008, 4096, 1, 0.75, m="magnitude")
        add(4096, 4096, 1, 0.75, "bfloat16", "bfloat16")
        for n, k in [(4096, 4096), (22016, 4096), (4096, 11008)]:
            add(n, k, 1, 0.75, "int8")
            add(n, k, 1, 0.75, "int4g128")
        add(4096, 4096, 1, 0.75, "int8g128")
        return cases
    if quick:
        for b in (1, 16):
            add(4096, 4096, b, 0.75)
            add(4096, 4096, b, 0.75, "int8")
        return cases
    for n, k in SHAPES[:2]:  # the full batch x sparsity sweep on two shapes
        for s in SPARSITIES:
            for b in BATCHES:
                add(n, k, b, s)
    for n, k in SHAPES[2:]:
        for s in (0.5, 0.75):
            for b in (1, 16):
                add(n, k, b, s)
    for n, k in SHAPES:
        for b in (1, 16):
            add(n, k, b, 0.75, "int8")
    add(4096, 4096, 1, 0.75, "int8g128")
    for n, k in SHAPES[:2]:
        for b in (1, 16):
            add(n, k, b, 0.75, "int4g128")
    for b in (1, 16):
        add(4096, 4096, b, 0.75, "bfloat16", "bfloat16")
        add(11008, 4096, b, 0.75, m="magnitude")
    return cases


def run(args) -> dict:
    from torch.nn import functional as F

    from sparselm.compress.format import compress_tensor, decompress
    from sparselm.kernels.gpu.ops import PackedBitmask, spmm
    from sparselm.kernels.gpu.timing import copy_bandwidth_gbps, time_graph
    from sparselm.runtime.gpu_backend import candidate_configs

    copy_gbps = copy_bandwidth_gbps()
    print(f"copy bandwidth {copy_gbps:.0f} GB/s", flush=True)
    rows, dispatch, failures = [], [], []
    dense_cache: dict = {}
    t_start = time.time()
    cases = grid(args.quick, args.grid)
    kernels = set(args.kernels.split(",")) if args.kernels else None
    for ci, case in enumerate(cases):
        if time.time() - t_start > args.budget_s:  # keep inside the device call: report what was skipped
            failures.append({"skipped_cases": len(cases) - ci, "reason": f"time budget {args.budget_s} s"})
            break
        n, k, b, s = case["N"], case["K"], case["batch"], case["sparsity"]
        act = getattr(torch, case["act"])
        vname, gs = ((case["values"][:4], 128) if case["values"] in ("int8g128", "int4g128")
                     else (case["values"], None))
        w = random_sparse(n, k, s, case["mask"])
        ct = compress_tensor(w, values_dtype=vname, group_size=gs)
        p = PackedBitmask.from_compressed(ct)
        wd = decompress(ct, torch.float32)  # exactly what the kernel must compute with
        dkey = (n, k, case["act"])
        if dkey not in dense_cache:  # cuBLAS baseline: dense fp16/bf16, its own rotation
            dense_cache.clear()
            copies = max(2, math.ceil(ROTATE_BYTES / (n * k * 2)))
            dense = [torch.randn(n, k, device="cuda", dtype=act) for _ in range(copies)]
            dense_cache[dkey] = (dense, {})
        dense, dense_ms_by_b = dense_cache[dkey]
        x = torch.randn(b, k, device="cuda", dtype=act)
        if b not in dense_ms_by_b:
            dense_ms_by_b[b] = time_graph([lambda d=d: F.linear(x, d) for d in dense])
        dense_ms = dense_ms_by_b[b]
        ref = (x.double() @ wd.double().T)
        nbytes, per_kernel, by_cfg = {}, {}, {}
        best = None
        for cfg in candidate_configs(b, pipelined=args.pipelined):
            if not p.supports(cfg) or (kernels and cfg.kernel not in kernels):
                continue
            try:
                out = torch.full((b, n), float("nan"), device="cuda", dtype=act)
                y = spmm(x, p, cfg, out=out)
                err = ((y.double() - ref).norm() / ref.norm()).item()
                tol = 1e-2 if act == torch.bfloat16 else 2e-3
                if not err < tol:  # NaN fails too: every output element must be written
                    failures.append({**case, "cfg": cfg.key(), "rel_err": err})
                    continue
                fb = p.nbytes(cfg.block_k, cfg.kernel, cfg.vec)  # also builds the aux arrays; clones copy them
                copies = max(2, math.ceil(ROTATE_BYTES / fb))
                p.chunk_ptr(cfg.block_k)
                ps = [p] + [p.clone() for _ in range(copies - 1)]
                ms = time_graph([lambda q=q: spmm(x, q, cfg) for q in ps])
                del ps
            except Exception as e:  # report and continue: one bad config must not lose the sweep
                failures.append({**case, "cfg": cfg.key(), "error": repr(e)[:300]})
                continue
            nbytes[cfg.key()] = fb
            fam = cfg.kernel + (f"-vec{cfg.vec}" if cfg.kernel in ("csr8", "vc32", "grp8") else "")
            per_kernel[fam] = min(per_kernel.get(fam, float("inf")), ms)
            by_cfg[cfg.key()] = round(ms, 5)
            if best is None or ms < best[1]:
                best = (cfg, ms, err)
        if best is None:
            continue
        cfg, ms, err = best
        fb = nbytes[cfg.key()]
        row = dict(case, dense_ms=round(dense_ms, 5), sparse_ms=round(ms, 5), speedup=round(dense_ms / ms, 3),
                   dispatch_speedup=round(dense_ms / min(ms, dense_ms), 3), format_bytes=fb,
                   dense_bytes=n * k * 2, GBps=round(fb / (ms * 1e-3) / 1e9, 1),
                   dense_GBps=round(n * k * 2 / (dense_ms * 1e-3) / 1e9, 1), rel_err=err, cfg=cfg.key(),
                   nnz=ct.nnz, best_ms_by_kernel={k_: round(v, 5) for k_, v in per_kernel.items()})
        if args.all_configs:  # every config's time, for tuning a kernel's launch grid
            row["ms_by_cfg"] = by_cfg
        rows.append(row)
        dispatch.append({"N": n, "K": k, "batch": b, "values": ct.values_dtype,
                         "act": case["act"], "path": "sparse" if ms < dense_ms else "dense",
                         "cfg": {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}})
        if args.partial:
            args.partial(rows, dispatch, failures)
        print(f"{n:>6}x{k:<6} b={b:<3} s={s:.2f} {case['values']:>9} {case['mask'][:3]} dense {dense_ms*1e3:7.1f}us "
              f"sparse {ms*1e3:7.1f}us x{dense_ms/ms:5.2f} {row['GBps']:6.0f}GB/s err {err:.1e} {cfg.key()}",
              flush=True)
    return {"device": torch.cuda.get_device_name(), "copy_GBps": round(copy_gbps, 1), "rows": rows,
            "dispatch": dispatch, "failures": failures}


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    if all(":" in r["mask"] for r in data["rows"]) and max(r["batch"] for r in data["rows"]) <= 4:
        return plot_nm(data, path.with_suffix(".png"))  # the N:M grid: kernels side by side per shape and pattern
    if len({r["sparsity"] for r in data["rows"]}) <= 3 and (min(r["batch"] for r in data["rows"]) > 1
                                                            or all(":" in r["mask"] for r in data["rows"])):
        return plot_batched(data, path.with_suffix(".png"))  # the batched grid: speedup vs batch
    shapes = sorted({(r["N"], r["K"]) for r in data["rows"] if r["values"] == "float16" and r["mask"] == "uniform"
                     and len({x["sparsity"] for x in data["rows"] if (x["N"], x["K"]) == (r["N"], r["K"])}) > 2})
    cols = min(3, max(1, len(shapes)))
    rows_ = (max(1, len(shapes)) + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(6 * cols, 4.5 * rows_), squeeze=False)
    for ax in axes.flat[len(shapes):]:
        ax.set_visible(False)
    for ax, (n, k) in zip(axes.flat, shapes):
        for b in BATCHES:
            pts = sorted((r["sparsity"], r["speedup"]) for r in data["rows"] if (r["N"], r["K"], r["batch"]) ==
                         (n, k, b) and r["values"] == "float16" and r["mask"] == "uniform")
            if pts:
                ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"batch {b}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(title=f"{n}x{k}, fp16 values vs cuBLAS fp16", xlabel="sparsity (%)", ylabel="speedup (x)")
        ax.legend(fontsize=8)
    fig.suptitle(f"fastest sparse kernel per case (Triton and CUDA C++), {data.get('device', '')}")
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plot_bytes_bound(data, path.with_name(path.stem + "_bytes.png"))
    return out


def plot_nm(data: dict, out: Path) -> Path:
    """N:M masks: per (pattern, values) panel, each kernel family's best speedup over cuBLAS per shape (from each
    row's best_ms_by_kernel, same run), with the byte ceiling of the nmcu layout (2 bytes per weight / its bytes)."""
    import matplotlib.pyplot as plt

    cases = sorted({(r["mask"], r["values"]) for r in data["rows"]})
    fams = sorted({f for r in data["rows"] for f in r["best_ms_by_kernel"]})
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4.2), squeeze=False)
    for ax, (mask, vals) in zip(axes.flat, cases):
        rows = [r for r in data["rows"] if (r["mask"], r["values"]) == (mask, vals)]
        for i, fam in enumerate(fams):
            ys = [r["dense_ms"] / r["best_ms_by_kernel"][fam] if fam in r["best_ms_by_kernel"] else 0 for r in rows]
            ax.bar([j + 0.8 * i / len(fams) for j in range(len(rows))], ys, width=0.8 / len(fams), label=fam)
        n_, m_ = (int(v) for v in mask.split(":"))
        per_weight = n_ / m_ * ((1 if vals == "int8" else 2) + (2 if m_ == 4 else 4) / 8)
        ax.axhline(2 / per_weight, color="r", ls="--", lw=0.8, label="nmcu byte ceiling")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)), [f"{r['N']}x{r['K']}" + (f" b{r['batch']}" if r["batch"] > 1 else "")
                                         for r in rows], rotation=45, fontsize=7)
        ax.set(title=f"{mask} ({100 * rows[0]['sparsity']:.0f}%), {vals}", ylabel="speedup vs cuBLAS fp16 (x)")
        ax.legend(fontsize=7)
    fig.suptitle(f"batch 1 (b2 / b4: batch 2 / 4), N:M masks, {data.get('device', '')}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def plot_batched(data: dict, out: Path) -> Path:
    """Speedup vs batch (fp16 values; uniform masks at 75% / 50%, or the N:M masks 1:4 / 2:4) per shape: the best
    config of each kernel family (from each row's best_ms_by_kernel) against cuBLAS in the same run."""
    import matplotlib.pyplot as plt

    series = (("uniform", 0.75, "-", "75%"), ("uniform", 0.5, "--", "50%"), ("1:4", 0.75, "-", "1:4"),
              ("2:4", 0.5, "--", "2:4"))
    rows = [r for r in data["rows"] if r["values"] == "float16"]
    shapes = sorted({(r["N"], r["K"]) for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 4), squeeze=False)
    for ax, (n, k) in zip(axes.flat, shapes):
        for mask, s, style, name in series:
            pts = sorted(((r["batch"], r) for r in rows if (r["N"], r["K"], r["mask"]) == (n, k, mask)
                          and r["sparsity"] == s), key=lambda t: t[0])
            fams = sorted({f for _, r in pts for f in r["best_ms_by_kernel"]})
            for fam in fams:
                xy = [(b, r["dense_ms"] / r["best_ms_by_kernel"][fam]) for b, r in pts if fam in r["best_ms_by_kernel"]]
                if len(xy) > 1:
                    ax.plot([p[0] for p in xy], [p[1] for p in xy], style, marker="o", label=f"{fam} {name}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(xscale="log", title=f"{n}x{k}", xlabel="batch", ylabel="speedup vs cuBLAS fp16")
        ax.legend(fontsize=7)
    fig.suptitle(f"batched sparse kernels vs cuBLAS, {data.get('device', '')}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_bytes_bound(data: dict, out: Path) -> Path:
    """Speedup vs the bytes bound (dense fp16 bytes / the kernel's bytes), batch 1: a point on the diagonal streams
    its own bytes as fast as cuBLAS streams the dense weight; below it, the kernel loses time to something else."""
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["batch"] == 1]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    fams = sorted({r["cfg"].split("-")[0] if r["cfg"][0] != "n" else "bitmask" for r in rows})
    for fam, marker in zip(fams, "os^Dvx"):
        pts = [(r["dense_bytes"] / r["format_bytes"], r["speedup"]) for r in rows
               if (r["cfg"].split("-")[0] if r["cfg"][0] != "n" else "bitmask") == fam]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=fam, alpha=0.8)
    top = max([r["dense_bytes"] / r["format_bytes"] for r in rows] + [1.0]) * 1.05
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="bytes bound at cuBLAS's bandwidth")
    ax.axhline(1.0, color="gray", lw=0.6)
    ax.set(xlabel="dense fp16 bytes / kernel bytes", ylabel="speedup vs cuBLAS fp16 (batch 1)",
           title=f"batch-1 kernels against their bytes bound, {data.get('device', '')}", xlim=(0, top), ylim=(0, top))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_kernels.json"))
    ap.add_argument("--quick", action="store_true", help="one shape, a smoke run")
    ap.add_argument("--grid", choices=["full", "decode", "batched", "nm", "nmb"], default="full",
                    help="which cases (see grid())")
    ap.add_argument("--kernels", default="", help="only these kernel families, e.g. vc32,csr8 (default: all)")
    ap.add_argument("--pipelined", action="store_true",
                    help="also the non-default candidates: persistent pipelined batch-1 configs")
    ap.add_argument("--plot", type=Path, help="only draw the PNG for an existing result JSON")
    ap.add_argument("--all-configs", action="store_true", help="record every config's time in each row")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop starting new cases after this (s)")
    args = ap.parse_args()
    if args.plot:
        print(plot(args.plot))
        return
    if not torch.cuda.is_available():
        sys.exit("gpu_kernels.py: needs a CUDA GPU (the CI tests run the kernels under TRITON_INTERPRET=1)")
    import transformers
    import triton

    t0 = time.time()
    meta = lambda: dict(command=" ".join(["python"] + sys.argv),  # noqa: E731
                        date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.partial = lambda r, d, f: args.out.write_text(json.dumps(  # survives a kill at the call's limit
        {"partial": True, "rows": r, "dispatch": d, "failures": f, **meta()}, indent=1))
    res = run(args)
    res.update(command=" ".join(["python"] + sys.argv), date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               versions={"torch": torch.__version__, "triton": triton.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version(),
                         "cuda": torch.version.cuda}, wall_s=round(time.time() - t0, 1))
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out} ({len(res['rows'])} rows, {len(res['failures'])} failures) in {res['wall_s']} s")


if __name__ == "__main__":
    main()
