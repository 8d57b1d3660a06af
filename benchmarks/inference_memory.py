"""Peak memory of scoring CIFAR-10 images with the glow_cifar10 preset.

    python benchmarks/inference_memory.py [--images 4096] [--backends tensorflow,jax,torch]

Each backend runs in a fresh process: it loads the preset and the test
images, notes its resident memory, runs `flow.bits_per_dim` on all the
images in one call, and reports the peak resident set size (`ru_maxrss`)
and the growth over the memory held before the call. Prints a Markdown
table row per backend.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"  # searched after KERAS_FLOWS_DATA

CHILD = r"""
import json, resource, sys, time
import numpy as np
import keras_flows as kf
from keras import ops

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

n = int(sys.argv[2])
with np.load(kf.datasets.npz_file("cifar10", [sys.argv[1]])) as data:
    images = data["x_test"][np.random.default_rng(0).permutation(10000)[:n]]
flow = kf.Glow.from_preset("cifar10")
flow.bits_per_dim(images[:8])  # warm up: first-call allocations are not the batch's
before = rss_mib()
start = time.time()
bpd = ops.convert_to_numpy(flow.bits_per_dim(images))
seconds = time.time() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"images": n, "before_mib": round(before), "peak_mib": round(peak),
                  "growth_mib": round(peak - before), "seconds": round(seconds, 1),
                  "mean_bits_per_dim": round(float(bpd.mean()), 4)}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"{args.images} CIFAR-10 test images, glow_cifar10, one bits_per_dim call")
    print("| backend | peak RSS (MiB) | growth during the call (MiB) | seconds | bits/dim |")
    print("| --- | --- | --- | --- | --- |")
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        run = subprocess.run([sys.executable, "-c", CHILD, str(SHARED), str(args.images)],
                             env=env, capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"{backend} failed:\n{run.stderr[-3000:]}")
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"| {backend} | {r['peak_mib']} | {r['growth_mib']} | {r['seconds']} | "
              f"{r['mean_bits_per_dim']} |", flush=True)


if __name__ == "__main__":
    main()
