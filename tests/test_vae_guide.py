"""guides/variational_inference.py: its fast mode end to end, and its posterior
densities against independent computations (scipy, a finite-difference Jacobian)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import keras
from keras import ops
from PIL import Image
from scipy import stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = ROOT / "guides" / "variational_inference.py"


def _guide():
    spec = importlib.util.spec_from_file_location("variational_inference", GUIDE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _small_vae(iaf_steps, seed=0):
    """A float64 VAE of random weights (MADE's zero-initialised output layers
    would make every IAF step the identity)."""
    model = _guide().VAE(input_dim=6, latent_dim=4, hidden_units=(8,), iaf_steps=iaf_steps,
                         iaf_hidden_units=(16,), context_dim=3, seed=seed, dtype="float64")
    model.build((None, 6))
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        v.assign(rng.normal(0.0, 0.5, tuple(v.shape)))
    return model


def _data(n=3, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(n, 6)) < 0.5).astype("float64"), rng.standard_normal((n, 4))


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def test_fast_mode_runs_and_improves_the_elbo(tmp_path):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    run = subprocess.run([sys.executable, str(GUIDE), "--fast", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "vae_results.json").read_text())
    assert results["setup"]["backend"] == keras.backend.backend()
    for name in ("gaussian", "iaf"):
        r = results[name]
        # At initialisation the decoder gives every pixel p = 1/2: ELBO near
        # -784 log 2 = -543 nats. One epoch of 16 batches must gain far more
        # than the evaluation noise (a few nats).
        assert -600 < r["elbo_before"] < -500, r
        assert r["elbo"] > r["elbo_before"] + 100, r
        # log-mean-exp >= mean of the same K log weights (Jensen).
        assert r["iw_nll"] <= -r["elbo"] + 1e-9, r
    # The IAF adds its MADEs and the context outputs; encoder and decoder match.
    assert results["iaf"]["params"] > results["gaussian"]["params"]
    png = tmp_path / "vae_mnist.png"
    with Image.open(png) as image:
        # 7 rows of 10 tiles of 28 px, each framed by 2 px.
        assert image.size == (10 * 30 + 2, 7 * 30 + 2)
        grid = np.asarray(image)
    assert grid.std() > 10  # not a blank picture


def test_iaf_log_q_matches_finite_difference_jacobian():
    # q(z_T | x) is the density of z_T = F(eps), eps ~ N(0, I), so
    # log q(z_T) = log N(eps) - log|det dF/deps|: the Jacobian of the whole
    # map (scale, shift and the IAF step) by central differences.
    model = _small_vae(iaf_steps=1)
    x, eps = _data()
    z, log_q = (_np(t) for t in model.posterior(x, eps))
    h = 1e-5
    for b in range(len(x)):
        def f(e):
            return _np(model.posterior(x[b:b + 1], e[None])[0])[0]

        jac = np.stack([(f(eps[b] + h * u) - f(eps[b] - h * u)) / (2 * h)
                        for u in np.eye(4)], axis=1)
        expected = stats.norm.logpdf(eps[b]).sum() - np.linalg.slogdet(jac)[1]
        np.testing.assert_allclose(log_q[b], expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(z[b], f(eps[b]), rtol=1e-12)
    # The step is not the identity: z_T differs from z_0 = mu + sigma eps.
    mu, log_sigma, _ = (_np(t) for t in model.encode(x))
    assert np.abs(z - (mu + np.exp(log_sigma) * eps)).max() > 1e-2


def test_iaf_with_two_steps_matches_finite_difference_jacobian():
    model = _small_vae(iaf_steps=2, seed=3)
    x, eps = _data(n=2, seed=4)
    log_q = _np(model.posterior(x, eps)[1])
    h = 1e-5
    for b in range(len(x)):
        def f(e):
            return _np(model.posterior(x[b:b + 1], e[None])[0])[0]

        jac = np.stack([(f(eps[b] + h * u) - f(eps[b] - h * u)) / (2 * h)
                        for u in np.eye(4)], axis=1)
        # Two steps in opposite orders: the Jacobian is dense, not triangular.
        assert np.abs(np.triu(jac, 1)).max() > 1e-3 and np.abs(np.tril(jac, -1)).max() > 1e-3
        expected = stats.norm.logpdf(eps[b]).sum() - np.linalg.slogdet(jac)[1]
        np.testing.assert_allclose(log_q[b], expected, rtol=0, atol=1e-6)


def test_gaussian_posterior_and_log_joint_against_scipy():
    model = _small_vae(iaf_steps=0)
    x, eps = _data()
    mu, log_sigma, h = model.encode(x)
    assert h is None
    mu, sigma = _np(mu), np.exp(_np(log_sigma))
    z, log_q = (_np(t) for t in model.posterior(x, eps))
    np.testing.assert_allclose(z, mu + sigma * eps, rtol=1e-12)
    np.testing.assert_allclose(log_q, stats.norm.logpdf(z, mu, sigma).sum(1), rtol=1e-10)
    probs = 1 / (1 + np.exp(-_np(model.decode(z))))
    log_joint = stats.bernoulli.logpmf(x, probs).sum(1) + stats.norm.logpdf(z).sum(1)
    np.testing.assert_allclose(_np(model.log_joint(x, z)), log_joint, rtol=1e-10)
    np.testing.assert_allclose(_np(model.log_weight(x, eps)), log_joint - log_q, rtol=1e-10)


def test_importance_weighted_scores_against_numpy():
    # scores(): ELBO = mean log weight, IW-NLL = -mean_n log (1/K) sum_k w_nk,
    # with the log weights recomputed here from the same seeded eps.
    guide = _guide()
    model = _small_vae(iaf_steps=1)
    x = _data(n=5)[0]
    k = 7
    eps = np.random.default_rng(1).standard_normal((5 * k, 4))  # log_weights' draws
    w = _np(model.log_weight(np.repeat(x, k, axis=0), eps)).reshape(5, k)
    got = guide.scores(model, x, k)
    np.testing.assert_allclose(got["elbo"], w.mean(), rtol=1e-10)
    iw = -np.mean(np.log(np.mean(np.exp(w), axis=1)))
    np.testing.assert_allclose(got["iw_nll"], iw, rtol=1e-10)
