#!/usr/bin/env bash
# Runs the whole test suite once per backend: TensorFlow, JAX, PyTorch.
# Tests run in one pytest worker per CPU (pytest-xdist), a file to a worker (so
# module fixtures are made once), the slowest files first (tests/conftest.py);
# extra arguments go to pytest, e.g.
# `scripts/test.sh -k moons`, `scripts/test.sh -n 0` for one process.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Workers: the CPUs this process may use (affinity, cgroup quota), at most 4.
workers=$(python -c '
import os
n = len(os.sched_getaffinity(0))
try:
    quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
    n = n if quota == "max" else max(1, min(n, int(quota) // int(period)))
except (OSError, ValueError):
    pass
print(min(n, 4))')
# One thread per worker: PyTorch's OpenMP and TensorFlow's pools otherwise each
# start a thread per core, and the workers' threads fight over the cores (a
# PyTorch run stalled for minutes on two workers).
export OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1
set +e   # run every backend, then report
passed=0; failed=0; status=0
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  start=$SECONDS
  log=$(mktemp)
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile --no-loadscope-reorder "$@" 2>&1 | tee "$log"
  code=${PIPESTATUS[0]}
  [ "$code" -eq 0 ] || status=1
  p=$(grep -oE '[0-9]+ passed' "$log" | tail -1 | cut -d' ' -f1); passed=$((passed + ${p:-0}))
  f=$(grep -oE '[0-9]+ (failed|error)' "$log" | awk '{s+=$1} END {print s+0}'); failed=$((failed + f))
  [ "$code" -eq 0 ] || [ "$f" -gt 0 ] || failed=$((failed + 1))
  echo "=== $backend: exit $code in $((SECONDS - start)) s"
  rm -f "$log"
done
echo "total: $passed passed, $failed failed"
exit $status
