import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr = rows[0]
keys = [i for i, h in enumerate(hdr) if any(s in h for s in ("warp_issue_stalled", "pcsamp_warps_issue_stalled")) or h in (
  "Kernel Name", "gpu__time_duration.sum", "sm__warps_active.avg.pct_of_peak_sustained_active", "smsp__issue_active.avg.pct_of_peak_sustained_active",
  "dram__throughput.avg.pct_of_peak_sustained_elapsed", "smsp__inst_executed.sum", "launch__occupancy_limit_shared_mem", "launch__occupancy_limit_registers", "sm__throughput.avg.pct_of_peak_sustained_elapsed", "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum", "launch__grid_size", "smsp__warps_active.avg.per_cycle_active")]
for r in rows[2:]:
    if len(r) < len(hdr): continue
    name = r[hdr.index("Kernel Name")] if "Kernel Name" in hdr else ""
    vals = {hdr[i]: r[i] for i in keys}
    items = sorted(((k, v) for k, v in vals.items() if "stalled" in k), key=lambda kv: -float(kv[1].replace(",", "") or 0) if kv[1].replace(",", "").replace(".", "").isdigit() else 0)
    print(name[:60], {k: v for k, v in vals.items() if "stalled" not in k and k != "Kernel Name"})
    print("   top stalls:", items[:8])
