#!/usr/bin/env bash
# Nsight Compute counters of the batch-1 decode kernels (one H200, ~3 min; ncu works on the Firecracker machines,
# KINDS.md). Carry .whl (pydantic). Results: $OUT/gpu_profile.ncu-rep (open in Nsight Compute), the same as CSV
# (details page and raw metrics), and the launch list that maps ncu's rows to (shape, sparsity, config); then
# benchmarks/smem_probe.py (x gathered through L1 vs from shared memory, CUDA C++ built there) -> smem_probe.json.
#   bash benchmarks/device_profile.sh [extra gpu_profile.py args, e.g. --shapes 4096x11008 --sparsities 0.75]
#   SMEM_PROBE=0 bash benchmarks/device_profile.sh --shapes 4096x11008 --pattern 1:4 --values int8 \
#       --configs nmcu-w32p1-u4-pairs --nm-build old=.stage/old_nm   # the same launches with another nm_gemv.cu
#       build too (carry .stage/old_nm): counters of two builds side by side, rows KEY and KEY@old
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD/src
export PATH=$(dirname "$(python3 -c "import sys; print(sys.executable)")"):$PATH  # ninja, for the probe's JIT build
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 2; }
"$NCU" --version | tail -1
SECTIONS=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables
          --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats
          --section InstructionStats --section SourceCounters)
run() {  # run NAME SECTION-ARGS... -- profile the launches between cudaProfilerStart/Stop
  local name=$1; shift
  timeout -k 10 ${NCU_TIMEOUT:-300} "$NCU" --clock-control none --profile-from-start off "$@" -f -o $OUT/$name \
    python3 benchmarks/gpu_profile.py --out $OUT/${name}_launches.json "${ARGS[@]}" > /tmp/$name.log 2>&1
}
ARGS=("$@")
run gpu_profile "${SECTIONS[@]}" || {
  echo "== sections run failed:"; tail -20 /tmp/gpu_profile.log
  ARGS=(--sparsities 0.75,0.9 --values float16 "$@"); run gpu_profile --set full || tail -20 /tmp/gpu_profile.log; }
for page in details raw; do
  "$NCU" --import $OUT/gpu_profile.ncu-rep --csv --page $page > $OUT/gpu_profile_$page.csv 2>/dev/null
done
grep -v "^==PROF==" /tmp/gpu_profile.log | tail -5
python3 benchmarks/gpu_profile_summary.py $OUT/gpu_profile_raw.csv $OUT/gpu_profile_launches.json \
  --out $OUT/gpu_profile_summary.json 2>&1 | tail -60
# the direct test of the L1-gather hypothesis: the same CUDA kernel gathering x through L1 vs shared memory
[ "${SMEM_PROBE:-1}" = 1 ] && timeout -k 10 ${PROBE_TIMEOUT:-240} python3 benchmarks/smem_probe.py \
  --out $OUT/smem_probe.json 2>&1 | grep -v "Warn\|warn(" | tail -15
ls -la $OUT
