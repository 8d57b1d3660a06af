#!/usr/bin/env bash
# Trains a flow on a 2-D toy density and writes a PNG of its samples and density.
# Arguments go to guides/train_2d_density.py (default: zoo/realnvp_moons.json).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python guides/train_2d_density.py "$@"
