"""Training throughput of the CIFAR-10 Glow preset's architecture (images/s).

    KERAS_BACKEND=jax python benchmarks/glow_throughput.py [--batch-sizes 64,256]
        [--steps 50] [--repeats 3] [--config zoo/glow_cifar10_small.json]

The model and optimizer are those `keras_flows.train` builds from the config
(Glow, L=3, K=8, 64 channels by default; Adamax with the warmup schedule and
clipnorm), trained through the plain `model.fit(x, batch_size=B, epochs=1)`
on a fixed array of uniform random uint8 images (the step's cost does not
depend on the pixels). For each batch size: one warm-up epoch of a few steps
(tracing and compilation, its time reported as `first_epoch_s`), then
`--repeats` timed epochs of `--steps` steps; images/s = steps * B / wall
time, the median of the repeats. Prints one JSON line per batch size with
the backend, the device and the date.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402

import keras_flows as kf  # noqa: E402
from keras_flows.callbacks import Warmup  # noqa: E402
from keras_flows.utils.backend import device_description  # noqa: E402


def measure(config, batch_size, steps, repeats):
    flow = getattr(kf, config["model"])(**config["model_config"])
    train = config["training"]
    flow.compile(optimizer=keras.optimizers.Adamax(
                     Warmup(train["learning_rate"], train.get("warmup_steps", 1)),
                     clipnorm=train.get("clipnorm")),
                 jit_compile=train.get("jit_compile", "auto"))
    shape = tuple(config["model_config"]["image_shape"])
    x = np.random.default_rng(0).integers(0, 256, (steps * batch_size, *shape), dtype=np.uint8)
    start = time.perf_counter()
    flow.fit(x[:3 * batch_size], batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        flow.fit(x, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
        times.append(time.perf_counter() - start)
    rates = [steps * batch_size / t for t in times]
    return {"model": config["model"], "parameters": int(flow.count_params()),
            "backend": keras.backend.backend(), "device": device_description(),
            "batch_size": batch_size, "steps": steps, "repeats": repeats,
            "images_per_s": round(statistics.median(rates), 1),
            "images_per_s_range": [round(min(rates), 1), round(max(rates), 1)],
            "first_epoch_s": round(first, 1), "date": time.strftime("%Y-%m-%d")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(
        os.path.dirname(__file__), "..", "zoo", "glow_cifar10_small.json"))
    parser.add_argument("--batch-sizes", default="64")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        print(json.dumps(measure(config, batch_size, args.steps, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
