"""benchmarks/gpu_profile_summary.py on a synthetic Nsight Compute raw CSV: units, helper-kernel filtering,
matching rows to launches, derived rates."""
import csv
import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_profile_summary.py"
spec = importlib.util.spec_from_file_location("gpu_profile_summary", PATH)
gps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gps)

NAMES = ["ID", "Kernel Name", "gpu__time_duration.sum", "dram__bytes_read.sum",
         "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum", "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum",
         "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
         "smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio", "inst_executed",
         "thread_inst_executed_true"]
UNITS = ["", "", "us", "Mbyte", "sector", "request", "", "", "inst", "inst"]


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["==PROF== a line ncu prints first"])
        w.writerow(NAMES)
        w.writerow(UNITS)
        w.writerows(rows)


def test_summary_matches_launches_and_converts_units(tmp_path):
    _csv(tmp_path / "raw.csv", [
        ["0", "gemv_kernel", "20.0", "90.0", "1000", "100", "3.0", "0.5", "1,802,240", "51,380,224"],
        ["1", "at::native::vectorized_elementwise_kernel", "1.0", "0.1", "1", "1", "0", "0", "5", "100"],
        ["2", "vc32_spmv_kernel", "10.0", "45.0", "8000", "1000", "1.5", "4.0", "8,454,144", "247,990,224"]])
    launches = [{"N": 4096, "K": 11008, "sparsity": 0.0, "values": "float16", "kernel": "cublas"},
                {"N": 4096, "K": 11008, "sparsity": 0.75, "values": "float16", "kernel": "vc32v1-n1t512b1w2",
                 "nnz": 11_272_192}]
    rows = gps.summarize(gps.read_raw(tmp_path / "raw.csv"), launches)
    assert [r["kernel"] for r in rows] == ["cublas", "vc32v1-n1t512b1w2"]
    assert rows[0]["time_us"] == 20.0 and rows[0]["dram_GBps"] == 4500   # 90 MB in 20 us
    assert rows[1]["sectors_per_request"] == 8.0
    assert rows[1]["T_nnz_per_s"] == pytest.approx(1.127, abs=1e-3)
    assert rows[0]["thread_inst_per_nnz"] == pytest.approx(1.1, abs=0.05)  # per weight for the dense GEMV
    assert rows[1]["warp_inst_per_nnz"] == pytest.approx(0.75, abs=1e-3)
    assert rows[1]["thread_inst_per_nnz"] == pytest.approx(22.0, abs=0.05)
    assert list(rows[1]["top_stalls_per_issue"]) == ["lg_throttle", "long_scoreboard"]


def test_summary_refuses_a_count_mismatch(tmp_path):
    _csv(tmp_path / "raw.csv", [["0", "gemv_kernel", "20.0", "90.0", "1000", "100", "3.0", "0.5"]])
    with pytest.raises(SystemExit, match="cannot match"):
        gps.summarize(gps.read_raw(tmp_path / "raw.csv"), [{"kernel": "a"}, {"kernel": "b"}])
