"""Training throughput of the CIFAR-10 Glow preset's architecture (images/s).

    KERAS_BACKEND=jax python benchmarks/glow_throughput.py [--batch-sizes 64,256]
        [--steps 50] [--repeats 3] [--config zoo/glow_cifar10_small.json]
        [--jit] [--library keras_flows,normflows]
    KERAS_BACKEND=torch python benchmarks/glow_throughput.py --profile 3

The model and optimizer are those `keras_flows.train` builds from the config
(Glow, L=3, K=8, 64 channels by default; `train.optimizer`: Adamax with the
warmup schedule and gradient clipping), trained through the plain
`model.fit(x, batch_size=B, epochs=1)` on a fixed array of uniform random
uint8 images (the step's cost does not depend on the pixels). For each batch
size: one warm-up epoch of a few steps (tracing and compilation, its time
reported as `first_epoch_s`), then `--repeats` timed epochs of `--steps`
steps; images/s = steps * B / wall time, the median of the repeats (each
round's figure is printed too). Prints one JSON line per library and batch
size with the backend, the device and the date.
`--jit` compiles with `jit_compile=True` instead of the config's choice
("auto" by default).

`--profile N` (PyTorch) runs N `train_on_batch` steps at the first batch
size under `torch.profiler` after two warm-up steps and prints its table of
operators by their own CPU time, instead of timing.

`--library normflows` times the peer instead, and `--library
keras_flows,normflows` both, their epochs alternating in one process (`pip
install normflows`, PyTorch, the GPU when there is one): its
`MultiscaleFlow` of `GlowBlock`s with the config's levels, steps per level
and hidden channels (affine coupling with sigmoid scale, LU 1x1 convolution,
ActNorm; a learned diagonal Gaussian `GlowBase` for each level's
factored-out part, where keras_flows's split priors are a convolution of the
kept half), trained by its `forward_kld` on the same images with uniform
dequantization noise drawn in the step, Adamax at the config's learning rate
(constant, where ours warms up to it) and `clip_grad_norm_` at the config's
`global_clipnorm` (the one global norm Keras's `global_clipnorm` clips too).
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
from keras_flows.train import optimizer  # noqa: E402
from keras_flows.utils.backend import device_description  # noqa: E402


def build(config, jit=False):
    """The config's flow, compiled with train.py's optimizer."""
    flow = getattr(kf, config["model"])(**config["model_config"])
    train = config["training"]
    flow.compile(optimizer=optimizer(train),
                 jit_compile=True if jit else train.get("jit_compile", "auto"))
    return flow


def timed(entries, batch_size, steps, repeats):
    """Each entry `(epoch, x, info)` warms up on 3 batches of its `x`; then
    `repeats` rounds each run one epoch over all of `x` of every entry in
    turn, so that a drift in the machine's speed reaches every entry alike.
    One result per entry."""
    firsts, times = [], [[] for _ in entries]
    for epoch, x, _ in entries:
        start = time.perf_counter()
        epoch(x[:3 * batch_size])
        firsts.append(time.perf_counter() - start)
    for _ in range(repeats):
        for (epoch, x, _), elapsed in zip(entries, times):
            start = time.perf_counter()
            epoch(x)
            elapsed.append(time.perf_counter() - start)
    results = []
    for (_, _, info), first, elapsed in zip(entries, firsts, times):
        rates = [steps * batch_size / t for t in elapsed]
        results.append({
            **info, "batch_size": batch_size, "steps": steps, "repeats": repeats,
            "images_per_s": round(statistics.median(rates), 1),
            "images_per_s_per_round": [round(r, 1) for r in rates],
            "first_epoch_s": round(first, 1), "date": time.strftime("%Y-%m-%d")})
    return results


def random_images(n, shape):
    return np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)


def keras_flows_entry(config, batch_size, steps, jit=False):
    flow = build(config, jit)
    x = random_images(steps * batch_size, config["model_config"]["image_shape"])

    def epoch(images):
        flow.fit(images, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)

    return epoch, x, {
        "library": f"keras_flows {kf.__version__}", "model": config["model"],
        "parameters": int(flow.count_params()), "backend": keras.backend.backend(),
        "jit_compile": flow.jit_compile, "device": device_description()}


def profile(config, batch_size, steps):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    flow = build(config)
    x = random_images(batch_size, config["model_config"]["image_shape"])
    for _ in range(2):
        flow.train_on_batch(x)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            flow.train_on_batch(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def normflows_entry(config, batch_size, steps):
    import normflows as nf
    import torch

    model_config, train = config["model_config"], config["training"]
    height, width, channels = model_config["image_shape"]
    levels, depth = model_config["levels"], model_config["steps_per_level"]
    hidden = model_config["hidden_channels"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    # normflows lists the levels from the latent end: level i (0 = coarsest)
    # works on channels * 2^(levels + 1 - i) channels after its squeeze.
    flows, priors, merges = [], [], []
    for i in range(levels):
        c = channels * 2 ** (levels + 1 - i)
        flows.append([nf.flows.GlowBlock(c, hidden, split_mode="channel", scale=True)
                      for _ in range(depth)] + [nf.flows.Squeeze()])
        if i == 0:
            latent = (c, height // 2 ** levels, width // 2 ** levels)
        else:
            merges.append(nf.flows.Merge())
            latent = (c // 2, height // 2 ** (levels - i), width // 2 ** (levels - i))
        priors.append(nf.distributions.GlowBase(latent))
    model = nf.MultiscaleFlow(priors, flows, merges, class_cond=False).to(device)
    optimizer = torch.optim.Adamax(model.parameters(), lr=train["learning_rate"])
    x = torch.from_numpy(random_images(steps * batch_size, (height, width, channels)))
    x = x.permute(0, 3, 1, 2).contiguous()

    def epoch(images):
        for start in range(0, len(images) - batch_size + 1, batch_size):
            batch = images[start:start + batch_size].to(device).float()
            batch = (batch + torch.rand_like(batch)) / 256.0
            loss = model.forward_kld(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train.get("global_clipnorm"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), train["global_clipnorm"])
            optimizer.step()
        float(loss.detach())  # waits for the device

    return epoch, x, {  # the warm-up epoch initialises ActNorm
        "library": f"normflows {nf.__version__}", "model": "MultiscaleFlow(GlowBlock)",
        "parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "backend": "torch", "jit_compile": False,
        "device": torch.cuda.get_device_name(0) if device == "cuda"
        else device_description()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(
        os.path.dirname(__file__), "..", "zoo", "glow_cifar10_small.json"))
    parser.add_argument("--batch-sizes", default="64")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit", action="store_true",
                        help="keras_flows: compile with jit_compile=True")
    parser.add_argument("--library", default="keras_flows",
                        help="keras_flows, normflows, or both comma-separated: their "
                             "epochs then alternate in one process")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="PyTorch: print torch.profiler's table of N steps, no timing")
    args = parser.parse_args(argv)
    libraries = args.library.split(",")
    if not libraries or set(libraries) - {"keras_flows", "normflows"}:
        parser.error(f"--library takes keras_flows, normflows or both; got {args.library!r}")
    if libraries != ["keras_flows"] and args.profile:
        parser.error("--profile applies to keras_flows alone")
    if args.profile and keras.backend.backend() != "torch":
        parser.error("--profile needs KERAS_BACKEND=torch")
    with open(args.config) as f:
        config = json.load(f)
    if args.profile:
        return profile(config, int(args.batch_sizes.split(",")[0]), args.profile)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        entries = [keras_flows_entry(config, batch_size, args.steps, args.jit)
                   if library == "keras_flows" else normflows_entry(config, batch_size, args.steps)
                   for library in libraries]
        for result in timed(entries, batch_size, args.steps, args.repeats):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
