"""Where one batch-1 decode step's time goes: the kernels of a replayed StaticDecoder graph, by kind.

    PYTHONPATH=src python benchmarks/decode_profile.py --out $OUT/decode_profile.json           # 7B shape, 1:4
    PYTHONPATH=src python benchmarks/decode_profile.py --pattern 0.75 --out $OUT/d.json          # unstructured 75%
    PYTHONPATH=src python benchmarks/decode_profile.py --layers 2 --out /tmp/p.json              # smoke
    python benchmarks/decode_profile.py --plot benchmarks/results/decode_profile_1of4.json      # PNG beside it

Why: at 1:4 the kernels alone run 2.7-3.2x cuBLAS (gpu_kernels_nm_x16.json) but the engine runs 2.1x the dense
engine (gpu_decode_session23.json). The step's wall time is its kernels' time plus the gaps between them; this
splits the kernels into the weight products (sparse kernels or cuBLAS), the fused elementwise kernels, attention
and the rest, per token, for the dense engine and the sparse engine on the same pruned weights, so the next change
goes where the time is. Both engines replay the same captured graph shape (torch.profiler sees graph kernels through
CUPTI).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

KINDS = (  # (kind, substrings of the kernel name), first match wins
    ("sparse weight product", ("nm_gemv", "nm_gemm", "grp8_gem", "d4_gem", "bmma", "tmma", "_spmm", "_spmv")),
    ("attention", ("flash", "fmha", "attention", "attn", "softmax")),
    ("dense weight product", ("gemv", "gemm", "cutlass", "xmma", "cublas", "splitk", "nvjet")),  # nvjet: cuBLAS
    ("fused elementwise (Triton)", ("_add_rmsnorm", "_rope_qkv", "_silu_mul")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile_step(dec, prompt: torch.Tensor, replays: int) -> dict:
    """Kernel time per replayed decode step, by kind and by kernel name, and the step's wall time."""
    from torch.profiler import ProfilerActivity, profile

    dec.generate(prompt, 8)  # captures the graph
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(replays):
        dec._graph.replay()
    torch.cuda.synchronize()
    wall_us = (time.perf_counter() - t0) / replays * 1e6
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            dec._graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    spans = []
    for e in kernels:
        by_name[e.name][0] += e.time_range.elapsed_us()
        by_name[e.name][1] += 1
        spans.append((e.time_range.start, e.time_range.end))
    busy, end = 0.0, float("-inf")  # the union of kernel intervals: what the GPU spent running anything
    for s, t in sorted(spans):
        if t > end:
            busy += t - max(s, end)
            end = t
    per_kind: dict[str, float] = defaultdict(float)
    launches: dict[str, float] = defaultdict(float)
    for name, (us, n) in by_name.items():
        per_kind[kind_of(name)] += us / replays
        launches[kind_of(name)] += n / replays
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:25]
    return {"wall_us_per_step": round(wall_us, 1), "kernel_us_per_step": round(sum(per_kind.values()), 1),
            "busy_us_per_step": round(busy / replays, 1), "kernels_per_step": round(len(kernels) / replays, 1),
            "by_kind_us": {k: round(v, 1) for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])},
            "launches_by_kind": {k: round(v, 1) for k, v in launches.items()},
            "top_kernels": [{"name": n[:160], "us_per_step": round(us / replays, 2), "calls_per_step": c / replays,
                             "kind": kind_of(n)} for n, (us, c) in top]}


def plot(path: Path) -> Path:
    """Stacked bars: each engine's kernel time per step by kind, and the gaps up to its wall time; PNG beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    engines = [e for e in ("dense_engine", "sparse_engine") if e in data]
    kinds = [k for k, _ in KINDS] + ["other"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, eng in enumerate(engines):
        r, base = data[eng], 0.0
        by_kind = dict.fromkeys(kinds, 0.0)  # re-sorted with today's KINDS (the 25 largest kernels; the rest: other)
        for t in r["top_kernels"]:
            by_kind[kind_of(t["name"])] += t["us_per_step"]
        by_kind["other"] += r["kernel_us_per_step"] - sum(t["us_per_step"] for t in r["top_kernels"])
        for j, kind in enumerate(kinds + ["gaps"]):
            us = r["wall_us_per_step"] - r["busy_us_per_step"] if kind == "gaps" else by_kind[kind]
            ax.bar(i, us, bottom=base, color=f"C{j}", label=kind if i == 0 else None)
            if us > 60:
                ax.text(i, base + us / 2, f"{us:.0f}", ha="center", va="center", fontsize=7)
            base += us
        ax.text(i, base + 30, f"{r['wall_us_per_step']:.0f} us/step", ha="center", fontsize=8)
    ax.set_xticks(range(len(engines)), [e.replace("_", " ") for e in engines])
    ax.set(ylabel="us per decode step", title=f"{data.get('model', '')}, {data.get('pattern')} "
                                              f"{data.get('values')}, batch 1, {data.get('device', '')}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--pattern", default="1:4", help="an N:M pattern, or a sparsity for per-layer magnitude")
    ap.add_argument("--values", default="float16", help="the sparse engine's values dtype (float16, int8)")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--plot", type=Path, help="only draw the PNG for an existing result JSON")
    args = ap.parse_args()
    if args.plot is not None:
        print(plot(args.plot))
        return
    if args.out is None:
        sys.exit("decode_profile.py: --out is required (or --plot FILE)")
    if not torch.cuda.is_available():
        sys.exit("decode_profile.py: needs a CUDA GPU")
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_decode import llama7b_config, prune_magnitude, prune_nm
    from transformers import LlamaForCausalLM

    from sparselm.runtime import StaticDecoder, sparsify
    from sparselm.runtime.gpu_backend import autotune

    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.float16)
        model = LlamaForCausalLM(llama7b_config(args.layers)).eval().requires_grad_(False)
        torch.set_default_dtype(torch.float32)
    if ":" in args.pattern:
        prune_nm(model, args.pattern)
    else:
        prune_magnitude(model, float(args.pattern))
    prompt = torch.randint(0, 32000, (1, 16), device="cuda")
    max_len = 16 + 64
    res = {"model": f"llama-2-7b-shape ({args.layers} layers, random fp16)", "pattern": args.pattern,
           "values": args.values, "batch": 1, "replays": args.replays, "device": torch.cuda.get_device_name()}
    dec = StaticDecoder(model, max_len=max_len)
    res["dense_engine"] = profile_step(dec, prompt, args.replays)
    del dec
    sparsify(model, values_dtype=args.values)
    dec = StaticDecoder(model, max_len=max_len)
    table = autotune(torch.nn.ModuleList([m for m in dec.qkv + dec.gate_up if m is not None] + [model]), batches=(1,))
    res["dispatch"] = {f"{k[0]}x{k[1]}": v["cfg"].key() if v["path"] == "sparse" and v["cfg"] else v["path"]
                       for k, v in table.items()}
    res["sparse_engine"] = profile_step(dec, prompt, args.replays)
    res["command"] = " ".join(["python"] + sys.argv)
    res["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for eng in ("dense_engine", "sparse_engine"):
        r = res[eng]
        print(f"{eng}: wall {r['wall_us_per_step']} us/step, kernels {r['kernel_us_per_step']} us, busy "
              f"{r['busy_us_per_step']} us, {r['kernels_per_step']} kernels; {r['by_kind_us']}", flush=True)
        for t in r["top_kernels"][:12]:
            print(f"   {t['us_per_step']:8.2f} us x{t['calls_per_step']:.0f} {t['kind']:28s} {t['name'][:90]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out} and {plot(args.out)}")


if __name__ == "__main__":
    main()
