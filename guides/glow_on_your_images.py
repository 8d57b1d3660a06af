"""Training Glow on a folder of your own images.

    python guides/glow_on_your_images.py --out figures/                  # MNIST digits, minutes
    python guides/glow_on_your_images.py --dataset cifar10 --out figures/
    python guides/glow_on_your_images.py --fast --out /tmp/glow          # a smoke run

What you learn: the folder layout `keras_flows.datasets.load` reads
(`train/` and `test/`, optionally with one subfolder per class), how to
build and train a small `keras_flows.Glow` on it with the optimiser settings
Glow needs, how to measure bits per dimension on held-out images, how to
draw samples and write them as a PNG grid, and how to continue from a
published preset instead of starting from scratch. Runs on the backend named
by `KERAS_BACKEND`.

The guide makes its own small folder of PNGs from MNIST (or CIFAR-10), so
that it runs anywhere; point `--images` at your folder instead.

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
from PIL import Image

import keras_flows as kf

ROOT = pathlib.Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist",
                    help="where the example images come from, and their size and channels")
parser.add_argument("--images", help="your own folder with train/ and test/ (default: make one)")
parser.add_argument("--init", metavar="PRESET",
                    help="continue from a preset (e.g. glow_mnist) instead of a new Glow")
parser.add_argument("--fast", action="store_true", help="tiny sizes, a few steps")
parser.add_argument("--out", default=".", help="folder for the pictures and the image folder")
args = parser.parse_args()
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)

# ## The folder layout
#
#     my_images/
#         train/            PNG or JPEG files, all of one size
#             0/ 1/ ...     optional class subfolders: their names become the
#         test/             labels (numbers as themselves, other names in
#             0/ 1/ ...     sorted order); files directly in train/ get label 0
#
# Here the folder is made from the first images of MNIST (or CIFAR-10):
# `npz_file` finds `<name>.npz` in `$KERAS_FLOWS_DATA`, then in
# `../shared/datasets`, then downloads it once.

n_train, n_test = (256, 64) if args.fast else (10_000, 1_000)
if args.images:
    folder = pathlib.Path(args.images)
else:
    folder = out / "my_images"
    with np.load(kf.datasets.npz_file(args.dataset, [ROOT.parent / "shared" / "datasets"])) as f:
        splits = {"train": (f["x_train"][:n_train], f["y_train"][:n_train]),
                  "test": (f["x_test"][:n_test], f["y_test"][:n_test])}
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels.reshape(-1))):
            path = folder / split / str(int(label)) / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    print(f"wrote {n_train} training and {n_test} test PNGs under {folder}")

# ## Loading it
#
# `load(name, path=folder)` returns `tf.data` pipelines of uint8 batches
# (B, H, W, C) that `fit` takes on every backend; `name` says how many
# channels to decode (1 for "mnist" and "fashion_mnist", 3 for the others)
# and the expected size. Pixel values stay in [0, 255]: image flows do their
# own dequantization and scaling.

batch_size = 32 if args.fast else 64
train, test = kf.datasets.load(args.dataset, batch_size=batch_size, path=folder, seed=0)
test_images = np.concatenate(list(test.as_numpy_iterator()))
image_shape = test_images.shape[1:]

# ## The model
#
# Glow: L levels of K steps (ActNorm, an invertible 1x1 convolution, an
# affine coupling), half the channels factored out after each level, with
# learned priors. The paper's CIFAR-10 model is L=3, K=32, 512 channels;
# much smaller ones train on a CPU. "bounded_sigmoid" bounds how much each
# coupling can expand when sampling, which keeps samples finite early in
# training.
#
# To continue from a published model instead, load the preset: its
# architecture comes with it, and fine-tuning needs a learning-rate warmup
# (a fresh Adamax's first steps move every weight by the full learning rate):
#
#     flow = keras_flows.Glow.from_preset("glow_mnist")
#
# (`--init glow_mnist` here.) `keras-flows train zoo/glow_mnist_small.json
# --out runs/more --data mnist.npz --init glow_mnist` does the same from the
# shell, and records the preset it started from in the new metadata.

if args.init:
    flow = kf.Glow.from_preset(args.init)
else:
    levels, steps, channels = (2, 1, 16) if args.fast else (2, 8, 64)
    flow = kf.Glow(image_shape=image_shape, levels=levels, steps_per_level=steps,
                   hidden_channels=channels, scale="bounded_sigmoid", seed=0)

# ## Training
#
# Bits per dimension, -log2 p(x) / D on the discrete pixel values, is the
# figure papers report (8 for a uniform density over 8-bit pixels). Measure
# it on the held-out images before and after training.

bits_before = float(np.mean(ops.convert_to_numpy(flow.bits_per_dim(test_images))))
epochs = 1 if args.fast else 10
total_steps = epochs * -(-n_train // batch_size)
warmup = 4 if args.fast else 200
flow.compile(optimizer=keras.optimizers.Adamax(
    kf.callbacks.Warmup(2e-3 if args.fast else 1e-3, min(warmup, total_steps)),
    global_clipnorm=200.0))
start = time.time()
flow.fit(train, epochs=epochs, verbose=0 if args.fast else 2)
seconds = time.time() - start
bits = float(np.mean(ops.convert_to_numpy(flow.bits_per_dim(test_images))))
print(f"test bits/dim {bits_before:.3f} before, {bits:.3f} after {total_steps} steps "
      f"({seconds:.0f} s on {keras.backend.backend()}, {flow.count_params():,} parameters)")

# ## Samples
#
# `sample(n, temperature=T)` draws from the base scaled by T; T below 1 (0.7
# is common) trades diversity for cleaner images. The samples are pixel
# values in [0, 255]; `save_image_grid` writes them as one PNG.

samples = flow.sample(16 if args.fast else 64, temperature=0.7, seed=0)
picture = out / "glow_samples.png"
kf.utils.save_image_grid(samples, picture)
print(f"wrote {picture}")

# Save the result as a preset to share or to continue from later:
# `flow.save_to_preset("my_glow", dataset="my_images")`, then
# `keras_flows.Glow.from_preset("./my_glow")`.

print(json.dumps({"guide": "glow_on_your_images", "backend": keras.backend.backend(),
                  "test_bits_per_dim_before": bits_before, "test_bits_per_dim": bits,
                  "steps": total_steps, "pictures": [os.fspath(picture)]}))
