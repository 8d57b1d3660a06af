#!/usr/bin/env bash
# Creates .venv (once) with keras_flows, its three backends and the test tools.
# Sourced by the other scripts; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stamp=".venv/.installed-$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, alone and pinned: the CPU wheel.
  .venv/bin/python -m pip install -q -c scripts/constraints.txt torch==2.13.0
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[all,test]"
  # TensorFlow Probability on TensorFlow needs tf-keras, whose own requirement
  # (the full `tensorflow` wheel) would overwrite tensorflow-cpu's files.
  .venv/bin/python -m pip install -q --no-deps -c scripts/constraints.txt tf-keras
  rm -f .venv/.installed-*; touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=2
