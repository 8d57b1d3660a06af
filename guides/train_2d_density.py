"""Train a flow on a 2-D toy density and plot its samples and learned density.

    python guides/train_2d_density.py zoo/realnvp_moons.json --out moons.png
    python guides/train_2d_density.py zoo/realnvp_moons.json --density pinwheel

Runs on the backend named by KERAS_BACKEND (tensorflow, jax or torch). Prints
the held-out negative log-likelihood in nats beside the density's entropy (a
k-nearest-neighbour estimate from the data alone: `knn_entropy`, the floor the
NLL can reach); with `--save DIR` writes the model as a preset: `config.json`,
`model.weights.h5` and `metadata.json` (both figures, the command, versions).
"""

import argparse
import json
import os
import pathlib
import platform
import shlex
import sys
import time

import numpy as np
import keras
from keras import ops
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

import keras_flows as kf

ENTROPY_SAMPLES = 200_000
ENTROPY_DRAWS = 10
ENTROPY_K = 1
ENTROPY_SEED = 1000  # draws use seeds 1000, 1001, ...: apart from the train/test seeds


def knn_entropy(x, k=ENTROPY_K):
    """Kozachenko-Leonenko estimate of the differential entropy of samples, in nats.

    H = psi(N) - psi(k) + log V_d + (d / N) sum_i log eps_i, with eps_i the
    Euclidean distance from x_i to its k-th nearest neighbour among the other
    points and V_d = pi^(d/2) / Gamma(d/2 + 1) the volume of the unit ball.
    Consistent for any density; its bias shrinks with N and grows with k
    (sharp edges and thin structures are where it shows), so k=1 by default.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    eps = cKDTree(x).query(x, k=k + 1)[0][:, k]  # column 0 is the point itself
    if np.any(eps <= 0):
        raise ValueError("knn_entropy needs distinct points; some coincide.")
    log_unit_ball = d / 2 * np.log(np.pi) - gammaln(d / 2 + 1)
    return float(digamma(n) - digamma(k) + log_unit_ball + d * np.mean(np.log(eps)))


def toy_entropy(name, n=ENTROPY_SAMPLES, draws=ENTROPY_DRAWS, k=ENTROPY_K,
                seed=ENTROPY_SEED):
    """`knn_entropy` of `draws` independent samples of `n` points of a toy density.

    Returns (mean, standard error of the mean, a sentence saying how).
    """
    estimates = [knn_entropy(kf.datasets.toy(name, n, seed=seed + i), k)
                 for i in range(draws)]
    mean = float(np.mean(estimates))
    se = float(np.std(estimates, ddof=1) / np.sqrt(draws))
    method = (f"Kozachenko-Leonenko k-nearest-neighbour estimator (k={k}, scipy cKDTree, "
              f"Euclidean distance) on {draws} independent draws of N={n:,} points "
              f"(seeds {seed}..{seed + draws - 1}); mean {mean:.4f}, standard error "
              f"{se:.4f} nats")
    return mean, se, method


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
    if "eval_model_config" in config:
        flow = with_overrides(flow, config, x[:1])
    # One batch: inference runs eagerly, and for the ODE (FFJORD) and
    # fixed-point (ResidualFlow) models the per-batch overhead dominates.
    nll = -float(np.mean(ops.convert_to_numpy(
        flow.log_prob(held_out, batch_size=len(held_out)))))
    return flow, data, nll, seconds, epochs


def with_overrides(flow, config, example):
    """The trained `flow` rebuilt with the config's `eval_model_config`
    entries and the same weights: e.g. FFJORD trained with a coarse solver
    and evaluated, sampled and saved with a finer one (a coarse fixed-step
    solve makes the density only approximately normalised, and a model
    trained with it can exploit the error)."""
    model_config = {**config["model_config"], **config["eval_model_config"]}
    evaluated = getattr(kf, config["model"])(**model_config)
    evaluated.log_prob(example)  # builds it
    evaluated.set_weights(flow.get_weights())
    return evaluated


def plot(flow, name, path, seed=0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = kf.datasets.toy(name, 5000, seed=seed + 2)
    samples = ops.convert_to_numpy(flow.sample(5000, seed=seed, batch_size=5000))
    lim = np.percentile(np.abs(real), 99.5) * 1.15
    grid = np.linspace(-lim, lim, 200, dtype="float32")
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    density = np.exp(ops.convert_to_numpy(
        flow.log_prob(points, batch_size=len(points)))).reshape(xx.shape)
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


def describe(config, name):
    """One line: the model, its size and the density."""
    if "description" in config:
        return config["description"]
    cfg = config["model_config"]
    parts = [f"{cfg.get('num_layers', 8)} affine couplings",
             f"MLPs {'x'.join(str(u) for u in cfg.get('hidden_units', (64, 64)))}"]
    if cfg.get("batch_norm"):
        parts.append("batch norm")
    return f"{config['model']} ({', '.join(parts)}) on the {name} density"


def command_line(argv=None):
    """The command that ran this guide, with the script path relative to the repository."""
    argv = list(sys.argv if argv is None else argv)
    script = pathlib.Path(argv[0]).resolve()
    root = pathlib.Path(__file__).resolve().parents[1]
    argv[0] = str(script.relative_to(root)) if script.is_relative_to(root) else argv[0]
    return f"KERAS_BACKEND={keras.backend.backend()} python {shlex.join(argv)}"


def save(flow, config, data, nll, seconds, epochs, entropy, directory):
    mean, _, method = entropy
    flow.save_to_preset(
        directory,
        description=describe(config, data["name"]),
        dataset=data,
        training={**config["training"], "epochs": epochs},
        test_nll_nats=round(nll, 4),
        entropy_nats=round(mean, 3),
        entropy_method=method,
        train_seconds=round(seconds, 1),
        hardware=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        command=command_line(),
    )
    # `model` names save_to_preset's first argument: add the field afterwards.
    path = os.path.join(directory, "metadata.json")
    with open(path) as f:
        metadata = {"model": config["model"], **json.load(f)}
    with open(path, "w") as f:
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
    entropy = toy_entropy(data["name"])
    print(f"{data['name']}: held-out NLL {nll:.3f} nats after {epochs} epochs "
          f"({seconds:.0f} s on {keras.backend.backend()}, {flow.count_params():,} "
          f"parameters); the density's entropy is {entropy[0]:.3f} +- {entropy[1]:.3f}")
    plot(flow, data["name"], args.out)
    print(f"wrote {args.out}")
    if args.save:
        save(flow, config, data, nll, seconds, epochs, entropy, args.save)
        print(f"saved the model to {args.save}")


if __name__ == "__main__":
    main()
