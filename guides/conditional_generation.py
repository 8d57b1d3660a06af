"""Conditional generation: a flow of p(x | class), sampled class by class.

    python guides/conditional_generation.py --out figures/
    python guides/conditional_generation.py --fast --out /tmp/cg     # a smoke run

What you learn: how to build a conditional density p(x | c) with a vector
flow's `context_shape`, train it on `{"x": x, "context": c}`, score with
`log_prob(x, context=c)` and draw samples for a chosen class with
`sample(n, context=...)`; and how the image flows (`Glow`,
`RealNVP(image_shape=...)`) take an integer class label through
`num_classes`. Runs on the backend named by `KERAS_BACKEND`.

Every coupling or autoregressive layer of a conditional flow feeds the
context to its conditioner network beside the untouched coordinates, so each
layer's map, and so the whole density, depends on c:

    log p(x | c) = log N(f(x; c); 0, I) + log |det df(x; c)/dx|.

The last line printed is a JSON object with the figures.
"""

import argparse
import json
import os
import pathlib

import numpy as np
import keras
from keras import ops

import keras_flows as kf

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--fast", action="store_true", help="tiny sizes, a few steps")
parser.add_argument("--out", default=".", help="folder for the pictures")
args = parser.parse_args()
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)

# ## Data: eight Gaussians, each a class
#
# `toy("8gaussians")` is a mixture of eight Gaussians on a circle of radius
# about 2.8; a point's class is the component it came from, recovered here
# from its angle (the components sit at multiples of 45 degrees and are far
# apart). The context is the one-hot class, shape (8,).

K = 8


def labelled(n, seed):
    x = kf.datasets.toy("8gaussians", n, seed=seed)
    label = np.round(np.arctan2(x[:, 1], x[:, 0]) / (2 * np.pi / K)).astype(int) % K
    return x, label


def one_hot(label):
    return np.eye(K, dtype="float32")[label]


n = 3_000 if args.fast else 40_000
x_train, y_train = labelled(n, seed=0)
x_test, y_test = labelled(2_000, seed=1)
centers = np.stack([x_train[y_train == k].mean(axis=0) for k in range(K)])

# ## A conditional neural spline flow
#
# `context_shape=(8,)` makes every layer conditional; `fit` then takes a dict
# with the data under "x" and the context under "context". (MAF, IAF,
# RealNVP and NICE take `context_shape` the same way.)

layers, hidden = (3, [32, 32]) if args.fast else (5, [64, 64])
flow = kf.NSF(event_shape=(2,), context_shape=(K,), num_layers=layers, hidden_units=hidden,
              bins=8, bound=5.0, coupling=True)
flow.compile(optimizer=keras.optimizers.Adam(5e-3 if args.fast else 1e-3))
flow.fit({"x": x_train, "context": one_hot(y_train)}, batch_size=256,
         epochs=3 if args.fast else 30, verbose=0 if args.fast else 2)

# ## Does it use the class?
#
# Score the held-out points with their own class and with a wrong one (the
# next class round the circle): a flow that learned p(x | c) gives the true
# class a far higher likelihood.

nll = -float(np.mean(ops.convert_to_numpy(flow.log_prob(x_test, context=one_hot(y_test)))))
wrong = (y_test + 1) % K
nll_wrong = -float(np.mean(ops.convert_to_numpy(flow.log_prob(x_test, context=one_hot(wrong)))))
print(f"held-out NLL with the true class {nll:.3f} nats, with a wrong class {nll_wrong:.3f}")

# ## Sampling per class
#
# `sample(n, context=c)` takes one context row per sample. A sample counts as
# on target when the nearest class centre is the one asked for.

per_class = 100 if args.fast else 500
asked = np.repeat(np.arange(K), per_class)
samples = ops.convert_to_numpy(flow.sample(len(asked), context=one_hot(asked), seed=0))
nearest = np.argmin(((samples[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
accuracy = float(np.mean(nearest == asked))
print(f"samples nearest the requested class's centre: {accuracy:.1%} (chance {1 / K:.1%})")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
colors = plt.cm.tab10(np.arange(K))
for ax, (title, points, labels) in zip(axes, (("data", x_test, y_test),
                                              ("samples, by requested class", samples, asked))):
    ax.scatter(points[:, 0], points[:, 1], s=3, c=colors[labels])
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xlim(-4.5, 4.5); ax.set_ylim(-4.5, 4.5)
fig.suptitle(f"conditional NSF ({keras.backend.backend()}): on target {accuracy:.0%}")
fig.tight_layout()
picture = out / "conditional_8gaussians.png"
fig.savefig(picture, dpi=80)
plt.close(fig)
print(f"wrote {picture}")

# ## Class-conditional image flows
#
# Image flows take the class as an integer label instead: with `num_classes`
# the top latent's prior is learned per class (Glow's y_cond), and the
# context is one label per image, shape (batch,):
#
#     train, test = keras_flows.datasets.load("mnist", batch_size=64, with_labels=True)
#     glow = keras_flows.Glow(image_shape=(28, 28, 1), levels=2, steps_per_level=8,
#                             hidden_channels=64, num_classes=10)
#     glow.compile(optimizer=keras.optimizers.Adamax(1e-3, global_clipnorm=200.0))
#     glow.fit(train, epochs=5)              # elements {"x": images, "context": labels}
#     digits = glow.sample(10, context=np.arange(10), temperature=0.7, seed=0)
#     glow.bits_per_dim(images, context=labels)
#
# `class_loss_weight` adds Glow's classification loss on the top latent, and
# `glow.class_logits(images)` then reads the class off an image.

print(json.dumps({"guide": "conditional_generation", "backend": keras.backend.backend(),
                  "heldout_nll_true_class": nll, "heldout_nll_wrong_class": nll_wrong,
                  "sample_class_accuracy": accuracy, "pictures": [os.fspath(picture)]}))
