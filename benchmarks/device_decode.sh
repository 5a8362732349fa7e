#!/usr/bin/env bash
# The batch-1 decode path on one H200, one device call: build every CUDA library, the GPU tests of the N:M kernel and
# the fused decode kernels, then (each when its budget is > 0) the batch-1 N:M kernel grid, the attention kernels, and
# the 7B-shape decode at 1:4 (fp16 and int8 values) against the same engine dense. ~8 min with the defaults.
#   bash benchmarks/device_decode.sh     -> $OUT/gpu_kernels_nm.json, decode_attention.json, gpu_decode_nm.json
#   NM_S=0 ATTN_S=0 DECODE_S=240 bash benchmarks/device_decode.sh     (only the decode)
#   DECODE_ARGS="--engine-ab 5" ...   (gpu_decode.py's extra options: the engine options' alternating A/B)
#   ATTN_ARGS="--qkv-splits --positions 16,24,40,48,64,100" ...   (decode_attention.py's options)
#   AB_S=150 AB_OLD=.stage/old_nm ...   (nm_ab.py: this tree's nmcu against another nm_gemv.cu, carried in AB_OLD)
#   TEST_S=0 ...   (no GPU tests)
#   AB_ARGS="--build nostage=.stage/probe/nostage --shapes 4096x4096" ...   (more builds, carried too; other shapes)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD/src SPARSELM_D4CU=1
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
q() { grep -v "Warn\|warn(" | tail -${1:-60}; }
for m in cuda_mma cuda_grp8 cuda_tile cuda_delta4 cuda_nm cuda_nmsp; do
  python3 -c "from sparselm.kernels.gpu import $m as c; print('$m', c.available(), c.build_error() or '')" &
done
[ "${AB_S:-0}" -gt 0 ] && python3 -c "from pathlib import Path; from sparselm.kernels.gpu import cuda_build as b, \
cuda_nm as c; print('old nmcu', b.Library(Path('${AB_OLD:-.stage/old_nm}/nm_gemv.cu'), c._declare).available())" &
wait
[ "${TEST_S:-150}" -gt 0 ] && python3 -c "import pytest" 2>/dev/null && \
  timeout -k 5 ${TEST_S:-150} python3 -m pytest -q -p no:cacheprovider \
  ${TESTS:-tests/test_cuda_nm.py tests/test_gpu_fused.py tests/test_pdl.py} \
  -k "${TEST_K:-gpu_build or fused or decode or pdl}" 2>&1 | tail -12
[ "${NM_S:-150}" -gt 0 ] && timeout -k 10 ${NM_S:-150} python3 benchmarks/gpu_kernels.py --grid nm \
  --kernels ${NM_KERNELS:-nmcu} --all-configs --budget-s $(( ${NM_S:-150} - 20 )) \
  --out $OUT/gpu_kernels_nm.json 2>&1 | q 50
[ "${AB_S:-0}" -gt 0 ] && timeout -k 10 ${AB_S} python3 benchmarks/nm_ab.py --old ${AB_OLD:-.stage/old_nm} \
  ${AB_ARGS:-} --out $OUT/nm_ab.json 2>&1 | q 20
[ "${ATTN_S:-60}" -gt 0 ] && timeout -k 10 ${ATTN_S:-60} python3 benchmarks/decode_attention.py ${ATTN_ARGS:-} \
  --out $OUT/decode_attention.json 2>&1 | q 30
[ "${DECODE_S:-240}" -gt 0 ] && timeout -k 10 ${DECODE_S:-240} python3 benchmarks/gpu_decode.py --sparsities 0 \
  --patterns 1:4 --int8 ${DECODE_ARGS:-} --out $OUT/gpu_decode_nm.json 2>&1 | q 40
ls -la $OUT
