"""Variational inference with flows: a VAE on MNIST whose posterior is an IAF.

    python guides/variational_inference.py --fast     # a smoke run, ~15 s on 2 CPU cores
    python guides/variational_inference.py --out runs/vae     # benchmarks/vae.md, ~3.5 min

Runs on the backend named by KERAS_BACKEND (tensorflow, jax or torch).

## The model

A variational autoencoder (Kingma & Welling 2014) has a prior p(z) = N(0, I),
a decoder p(x | z) and an encoder q(z | x), the approximate posterior. It is
trained by maximising the evidence lower bound

    ELBO(x) = E_q[log p(x | z) + log p(z) - log q(z | x)]  <=  log p(x),

estimated with one reparameterised sample z = g(eps; x), eps ~ N(0, I), so
that its gradient flows through the sample. The bound is tight only where
q(z | x) equals the true posterior; a diagonal Gaussian q, the usual choice,
cannot take its correlations or its skew.

An inverse autoregressive flow (Kingma et al. 2016) makes q richer at little
cost. The encoder gives (mu, sigma, h); then

    z_0 = mu + sigma * eps,
    z_t = z_{t-1} * exp(s_t) + m_t,   (s_t, m_t) = MADE_t(z_{t-1}; h)   (t = 1..T),

each step autoregressive in z (s_t,i and m_t,i see only z_{t-1,<i}) and
conditioned on the encoder's context h. Each step's Jacobian is triangular, so

    log q(z_T | x) = log N(eps; 0, I) - sum_i log sigma_i - sum_t sum_i s_t,i.

A VAE needs a sample *and* its density together, in one pass. In keras_flows
a step is `MaskedAutoregressive(Affine(), MADE(...), context_shape=(H,))`,
whose `forward` (the MAF direction, data -> latent) is exactly this one-pass
map with log-det sum_i s_i; its `inverse` would take D passes. So the IAF
posterior applies the steps' `forward` to z_0: the same layers that give a
MAF its fast density give an IAF its fast sampling. (`keras_flows.IAF` wraps
each step in `Invert` so that, as a `Flow`, its *sampling* direction is the
one-pass one; here the steps are used directly, which needs no wrapper.)
Between steps the MADE order alternates (natural, reversed), so every latent
coordinate conditions every other one.

## What this script does

- Loads MNIST (`keras_flows.datasets.npz_file`), binarised *statically*: each
  pixel is set to 1 with probability its intensity / 255, once, with a fixed
  seed (train and test separately), so every run sees the same binary images.
- Trains two VAEs with the same encoder and decoder (dense, ReLU; latent
  dimension 16; Bernoulli decoder): one with a diagonal-Gaussian posterior,
  one with a T-step IAF posterior. The loss is the negative ELBO, computed in
  the model's `call` and averaged in `compute_loss`, so plain `model.fit`
  trains it on every backend (no custom `train_step`).
- Reports, on test images, the ELBO (averaged over K samples) and the
  importance-weighted NLL (Burda et al. 2016)

      -log p(x) ~= -log (1/K) sum_k p(x, z_k) / q(z_k | x),  z_k ~ q(z | x),

  an upper bound on -log p(x) that tightens as K grows; both in nats.
- Writes a PNG (`vae_mnist.png` in `--out`): test images, their Gaussian-VAE
  and IAF-VAE reconstructions (Bernoulli means), then samples from each
  model's prior; and `vae_results.json` with the figures.

References: Kingma & Welling 2014, arXiv:1312.6114; Kingma, Salimans,
Jozefowicz, Chen, Sutskever & Welling 2016, arXiv:1606.04934; Germain, Gregor,
Murray & Larochelle 2015, arXiv:1502.03509; Burda, Grosse & Salakhutdinov
2016, arXiv:1509.00519.
"""

import argparse
import json
import math
import os
import pathlib
import platform
import time

import numpy as np
import keras
from keras import ops
from scipy.special import logsumexp

import keras_flows as kf
from keras_flows.bijectors import MaskedAutoregressive
from keras_flows.layers import MADE, Dense
from keras_flows.transformers import Affine

ROOT = pathlib.Path(__file__).resolve().parents[1]
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def load_mnist(train_size, test_size, seed=0):
    """The first `train_size` training and `test_size` test images of MNIST,
    statically binarised, flattened to (N, 784) float32 in {0, 1}.

    Pixel j of image i is 1 where u_ij < intensity_ij / 255, the u drawn row
    by row from one seeded generator per split: image i gets the same binary
    pixels whatever the sizes asked.
    """
    try:
        path = kf.datasets.npz_file("mnist", [ROOT.parent / "shared" / "datasets"])
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    with np.load(path) as f:
        x_train, x_test = f["x_train"][:train_size], f["x_test"][:test_size]

    def binarise(x, split):
        u = np.random.default_rng([seed, split]).uniform(size=(len(x), x[0].size))
        return (u * 255 < x.reshape(len(x), -1)).astype("float32")

    return binarise(x_train, 0), binarise(x_test, 1)


# ## The VAE
#
# One class for both posteriors: `iaf_steps=0` is the diagonal-Gaussian VAE,
# `iaf_steps=T` adds T IAF steps and a context h of `context_dim` features to
# the encoder's output. Every Dense is keras_flows' own, which computes in the
# layer's dtype (float64 too) on every backend.


class VAE(keras.Model):
    """VAE with a Bernoulli decoder and a diagonal-Gaussian or IAF posterior.

    Encoder: x -> (mu, log sigma, h); posterior sample z_T = IAF(mu + sigma eps; h)
    (z_0 itself when `iaf_steps=0`); decoder: z -> Bernoulli logits of x.
    `call(x)` returns one reparameterised sample of the log weight
    log p(x | z) + log p(z) - log q(z | x) per example, the ELBO's
    single-sample estimate; `compute_loss` is minus its mean.
    """

    def __init__(self, input_dim=784, latent_dim=16, hidden_units=(256, 256), iaf_steps=0,
                 iaf_hidden_units=(128, 128), context_dim=32, seed=None, **kwargs):
        super().__init__(**kwargs)
        if min(input_dim, latent_dim) < 1 or iaf_steps < 0:
            raise ValueError("VAE needs input_dim >= 1, latent_dim >= 1 and iaf_steps >= 0; "
                             f"got {input_dim}, {latent_dim} and {iaf_steps}.")
        self.input_dim, self.latent_dim = int(input_dim), int(latent_dim)
        self.iaf_steps = int(iaf_steps)
        self.context_dim = int(context_dim) if self.iaf_steps else 0
        dtype = self.dtype_policy
        self.encoder_layers = [Dense(u, activation="relu", dtype=dtype, name=f"enc_{i}")
                               for i, u in enumerate(hidden_units)]
        self.encoder_out = Dense(2 * self.latent_dim + self.context_dim, dtype=dtype,
                                 name="enc_out")
        self.decoder_layers = [Dense(u, activation="relu", dtype=dtype, name=f"dec_{i}")
                               for i, u in enumerate(reversed(hidden_units))]
        self.decoder_out = Dense(self.input_dim, dtype=dtype, name="dec_out")
        self.steps = [
            MaskedAutoregressive(
                Affine(dtype=dtype, name="transformer"),
                MADE(hidden_units=iaf_hidden_units, order=("natural", "reversed")[t % 2],
                     context_dim=self.context_dim, dtype=dtype, name="made"),
                context_shape=(self.context_dim,), dtype=dtype, name=f"iaf_{t}")
            for t in range(self.iaf_steps)]
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        # Built here, outside any trace: MADE's masks are constants made in build.
        shape = (None, self.input_dim)
        for layer in [*self.encoder_layers, self.encoder_out]:
            layer.build(shape)
            shape = (None, layer.units)
        shape = (None, self.latent_dim)
        for layer in [*self.decoder_layers, self.decoder_out]:
            layer.build(shape)
            shape = (None, layer.units)
        for step in self.steps:
            step.build((None, self.latent_dim))

    def encode(self, x):
        """(mu, log sigma, h) of q(z | x); h is None without IAF steps."""
        out = ops.cast(x, self.compute_dtype)
        for layer in self.encoder_layers:
            out = layer(out)
        out = self.encoder_out(out)
        d = self.latent_dim
        return out[:, :d], out[:, d:2 * d], out[:, 2 * d:] if self.iaf_steps else None

    def posterior(self, x, eps):
        """z ~ q(z | x) from the noise eps, and log q(z | x):
        log N(eps) - sum log sigma - sum over steps of the step's log-det."""
        mu, log_sigma, h = self.encode(x)
        eps = ops.cast(eps, self.compute_dtype)
        z = mu + ops.exp(log_sigma) * eps
        log_q = -ops.sum(0.5 * ops.square(eps) + log_sigma + HALF_LOG_2PI, axis=-1)
        for step in self.steps:
            z, log_det = step.forward(z, context=h)  # one pass: z_i' = z_i e^s_i + m_i
            log_q = log_q - log_det
        return z, log_q

    def decode(self, z):
        """Bernoulli logits of x given z."""
        out = ops.cast(z, self.compute_dtype)
        for layer in self.decoder_layers:
            out = layer(out)
        return self.decoder_out(out)

    def log_joint(self, x, z):
        """log p(x | z) + log p(z): Bernoulli(sigmoid(logits)) and N(0, I)."""
        logits = self.decode(z)
        x = ops.cast(x, self.compute_dtype)
        # log Bernoulli(x; sigmoid(l)) = x l - log(1 + e^l)
        log_px = ops.sum(x * logits - ops.softplus(logits), axis=-1)
        log_pz = -ops.sum(0.5 * ops.square(z) + HALF_LOG_2PI, axis=-1)
        return log_px + log_pz

    def log_weight(self, x, eps):
        """log p(x, z) - log q(z | x) for the z that eps gives."""
        z, log_q = self.posterior(x, eps)
        return self.log_joint(x, z) - log_q

    def call(self, x, training=False):
        eps = keras.random.normal((ops.shape(x)[0], self.latent_dim), dtype=self.compute_dtype,
                                  seed=self.seed_generator)
        return self.log_weight(x, eps)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = -ops.mean(y_pred)
        for extra in self.losses:
            loss = loss + extra
        return loss


# ## Evaluation
#
# K posterior samples per test image, drawn in numpy from a fixed seed (so
# both models see the same eps), the log weights computed in batches of
# about 10,000 rows. ELBO = their mean; IW-NLL = -log-mean-exp. By Jensen,
# log-mean-exp >= mean sample by sample, so IW-NLL <= -ELBO always.


def log_weights(model, x, k, seed=1, rows=10_000):
    """(N, K) log weights log p(x, z_k) - log q(z_k | x), z_k ~ q(z | x)."""
    rng = np.random.default_rng(seed)
    per = max(1, rows // k)
    out = []
    for start in range(0, len(x), per):
        chunk = np.repeat(x[start:start + per], k, axis=0)
        eps = rng.standard_normal((len(chunk), model.latent_dim)).astype(chunk.dtype)
        w = ops.convert_to_numpy(model.log_weight(chunk, eps)).astype("float64")
        out.append(w.reshape(-1, k))
    return np.concatenate(out)


def scores(model, x, k):
    """Test ELBO and importance-weighted NLL, nats per image."""
    w = log_weights(model, x, k)
    return {"elbo": float(np.mean(w)),
            "iw_nll": float(-np.mean(logsumexp(w, axis=1) - np.log(k)))}


def figure(models, x_test, path, seed=2):
    """Test images, each model's reconstructions, then each model's samples."""
    rng = np.random.default_rng(seed)
    originals = x_test[:10]
    rows = [originals]
    for model in models.values():
        eps = rng.standard_normal((10, model.latent_dim)).astype("float32")
        z, _ = model.posterior(originals, eps)
        rows.append(ops.convert_to_numpy(ops.sigmoid(model.decode(z))))
    prior = rng.standard_normal((20, next(iter(models.values())).latent_dim)).astype("float32")
    for model in models.values():
        rows.append(ops.convert_to_numpy(ops.sigmoid(model.decode(prior))))
    images = np.concatenate(rows).reshape(-1, 28, 28) * 255
    kf.utils.save_image_grid(images, path, nrow=10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--iaf-steps", type=int, default=2)
    parser.add_argument("--k", type=int, default=100,
                        help="importance samples per test image for the IW-NLL")
    parser.add_argument("--out", default=".", help="folder for the PNG and the JSON")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initialisation and the training noise")
    parser.add_argument("--fast", action="store_true",
                        help="512 training and 128 test images, 1 epoch of batch 32, K=4")
    args = parser.parse_args()
    if args.fast:
        args.train_size, args.test_size, args.epochs, args.batch_size, args.k = (
            512, 128, 1, 32, 4)
    for flag in ("train_size", "test_size", "epochs", "batch_size", "k", "latent_dim"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(args, flag)}.")
    if args.iaf_steps < 1:
        parser.error(f"--iaf-steps must be >= 1 (the IAF model needs a step); got "
                     f"{args.iaf_steps}.")

    x_train, x_test = load_mnist(args.train_size, args.test_size)  # whatever --seed
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results, models = {}, {}
    for name, steps in (("gaussian", 0), ("iaf", args.iaf_steps)):
        keras.utils.set_random_seed(args.seed)
        model = VAE(latent_dim=args.latent_dim, iaf_steps=steps, seed=args.seed, name=name)
        model.build((None, x_train.shape[1]))
        before = scores(model, x_test, 1)["elbo"]  # the ELBO at initialisation
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
        start = time.time()
        history = model.fit(x_train, batch_size=args.batch_size, epochs=args.epochs,
                            shuffle=True, verbose=2 if not args.fast else 0)
        seconds = time.time() - start
        results[name] = {**scores(model, x_test, args.k), "elbo_before": before,
                         "train_loss": [float(v) for v in history.history["loss"]],
                         "params": int(model.count_params()),
                         "train_seconds": round(seconds, 1)}
        models[name] = model
        r = results[name]
        print(f"{name:>8}: test ELBO {r['elbo']:.2f} nats (at init {before:.2f}), "
              f"IW-NLL (K={args.k}) {r['iw_nll']:.2f} nats, {r['params']:,} parameters, "
              f"trained {seconds:.0f} s")

    png = out / "vae_mnist.png"
    figure(models, x_test, png)
    results["setup"] = {
        "backend": keras.backend.backend(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "train_size": len(x_train), "test_size": len(x_test),
        "epochs": args.epochs, "batch_size": args.batch_size, "k": args.k,
        "latent_dim": args.latent_dim, "iaf_steps": args.iaf_steps,
        "binarisation": "static (seeded Bernoulli of intensity / 255)", "png": str(png)}
    (out / "vae_results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({n: {k: results[n][k] for k in ("elbo", "iw_nll", "elbo_before")}
                      for n in models}))
    print(f"Figure: {png} (rows: test images; Gaussian and IAF reconstructions; "
          "2 rows of Gaussian-VAE samples; 2 rows of IAF-VAE samples)")


if __name__ == "__main__":
    main()
