"""`ManifoldFlow` on the sphere and the simplex: densities against independent
change-of-variables computations and scipy, normalisation, training with
`fit`, saving, export, and the errors for points off the manifold."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import keras
import pytest
from keras import ops
from scipy import stats

import keras_flows as kf

kb = kf.bijectors


def numpy(x):
    return ops.convert_to_numpy(x)


def unit(v):
    v = np.asarray(v, "float64")
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def perturb(model, seed, scale=0.3):
    rng = np.random.default_rng(seed)
    for w in model.trainable_weights:
        w.assign(numpy(w) + rng.normal(scale=scale, size=w.shape))
    return model


def sphere_flow(dim=3, dtype="float32", base=None):
    chain = kb.Chain([kb.NormalizedAffine(dim=dim, dtype=dtype),
                      kb.NormalizedTranslation(dim=dim, dtype=dtype)], dtype=dtype)
    return kf.ManifoldFlow(chain, base=base or kf.VonMisesFisher(dim, concentration=2.0,
                                                                 dtype=dtype),
                           manifold="sphere", dtype=dtype)


def simplex_flow(k=3, dtype="float32", alpha=(2.0, 3.0, 4.0)):
    chain = kb.Chain([kb.Calibration(k, dtype=dtype), kb.GeneralizedCalibration(k, dtype=dtype)],
                     dtype=dtype)
    return kf.ManifoldFlow(chain, base=kf.Dirichlet(k, concentration=list(alpha), dtype=dtype),
                           manifold="simplex", dtype=dtype)


def tangent_basis(x):
    """An orthonormal basis of the tangent space of the sphere at x: (n, n-1)."""
    q, _ = np.linalg.qr(np.column_stack([x, np.eye(len(x))]))
    return q[:, 1:]


# -- densities against independent computations --------------------------------

def test_sphere_log_prob_is_the_base_density_times_the_volume_ratio():
    """log p(x) = log vMF(f(x)) (scipy) + 0.5 log det(T^T J^T J T), J the
    finite-difference Jacobian of the embedded map x -> f(x / |x|) and T a
    tangent basis at x: an oracle that shares no code with the model."""
    flow = perturb(sphere_flow(dtype="float64"), 0)
    base = flow.base
    vmf = stats.vonmises_fisher(numpy(base.mean_direction), float(numpy(base.concentration)))
    x = unit(np.random.default_rng(1).normal(size=(6, 3)))

    def f(points):
        return numpy(flow.encode(unit(points)))

    h = 1e-6
    for row in x:
        jac = np.column_stack([(f(row + h * e) - f(row - h * e))[0] / (2 * h)
                               for e in np.eye(3)[:, None, :]])
        t = tangent_basis(row)
        log_ratio = 0.5 * np.linalg.slogdet(t.T @ jac.T @ jac @ t)[1]
        expected = vmf.logpdf(f(row[None])) + log_ratio
        np.testing.assert_allclose(numpy(flow.log_prob(row[None])), expected, rtol=1e-7)


def test_simplex_log_prob_is_the_change_of_variables_density():
    """A GeneralizedCalibration (after a Calibration) of Dirichlet samples:
    log p(x) = log Dirichlet(f(x)) (scipy) + log|det df'/dx'| with the 2x2
    Jacobian of the chart map x' = (x_1, x_2) -> f(x)' by finite differences."""
    flow = perturb(simplex_flow(dtype="float64"), 2)
    alpha = numpy(flow.base.concentration)
    x = np.random.default_rng(3).dirichlet([2.0, 3.0, 4.0], size=6)

    def f(chart):
        full = np.concatenate([chart, 1 - chart.sum(-1, keepdims=True)], -1)
        return numpy(flow.encode(full))[:, :2]

    h = 1e-7
    for row in x:
        jac = np.column_stack([(f(row[None, :2] + h * e) - f(row[None, :2] - h * e))[0] / (2 * h)
                               for e in np.eye(2)[:, None, :]])
        z = numpy(flow.encode(row[None]))[0]
        expected = stats.dirichlet(alpha).logpdf(z) + np.linalg.slogdet(jac)[1]
        np.testing.assert_allclose(numpy(flow.log_prob(row[None]))[0], expected, rtol=1e-7)


def fibonacci_sphere(n):
    """n nearly uniform points on S^2 (a Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + math.sqrt(5)) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def test_sphere_flow_densities_integrate_to_one():
    # S^2: equal-area Fibonacci lattice, 4 pi mean(p) (quadrature error
    # ~1e-5 here; measured by halving the lattice).
    flow = perturb(sphere_flow(dtype="float64"), 4)
    density = np.exp(numpy(flow.log_prob(fibonacci_sphere(40000))))
    assert density.max() > 3 * density.min()   # far from uniform
    np.testing.assert_allclose(4 * math.pi * density.mean(), 1.0, atol=1e-3)
    # S^1: the trapezoid rule in the angle.
    circle = perturb(sphere_flow(dim=2, dtype="float64"), 5)
    theta = np.linspace(0, 2 * math.pi, 4096, endpoint=False)
    density = np.exp(numpy(circle.log_prob(np.stack([np.cos(theta), np.sin(theta)], 1))))
    np.testing.assert_allclose(2 * math.pi * density.mean(), 1.0, rtol=1e-8)


def test_simplex_flow_density_integrates_to_one():
    """Monte Carlo over the 2-simplex with uniform points (density 2 there):
    the integral is E[p(u)] / 2, within 5 standard errors (SE about 0.003)."""
    flow = perturb(simplex_flow(dtype="float64"), 6, scale=0.15)
    u = np.random.default_rng(7).dirichlet(np.ones(3), size=100_000)
    ratio = np.exp(numpy(flow.log_prob(u))) / 2
    error = ratio.std() / math.sqrt(len(u))
    assert error < 0.01
    assert abs(ratio.mean() - 1) < 5 * error, (ratio.mean(), error)


# -- training ---------------------------------------------------------------------

def test_sphere_flow_fits_a_von_mises_fisher_target():
    """Fitted to 3000 samples of vMF(mu, 6) on S^2, the flow's mean
    log-likelihood of 2000 held-out points comes within 0.03 nats of the
    target's own (scipy), from more than 1 nat away."""
    mu = unit([1.0, 2.0, -2.0])
    target = stats.vonmises_fisher(mu, 6.0)
    train = target.rvs(3000, random_state=0).astype("float32")
    test = target.rvs(2000, random_state=1).astype("float32")
    true = target.logpdf(test).mean()
    flow = sphere_flow()
    assert true - numpy(flow.log_prob(test)).mean() > 1.0
    flow.compile(optimizer=keras.optimizers.Adam(0.05))
    history = flow.fit(train, batch_size=1000, epochs=15, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    fitted = numpy(flow.log_prob(test)).mean()
    assert abs(fitted - true) < 0.03, (fitted, true)
    samples = numpy(flow.sample(4, seed=0))
    np.testing.assert_allclose(np.linalg.norm(samples, axis=1), 1.0, atol=1e-5)


def test_simplex_flow_trains_with_fit():
    data = np.random.default_rng(0).dirichlet([1.0, 4.0, 2.0], size=1000).astype("float32")
    flow = simplex_flow()
    before = -numpy(flow.log_prob(data)).mean()
    flow.compile(optimizer=keras.optimizers.Adam(0.1))
    flow.fit(data, batch_size=1000, epochs=15, verbose=0)
    after = -numpy(flow.log_prob(data)).mean()
    rows = data.astype("float64") / data.astype("float64").sum(1, keepdims=True)
    true = -np.mean([stats.dirichlet([1.0, 4.0, 2.0]).logpdf(row) for row in rows])
    assert after < before - 0.2 and after < true + 0.1, (before, after, true)
    x = numpy(flow.sample(4, seed=0))
    assert (x > 0).all()
    np.testing.assert_allclose(x.sum(1), 1.0, atol=1e-5)


# -- saving, sampling, export ------------------------------------------------------

@pytest.mark.parametrize("manifold", ["sphere", "simplex"])
def test_keras_file_round_trip(manifold, tmp_path):
    flow = perturb(sphere_flow() if manifold == "sphere" else simplex_flow(), 8, scale=0.1)
    flow = kf.ManifoldFlow(flow.bijector, base=flow.base, manifold=manifold, tolerance=1e-3)
    x = (unit(np.random.default_rng(0).normal(size=(5, 3))) if manifold == "sphere" else
         np.random.default_rng(0).dirichlet(np.ones(3), size=5)).astype("float32")
    flow.save(tmp_path / "flow.keras")
    loaded = keras.saving.load_model(tmp_path / "flow.keras")
    assert type(loaded) is kf.ManifoldFlow
    assert loaded.manifold == manifold and loaded.tolerance == 1e-3
    np.testing.assert_allclose(numpy(loaded.log_prob(x)), numpy(flow.log_prob(x)), rtol=1e-6)
    np.testing.assert_allclose(numpy(loaded.sample(4, seed=3)), numpy(flow.sample(4, seed=3)),
                               rtol=1e-6)
    a, b = numpy(flow.sample(4, seed=3)), numpy(flow.sample(4, seed=4))
    assert not np.allclose(a, b)


LOADER = r"""
import sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
x = tf.constant(np.load(sys.argv[2]))
args = dict(n=tf.constant(6, tf.int32), temperature=tf.constant(1.0), seed=tf.constant(7, tf.int64))
np.savez(sys.argv[3], log_prob=model.log_prob(x=x)["log_prob"].numpy(),
         s1=model.sample(**args)["x"].numpy(), s2=model.sample(**args)["x"].numpy())
assert "keras_flows" not in sys.modules
"""


def test_saved_model_export(tmp_path):
    """A sphere flow exported from this backend; its SavedModel, loaded with
    TensorFlow alone, gives the model's log_prob and seeded unit-vector samples."""
    flow = perturb(sphere_flow(), 9, scale=0.1)
    x = unit(np.random.default_rng(0).normal(size=(5, 3))).astype("float32")
    flow.export(tmp_path / "saved", verbose=False)
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    run = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "saved"),
                          str(tmp_path / "x.npy"), str(tmp_path / "out.npz")],
                         env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["log_prob"], numpy(flow.log_prob(x)), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out["s1"], out["s2"])
    assert out["s1"].shape == (6, 3)
    np.testing.assert_allclose(np.linalg.norm(out["s1"], axis=1), 1.0, atol=1e-5)


# -- errors ------------------------------------------------------------------------

def test_points_off_the_manifold_are_refused():
    sphere, simplex = sphere_flow(), simplex_flow()
    good = unit(np.random.default_rng(0).normal(size=(4, 3))).astype("float32")
    bad = good.copy()
    bad[2] *= 1.01
    for call in (sphere.log_prob, sphere.encode, sphere.decode,
                 lambda v: sphere.fit(v, epochs=1, verbose=0)):
        with pytest.raises(ValueError, match=r"unit sphere S\^2.*tolerance 0.0001.*row 2, "
                                             r"with norm 1.01"):
            call(bad)
    # Within the tolerance: accepted; a tighter tolerance refuses it.
    near = good * (1 + 5e-5)
    sphere.log_prob(near)
    tight = kf.ManifoldFlow(sphere.bijector, base=sphere.base, tolerance=1e-5)
    with pytest.raises(ValueError, match="tolerance 1e-05"):
        tight.log_prob(near)

    probs = np.random.default_rng(1).dirichlet(np.ones(3), size=4).astype("float32")
    negative = probs.copy()
    negative[1] = [0.6, 0.5, -0.1]
    with pytest.raises(ValueError, match=r"entries > 0.*x\[1, 2\] = -0.1"):
        simplex.log_prob(negative)
    zero = probs.copy()
    zero[3] = [0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"entries <= 0, the first x\[3, 0\] = 0"):
        simplex.fit(zero, epochs=1, verbose=0)
    unnormalised = probs.copy()
    unnormalised[0] *= 1.1
    with pytest.raises(ValueError, match=r"summing to 1 within tolerance 0.0001.*row 0, sums "
                                         r"to 1.1"):
        simplex.log_prob(unnormalised)


def test_mismatched_parts_are_refused():
    with pytest.raises(ValueError, match=r"map the sphere to itself.*AffineCoupling.*none"):
        kf.ManifoldFlow(kb.Chain([kb.NormalizedLinear(dim=3), kb.AffineCoupling()]),
                        base=kf.UniformSphere(3))
    with pytest.raises(ValueError, match=r"on the simplex needs bijectors.*NormalizedLinear.*"
                                         r"'sphere'"):
        kf.ManifoldFlow(kb.NormalizedLinear(dim=3), base=kf.Dirichlet(3), manifold="simplex")
    with pytest.raises(ValueError, match=r"base distribution on the sphere; Dirichlet"):
        kf.ManifoldFlow(kb.NormalizedLinear(dim=3), base=kf.Dirichlet(3))
    with pytest.raises(ValueError, match=r"base distribution on the sphere; StandardNormal"):
        kf.ManifoldFlow(kb.Chain([]), base=kf.StandardNormal((3,)))
    with pytest.raises(ValueError, match="`manifold` must be 'sphere' or 'simplex'"):
        kf.ManifoldFlow(kb.Chain([]), base=kf.UniformSphere(3), manifold="torus")
    with pytest.raises(ValueError, match="`tolerance` must be a finite number > 0"):
        kf.ManifoldFlow(kb.Chain([]), base=kf.UniformSphere(3), tolerance=0)


def test_identity_flow_is_its_base():
    """With an empty Chain the flow's density is the base's."""
    x = np.random.default_rng(2).dirichlet([1.0, 2.0, 3.0], size=5).astype("float32")
    base = kf.Dirichlet(3, concentration=[1.5, 2.0, 0.7])
    flow = kf.ManifoldFlow(kb.Chain([]), base=base, manifold="simplex")
    rows = x.astype("float64") / x.astype("float64").sum(1, keepdims=True)  # scipy: 1e-9
    expected = [stats.dirichlet([1.5, 2.0, 0.7]).logpdf(row) for row in rows]
    np.testing.assert_allclose(numpy(flow.log_prob(x)), expected, rtol=1e-5, atol=1e-5)
    assert json.loads(json.dumps(flow.get_config()))["manifold"] == "simplex"


# -- a mixture of von Mises-Fisher distributions (issue #11, item 6) ----------------

MIXTURE_DIRECTIONS = unit([[1.0, 0.0, 0.3], [-0.5, 0.8, -0.2], [-0.3, -0.6, 0.8]])
MIXTURE_CONCENTRATIONS = (8.0, 12.0, 6.0)
MIXTURE_WEIGHTS = (0.4, 0.35, 0.25)


def mixture_sample(n, seed):
    rng = np.random.default_rng(seed)
    component = rng.choice(len(MIXTURE_WEIGHTS), size=n, p=MIXTURE_WEIGHTS)
    x = np.empty((n, 3))
    for j, (mu, kappa) in enumerate(zip(MIXTURE_DIRECTIONS, MIXTURE_CONCENTRATIONS)):
        rows = component == j
        x[rows] = stats.vonmises_fisher(mu, kappa).rvs(rows.sum(), random_state=rng)
    return x


def mixture_log_prob(x):
    x = unit(x)
    terms = [math.log(w) + stats.vonmises_fisher(mu, kappa).logpdf(x) for w, mu, kappa in
             zip(MIXTURE_WEIGHTS, MIXTURE_DIRECTIONS, MIXTURE_CONCENTRATIONS)]
    return np.logaddexp.reduce(terms, axis=0)


def test_sphere_flow_fits_a_von_mises_fisher_mixture_to_its_entropy():
    """Issue #11, item 6: a chain of 12 NormalizedAffine maps on a vMF base,
    fitted by `fit` (800 Adam steps, cosine-decayed from 0.05) to 10,000
    samples of a three-component vMF mixture on S^2 (concentrations 8, 12, 6),
    has a held-out mean NLL (20,000 fresh points) within 0.05 nats of the
    mixture's entropy H = -E[log p].

    H by Monte Carlo with scipy on 200,000 other fresh samples: 1.7114,
    standard error 0.0022 (asserted below 0.005); the held-out mean's own
    sampling error is about 0.005. The gap is also measured directly: the
    held-out mean of log p(x) - log q(x), a Monte Carlo estimate of
    KL(p || q) with standard error ~0.002, must be above -3 standard errors
    and below 0.05. Measured KL with this budget: jax 0.036, tensorflow 0.034,
    torch 0.040 (nats; 7-13 s, 12 s, 79-224 s on a shared 2-core machine); with 500
    steps it was 0.04-0.055 (torch above 0.05), so the budget is not cut.
    """
    entropy_sample = mixture_log_prob(mixture_sample(200_000, 10))
    entropy = -entropy_sample.mean()
    entropy_error = entropy_sample.std() / math.sqrt(len(entropy_sample))
    assert entropy_error < 0.005
    train = mixture_sample(10_000, 11).astype("float32")
    test = mixture_sample(20_000, 12)
    layers = [kb.NormalizedAffine(
        dim=3, matrix_initializer=keras.initializers.RandomNormal(0.0, 0.3, seed=i),
        translation_initializer=keras.initializers.RandomNormal(0.0, 0.3, seed=100 + i))
        for i in range(12)]
    flow = kf.ManifoldFlow(kb.Chain(layers), base=kf.VonMisesFisher(3, concentration=1.0),
                           manifold="sphere")
    epochs, batch_size = 80, 1000
    schedule = keras.optimizers.schedules.CosineDecay(0.05, epochs * len(train) // batch_size)
    flow.compile(optimizer=keras.optimizers.Adam(schedule))
    keras.utils.set_random_seed(0)
    flow.fit(train, batch_size=batch_size, epochs=epochs, verbose=0)
    fitted = numpy(flow.log_prob(test.astype("float32"))).astype("float64")
    nll = -fitted.mean()
    kl = mixture_log_prob(test) - fitted
    kl_error = kl.std() / math.sqrt(len(kl))
    print(f"entropy {entropy:.4f} (MC SE {entropy_error:.4f}); held-out NLL {nll:.4f}; "
          f"gap {nll - entropy:.4f}; KL {kl.mean():.4f} (SE {kl_error:.4f})")
    assert abs(nll - entropy) < 0.05, (nll, entropy, entropy_error)
    assert -3 * kl_error < kl.mean() < 0.05, (kl.mean(), kl_error)
