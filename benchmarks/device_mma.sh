#!/usr/bin/env bash
# The tensor-core bitmask kernel (bmma) on one H200: build, GPU tests against the dense product and the host build,
# then the batched grid (batch 4-64, every bmma config timed), then the batch-1 decode grid for grp8cu (the per-group
# scale staging's first timing). ~8 min.
#   bash benchmarks/device_mma.sh   -> $OUT/gpu_kernels_batched.json (+ DECODE_S=200: $OUT/gpu_kernels_decode_grp8cu.json)
#   BATCHED_S=0 DECODE_S=250 DECODE_KERNELS=grp8cu,d4cu,tmma E2E_S=200 bash benchmarks/device_mma.sh
#     (the delta4 kernel's first timing against the others and cuBLAS, then the 7B decode with it in autotune)
#   BATCHED_S=0 NMB_S=330 bash benchmarks/device_mma.sh
#     (N:M masks at batch 1-64: the sparse-tensor-core kernel nmsp against tmma, nmcu and cuBLAS; every config)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD/src SPARSELM_D4CU=1 SPARSELM_UNTIMED=1  # opt-in candidates: these runs time them
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
q() { grep -v "Warn\|warn(" | tail -${1:-60}; }
# every CUDA library built at once (nvcc in parallel), then whether each one built
for m in cuda_mma cuda_grp8 cuda_tile cuda_delta4 cuda_nm cuda_nmsp; do
  python3 -c "from sparselm.kernels.gpu import $m as c; print('$m', c.available(), c.build_error() or '')" &
done; wait
python3 -c "import pytest" 2>/dev/null && timeout -k 5 ${TEST_S:-150} python3 -m pytest -q -p no:cacheprovider -x \
  ${TESTS:-tests/test_cuda_nmsp.py tests/test_cuda_tile.py tests/test_cuda_mma.py tests/test_cuda_grp8.py \
  tests/test_cuda_delta4.py tests/test_cuda_nm.py} -k "gpu_build" 2>&1 | tail -12
[ "${NMB_S:-0}" -gt 0 ] && timeout -k 10 $NMB_S python3 benchmarks/gpu_kernels.py --grid nmb --kernels ${NMB_KERNELS:-nmsp,tmma,nmcu} \
  --all-configs --budget-s $(( NMB_S - 25 )) --out $OUT/gpu_kernels_nmb.json 2>&1 | q 80
[ "${BATCHED_S:-300}" -gt 0 ] && timeout -k 10 ${BATCHED_S:-300} python3 benchmarks/gpu_kernels.py --grid batched --kernels ${KERNELS:-bmma,grp8cu} --all-configs --pipelined \
  --budget-s $(( ${BATCHED_S:-300} - 30 )) --out $OUT/gpu_kernels_batched.json 2>&1 | q 70
DK=${DECODE_KERNELS:-grp8cu}  # e.g. grp8cu,d4cu: the batch-1 CUDA kernels side by side, cuBLAS in the same run
[ "${DECODE_S:-0}" -gt 0 ] && timeout -k 10 $DECODE_S python3 benchmarks/gpu_kernels.py --grid decode --kernels $DK \
  --all-configs --budget-s $(( DECODE_S - 20 )) --out $OUT/gpu_kernels_decode_${DK//,/_}.json 2>&1 | q 40

# end-to-end 7B-shape decode at batch 1 with autotune choosing among every kernel (d4cu included), when asked
[ "${E2E_S:-0}" -gt 0 ] && timeout -k 10 $E2E_S python3 benchmarks/gpu_decode.py --int8 \
  --out $OUT/gpu_decode.json 2>&1 | q 20

# issue 4's fine-tuning throughput with compiled blocks (eager steps are launch-bound), when asked
[ "${TRAIN_S:-0}" -gt 0 ] && timeout -k 10 $TRAIN_S python3 benchmarks/train_step.py --compile \
  --out $OUT/train_step_compile.json 2>&1 | q 20
ls -la $OUT
