"""Train a flow on a 2-D toy density and plot its samples and learned density.

    python guides/train_2d_density.py zoo/realnvp_moons.json --out moons.png
    python guides/train_2d_density.py zoo/realnvp_moons.json --density pinwheel

Runs on the backend named by KERAS_BACKEND (tensorflow, jax or torch). Prints
the held-out negative log-likelihood in nats; with `--save DIR` writes the
model as `config.json`, `model.weights.h5` and `metadata.json`.
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import keras
from keras import ops

import keras_flows as kf


def train(config, density=None, epochs=None):
    data, train_cfg = dict(config["dataset"]), config["training"]
    data["name"] = density or data["name"]
    keras.utils.set_random_seed(train_cfg["seed"])
    x = kf.datasets.toy(data["name"], data["train_size"], seed=data["train_seed"])
    held_out = kf.datasets.toy(data["name"], data["test_size"], seed=data["test_seed"])
    epochs = epochs or train_cfg["epochs"]
    batch_size = train_cfg["batch_size"]
    steps = epochs * -(-int(len(x) * (1 - train_cfg["validation_split"])) // batch_size)
    learning_rate = train_cfg["learning_rate"]
    if train_cfg.get("schedule") == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    flow = getattr(kf, config["model"])(**config["model_config"])
    flow.compile(optimizer=keras.optimizers.Adam(learning_rate))
    start = time.time()
    flow.fit(x, batch_size=batch_size, epochs=epochs,
             validation_split=train_cfg["validation_split"], verbose=2)
    seconds = time.time() - start
    nll = -float(np.mean(ops.convert_to_numpy(flow.log_prob(held_out))))
    return flow, data, nll, seconds, epochs


def plot(flow, name, path, seed=0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = kf.datasets.toy(name, 5000, seed=seed + 2)
    samples = ops.convert_to_numpy(flow.sample(5000, seed=seed))
    lim = np.percentile(np.abs(real), 99.5) * 1.15
    grid = np.linspace(-lim, lim, 200, dtype="float32")
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    density = np.exp(ops.convert_to_numpy(flow.log_prob(points))).reshape(xx.shape)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, (title, values) in zip(axes[:2], (("data", real), ("flow samples", samples))):
        ax.hist2d(values[:, 0], values[:, 1], bins=120, range=[[-lim, lim]] * 2, cmap="magma")
        ax.set_title(title)
    axes[2].imshow(density, origin="lower", extent=(-lim, lim, -lim, lim), cmap="magma")
    axes[2].set_title("learned density")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([]); ax.set_yticks([])
    fig.suptitle(f"{type(flow).__name__} on {name} ({keras.backend.backend()})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save(flow, config, config_path, data, nll, seconds, epochs, directory):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(keras.saving.serialize_keras_object(flow), f, indent=2)
    flow.save_weights(os.path.join(directory, "model.weights.h5"))
    metadata = {
        "model": config["model"], "dataset": data, "training": {**config["training"],
                                                                  "epochs": epochs},
        "parameters": int(flow.count_params()),
        "test_nll_nats": round(nll, 4),
        "train_seconds": round(seconds, 1),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "backend": keras.backend.backend(), "keras_version": keras.__version__,
        "keras_flows_version": kf.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": f"KERAS_BACKEND={keras.backend.backend()} python "
                   f"guides/train_2d_density.py {config_path} --save {directory}",
    }
    with open(os.path.join(directory, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default="zoo/realnvp_moons.json",
                        help="a JSON file from zoo/ (default: zoo/realnvp_moons.json)")
    parser.add_argument("--density", choices=kf.datasets.TOY_DENSITIES,
                        help="train on this density instead of the config's")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--out", default="flow_2d.png", help="PNG to write")
    parser.add_argument("--save", metavar="DIR", help="also save the trained model here")
    args = parser.parse_args()
    with open(args.config) as f:
        config = json.load(f)
    flow, data, nll, seconds, epochs = train(config, args.density, args.epochs)
    print(f"{data['name']}: held-out NLL {nll:.3f} nats after {epochs} epochs "
          f"({seconds:.0f} s on {keras.backend.backend()})")
    plot(flow, data["name"], args.out)
    print(f"wrote {args.out}")
    if args.save:
        save(flow, config, args.config, data, nll, seconds, epochs, args.save)
        print(f"saved the model to {args.save}")


if __name__ == "__main__":
    main()
