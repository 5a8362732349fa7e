"""Summarize Nsight Compute's raw CSV of benchmarks/gpu_profile.py: one row per profiled launch with its time,
DRAM rate, L1 sectors per global-load request, issue and occupancy shares, and the top stall reasons.

    python benchmarks/gpu_profile_summary.py gpu_profile_raw.csv gpu_profile_launches.json --out summary.json

ncu's raw page has a header row of metric names, a row of units, then one row per kernel in launch order. Rows of
helper kernels (PyTorch elementwise / copy / fill) are dropped before matching the rows to the launch list.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Any

HELPER = re.compile(r"elementwise|vectorized|fill|copy|reduce_kernel|CatArray|index_", re.I)
# ncu prints each column in the unit it finds readable (us / ms / ns, byte / Kbyte / Mbyte / Gbyte): scale to base
SCALE = {"byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12, "s": 1.0, "second": 1.0,
         "ms": 1e-3, "msecond": 1e-3, "us": 1e-6, "usecond": 1e-6, "ns": 1e-9, "nsecond": 1e-9, "%": 1.0, "": 1.0,
         "sector": 1.0, "request": 1.0, "inst": 1.0, "warp": 1.0, "cycle": 1.0}


def read_raw(path: str | Path) -> list[dict[str, float | str]]:
    """Rows of the raw CSV as {metric: value in base units (bytes, seconds)}; non-numeric cells stay strings."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)  # ncu may print lines before the table
    names, units, data = rows[head], rows[head + 1], rows[head + 2:]
    out = []
    for r in data:
        row: dict[str, float | str] = {}
        for name, unit, cell in zip(names, units, r):
            try:
                row[name] = float(cell.replace(",", "")) * SCALE.get(unit, 1.0)
            except ValueError:
                row[name] = cell
        out.append(row)
    return out


def _get(row: dict, name: str) -> float | None:
    v = row.get(name)
    return v if isinstance(v, float) else None


def summarize(rows: list[dict], launches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept = [r for r in rows if not HELPER.search(str(r.get("Kernel Name", "")))]
    if len(kept) != len(launches):
        raise SystemExit(f"{len(kept)} profiled kernels for {len(launches)} launches: cannot match them "
                         f"(names: {sorted({str(r.get('Kernel Name'))[:40] for r in kept})})")
    out = []
    for r, launch in zip(kept, launches):
        t = _get(r, "gpu__time_duration.sum")
        dram = _get(r, "dram__bytes_read.sum")
        sectors = _get(r, "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum")
        requests = _get(r, "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum")
        stalls = {k.split("issue_stalled_")[1].split("_per_")[0]: v for k, v in r.items()
                  if "issue_stalled_" in k and k.endswith("per_issue_active.ratio") and isinstance(v, float)}
        top = dict(sorted(stalls.items(), key=lambda kv: -kv[1])[:4])
        row = {**launch, "kernel_name": str(r.get("Kernel Name"))[:60],
               "time_us": None if t is None else round(t * 1e6, 2),
               "dram_read_MB": None if dram is None else round(dram / 1e6, 2),
               "dram_GBps": None if (t is None or dram is None) else round(dram / t / 1e9),
               "dram_pct_peak": _get(r, "dram__throughput.avg.pct_of_peak_sustained_elapsed"),
               "sectors_per_request": None if not (sectors and requests) else round(sectors / requests, 2),
               "issue_active_pct": _get(r, "smsp__issue_active.avg.pct_of_peak_sustained_active"),
               "occupancy_pct": _get(r, "sm__warps_active.avg.pct_of_peak_sustained_active"),
               "l1tex_pct_peak": _get(r, "l1tex__throughput.avg.pct_of_peak_sustained_active"),
               "top_stalls_per_issue": {k: round(v, 2) for k, v in top.items()}}
        # instructions per stored nonzero (per weight for cuBLAS): the profile showed the decode kernels issue-bound,
        # so this is the number a new kernel design has to lower (offline SASS counts predict it: sass_count.py)
        work = launch.get("nnz") or launch["N"] * launch["K"]
        warp_inst, thread_inst = _get(r, "inst_executed"), _get(r, "thread_inst_executed_true")
        row["warp_inst_per_nnz"] = None if warp_inst is None else round(warp_inst / work, 3)
        row["thread_inst_per_nnz"] = None if thread_inst is None else round(thread_inst / work, 1)
        if launch.get("nnz") and t:
            row["T_nnz_per_s"] = round(launch["nnz"] / t / 1e12, 3)
        out.append(row)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Nonzero rate against instructions per nonzero, one marker per kernel family: the issue-bound picture."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fams: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("T_nnz_per_s") and r.get("thread_inst_per_nnz"):
            build = r["kernel"].partition("@")[2]  # gpu_profile.py --nm-build rows: KEY@NAME, their own marker
            fams.setdefault(r["kernel"].split("-")[0] + (f"@{build}" if build else "") + f" {r['values']}",
                            []).append(r)
    for name, rs in sorted(fams.items()):
        ax.scatter([r["thread_inst_per_nnz"] for r in rs], [r["T_nnz_per_s"] for r in rs], label=name, s=22)
    ax.set_xlabel("SASS thread-instructions per stored nonzero")
    ax.set_ylabel("T nonzeros / s")
    ax.set_title("batch-1 decode kernels (Nsight Compute)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw_csv")
    ap.add_argument("launches")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path, help="PNG: nonzero rate vs instructions per nonzero")
    args = ap.parse_args()
    launches = json.loads(Path(args.launches).read_text())["launches"]
    rows = summarize(read_raw(args.raw_csv), launches)
    for r in rows:
        print(f"{r['N']}x{r['K']} s{r['sparsity']:.2f} {r['values']:8s} {r['kernel']:26s} {r['time_us']} us "
              f"dram {r['dram_GBps']} GB/s sect/req {r['sectors_per_request']} issue {r['issue_active_pct']} "
              f"occ {r['occupancy_pct']} l1 {r['l1tex_pct_peak']} nnz/s {r.get('T_nnz_per_s')} "
              f"inst/nnz {r['thread_inst_per_nnz']} "
              f"stalls {r['top_stalls_per_issue']}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
