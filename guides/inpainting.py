"""Inpainting: completing the missing pixels of images with a flow.

    python guides/inpainting.py --out figures/                 # 8 digits, 300 steps
    python guides/inpainting.py --mask left --out figures/
    python guides/inpainting.py --fast --out /tmp/inpaint      # a smoke run

What you learn: how to fill the masked pixels of an image given the observed
ones with `keras_flows.inpainting.inpaint`, by the most likely completion
("map") or an approximate sample ("langevin"), how to build masks, and how
to write a picture of originals, masked inputs and completions. The flow is
the `glow_mnist` preset (Glow trained on MNIST). Runs on the backend named by
`KERAS_BACKEND`.

A flow gives the exact density p(x) of a whole image, and so, up to a
constant, the density of the missing pixels x_m given the observed x_o:
p(x_m | x_o) is proportional to p(x_o, x_m). `inpaint` keeps x_o exactly and
moves x_m uphill on log p(x_o, x_m) by gradient steps ("map": Adam, a mode
of the conditional), or by Langevin dynamics ("langevin": gradient steps plus
noise, an approximate sample), on any backend. The mask is 1 where a pixel
is missing and 0 where it is observed.

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
from keras_flows.inpainting import inpaint, save_inpainting_grid

ROOT = pathlib.Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--mask", choices=("center", "left", "bottom", "random"), default="center")
parser.add_argument("--method", choices=("map", "langevin"), default="map")
parser.add_argument("--fast", action="store_true", help="4 images, a few steps")
parser.add_argument("--out", default=".", help="folder for the pictures")
args = parser.parse_args()
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)

# ## Images and a mask
#
# MNIST test digits, uint8 (N, 28, 28, 1). A mask of shape (28, 28, 1)
# applies to every image (any shape that broadcasts to the images' works,
# e.g. one mask per image of shape (N, 28, 28, 1)).

with np.load(kf.datasets.npz_file("mnist", [ROOT.parent / "shared" / "datasets"])) as f:
    images = f["x_test"][: 4 if args.fast else 8, ..., None]

mask = np.zeros((28, 28, 1), dtype="float32")
if args.mask == "center":
    mask[8:20, 8:20] = 1
elif args.mask == "left":
    mask[:, :14] = 1
elif args.mask == "bottom":
    mask[14:] = 1
else:
    mask = (np.random.default_rng(0).random((28, 28, 1)) < 0.5).astype("float32")
missing = np.broadcast_to(mask, images.shape).astype(bool)

# ## Completion
#
# `steps` gradient steps from a start at the observed pixels' mean plus a
# little noise (seeded). The result is float pixel values in [0, 256),
# observed ones unchanged.

flow = kf.Glow.from_preset("glow_mnist")
steps = 10 if args.fast else 300
completed = inpaint(flow, images, mask, steps=steps, seed=0, method=args.method)

# ## How good is it?
#
# Against the simplest baseline, filling the hole with the mean of the
# observed pixels: the mean squared error over the missing pixels (on the
# 0..255 scale), and the bits/dim the flow gives each.

observed_kept = bool(np.array_equal(completed[~missing], images[~missing].astype("float64")))
observed_mean = images.astype("float64").mean(axis=(1, 2, 3), where=~missing, keepdims=True)
mean_fill = np.where(missing, observed_mean, images)
mse = float(np.mean((completed[missing] - images[missing]) ** 2))
mse_mean_fill = float(np.mean((mean_fill[missing] - images[missing]) ** 2))
bits = float(np.mean(ops.convert_to_numpy(flow.bits_per_dim(np.floor(completed)))))
bits_mean_fill = float(np.mean(ops.convert_to_numpy(flow.bits_per_dim(np.floor(mean_fill)))))
print(f"{args.method}, {steps} steps, {args.mask} mask: missing-pixel MSE {mse:.0f} "
      f"(mean fill {mse_mean_fill:.0f}); bits/dim {bits:.3f} (mean fill {bits_mean_fill:.3f}); "
      f"observed pixels kept exactly: {observed_kept}")

# ## The picture
#
# Three rows: the originals, the masked inputs (missing pixels grey) and the
# completions. `keras-flows inpaint mnist --images 8 --mask center --out
# inpaint.png` does all of this from the shell.

picture = out / f"inpainting_{args.mask}.png"
save_inpainting_grid(images, mask, completed, picture)
print(f"wrote {picture}")

print(json.dumps({"guide": "inpainting", "backend": keras.backend.backend(), "steps": steps,
                  "observed_kept": observed_kept, "mse": mse, "mse_mean_fill": mse_mean_fill,
                  "bits_per_dim": bits, "bits_per_dim_mean_fill": bits_mean_fill,
                  "pictures": [os.fspath(picture)]}))
