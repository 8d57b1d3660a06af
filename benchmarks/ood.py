"""Out-of-distribution detection with the image presets, on real data.

    KERAS_BACKEND=jax nice -n 10 python benchmarks/ood.py [--num 1000]
        [--background-steps 300] [--out results.json]

(a) glow_mnist: in-distribution MNIST test images against CIFAR-10 test
    images converted to grey (Pillow's "L", ITU-R 601-2 luma) and resized to
    28x28 (Pillow's box filter), and against uniform noise (integers 0..255).
(b) glow_cifar10: CIFAR-10 test images against MNIST test digits padded to
    32x32 (2 black pixels each side) with the grey repeated to 3 channels,
    and against uniform noise.

`--num` images per set, drawn with a fixed seed; each detector is fitted on
`--num` in-distribution images from the training split (fpr 0.05). Every
method of `keras_flows.anomaly.Detector` is scored: likelihood, bits/dim
(the same ranking, hence the same AUROC), typicality with M = 1 and with
M = 10 (groups of 10 consecutive images: num / 10 scores per set),
complexity with PNG and with zlib, and the likelihood ratio against a
background Glow (2 levels x 4 steps, 32 channels) trained here for
`--background-steps` Adam steps of 64 (one pass over 64 x steps shuffled
training images) on training images of which each pixel was replaced
by a uniform random value with probability 0.2 (Ren et al. 2019's
perturbation) -- a far smaller and shorter-trained background than the
paper's. AUROC and AUPR treat out-of-distribution as positive; the last
column is the fraction of fresh in-distribution test images flagged at the
threshold (target 0.05). Prints Markdown tables (and JSON with `--out`).
"""

import argparse
import datetime
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
from PIL import Image  # noqa: E402

import keras_flows as kf  # noqa: E402
from keras_flows.anomaly import Detector, aupr, auroc  # noqa: E402
from keras_flows.utils.backend import device_description  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")  # after KERAS_FLOWS_DATA


def grey_28(images):
    return np.stack([np.asarray(Image.fromarray(x).convert("L").resize((28, 28), Image.BOX))
                     for x in images])[..., None]


def pad_rgb(digits):
    padded = np.pad(digits, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=-1)


def perturb(images, rate, rng):
    noise = rng.integers(0, 256, size=images.shape)
    return np.where(rng.random(images.shape) < rate, noise, images)


def background(train, steps, rng):
    """A small Glow trained for `steps` Adam steps (batch 64) on perturbed
    training images."""
    flow = kf.Glow(train.shape[1:], levels=2, steps_per_level=4, hidden_channels=32,
                   scale="bounded_sigmoid", prior_scale_bound=4.0, seed=0)
    flow.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=200.0))
    x = perturb(train[:64 * steps], 0.2, rng).astype("float32")
    start = time.time()
    flow.fit(x, batch_size=64, epochs=1, verbose=0)
    bits = float(np.mean(np.asarray(flow.bits_per_dim(x[:500]))))
    return flow, {"steps": steps, "seconds": round(time.time() - start, 1),
                  "train_bits_per_dim_perturbed": round(bits, 3)}


class Cached:
    """The flow's `log_prob`, memoised per input array: every detector here
    scores the same arrays, so each is run through the flow once."""

    def __init__(self, flow):
        self.flow, self.memo = flow, {}
        self.event_shape, self.context_shape = flow.event_shape, None

    def log_prob(self, x, batch_size=256):
        key = (x.shape, hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest())
        if key not in self.memo:
            self.memo[key] = np.asarray(self.flow.log_prob(x, batch_size=batch_size))
        return self.memo[key]


def evaluate(flow, bg, val, x_in, outs):
    flow, bg = Cached(flow), Cached(bg)
    rows = []
    methods = [("likelihood", {}), ("bits_per_dim", {}), ("typicality", {}),
               ("typicality", {"batch_size_m": 10}), ("complexity", {"compressor": "png"}),
               ("complexity", {"compressor": "zlib"}),
               ("likelihood_ratio", {"background": bg})]
    for method, kwargs in methods:
        det = Detector(flow, method=method, batch_size=len(val), **kwargs).fit(val)
        s_in = det.score(x_in)
        flagged = float(np.mean(s_in > det.threshold))
        label = method + "".join(f" {k}={v}" for k, v in kwargs.items() if k != "background")
        for name, x_out in outs.items():
            s_out = det.score(x_out)
            rows.append({"method": label, "ood": name,
                         "auroc": auroc(s_in, s_out), "aupr": aupr(s_in, s_out),
                         "in_fpr_at_threshold": flagged, "scores": len(s_in)})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--background-steps", type=int, default=300)
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    mnist, cifar = (np.load(kf.datasets.npz_file(name, [SHARED])) for name in ("mnist", "cifar10"))
    n = args.num

    def pick(a):
        return a[rng.choice(len(a), n, replace=False)]

    started = time.time()
    results = {"command": "KERAS_BACKEND=jax nice -n 10 python benchmarks/ood.py "
                          f"--num {n} --background-steps {args.background_steps}",
               "backend": keras.backend.backend(), "device": device_description(),
               "date": datetime.date.today().isoformat(), "num": n, "experiments": {}}
    setups = {
        "glow_mnist": (mnist["x_train"][..., None], mnist["x_test"][..., None],
                       {"cifar10 grey 28x28": grey_28(pick(cifar["x_test"])),
                        "uniform noise": rng.integers(0, 256, (n, 28, 28, 1))}),
        "glow_cifar10": (cifar["x_train"], cifar["x_test"],
                         {"mnist padded 32x32x3": pad_rgb(pick(mnist["x_test"])),
                          "uniform noise": rng.integers(0, 256, (n, 32, 32, 3))}),
    }
    for preset, (train, test, outs) in setups.items():
        t = time.time()
        flow = kf.Glow.from_preset(preset)
        val, x_in = pick(train).astype("float32"), pick(test).astype("float32")
        outs = {k: v.astype("float32") for k, v in outs.items()}
        bg, info = background(train[rng.permutation(len(train))], args.background_steps, rng)
        rows = evaluate(flow, bg, val, x_in, outs)
        results["experiments"][preset] = {"background": info, "rows": rows,
                                          "seconds": round(time.time() - t, 1)}
        print(f"\n{preset} (background: {info})")
        print("| method | OOD set | AUROC | AUPR | in-dist. flagged at threshold |")
        print("| --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['method']} | {r['ood']} | {r['auroc']:.3f} | {r['aupr']:.3f} | "
                  f"{r['in_fpr_at_threshold']:.3f} |")
    results["seconds"] = round(time.time() - started, 1)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"\n{results['device']}, {results['backend']}, {results['date']}, "
          f"{results['seconds']} s" + (f"; wrote {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()
