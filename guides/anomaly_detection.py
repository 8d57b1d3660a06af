"""Anomaly and out-of-distribution detection with a flow.

    python guides/anomaly_detection.py --out figures/                 # 1,000 images per set
    python guides/anomaly_detection.py --fast --out /tmp/ood          # a smoke run

What you learn: how to score inputs with `keras_flows.anomaly.Detector`
under each of its methods, set a threshold on in-distribution validation
data at a target false-positive rate, and compare methods by AUROC. The flow
is the `glow_mnist` preset (Glow trained on MNIST); the out-of-distribution
sets are CIFAR-10 test images converted to 28x28 grey, and uniform noise.
Runs on the backend named by `KERAS_BACKEND`.

## Why likelihood alone is not enough

A flow's likelihood is dominated by low-level statistics (smoothness, the
share of flat background): flows trained on CIFAR-10 give SVHN a *higher*
likelihood than CIFAR-10's own test images (Nalisnick et al. 2019,
arXiv:1810.09136). The detector's methods, all "higher = more anomalous":

- "likelihood": -log p(x); "bits_per_dim": the same per dimension in bits
  (the same ranking, so the same AUROC).
- "likelihood_ratio" (Ren et al. 2019, arXiv:1906.02845): log p_bg(x) -
  log p(x), against a background flow trained on perturbed data, which
  cancels the low-level part of the likelihood.
- "typicality" (Nalisnick et al. 2019, arXiv:1906.02994): how far -log p of
  an input (or the mean of a batch of M) lies from its mean on validation
  data: too *likely* is flagged as well as too unlikely.
- "complexity" (Serra et al. 2020, arXiv:1909.11480): bits/dim minus the
  length of the image under a lossless compressor (PNG), in bits/dim.

The last line printed is a JSON object with the figures.
"""

import argparse
import json
import os
import pathlib

import numpy as np
import keras
from PIL import Image

import keras_flows as kf
from keras_flows.anomaly import Detector

ROOT = pathlib.Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--num", type=int, default=1000, help="images per set")
parser.add_argument("--fast", action="store_true", help="few images, a tiny background flow")
parser.add_argument("--out", default=".", help="folder for the pictures")
args = parser.parse_args()
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
n = 32 if args.fast else args.num

# ## Data
#
# In-distribution: MNIST, validation images (for the threshold and the
# typicality statistics) from the training split, test images from the test
# split. Out-of-distribution: CIFAR-10 test images in grey (Pillow's "L"),
# resized to 28x28, and uniform noise. Every set is uint8 (N, 28, 28, 1).

shared = [ROOT.parent / "shared" / "datasets"]
with np.load(kf.datasets.npz_file("mnist", shared)) as f:
    mnist_train, mnist_test = f["x_train"][..., None], f["x_test"][..., None]
with np.load(kf.datasets.npz_file("cifar10", shared)) as f:
    cifar = f["x_test"][rng.choice(len(f["x_test"]), n, replace=False)]


def pick(images):
    return images[rng.choice(len(images), n, replace=False)]


x_val, x_in = pick(mnist_train), pick(mnist_test)
outs = {"cifar10 grey": np.stack([np.asarray(Image.fromarray(x).convert("L").resize(
            (28, 28), Image.BOX)) for x in cifar])[..., None],
        "noise": rng.integers(0, 256, (n, 28, 28, 1)).astype("uint8")}

# ## The flow and a background flow
#
# The likelihood ratio needs a second flow trained on perturbed images
# (Ren et al. replace each pixel by a uniform random value with probability
# 0.1 to 0.2). Here it is a small Glow trained briefly; a larger, longer
# trained one separates better (benchmarks/ood.py).

flow = kf.Glow.from_preset("glow_mnist")


class Memo:
    """A flow whose `log_prob` remembers each array it scored: every
    detector below scores the same arrays, and a Glow pass is the costly
    part. `Detector` needs only `log_prob`, `event_shape` and
    `context_shape`."""

    def __init__(self, flow):
        self.flow, self.memo = flow, {}
        self.event_shape, self.context_shape = flow.event_shape, None

    def log_prob(self, x, batch_size=256):
        key = (x.shape, x.tobytes())
        if key not in self.memo:
            self.memo[key] = np.asarray(self.flow.log_prob(x, batch_size=batch_size))
        return self.memo[key]


steps = 4 if args.fast else 300
background = kf.Glow((28, 28, 1), levels=2, steps_per_level=1 if args.fast else 4,
                     hidden_channels=8 if args.fast else 32, scale="bounded_sigmoid",
                     prior_scale_bound=4.0, seed=0)
background.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=200.0))
perturbed = mnist_train[:64 * steps]
perturbed = np.where(rng.random(perturbed.shape) < 0.2,
                     rng.integers(0, 256, perturbed.shape), perturbed).astype("float32")
background.fit(perturbed, batch_size=64, epochs=1, verbose=0)

# ## Every method, with its AUROC
#
# `Detector(flow, method=...).fit(x_val)` computes what the method needs from
# in-distribution data and sets `threshold` at the (1 - fpr) quantile of the
# validation scores; `score` returns one score per input (per group of M
# with typicality's `batch_size_m=M`), `predict` compares with the
# threshold, `auroc(x_in, x_out)` and `aupr` measure the separation.

methods = [("likelihood", {}), ("bits_per_dim", {}), ("typicality", {}),
           ("typicality", {"batch_size_m": 8 if args.fast else 10}),
           ("complexity", {}), ("likelihood_ratio", {"background": Memo(background)})]
table = {}
detectors = {}
memo_flow = Memo(flow)
for method, kwargs in methods:
    label = method + "".join(f" M={v}" for k, v in kwargs.items() if k == "batch_size_m")
    det = Detector(memo_flow, method=method, fpr=0.05, **kwargs).fit(x_val)
    detectors[label] = det
    flagged = float(np.mean(det.predict(x_in)))
    table[label] = {name: det.auroc(x_in, x_out) for name, x_out in outs.items()}
    table[label]["in-distribution flagged"] = flagged

columns = [*outs, "in-distribution flagged"]
print(f"\nAUROC, {n} images per set (glow_mnist preset, {keras.backend.backend()}); the last "
      "column is the share of MNIST test images over the threshold (target 0.05):\n")
print("| method | " + " | ".join(columns) + " |")
print("| --- |" + " --- |" * len(columns))
for label, row in table.items():
    print(f"| {label} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
print()

# ## The most and least anomalous images
#
# Pool MNIST test images and grey CIFAR-10 images and rank them by the
# typicality score: the top row holds the 8 most anomalous, the bottom row
# the 8 least.

pool = np.concatenate([x_in, outs["cifar10 grey"]])
scores = np.concatenate([detectors["typicality"].score(x) for x in (x_in, outs["cifar10 grey"])])
order = np.argsort(scores)
k = 8
picture = out / "anomaly_ranking.png"
kf.utils.save_image_grid(np.concatenate([pool[order[::-1][:k]], pool[order[:k]]]), picture,
                         nrow=k)
print(f"wrote {picture} (top row: most anomalous by typicality; bottom row: least)")

print(json.dumps({"guide": "anomaly_detection", "backend": keras.backend.backend(),
                  "num": n, "auroc": table, "pictures": [os.fspath(picture)]}))
