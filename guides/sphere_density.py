"""Densities on the sphere, and calibrated probabilities: flows on manifolds.

    python guides/sphere_density.py --out runs/sphere           # ~20 s on jax; minutes on torch
    python guides/sphere_density.py --fast --out /tmp/sphere    # a smoke run, ~10 s

Runs on the backend named by KERAS_BACKEND (tensorflow, jax or torch). Writes
`sphere_density.png`, `reliability.png` and `results.json` into `--out` and
prints, last, one JSON line of the key figures.

## Flows that stay on a manifold

Directions live on the unit sphere S^2 = {x in R^3 : |x| = 1}; a classifier's
probability vectors live on the simplex. A flow that maps such a manifold to
itself changes a density not by a Jacobian determinant (the map has no
full-rank Jacobian in R^3) but by its *differential volume ratio* V_f(x): the
factor by which it scales an infinitesimal area of the manifold at x,

    log q(x) = log p_base(f(x)) + log V_f(x),
    V_f(x) = sqrt(det(T^T J^T J T)),

J the Jacobian of the embedded map and T an orthonormal basis of the tangent
plane at x. `keras_flows.ManifoldFlow` computes exactly this; its sphere maps
return log V_f in closed form:

- `NormalizedTranslation`:  y = (x + c) / |x + c|, |c| < 1,
  V = (1 + x.c) / |x + c|^n;
- `NormalizedLinear`:       y = M x / |M x|,  V = |det M| / |M x|^n;
- `NormalizedAffine`:       y = (M x + c) / |M x + c|, both at once,

with n = 3 here. Each is a smooth bijection of the sphere for every value of
its weights (M = L U with a positive diagonal, c inside the unit ball). A
single map is a "Moebius-like" bump that moves mass towards one point; a chain
of them, starting from a von Mises-Fisher base, can carve several modes.

## What this script does

1. Draws training and held-out points from a mixture of three von Mises-Fisher
   distributions on S^2 (`scipy.stats.vonmises_fisher`) and estimates the
   mixture's entropy H = -E[log p(x)] by Monte Carlo on fresh samples (its
   standard error printed beside it): the lowest mean negative log-likelihood
   any model can reach on held-out data.
2. Fits a `ManifoldFlow` (a `Chain` of `NormalizedAffine` maps on a
   `VonMisesFisher` base) with plain `model.fit`, and reports its held-out
   mean log-likelihood next to the true mixture's on the same points.
3. Draws the true and the learned log-density over a longitude/latitude grid
   on a Mollweide (equal-area) projection, with the training points.
4. Calibrates a classifier's probabilities with
   `keras_flows.calibration.Calibrator`, the same kind of flow on the
   simplex: synthetic outputs of a classifier that is overconfident by a
   known factor (its logits are 2.5 times too large), a temperature fitted on
   a validation split, NLL / Brier / ECE on a test split before and after,
   and the reliability diagrams.
"""

import argparse
import json
import math
import pathlib
import time

import numpy as np
import keras
from keras import ops
from scipy import stats
from scipy.special import logsumexp, softmax

import keras_flows as kf
from keras_flows import calibration

kb = kf.bijectors

# -- the target: a mixture of three von Mises-Fisher distributions on S^2 ----------

DIRECTIONS = np.array([[1.0, 0.0, 0.3], [-0.5, 0.8, -0.2], [-0.3, -0.6, 0.8]])
DIRECTIONS /= np.linalg.norm(DIRECTIONS, axis=1, keepdims=True)
CONCENTRATIONS = (8.0, 12.0, 6.0)
WEIGHTS = (0.4, 0.35, 0.25)


def mixture_sample(n, seed):
    """n points of the mixture: a component by its weight, then a vMF draw."""
    rng = np.random.default_rng(seed)
    component = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
    x = np.empty((n, 3))
    for j, (mu, kappa) in enumerate(zip(DIRECTIONS, CONCENTRATIONS)):
        rows = component == j
        x[rows] = stats.vonmises_fisher(mu, kappa).rvs(rows.sum(), random_state=rng)
    return x


def mixture_log_prob(x):
    """log p(x) = log sum_j w_j vMF(x; mu_j, kappa_j), densities w.r.t. the area of S^2."""
    x = np.asarray(x, "float64")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return logsumexp([math.log(w) + stats.vonmises_fisher(mu, kappa).logpdf(x)
                      for w, mu, kappa in zip(WEIGHTS, DIRECTIONS, CONCENTRATIONS)], axis=0)


def sphere_flow(num_layers):
    """A chain of `num_layers` NormalizedAffine maps on a vMF base.

    The maps start near (not at) the identity: identical layers would receive
    identical gradients, so small seeded random weights break the symmetry.
    """
    layers = [kb.NormalizedAffine(
        dim=3, matrix_initializer=keras.initializers.RandomNormal(0.0, 0.3, seed=i),
        translation_initializer=keras.initializers.RandomNormal(0.0, 0.3, seed=100 + i))
        for i in range(num_layers)]
    return kf.ManifoldFlow(kb.Chain(layers), base=kf.VonMisesFisher(3, concentration=1.0),
                           manifold="sphere")


def fit_sphere(args):
    train = mixture_sample(args.train_size, args.seed).astype("float32")
    test = mixture_sample(args.test_size, args.seed + 1)
    fresh = mixture_log_prob(mixture_sample(args.entropy_size, args.seed + 2))
    entropy, entropy_se = -fresh.mean(), fresh.std() / math.sqrt(len(fresh))

    flow = sphere_flow(args.layers)
    steps = args.epochs * -(-len(train) // args.batch_size)
    flow.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)))
    start = time.time()
    flow.fit(train, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    seconds = time.time() - start

    learned = ops.convert_to_numpy(flow.log_prob(test.astype("float32"))).astype("float64")
    true = mixture_log_prob(test)
    results = {
        "entropy": entropy, "entropy_se": entropy_se,
        "heldout_loglik_flow": learned.mean(), "heldout_loglik_true": true.mean(),
        # The held-out mean of log p - log q: a Monte Carlo estimate of KL(p || q).
        "kl": (true - learned).mean(),
        "kl_se": (true - learned).std() / math.sqrt(len(test)),
        "fit_seconds": seconds, "steps": steps,
    }
    print(f"Mixture entropy H = {entropy:.4f} nats (Monte Carlo, {len(fresh):,} samples, "
          f"standard error {entropy_se:.4f}).")
    print(f"Held-out mean log-likelihood on {len(test):,} points: flow "
          f"{results['heldout_loglik_flow']:.4f}, true mixture {results['heldout_loglik_true']:.4f}; "
          f"KL(p || q) ~ {results['kl']:.4f} +- {results['kl_se']:.4f} nats "
          f"({args.layers} NormalizedAffine maps, {steps} steps, {seconds:.1f} s).")
    return flow, train, results


# -- drawing a density on the sphere -----------------------------------------------


def lon_lat_grid(num_lon, num_lat):
    """Cell centres of a longitude/latitude grid (radians) and their unit vectors."""
    lon = np.linspace(-math.pi, math.pi, num_lon + 1)
    lat = np.linspace(-math.pi / 2, math.pi / 2, num_lat + 1)
    lon_c, lat_c = np.meshgrid((lon[1:] + lon[:-1]) / 2, (lat[1:] + lat[:-1]) / 2)
    points = np.stack([np.cos(lat_c) * np.cos(lon_c), np.cos(lat_c) * np.sin(lon_c),
                       np.sin(lat_c)], axis=-1).reshape(-1, 3)
    return lon, lat, points


def to_lon_lat(x):
    return np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2], -1.0, 1.0))


def draw_sphere(flow, train, path, num_lon, num_lat):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lon, lat, points = lon_lat_grid(num_lon, num_lat)
    panels = {
        "true mixture": mixture_log_prob(points),
        "learned flow": ops.convert_to_numpy(flow.log_prob(points.astype("float32"))),
    }
    low = min(v.min() for v in panels.values())
    high = max(v.max() for v in panels.values())
    low = max(low, high - 12.0)   # the tails, far below the modes, share one colour
    fig = plt.figure(figsize=(12, 4.2))
    for i, (title, values) in enumerate(panels.items()):
        ax = fig.add_subplot(1, 2, i + 1, projection="mollweide")
        mesh = ax.pcolormesh(lon, lat, values.reshape(num_lat, num_lon), cmap="magma",
                             vmin=low, vmax=high, shading="flat")
        shown = train[:1500]
        ax.scatter(*to_lon_lat(shown), s=1, c="cyan", alpha=0.3, linewidths=0)
        ax.set_title(f"{title}: log-density", pad=12)
        ax.set_xticklabels([])
        ax.grid(alpha=0.3)
    fig.colorbar(mesh, ax=fig.axes, shrink=0.7, label="log p (per unit area)")
    fig.suptitle(f"A vMF mixture on S^2 and a ManifoldFlow fitted to it "
                 f"(Mollweide projection; dots: training points; {keras.backend.backend()})")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- calibrating probabilities: a flow on the simplex ------------------------------


def synthetic_classifier(n, num_classes, overconfidence, seed):
    """Labels drawn from softmax(z) for random logits z, and the outputs of a
    classifier that reports softmax(overconfidence * z): right ranking, wrong
    confidence. Temperature scaling recovers T = overconfidence exactly."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (num_classes, num_classes))
    z = centres[rng.integers(num_classes, size=n)] + rng.normal(0.0, 1.0, (n, num_classes))
    true = softmax(z, axis=1)
    labels = (true.cumsum(axis=1) < rng.uniform(size=(n, 1))).sum(axis=1)
    return softmax(overconfidence * z, axis=1), np.minimum(labels, num_classes - 1)


def calibrate(args, out):
    overconfidence = 2.5
    val_probs, val_labels = synthetic_classifier(args.calibration_size, 10, overconfidence,
                                                 args.seed + 3)
    test_probs, test_labels = synthetic_classifier(args.calibration_size, 10, overconfidence,
                                                   args.seed + 4)
    cal = calibration.Calibrator(kind="temperature", steps=args.calibration_steps,
                                 learning_rate=0.05)
    cal.fit(val_probs, val_labels)
    report = cal.report(test_probs, test_labels)
    temperature = float(np.exp(ops.convert_to_numpy(cal.bijector.log_a)))
    path = cal.reliability_diagram(test_probs, test_labels, out / "reliability.png")
    before, after = report["before"], report["after"]
    print(f"Temperature scaling: fitted T = {temperature:.3f} (true {overconfidence}); "
          f"test NLL {before['nll']:.4f} -> {after['nll']:.4f}, Brier {before['brier']:.4f} "
          f"-> {after['brier']:.4f}, ECE {before['ece']:.4f} -> {after['ece']:.4f}.")
    return path, {"temperature": temperature, "true_temperature": overconfidence,
                  "nll_before": before["nll"], "nll_after": after["nll"],
                  "ece_before": before["ece"], "ece_after": after["ece"],
                  "brier_before": before["brier"], "brier_after": after["brier"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="sphere_density_out", help="folder for the outputs")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true",
                        help="tiny sizes: 3 maps, 2,000 points, 10 epochs, a coarse grid")
    args = parser.parse_args()
    args.test_size, args.entropy_size, args.calibration_size = 20_000, 200_000, 5000
    args.calibration_steps, grid = 1000, (180, 90)
    if args.fast:
        args.layers, args.epochs, args.train_size = 3, 10, 2000
        args.test_size, args.entropy_size, args.calibration_size = 2000, 5000, 1000
        args.calibration_steps, grid = 100, (60, 30)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    flow, train, sphere = fit_sphere(args)
    sphere_png = draw_sphere(flow, train, out / "sphere_density.png", *grid)
    reliability_png, calibrated = calibrate(args, out)
    print(f"Figures: {sphere_png}, {reliability_png}")

    results = {"backend": keras.backend.backend(), "fast": args.fast,
               "layers": args.layers, "train_size": args.train_size,
               **{k: v if isinstance(v, int) else round(float(v), 5)
                  for k, v in {**sphere, **calibrated}.items()},
               "pictures": [str(sphere_png), str(reliability_png)]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
