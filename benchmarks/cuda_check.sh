#!/usr/bin/env bash
# The GPU check, in ONE call of at most 8 minutes on one H200 (torch 2.11, triton 3.6, no internet;
# nothing to install beyond torch, triton, scipy, pytest; the package is used from src/):
#
#   OUT=runs/cuda-check bash benchmarks/cuda_check.sh
#
# Every stage has its own time limit (a hang costs that stage, never the rest) and writes under
# $OUT as it goes: device.txt, tests.log (the CUDA tests), bench_<stage>.json and <stage>.log (see
# benchmarks/cuda_bench.py), then cuda_bench.md / cuda_bench.json (all tables) and stages.txt
# (exit status and seconds of each stage; 124 = its time limit). The limits add up to 480 s.
set -u
OUT=${OUT:-runs/cuda-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
: > "$OUT/stages.txt"

stage() {  # stage NAME SECONDS COMMAND...: run COMMAND with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/stages.txt"
}

stage device 15 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
  python -c "import torch, triton, platform; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"python\", platform.python_version())";
  grep -m1 "model name" /proc/cpuinfo'
cp "$OUT/device.log" "$OUT/device.txt"
# the CUDA tests: the Triton kernels compiled (tests/kernels/test_kernels_triton.py), the samplers on the device, the switch
stage tests 140 python -m pytest -q -p no:cacheprovider -rs tests/kernels/test_kernels_triton.py tests/test_cuda.py \
  tests/kernels/test_kernels_fused_cuda.py tests/core/test_core_policy.py
stage decoding_tests 30 python -m pytest -q -p no:cacheprovider -rs tests/decoding/test_decoding.py -k cuda
B=(python benchmarks/cuda_bench.py --out "$OUT")
stage speed 95 "${B[@]}" --stage speed --deadline 85
stage compiled 65 "${B[@]}" --stage compiled --deadline 55
stage overhead 35 "${B[@]}" --stage latency,syncs,graphs
stage tails 35 "${B[@]}" --stage tails --deadline 28
stage sampling 20 "${B[@]}" --stage sampling
# token sampling at 256 x 151,936: speed against multinomial and the exponential race, syncs, graph replay, tails
stage decoding 35 python benchmarks/decoding_speed.py --device cuda --quick --out "$OUT/decoding.json"
stage report 10 "${B[@]}" --report
cat "$OUT/stages.txt"
tail -n 3 "$OUT/tests.log"
cat "$OUT/cuda_bench.md" 2>/dev/null
