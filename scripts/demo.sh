#!/usr/bin/env bash
# Samples 64 images from the pretrained Glow on CIFAR-10 and writes samples.png.
# Arguments replace the default ones of `keras-flows sample`, e.g.
# `scripts/demo.sh mnist --num 16 --out mnist.png`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if [ "$#" -eq 0 ]; then
  set -- cifar10 --num 64 --temperature 0.7 --out samples.png
fi
keras-flows sample "$@"
