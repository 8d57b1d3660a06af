"""Getting started: a normalizing flow on a 2-D density.

    python guides/getting_started.py --out figures/
    python guides/getting_started.py --model nsf --out figures/
    python guides/getting_started.py --fast --out /tmp/gs     # a smoke run, seconds

What you learn: how to build a flow (`keras_flows.RealNVP` or
`keras_flows.NSF`), train it with `fit` on samples of a density, score points
with `log_prob`, draw new points with `sample`, save it to a `.keras` file
and load it back, and plot the density it learned. Runs on the backend named
by `KERAS_BACKEND` (tensorflow, jax or torch); nothing in the code changes.

A flow is an invertible map f from data x to a latent z with a simple base
density (here a standard normal). The change of variables gives the exact
density of the data,

    log p(x) = log N(f(x); 0, I) + log |det df/dx|,

so the model is trained by maximum likelihood: `fit` minimises the mean
negative log-likelihood (NLL, in nats) and needs no loss in `compile`.
Sampling runs the map backwards: x = f^-1(z), z ~ N(0, I).

The last line printed is a JSON object with the figures.
"""

import argparse
import json
import os
import pathlib
import time

import numpy as np
import keras
from keras import ops

import keras_flows as kf

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", choices=("realnvp", "nsf"), default="realnvp")
parser.add_argument("--density", choices=kf.datasets.TOY_DENSITIES, default="moons")
parser.add_argument("--fast", action="store_true", help="tiny sizes, a few steps")
parser.add_argument("--out", default=".", help="folder for the pictures and the model")
args = parser.parse_args()
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)

# ## Data
#
# `keras_flows.datasets.toy(name, n, seed)` draws n points of one of FFJORD's
# 2-D test densities as a float32 array of shape (n, 2). Train and held-out
# points come from different seeds.

n_train = 2_000 if args.fast else 20_000
x_train = kf.datasets.toy(args.density, n_train, seed=0)
x_test = kf.datasets.toy(args.density, 2_000, seed=1)

# ## The model
#
# RealNVP stacks affine couplings: each layer leaves half the coordinates as
# they are and scales and shifts the other half by amounts an MLP computes
# from the first half, so both directions and the log-det cost one pass.
# NSF (neural spline flow) replaces the affine map by a monotone
# rational-quadratic spline on [-bound, bound]: more flexible per layer.
# `coupling=True` makes it a coupling flow too (the default is autoregressive,
# whose sampling takes one pass per dimension). A new flow is the identity
# map (its last layers start at zero), so before training p(x) = N(x; 0, I).

layers, hidden = (4, [32, 32]) if args.fast else (8, [64, 64])
if args.model == "realnvp":
    flow = kf.RealNVP(event_shape=(2,), num_layers=layers, hidden_units=hidden)
else:
    flow = kf.NSF(event_shape=(2,), num_layers=layers, hidden_units=hidden, bins=8,
                  bound=5.0, coupling=True)

# ## Training
#
# The loss `fit` shows is the mean NLL in nats. The standard normal, the
# untrained flow, is the baseline to beat.

baseline = float(np.mean(0.5 * np.sum(x_test.astype("float64") ** 2, axis=1) + np.log(2 * np.pi)))
flow.compile(optimizer=keras.optimizers.Adam(3e-3 if args.fast else 1e-3))
start = time.time()
flow.fit(x_train, batch_size=256, epochs=3 if args.fast else 30, verbose=0 if args.fast else 2)
seconds = time.time() - start

# ## Scoring and sampling
#
# `log_prob` gives one log-density per point (nats), `sample(n, seed=...)`
# draws n points, reproducibly for a given seed. Both are inference: batched,
# with no gradients. (Calling the model, `flow(x)`, gives log p(x)
# differentiably, as training uses it.) `encode` and `decode` are the map and
# its inverse.

log_p = ops.convert_to_numpy(flow.log_prob(x_test))
nll = -float(np.mean(log_p))
samples = ops.convert_to_numpy(flow.sample(2_000, seed=0))
z = flow.encode(x_test[:5])
round_trip = float(np.max(np.abs(ops.convert_to_numpy(flow.decode(z)) - x_test[:5])))
print(f"{args.density}: held-out NLL {nll:.3f} nats after {seconds:.1f} s of training "
      f"(standard normal: {baseline:.3f}); decode(encode(x)) - x = {round_trip:.1e}")

# ## Saving and loading
#
# A flow is a Keras model: `save` writes config and weights to one `.keras`
# file, and `keras.saving.load_model` rebuilds it (every keras_flows layer is
# registered as serializable, so no `custom_objects` are needed). A saved
# model loads on any backend. `flow.save_to_preset(dir)` writes the preset
# format instead (config, weights and metadata; `Flow.from_preset(dir)`).

path = out / f"{args.density}_{args.model}.keras"
flow.save(path)
loaded = keras.saving.load_model(path)
reload_error = float(np.max(np.abs(ops.convert_to_numpy(loaded.log_prob(x_test)) - log_p)))
print(f"saved to {path}; the reloaded model's log_prob differs by {reload_error:.1e}")

# ## Plotting the learned density
#
# Evaluate exp(log p) on a grid, beside the data and the flow's samples.

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

lim = float(np.percentile(np.abs(x_test), 99.5)) * 1.15
grid = np.linspace(-lim, lim, 60 if args.fast else 200, dtype="float32")
xx, yy = np.meshgrid(grid, grid)
density = np.exp(ops.convert_to_numpy(
    flow.log_prob(np.stack([xx.ravel(), yy.ravel()], axis=1)))).reshape(xx.shape)
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, (title, values) in zip(axes[:2], (("data", x_test), ("flow samples", samples))):
    ax.hist2d(values[:, 0], values[:, 1], bins=80, range=[[-lim, lim]] * 2, cmap="magma")
    ax.set_title(title)
axes[2].imshow(density, origin="lower", extent=(-lim, lim, -lim, lim), cmap="magma")
axes[2].set_title(f"learned density, NLL {nll:.2f} nats")
for ax in axes:
    ax.set_aspect("equal")
    ax.set_xticks([]); ax.set_yticks([])
fig.suptitle(f"{type(flow).__name__} on {args.density} ({keras.backend.backend()})")
fig.tight_layout()
picture = out / f"{args.density}_{args.model}_density.png"
fig.savefig(picture, dpi=80)
plt.close(fig)
print(f"wrote {picture}")

print(json.dumps({"guide": "getting_started", "backend": keras.backend.backend(),
                  "heldout_nll": nll, "standard_normal_nll": baseline,
                  "round_trip_error": round_trip, "reload_error": reload_error,
                  "pictures": [os.fspath(picture)]}))
