"""What gradient clipping costs an eager optimizer step (ms), by clipping mode.

    KERAS_BACKEND=torch python benchmarks/gradient_clipping.py
        [--config zoo/glow_cifar10_small.json] [--repeats 5] [--steps 30]

Builds the config's flow and times `optimizer.apply(gradients)` of Adamax on
its trainable variables, with fixed random gradients, three ways: no
clipping, `clipnorm` (each gradient clipped to its own norm) and
`global_clipnorm` (all gradients scaled by one factor), both at 200. Each
figure is the fastest of `--repeats` means over `--steps` calls. The step
is eager: what PyTorch's default `fit` pays. Under `jit_compile` (JAX's
default, or `tf.function` on TensorFlow) the clipping is compiled with the
step and these figures do not apply. On PyTorch it also times the same
step as the PyTorch peers take it (`clip_grad_norm_`, then
`torch.optim.Adamax`).
"""

import argparse
import json
import os
import sys
import time
import timeit

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402

import keras_flows as kf  # noqa: E402
from keras_flows.utils.backend import device_description  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(
        os.path.dirname(__file__), "..", "zoo", "glow_cifar10_small.json"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    flow = getattr(kf, config["model"])(**config["model_config"])
    variables = flow.trainable_variables
    rng = np.random.default_rng(0)
    gradients = [keras.ops.convert_to_tensor(1e-3 * rng.normal(size=v.shape), v.dtype)
                 for v in variables]
    row = {"model": config["model"], "variables": len(variables),
           "backend": keras.backend.backend(), "device": device_description(),
           "date": time.strftime("%Y-%m-%d")}
    for name, clip in [("none", {}), ("clipnorm", {"clipnorm": 200.0}),
                       ("global_clipnorm", {"global_clipnorm": 200.0})]:
        optimizer = keras.optimizers.Adamax(1e-3, **clip)
        optimizer.build(variables)
        step = lambda: optimizer.apply(gradients, variables)  # noqa: E731
        step()
        means = [timeit.timeit(step, number=args.steps) / args.steps
                 for _ in range(args.repeats)]
        row[f"{name}_ms"] = round(1e3 * min(means), 2)
    if keras.backend.backend() == "torch":
        row["torch_adamax_global_clip_ms"] = torch_reference(variables, gradients, args)
    print(json.dumps(row))


def torch_reference(variables, gradients, args):
    """The same step in plain PyTorch, as the PyTorch peers train:
    `clip_grad_norm_` then `torch.optim.Adamax` (its default foreach form)."""
    import torch

    parameters = [torch.nn.Parameter(v.value.detach().clone()) for v in variables]
    for p, g in zip(parameters, gradients):
        p.grad = g.clone()
    optimizer = torch.optim.Adamax(parameters, 1e-3)

    def step():
        torch.nn.utils.clip_grad_norm_(parameters, 200.0)
        optimizer.step()

    step()
    means = [timeit.timeit(step, number=args.steps) / args.steps for _ in range(args.repeats)]
    return round(1e3 * min(means), 2)


if __name__ == "__main__":
    main()
