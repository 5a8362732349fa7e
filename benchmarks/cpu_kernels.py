"""Time the CPU bitmask kernels against torch dense / torch CSR (and, with --deepsparse, DeepSparse 1.8).

    python benchmarks/cpu_kernels.py --quick        # < 45 s: 4096x4096, batch 1, 75 %; fp32 + int8; JSON last line
    python benchmarks/cpu_kernels.py                # full sweep -> benchmarks/results/cpu_kernels.json (+ .png)
    python benchmarks/cpu_kernels.py --deepsparse   # + DeepSparse 1.8 timed on the same layers (side venv /tmp/ds)

Protocol (docs: BENCHMARKS.md): y = x @ W.T, random normal W with a uniformly random mask; every engine of a case
is timed round-robin in the same loop (one call of each per round), so machine noise hits them alike; median
(and min) of --runs rounds after --warmup.  "cold" (default) rotates each engine over copies of its weights
totalling >= 64 MiB, twice this CPU's 32 MiB L3, so the numbers are DRAM numbers as in a real decode step;
--hot times one copy (cache-resident when it fits).  Speedup = torch dense fp32 median / engine median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sparselm.kernels.cpu import describe, sparse_matmul
from sparselm.kernels.cpu.pack import PackedWeight, pack_dense, random_sparse, unpack_dense

ROTATE_BYTES = 64 << 20  # per engine: > 2x the 32 MiB L3, so no copy is still cached when it comes round again
MAX_COPIES = 16
# sparselm engines: (name, values dtype, int8 activations); bf16 values run with bf16 activations.
ENGINES = (("sparselm_fp32", "fp32", False), ("sparselm_bf16", "bf16", False), ("sparselm_int8", "int8", False),
           ("sparselm_int8_aq", "int8", True))
RESULTS = Path(__file__).resolve().parent / "results"


def machine_info(threads: int) -> dict:
    cpu = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, val = line.partition(":")
            cpu.setdefault(key.strip(), val.strip())
    flags = cpu.get("flags", "").split()
    isa = [f for f in flags if f.startswith("avx512") or f in ("avx2", "fma", "f16c")]
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": cpu.get("model name", platform.processor()), "cores": os.cpu_count(), "isa_flags": isa,
            "threads": threads, "torch": torch.__version__, "gcc": gcc[0] if gcc else None, "git": sha,
            "kernels": describe(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name] + sys.argv)}


def copies_for(nbytes: int, hot: bool) -> int:
    return 1 if hot else max(1, min(MAX_COPIES, math.ceil(ROTATE_BYTES / max(nbytes, 1))))


def clone_packed(p: PackedWeight) -> PackedWeight:
    c = lambda t: None if t is None else t.clone()  # noqa: E731
    return PackedWeight(c(p.bitmask), c(p.values), c(p.row_ptr), p.N, p.K, c(p.scales), p.group_size)


def engines(W: torch.Tensor, x: torch.Tensor, threads: int, hot: bool, which: list[str]) -> dict:
    """name -> (list of zero-arg callables over weight copies, reference-checkable output fn, info)."""
    out = {}
    if "dense_fp32" in which:
        ws = [W.clone() for _ in range(copies_for(W.numel() * 4, hot))]
        out["dense_fp32"] = [lambda w=w: x @ w.T for w in ws]
    if "dense_bf16" in which:
        xb = x.bfloat16()
        ws = [W.bfloat16() for _ in range(copies_for(W.numel() * 2, hot))]
        out["dense_bf16"] = [lambda w=w: xb @ w.T for w in ws]
    if "csr_fp32" in which:
        csr = W.to_sparse_csr()
        nbytes = csr.values().numel() * 12 + csr.crow_indices().numel() * 8
        ws = [csr.clone() for _ in range(copies_for(nbytes, hot))]
        xt = x.T.contiguous()
        out["csr_fp32"] = [lambda w=w: (w @ xt).T for w in ws]
    for name, vt, aq in ENGINES:
        if name in which:
            p = pack_dense(W, vt)
            ps = [p] + [clone_packed(p) for _ in range(copies_for(p.nbytes(), hot) - 1)]
            xa = x.bfloat16() if vt == "bf16" else x  # bf16 weights run with bf16 activations, like dense_bf16
            out[name] = [lambda p=p, aq=aq, xa=xa: sparse_matmul(xa, **p.kwargs(), threads=threads, act_quant=aq)
                         for p in ps]
    return out


def time_round_robin(fns: dict[str, list], runs: int, warmup: int) -> dict[str, dict]:
    """Median / min wall time (ms) of each engine, all timed in one interleaved loop, plus the median CPU time of
    the calling thread (cpu_ms: excludes time the thread was descheduled; with 1 thread, the noise-robust one)."""
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for r in range(warmup + runs):
        for name, calls in fns.items():
            f = calls[r % len(calls)]
            c0, t0 = time.thread_time(), time.perf_counter()
            f()
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            if r >= warmup:
                times[name].append(dt * 1e3)
                cpu[name].append(dc * 1e3)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "cpu_ms": statistics.median(cpu[k]),
                "copies": len(fns[k])} for k, v in times.items()}


def check_outputs(W: torch.Tensor, x: torch.Tensor, threads: int, which: list[str]) -> dict[str, float]:
    """Relative error (max |y - ref| / max |ref|) of each sparselm engine vs the fp64 product with its own
    decoded weights (int8: dequantized; act_quant: against the exact x, so it includes activation rounding)."""
    errs = {}
    for name, vt, aq in ENGINES:
        if name in which:
            p = pack_dense(W, vt)
            xa = x.bfloat16() if vt == "bf16" else x
            ref = xa.double() @ unpack_dense(p).double().T
            y = sparse_matmul(xa, **p.kwargs(), threads=threads, act_quant=aq)
            errs[name] = float((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    return errs


def run_case(N: int, K: int, batch: int, sparsity: float, threads: int, args, which: list[str]) -> list[dict]:
    g = torch.Generator().manual_seed(N * 31 + K + int(sparsity * 1000))
    W = random_sparse(N, K, sparsity, g)
    x = torch.randn(batch, K, generator=g)
    errs = check_outputs(W, x, threads, which)
    t = time_round_robin(engines(W, x, threads, args.hot, which), args.runs, args.warmup)
    dense = t["dense_fp32"]["median_ms"]
    rows = []
    for name, r in t.items():
        if name == "dense_fp32":
            continue
        vt = {"bf16": "bf16", "int8": "int8"}.get(name.split("_")[1], "fp32")
        rows.append({"N": N, "K": K, "batch": batch, "sparsity": sparsity, "values": vt,
                     "act_quant": name.endswith("_aq"), "engine": name,
                     "format": "bitmask" if name.startswith("sparselm") else ("csr" if "csr" in name else "dense"),
                     "baseline": "torch dense fp32", "dense_ms": round(dense, 4),
                     "sparse_ms": round(r["median_ms"], 4), "sparse_min_ms": round(r["min_ms"], 4),
                     "dense_min_ms": round(t["dense_fp32"]["min_ms"], 4), "copies": r["copies"],
                     "sparse_cpu_ms": round(r["cpu_ms"], 4), "dense_cpu_ms": round(t["dense_fp32"]["cpu_ms"], 4),
                     "speedup_cpu_time": round(t["dense_fp32"]["cpu_ms"] / max(r["cpu_ms"], 1e-9), 3),
                     "speedup": round(dense / r["median_ms"], 3), "max_rel_err": errs.get(name)})
    return rows


# ---------------------------------------------------------------------------------------------- DeepSparse
DS_VENV = Path("/tmp/ds")
DS_PIN = "deepsparse==1.8.0"  # the seed paper's CPU engine; a measuring stick only, never a sparselm dependency
# Runs inside the side venv: one MatMul layer with W.T as a constant initializer, the same weights and batch.
DS_SCRIPT = r"""
import json, statistics, sys, time
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
from deepsparse import compile_model
cfg = json.loads(sys.argv[1])
W = np.load(cfg["w"]); N, K = W.shape; B = cfg["batch"]
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, K])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, N])],
    initializer=[numpy_helper.from_array(np.ascontiguousarray(W.T), name="W")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]); model.ir_version = 8
onnx.save(model, cfg["onnx"])
engine = compile_model(cfg["onnx"], batch_size=B, num_cores=cfg["threads"])
x = [np.random.default_rng(0).standard_normal((B, K)).astype(np.float32)]
err = float(np.abs(engine(x)[0] - x[0] @ W.T).max() / np.abs(x[0] @ W.T).max())
ts = []
for i in range(cfg["warmup"] + cfg["runs"]):
    t0 = time.perf_counter(); engine(x); ts.append((time.perf_counter() - t0) * 1e3)
ts = ts[cfg["warmup"]:]
print(json.dumps({"median_ms": statistics.median(ts), "min_ms": min(ts), "max_rel_err": err}))
"""


def ensure_deepsparse() -> tuple[Path | None, str | None]:
    """The side venv's python (created on first use: python3.11 -m venv + pip install), or (None, why not)."""
    py = DS_VENV / "bin" / "python"
    probe = [str(py), "-c", "import deepsparse"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py, None
    steps = [["python3.11", "-m", "venv", str(DS_VENV)], [str(DS_VENV / "bin" / "pip"), "install", "-q", DS_PIN]]
    for cmd in steps:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"{' '.join(cmd)}: {e}"
        if r.returncode != 0:
            return None, f"{' '.join(cmd)}: {r.stderr.strip()[-300:]}"
    return py, None


def deepsparse_time(cases, threads: int, runs: int, warmup: int) -> dict:
    """DeepSparse timings of the same (N, K, batch, sparsity) layers (weights regenerated with the same seeds),
    plus its dense (0 %) time per shape; {"error": why} when it cannot run."""
    py, why = ensure_deepsparse()
    if py is None:
        return {"error": why}
    rows = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"sparselm_ds_{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    todo = list(cases) + sorted({(N, K, B, 0.0) for (N, K, B, _) in cases})
    for (N, K, B, s) in todo:
        g = torch.Generator().manual_seed(N * 31 + K + int(s * 1000))
        W = random_sparse(N, K, s, g)
        import numpy as np  # numpy ships with torch's dependencies here

        np.save(tmp / "w.npy", W.numpy())
        cfg = {"w": str(tmp / "w.npy"), "onnx": str(tmp / "l.onnx"), "batch": B, "threads": threads,
               "runs": runs, "warmup": warmup}
        r = subprocess.run([str(py), "-c", DS_SCRIPT, json.dumps(cfg)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            rows.append({"N": N, "K": K, "batch": B, "sparsity": s, "error": r.stderr.strip()[-300:]})
            continue
        rows.append({"N": N, "K": K, "batch": B, "sparsity": s, **json.loads(r.stdout.strip().splitlines()[-1])})
        print(f"# deepsparse {N}x{K} batch {B} sparsity {s:.2f}: {rows[-1]['median_ms']:.3f} ms", file=sys.stderr)
    return {"version": DS_PIN, "threads": threads, "rows": rows}


# ---------------------------------------------------------------------------------------------- plot
def plot_kernels(result: dict, path: Path) -> None:
    """Speedup over torch dense fp32 vs sparsity, one panel per (shape, batch), one line per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    panels = sorted({(r["N"], r["K"], r["batch"]) for r in rows})
    shapes = sorted({(n, k) for n, k, _ in panels})
    batches = sorted({b for _, _, b in panels})
    fig, axes = plt.subplots(len(shapes), len(batches), figsize=(4.2 * len(batches), 3.4 * len(shapes)),
                             squeeze=False)
    for (n, k, b) in panels:
        ax = axes[shapes.index((n, k))][batches.index(b)]
        for eng in sorted({r["engine"] for r in rows}):
            pts = sorted((r["sparsity"], r["speedup"]) for r in rows
                         if (r["N"], r["K"], r["batch"], r["engine"]) == (n, k, b, eng))
            ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=eng)
        ds = [r for r in result.get("deepsparse", {}).get("rows", [])
              if (r["N"], r["K"], r["batch"]) == (n, k, b) and "median_ms" in r and r["sparsity"] > 0]
        dense = {(r["sparsity"]): r["dense_ms"] for r in rows if (r["N"], r["K"], r["batch"]) == (n, k, b)}
        if ds:
            ax.plot([r["sparsity"] * 100 for r in ds], [dense[r["sparsity"]] / r["median_ms"] for r in ds],
                    marker="s", ls="--", color="k", label="deepsparse 1.8 fp32")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{n}x{k}, batch {b}")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("speedup vs torch dense fp32")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{result['machine']['cpu']}, {result['threads']} thread(s), {result['mode']} weights, median of "
                 f"round-robin rounds; shared 2-core machine under load from other jobs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one case (--shape, batch 1, 75 %%), < 45 s")
    ap.add_argument("--shape", default="4096x4096", help="NxK of the --quick case (e.g. 11008x4096)")
    ap.add_argument("--threads", type=int, default=None, help="threads for torch and sparselm (default: torch's)")
    ap.add_argument("--runs", type=int, default=30, help="timed rounds per case (median reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    ap.add_argument("--hot", action="store_true", help="time one weight copy (cache-resident when it fits)")
    ap.add_argument("--deepsparse", action="store_true", help="also time DeepSparse 1.8 in a side venv (/tmp/ds)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default results/cpu_kernels.json)")
    ap.add_argument("--replot", type=Path, default=None, help="only redraw the PNG of an existing results JSON")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.replot:
        plot_kernels(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if args.quick:
        N, K = (int(v) for v in args.shape.lower().split("x"))
        cases = [(N, K, 1, 0.75)]
        which = ["dense_fp32", "sparselm_fp32", "sparselm_int8", "sparselm_int8_aq"]
    else:
        cases = [(n, 4096, b, s) for n in (4096, 11008) for b in (1, 4, 8) for s in (0.5, 0.7, 0.75, 0.9)]
        which = ["dense_fp32", "dense_bf16", "csr_fp32", "sparselm_fp32", "sparselm_bf16", "sparselm_int8",
                 "sparselm_int8_aq"]
    rows = []
    for (N, K, B, s) in cases:
        rows += run_case(N, K, B, s, threads, args, which)
        print(f"# {N}x{K} batch {B} sparsity {s:.2f}: " + ", ".join(
            f"{r['engine']} {r['sparse_ms']:.3f} ms ({r['speedup']:.2f}x)" for r in rows[-len(which) + 1:]),
            file=sys.stderr)
    result = {"threads": threads, "mode": "hot" if args.hot else "cold", "machine": machine_info(threads),
              "rows": rows}
    if args.deepsparse:
        result["deepsparse"] = deepsparse_time(cases if args.quick else [c for c in cases if c[2] == 1], threads,
                                               args.runs, args.warmup)
    if not args.quick or args.out:
        out = args.out or RESULTS / ("cpu_kernels_hot.json" if args.hot else "cpu_kernels.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        if not args.quick:
            plot_kernels(result, out.with_suffix(".png"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
