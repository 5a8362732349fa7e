#!/usr/bin/env bash
# The translation study alone, one device call (kind nvidia-h200): carry [.whl, out/data/translation].
#   LEFT=<seconds this call may run> bash benchmarks/device_translation.sh [overrides...]
# The teacher is chosen by validation CE (recipe teacher.eval_every); whatever finished comes back in
# $OUT/tr.tgz (results, report, plots, every metrics.jsonl incl. the teacher's validation curve, the log).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD/src SPARSELM_CACHE=/tmp/slcache
START=$(date +%s); LEFT=${LEFT:-560}
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[ -d /tmp/translation ] || cp -r out/data/translation /tmp/translation
T=$(( LEFT - ($(date +%s) - START) - 20 ))
CUDA_VISIBLE_DEVICES=${GPU:-0} timeout -k 5 $T python3 -m sparselm.cli run src/sparselm/recipes/translation-t5.yaml \
  --out /tmp/tr task.data_dir=/tmp/translation output.budget_s=$(( T - 60 > 30 ? T - 60 : 30 )) "$@" >> /tmp/tr.log 2>&1
tr '\r' '\n' < /tmp/tr.log | grep -v "it/s\|s/it" | tail -25
grep -h "val/ce" /tmp/tr/teacher/metrics.jsonl 2>/dev/null | tail -30
(cd /tmp && tar czf $OUT/tr.tgz tr/results.json tr/report.md tr/*.png tr/runs/*/metrics.jsonl tr/teacher/metrics.jsonl \
   tr/teacher/selection.json tr.log 2>/dev/null); ls -la $OUT
