#!/usr/bin/env bash
# Trains the small image flows of zoo/ for a wall-clock budget on this
# machine's backend and prints their test bits/dim (full test splits).
# Results land in runs/<name>/{results.json,log.csv,samples_epoch_N.png}.
#   benchmarks/image_flows.sh [minutes]    (default 20 per model)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
minutes=${1:-20}
data=${KERAS_FLOWS_DATA:-../shared/datasets}
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
for name in glow_mnist_small glow_cifar10_small realnvp_mnist_small realnvp_cifar10_small; do
  case $name in *mnist*) file=mnist.npz ;; *) file=cifar10.npz ;; esac
  python -m keras_flows.train "zoo/$name.json" --out "runs/$name" --data "$data/$file" \
    --max-minutes "$minutes" --eval-images 1000
  python benchmarks/summarize.py "runs/$name"
done
