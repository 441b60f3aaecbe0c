#!/usr/bin/env bash
# The CUDA checks and benchmarks, in one run on a machine with a GPU (nothing to install there
# beyond torch, triton, scipy, pytest, hypothesis; the package is used from src/, the lab from the root).
#
#   OUT=runs/cuda-check bash benchmarks/cuda_check.sh
#
# Writes device.txt, cuda_tests.log, noise_cuda.log, bench/ (python -m experiments bench --device cuda) and
# suite.log (the whole test suite on that machine) under $OUT; each step has its own time limit.
set -u
OUT=${OUT:-runs/cuda-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton, platform; print('torch', torch.__version__, 'triton', triton.__version__, 'python', platform.python_version())"
  grep -m1 "model name" /proc/cpuinfo
} > "$OUT/device.txt" 2>&1
timeout "${CUDA_TESTS_S:-200}" python -m pytest -q -p no:cacheprovider -rs \
  tests/test_cuda.py tests/test_kernels_cuda.py tests/test_generator_device.py > "$OUT/cuda_tests.log" 2>&1
echo "cuda tests exit $?" >> "$OUT/cuda_tests.log"
timeout 60 python -m benchmarks.noise_sources --device cuda --n 67108864 --no-philox --rounds 15 > "$OUT/noise_cuda.log" 2>&1
timeout "${BENCH_S:-120}" python -m experiments bench --device cuda --impls builtin,eager,softmax,clone --no-vae \
  --no-progress --out "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "bench exit $?" >> "$OUT/bench.log"
timeout "${SUITE_S:-150}" python -m pytest -q -p no:cacheprovider -n "${WORKERS:-12}" > "$OUT/suite.log" 2>&1
echo "suite exit $?" >> "$OUT/suite.log"
tail -n 3 "$OUT"/cuda_tests.log "$OUT"/bench.log "$OUT"/suite.log
