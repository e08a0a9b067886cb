#!/usr/bin/env bash
# One GPU validation pass, sized for a short lease on a machine without our venv (its own python3 with
# torch, triton and transformers; xgrammar carried as wheels): the kernel tests and the engine parity tests
# on CUDA, the kernel benchmark, and the engine benchmark on a random-initialised Qwen3-1.7B-shaped
# checkpoint (no weights need to travel). Each stage has its own time limit, writes OUT_DIR/<stage>.log and
# prints its tail; a failing stage does not stop the next. STAGES picks a subset (default: the first four);
# tuning stages: tune_attention (tile sweep of the attention kernel), grammar_fill (xgrammar threads),
# step_profile (where a decode step's time goes, host and GPU).
#
#   [STAGES="engine_tests engine_bench"] bash benchmarks/gpu_validation.sh OUT_DIR TOKENIZER_DIR
set -u
out=${1:?usage: gpu_validation.sh OUT_DIR TOKENIZER_DIR}
tokenizer=${2:?usage: gpu_validation.sh OUT_DIR TOKENIZER_DIR}
model=${TMPDIR:-/tmp}/qwen3-1.7b-random
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

stages=" ${STAGES:-kernel_tests engine_tests kernel_bench engine_bench} "

stage() {
  local name=$1 limit=$2 begin=$SECONDS rc
  shift 2
  [[ $stages == *" $name "* ]] || return 0
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - begin)) s"
  tail -n "${TAIL_LINES:-15}" "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton, transformers as t; print("torch", torch.__version__, "triton", triton.__version__, "transformers", t.__version__)'
stage kernel_tests 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels
stage engine_tests 120 python3 -m pytest -q -n 4 -p no:cacheprovider \
  tests/engine_models/test_triton_backend.py tests/engine_models/test_engine_on_device.py \
  tests/engine_models/test_decode_staging.py
stage kernel_bench 90 python3 -m kernels.bench
make_model="[[ -f '$model/config.json' ]] || python3 -m benchmarks.random_checkpoint --shape qwen3-1.7b \
  --tokenizer '$tokenizer' --output '$model'"
stage engine_bench 200 bash -c "$make_model && python3 -m benchmarks.engine_bench --model '$model' --device cuda \
  --also-dtype none --also-eager --also-kv-cache-dtype fp8"
stage tune_attention 200 python3 -m kernels.tune_attention --json-out "$out/tune_attention.json"
stage grammar_fill 60 python3 -m benchmarks.grammar_fill --tokenizer "$tokenizer"
stage step_profile 150 bash -c "$make_model && python3 -m benchmarks.step_profile --model '$model' --device cuda"
