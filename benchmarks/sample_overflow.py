"""How often do the image presets' samples overflow float32?

    KERAS_BACKEND=jax python benchmarks/sample_overflow.py [--num 10000]
        [--batch 500] [--temperatures 0.5 0.7 0.8 1.0] [--presets glow_mnist ...]

Draws `--num` samples of each preset at each temperature, in batches, the
way `ImageFlow.sample` does (batch b at temperature T uses the seed
1e6 * round(1000 T) + b), and
counts the images with any non-finite value before `_decode` replaces them
by zeros (`_decode(..., raw=True)`), and, so that a bound that merely keeps
values finite cannot pass for a fix, the images with any value more than
one full range outside [0, 2^n_bits) (|y - B/2| > 1.5 B). The 2-D toy
presets draw with `flow.sample` (no replacement there); "out of range" is
|x| > 10 for them (their densities lie within about +-4). Prints one line
per batch and a Markdown table at the end.

`--trace` instead follows one batch (seed 1e6 * round(1000 T)) of each image
preset through the inverse, bijector by bijector, and prints the largest
|value| after each, the largest factor exp(-s) by which an affine coupling's
inverse multiplied a value, the largest split-prior scale, and how many
images are non-finite so far.
"""

import argparse
import datetime
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import keras
from keras import ops

import keras_flows as kf
from keras_flows.utils.random import seed_generator

IMAGE_PRESETS = ("glow_mnist", "glow_cifar10", "realnvp_mnist", "realnvp_cifar10")
TOY_PRESETS = ("realnvp_moons", "realnvp_8gaussians", "realnvp_checkerboard",
               "realnvp_pinwheel", "realnvp_rings", "realnvp_2spirals")


def load(name):
    family, short = os.path.basename(name.rstrip("/")).split("_", 1)
    cls = {"glow": kf.Glow, "realnvp": kf.RealNVP}[family]
    return cls.from_preset(name if os.path.isdir(name) else short)


def raw_samples(flow, n, temperature, seed):
    """`flow.sample(n, temperature, seed)` before non-finite values are zeroed
    (for an image flow, the dequantized-scale values before `Dequantize`)."""
    if not isinstance(flow, kf.ImageFlow):
        return ops.convert_to_numpy(flow.sample(n, temperature=temperature, seed=seed))
    z = flow.base.sample(n, seed=seed_generator(seed), temperature=temperature)
    preprocess, multiscale = flow.bijector.bijectors[1:]
    return ops.convert_to_numpy(preprocess.inverse(multiscale.inverse(z)[0])[0])


def seed_of(temperature):
    return 10**6 * round(1000 * temperature)


def trace(flow, n, temperature, log):
    """Prints what each bijector of the sampling inverse does to one batch."""
    z = flow.base.sample(n, seed=seed_generator(seed_of(temperature)),
                         temperature=temperature)
    multiscale = flow.multiscale
    *parts, h = multiscale.unflatten(z)
    h, _ = multiscale.top_prior.inverse(h)
    peak = lambda v: np.nanmax(np.where(np.isfinite(v), np.abs(v), np.nan))
    for index in reversed(range(len(multiscale.levels))):
        if index < len(multiscale.split_priors):
            prior = multiscale.split_priors[index]
            sigma = np.exp(ops.convert_to_numpy(prior._params(h)[1]))
            h, _ = prior.inverse(ops.concatenate([parts[index], h], axis=-1))
            log(f"  split_prior_{index}: largest scale {sigma.max():.3g}")
        level = multiscale.levels[index]
        for bijector in reversed([b for step in level.bijectors
                                  for b in getattr(step, "bijectors", [step])]):
            gain = ""
            if isinstance(bijector, kf.bijectors.AffineCoupling):
                if bijector.mask == "checkerboard":
                    kept = ops.convert_to_tensor(bijector._checkerboard, h.dtype)
                    s, _ = bijector._log_scale_and_shift(bijector._params(h * kept, None),
                                                         1.0 - kept)
                else:
                    s, _ = bijector._log_scale_and_shift(
                        bijector._params(bijector._split(h)[0], None))
                with np.errstate(over="ignore", invalid="ignore"):
                    gain = f", largest exp(-s) {np.nanmax(np.exp(-ops.convert_to_numpy(s))):.3g}"
            h, _ = bijector.inverse(h)
            v = ops.convert_to_numpy(h).reshape(n, -1)
            bad = int((~np.isfinite(v).all(axis=1)).sum())
            log(f"  {bijector.name}: largest |value| {peak(v):.3g}{gain}, "
                f"{bad} of {n} images non-finite")


def count(flow, num, batch, temperature, log):
    image = isinstance(flow, kf.ImageFlow)
    center, limit = (2.0 ** (flow.n_bits - 1), 1.5 * 2.0 ** flow.n_bits) if image else (0, 10)
    nonfinite = wild = done = 0
    start = time.time()
    for b in range(-(-num // batch)):
        n = min(batch, num - done)
        y = raw_samples(flow, n, temperature, seed_of(temperature) + b).reshape(n, -1)
        finite = np.isfinite(y).all(axis=1)
        far = np.abs(np.where(np.isfinite(y), y, 0.0) - center).max(axis=1) > limit
        nonfinite += int((~finite).sum())
        wild += int((far & finite).sum())
        done += n
        log(f"  T={temperature}: {done}/{num} drawn, {nonfinite} non-finite, "
            f"{wild} finite but out of range, {time.time() - start:.0f} s")
    return nonfinite, wild, time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=10000, help="samples per temperature")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.7, 0.8, 1.0])
    parser.add_argument("--presets", nargs="+", default=[*IMAGE_PRESETS, *TOY_PRESETS],
                        help="built-in names or preset directories")
    parser.add_argument("--trace", action="store_true",
                        help="follow one batch through the inverse, layer by layer")
    args = parser.parse_args(argv)
    log = lambda line: print(line, flush=True)
    rows = []
    for name in args.presets:
        flow = load(name)
        log(f"{name}: {flow.count_params():,} parameters")
        if args.trace:
            if isinstance(flow, kf.ImageFlow):
                trace(flow, args.batch, args.temperatures[0], log)
            continue
        for temperature in args.temperatures:
            bad, wild, seconds = count(flow, args.num, args.batch, temperature, log)
            rows.append((name, temperature, bad, wild, seconds))
    if args.trace:
        return
    print(f"\n{args.num} samples per row, backend {keras.backend.backend()}, "
          f"{platform.machine()}, {os.cpu_count()} CPU cores, "
          f"{datetime.date.today().isoformat()}\n")
    print("| preset | temperature | non-finite samples | rate | finite, out of range | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, temperature, bad, wild, seconds in rows:
        print(f"| `{os.path.basename(name.rstrip('/'))}` | {temperature} | {bad} | "
              f"{bad / args.num:.2%} | {wild} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
