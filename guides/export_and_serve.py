"""Exporting a flow and serving it with TensorFlow alone.

    python guides/export_and_serve.py --out exported/
    python guides/export_and_serve.py --fast --out /tmp/export     # a smoke run

What you learn: how to export a trained flow as a TensorFlow SavedModel with
`flow.export(path)` from any backend, what its signatures are, how to load
it with `tf.saved_model.load` (no keras_flows, no Keras model code needed:
TensorFlow Serving, TFLite converters and other languages' TensorFlow
bindings read the same directory) and call `log_prob` and `sample`, and
what the ONNX export offers. Needs TensorFlow installed, on every backend.

On the TensorFlow backend the flow's own methods are traced in-process. On
JAX and PyTorch, `export` writes the flow's config and weights to a
temporary folder and rebuilds and exports the model in a subprocess on the
TensorFlow backend (`python -m keras_flows.export`), so the SavedModel is the
same whichever backend trained the flow.

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
parser.add_argument("--out", default=".", help="folder for the SavedModel and the picture")
args = parser.parse_args()
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)

# ## A flow to export
#
# A RealNVP on the two-moons density, trained briefly (any `Flow` exports the
# same way: vector flows, conditional ones, image flows, presets).

x_train = kf.datasets.toy("moons", 2_000 if args.fast else 20_000, seed=0)
x_test = kf.datasets.toy("moons", 1_000, seed=1)
flow = kf.RealNVP(event_shape=(2,), num_layers=4 if args.fast else 8,
                  hidden_units=[32, 32] if args.fast else [64, 64])
flow.compile(optimizer=keras.optimizers.Adam(3e-3 if args.fast else 1e-3))
flow.fit(x_train, batch_size=256, epochs=2 if args.fast else 30, verbose=0)

# ## Export
#
# `export` prints the signatures it wrote. Each has a batch dimension of
# None, takes float32 and returns a dict:
#
# - `log_prob(x)` -> {"log_prob"}: log p(x) in nats;
# - `bits_per_dim(x)` -> {"bits_per_dim"}: -log p(x) / (D log 2);
# - `sample(n, temperature, seed)` -> {"x"}: n draws, the same for the same seed;
# - `encode(x)` -> {"z"} and `decode(z)` -> {"x"}: the map and its inverse;
# - conditional flows take `context` as a further input (int32 class labels
#   for a class-conditional image flow). Image flows have the same signatures.

path = out / "moons_saved_model"
flow.export(os.fspath(path))

# ## Serve
#
# Only TensorFlow is needed to load and run it: here in this process, in
# practice in a server that never imports keras_flows. `model.signatures[name]`
# are the concrete functions with keyword inputs; a dict comes back.

import tensorflow as tf  # noqa: E402

model = tf.saved_model.load(os.fspath(path))
print("signatures:", sorted(model.signatures.keys()))
served = model.signatures["log_prob"](x=tf.constant(x_test))["log_prob"].numpy()
expected = ops.convert_to_numpy(flow.log_prob(x_test))
log_prob_error = float(np.max(np.abs(served - expected)))
drawn = model.signatures["sample"](n=tf.constant(1000, tf.int32),
                                   temperature=tf.constant(1.0),
                                   seed=tf.constant(0, tf.int64))["x"].numpy()
again = model.signatures["sample"](n=tf.constant(1000, tf.int32),
                                   temperature=tf.constant(1.0),
                                   seed=tf.constant(0, tf.int64))["x"].numpy()
nll_of_samples = -float(np.mean(ops.convert_to_numpy(flow.log_prob(drawn))))
print(f"served log_prob vs the Keras model: max difference {log_prob_error:.1e} nats; "
      f"served samples {drawn.shape}, same seed same samples: {np.array_equal(drawn, again)}; "
      f"their NLL under the Keras model {nll_of_samples:.3f} "
      f"(held-out data: {-float(np.mean(expected)):.3f})")

# ## ONNX
#
# With `pip install keras-flows[onnx]` (tf2onnx, onnxruntime),
# `flow.export("onnx/", format="onnx")` writes one ONNX model per
# deterministic signature (`log_prob.onnx`, `bits_per_dim.onnx`, `encode.onnx`,
# `decode.onnx`), with the same input and output names:
#
#     import onnxruntime
#     onnxruntime.InferenceSession("onnx/log_prob.onnx").run(None, {"x": x})[0]
#
# `sample` is not among them (tf2onnx cannot convert TensorFlow's random
# ops): for a standard normal base, decode temperature * z with z ~ N(0, I).
# From the shell: `keras-flows export cifar10 ./saved_model` (add
# `--format onnx` for ONNX).

# ## A picture: samples served by TensorFlow beside the data

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, (title, values) in zip(axes, (("held-out data", x_test),
                                      ("served samples (tf.saved_model)", drawn))):
    ax.scatter(values[:, 0], values[:, 1], s=2)
    ax.set_title(title)
    ax.set_xlim(-3, 4); ax.set_ylim(-2.5, 2.5)
    ax.set_aspect("equal")
fig.tight_layout()
picture = out / "served_samples.png"
fig.savefig(picture, dpi=80)
plt.close(fig)
print(f"wrote {picture}")

print(json.dumps({"guide": "export_and_serve", "backend": keras.backend.backend(),
                  "signatures": sorted(model.signatures.keys()),
                  "log_prob_max_error": log_prob_error,
                  "sample_seeded": bool(np.array_equal(drawn, again)),
                  "nll_of_served_samples": nll_of_samples, "pictures": [os.fspath(picture)]}))
