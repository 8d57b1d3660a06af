"""Distributions on the sphere and the simplex against scipy: log-normalisers,
densities, sample moments and KS tests, temperature, tracing, saving."""

import math

import numpy as np
import keras
import pytest
from keras import ops
from scipy import integrate, special, stats

import keras_flows as kf
from keras_flows.utils.math import log_gamma
from keras_flows.distributions.sphere import vmf_log_normalizer

BACKEND = keras.backend.backend()


def numpy(x):
    return ops.convert_to_numpy(x)


def tensor(x, dtype="float64"):
    return ops.convert_to_tensor(np.asarray(x), dtype)


def unit(v):
    v = np.asarray(v, "float64")
    return v / np.linalg.norm(v)


def log_bessel_reference(nu, kappa):
    """log I_nu(kappa): scipy's exponentially scaled ive where it is a normal
    float64 number; else (small kappa for the order, where ive underflows)
    the power series sum_m (kappa/2)^(2m+nu) / (m! Gamma(m+nu+1)) summed in
    log space, with a check that its omitted tail is negligible."""
    value = special.ive(nu, kappa)
    if value > 1e-300:
        return math.log(value) + kappa
    m = np.arange(5000)
    terms = ((2 * m + nu) * np.log(kappa / 2) - special.gammaln(m + 1)
             - special.gammaln(m + nu + 1))
    assert terms[-1] < terms.max() - 100, (nu, kappa)
    return special.logsumexp(terms)


# -- the vMF log-normaliser ----------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3, 10, 100, 1000])
def test_vmf_log_normalizer_against_scipy_bessel(dim):
    kappa = np.concatenate([[0.0], np.logspace(-6, 4, 61)])
    nu = dim / 2 - 1
    expected = np.array([
        -dim / 2 * math.log(2 * math.pi) + math.lgamma(dim / 2) + nu * math.log(2) if k == 0
        else nu * math.log(k) - dim / 2 * math.log(2 * math.pi) - log_bessel_reference(nu, k)
        for k in kappa])
    got = numpy(vmf_log_normalizer(dim, tensor(kappa)))
    # float64: relative error below 1e-9 (measured: 2e-10) over the whole grid.
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # float32: relative 3e-5, absolute 2e-4 (log C reaches 1e4 in size at
    # kappa = 1e4; near kappa = 0 the recurrence sums terms of size ~100).
    got32 = numpy(vmf_log_normalizer(dim, tensor(kappa, "float32")))
    np.testing.assert_allclose(got32, expected, rtol=3e-5, atol=2e-4)


def test_log_gamma_against_scipy():
    x = np.logspace(-4, 4, 200)
    np.testing.assert_allclose(numpy(log_gamma(tensor(x))), special.gammaln(x),
                               rtol=1e-12, atol=1e-11)
    # float32: log Gamma(x + 8) - sum log(x + k) loses ~1e-6 near the zeros of lgamma.
    np.testing.assert_allclose(numpy(log_gamma(tensor(x, "float32"))), special.gammaln(x),
                               rtol=2e-6, atol=5e-6)


# -- densities -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("dim,kappa", [(2, 0.7), (3, 5.0), (10, 40.0), (50, 1e3)])
def test_vmf_log_prob_against_scipy(dim, kappa, dtype):
    rng = np.random.default_rng(dim)
    mu = unit(rng.normal(size=dim))
    dist = kf.VonMisesFisher(dim, mean_direction=mu, concentration=kappa, dtype=dtype)
    target = stats.vonmises_fisher(mu, kappa)
    x = np.concatenate([target.rvs(20, random_state=rng),
                        np.apply_along_axis(unit, 1, rng.normal(size=(5, dim)))])
    rtol = 1e-9 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(numpy(dist.log_prob(tensor(x, dtype))), target.logpdf(x),
                               rtol=rtol, atol=rtol * (1 + kappa))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("dim,kappa", [(2, 0.3), (3, 5.0), (10, 40.0)])
def test_power_spherical_log_prob_against_closed_form(dim, kappa, dtype):
    rng = np.random.default_rng(dim)
    mu = unit(rng.normal(size=dim))
    dist = kf.PowerSpherical(dim, mean_direction=mu, concentration=kappa, dtype=dtype)
    x = np.apply_along_axis(unit, 1, rng.normal(size=(25, dim)))
    a, b = (dim - 1) / 2 + kappa, (dim - 1) / 2
    log_c = -((a + b) * math.log(2) + b * math.log(math.pi) + special.gammaln(a)
              - special.gammaln(a + b))
    expected = log_c + kappa * np.log1p(x @ mu)
    rtol = 1e-10 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(numpy(dist.log_prob(tensor(x, dtype))), expected, rtol=rtol,
                               atol=rtol * (1 + kappa))


@pytest.mark.parametrize("name", ["UniformSphere", "VonMisesFisher", "PowerSpherical"])
def test_sphere_densities_integrate_to_one_on_the_circle_and_the_sphere(name):
    kwargs = {} if name == "UniformSphere" else dict(concentration=4.0)
    # S^1: 4096-point trapezoid rule in the angle (error ~1e-15 for these
    # periodic analytic integrands).
    theta = np.linspace(0, 2 * math.pi, 4096, endpoint=False)
    circle = getattr(kf, name)(2, dtype="float64", **kwargs)
    density = np.exp(numpy(circle.log_prob(tensor(np.stack([np.cos(theta - 1.0),
                                                             np.sin(theta - 1.0)], 1)))))
    np.testing.assert_allclose(density.mean() * 2 * math.pi, 1.0, rtol=1e-10)
    # S^2: the density depends only on w = mu^T x, and the surface measure
    # is 2 pi dw: a 1-D quadrature in w along the mean direction.
    sphere = getattr(kf, name)(3, dtype="float64", **kwargs)

    def density_at(w):
        x = np.array([[w, math.sqrt(max(0.0, 1 - w * w)), 0.0]])
        return float(np.exp(numpy(sphere.log_prob(tensor(x)))[0]))

    total, _ = integrate.quad(density_at, -1, 1, epsabs=1e-12)
    np.testing.assert_allclose(2 * math.pi * total, 1.0, rtol=1e-8)


def test_uniform_sphere_log_prob():
    for dim in (2, 3, 7):
        x = np.apply_along_axis(unit, 1, np.random.default_rng(0).normal(size=(4, dim)))
        area = 2 * math.pi ** (dim / 2) / math.gamma(dim / 2)
        np.testing.assert_allclose(numpy(kf.UniformSphere(dim).log_prob(tensor(x, "float32"))),
                                   np.full(4, -math.log(area)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dirichlet_and_uniform_simplex_log_prob_against_scipy(dtype):
    rng = np.random.default_rng(0)
    alpha = np.array([0.3, 2.0, 5.0, 1.0])
    x = rng.dirichlet([1.0, 1.0, 1.0, 1.0], size=20)
    rtol = 1e-10 if dtype == "float64" else 1e-5
    dist = kf.Dirichlet(4, concentration=alpha, dtype=dtype)
    expected = np.array([stats.dirichlet(alpha).logpdf(row) for row in x])
    np.testing.assert_allclose(numpy(dist.log_prob(tensor(x, dtype))), expected, rtol=rtol,
                               atol=rtol)
    uniform = np.array([stats.dirichlet(np.ones(4)).logpdf(row) for row in x])
    np.testing.assert_allclose(numpy(kf.UniformSimplex(4, dtype=dtype).log_prob(
        tensor(x, dtype))), uniform, rtol=rtol)


# -- samples ---------------------------------------------------------------------
# Every moment test draws N samples and every small one 8, so that JAX compiles
# each random op for few shapes.
N = 4000


def mean_resultant_length(dim, kappa):
    return special.ive(dim / 2, kappa) / special.ive(dim / 2 - 1, kappa)


def cosine_cdf(dim, kappa):
    """The CDF of w = mu^T x under vMF(kappa) on S^(dim-1): the density of w
    is proportional to exp(kappa (w - 1)) (1 - w^2)^((dim - 3) / 2)."""
    def density(w):
        return np.exp(kappa * (w - 1)) * (1 - w * w) ** ((dim - 3) / 2)

    total = integrate.quad(density, -1, 1, limit=200)[0]
    return lambda ws: np.array([integrate.quad(density, -1, w, limit=200)[0]
                                for w in ws]) / total


def assert_mean(values, expected):
    """The sample mean within 5 standard errors of `expected`."""
    error = 5 * values.std() / math.sqrt(len(values)) + 1e-12
    assert abs(values.mean() - expected) < error, (values.mean(), expected, error)


def assert_about_mu(x, w, mu):
    """The mean of x is E[w] mu: the part orthogonal to mu averages out."""
    residual = x.mean(0) - w.mean() * mu
    assert np.linalg.norm(residual) < 5 * math.sqrt((1 - (w**2).mean()) / len(w)) + 1e-12


@pytest.mark.parametrize("dim,kappa", [(2, 1.0), (3, 8.0), (10, 30.0), (3, 1e4),
                                       (1000, 1e3)])
def test_vmf_samples(dim, kappa):
    rng = np.random.default_rng(dim)
    mu = unit(rng.normal(size=dim))
    dist = kf.VonMisesFisher(dim, mean_direction=mu, concentration=kappa, dtype="float64")
    x = numpy(dist.sample(N, seed=1))
    assert x.shape == (N, dim)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    w = x @ mu
    assert_mean(w, mean_resultant_length(dim, kappa))   # A_n(kappa)
    assert_about_mu(x, w, mu)
    if kappa <= 100:
        assert stats.kstest(w[:1000], cosine_cdf(dim, kappa)).pvalue > 1e-3


@pytest.mark.parametrize("dim,kappa", [(2, 1.0), (3, 8.0), (3, 1e4)])
def test_power_spherical_samples(dim, kappa):
    rng = np.random.default_rng(dim)
    mu = unit(rng.normal(size=dim))
    dist = kf.PowerSpherical(dim, mean_direction=mu, concentration=kappa, dtype="float64")
    x = numpy(dist.sample(N, seed=2))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    t = x @ mu
    a, b = (dim - 1) / 2 + kappa, (dim - 1) / 2
    assert_mean(t, kappa / (dim - 1 + kappa))
    assert stats.kstest((1 + t) / 2, stats.beta(a, b).cdf).pvalue > 1e-3
    assert_about_mu(x, t, mu)


def test_uniform_sphere_samples():
    x = numpy(kf.UniformSphere(3, dtype="float64").sample(N, seed=0))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    # Each coordinate of a uniform point on S^2 is uniform on [-1, 1] (Archimedes).
    for i in range(3):
        assert stats.kstest(x[:, i], stats.uniform(-1, 2).cdf).pvalue > 1e-3


def assert_dirichlet(x, alpha):
    """Means and variances within 5 standard errors, and KS tests of the
    Beta(alpha_i, sum(alpha) - alpha_i) marginals."""
    total = alpha.sum()
    mean = alpha / total
    var = mean * (1 - mean) / (total + 1)
    for i in range(len(alpha)):
        assert_mean(x[:, i], mean[i])
        assert_mean((x[:, i] - mean[i]) ** 2, var[i])
        assert stats.kstest(x[:, i], stats.beta(alpha[i], total - alpha[i]).cdf).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [[2.0, 5.0, 3.0], [0.05, 0.5, 1.0]])
def test_dirichlet_samples(alpha):
    alpha = np.array(alpha)
    x = numpy(kf.Dirichlet(3, concentration=alpha, dtype="float64").sample(N, seed=0))
    assert x.shape == (N, 3) and (x > 0).all()
    np.testing.assert_allclose(x.sum(1), 1.0, atol=1e-12)
    assert_dirichlet(x, alpha)


def test_uniform_simplex_samples():
    x = numpy(kf.UniformSimplex(3, dtype="float64").sample(N, seed=0))
    np.testing.assert_allclose(x.sum(1), 1.0, atol=1e-12)
    assert_dirichlet(x, np.ones(3))


# -- temperature and seeds ---------------------------------------------------------

def test_temperature_divides_the_concentration():
    mu = unit([1.0, -2.0, 2.0])
    for cls, mean in ((kf.VonMisesFisher, lambda k: mean_resultant_length(3, k)),
                      (kf.PowerSpherical, lambda k: k / (2 + k))):
        dist = cls(3, mean_direction=mu, concentration=2.0, dtype="float64")
        assert_mean(numpy(dist.sample(N, seed=3, temperature=0.25)) @ mu, mean(8.0))
        np.testing.assert_allclose(numpy(dist.sample(N, seed=3, temperature=0.0)),
                                   np.tile(mu, (N, 1)), atol=1e-12)
    alpha = np.array([2.0, 5.0, 3.0])
    dirichlet = kf.Dirichlet(3, concentration=alpha, dtype="float64")
    assert_dirichlet(numpy(dirichlet.sample(N, seed=3, temperature=2.0)), alpha / 2)
    np.testing.assert_allclose(numpy(dirichlet.sample(N, temperature=0.0)),
                               np.tile(alpha / alpha.sum(), (N, 1)), atol=1e-12)
    np.testing.assert_allclose(numpy(kf.UniformSimplex(3, dtype="float64").sample(
        N, temperature=0.0)), np.full((N, 3), 1 / 3), atol=1e-12)
    x = numpy(kf.UniformSphere(3, dtype="float64").sample(N, seed=0, temperature=0.1))
    assert stats.kstest(x[:, 0], stats.uniform(-1, 2).cdf).pvalue > 1e-3


EXTREME = {"UniformSphere": {}, "VonMisesFisher": dict(concentration=1e4),
           "PowerSpherical": dict(concentration=1e4), "UniformSimplex": {},
           "Dirichlet": dict(concentration=0.01)}


@pytest.mark.parametrize("name", list(EXTREME))
def test_float32_sampling_is_seeded_and_on_the_manifold(name):
    """float32, at extreme concentrations (kappa = 1e4; alpha = 0.01, whose
    gammas underflow without the log-space draw)."""
    dist = getattr(kf, name)(4, **EXTREME[name])
    a, b, c = (numpy(dist.sample(8, seed=s)) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.dtype == np.float32 and np.isfinite(a).all()
    if "Simplex" in name or name == "Dirichlet":
        assert (a > 0).all()
        np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)


# -- tracing, gradients, saving ------------------------------------------------------

def all_distributions(dtype="float32"):
    rng = np.random.default_rng(0)
    return {
        "UniformSphere": kf.UniformSphere(4, dtype=dtype),
        "VonMisesFisher": kf.VonMisesFisher(4, mean_direction=unit(rng.normal(size=4)),
                                            concentration=3.0, dtype=dtype),
        "PowerSpherical": kf.PowerSpherical(4, mean_direction=unit(rng.normal(size=4)),
                                            concentration=3.0, dtype=dtype),
        "UniformSimplex": kf.UniformSimplex(4, dtype=dtype),
        "Dirichlet": kf.Dirichlet(4, concentration=[0.5, 1.0, 2.0, 3.0], dtype=dtype),
    }


def points(name, n=6):
    rng = np.random.default_rng(1)
    if "Simplex" in name or name == "Dirichlet":
        return rng.dirichlet(np.ones(4), size=n).astype("float32")
    return np.apply_along_axis(unit, 1, rng.normal(size=(n, 4))).astype("float32")


@pytest.mark.parametrize("name", list(all_distributions()))
def test_traced(name):
    """log_prob under XLA (jax.jit; tf.function(jit_compile=True)) or
    torch.compile(fullgraph=True); sample under jax.jit and tf.function.
    TensorFlow's stateless gamma sampler has no XLA kernel, so TensorFlow's
    sampling is traced without XLA; Keras's PyTorch random ops are excluded
    from Dynamo (as for every keras_flows distribution), so PyTorch samples
    eagerly."""
    dist = all_distributions()[name]
    z = ops.convert_to_tensor(points(name))
    eager = numpy(dist.log_prob(z))
    if BACKEND == "jax":
        import jax

        log_prob, sample = jax.jit(dist.log_prob), jax.jit(lambda: dist.sample(8, seed=5))
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        seed = keras.random.SeedGenerator(5)   # variables are made outside the trace
        log_prob = tf.function(dist.log_prob, jit_compile=True)
        sample = tf.function(lambda: dist.sample(8, seed=seed))
    else:
        import torch

        log_prob = torch.compile(dist.log_prob, fullgraph=True, backend="eager")
        sample = lambda: dist.sample(8, seed=5)  # noqa: E731
    np.testing.assert_allclose(numpy(log_prob(z)), eager, rtol=1e-5, atol=1e-5)
    x = numpy(sample())
    assert x.shape == (8, 4) and np.isfinite(x).all()
    if "Sphere" in name or "Spherical" in name or "Fisher" in name:
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(x.sum(1), 1.0, atol=1e-6)


def test_vmf_and_dirichlet_gradients_match_finite_differences():
    """d/d(log kappa) of the summed log-density, against central differences
    (a sum: with Keras 3.15 `ops.mean` of float64 returns float32 on JAX)."""
    x = np.apply_along_axis(unit, 1, np.random.default_rng(0).normal(size=(8, 5)))
    for dist, points_ in ((kf.VonMisesFisher(5, concentration=30.0, dtype="float64"), x),
                          (kf.PowerSpherical(5, concentration=30.0, dtype="float64"), x),
                          (kf.Dirichlet(5, concentration=2.0, dtype="float64"),
                           np.random.default_rng(1).dirichlet(np.ones(5), size=8))):
        weight = dist.log_concentration

        def mean_log_prob(value):
            weight.assign(value)
            return float(numpy(ops.sum(dist.log_prob(tensor(points_)))))

        start = numpy(weight).copy()
        h = 1e-5
        step = np.zeros_like(start)
        step.flat[0] = h
        numeric = (mean_log_prob(start + step) - mean_log_prob(start - step)) / (2 * h)
        weight.assign(start)
        grad = gradient(lambda: ops.sum(dist.log_prob(tensor(points_))), weight)
        np.testing.assert_allclose(np.ravel(grad)[0], numeric, rtol=1e-6, atol=1e-8)


def gradient(fn, variable):
    if BACKEND == "jax":
        import jax

        def pure(value):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return fn()

        return numpy(jax.grad(pure)(variable.value))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            out = fn()
        return numpy(tape.gradient(out, variable.value))
    out = fn()
    out.backward()
    grad = numpy(variable.value.grad)
    variable.value.grad = None
    return grad


@pytest.mark.parametrize("name", list(all_distributions()))
def test_config_and_weights_round_trip(name):
    dist = all_distributions()[name]
    rng = np.random.default_rng(2)
    for w in dist.weights:
        w.assign(numpy(w) + rng.normal(scale=0.1, size=w.shape).astype("float32"))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(dist))
    assert type(clone) is type(dist) and clone.get_config() == dist.get_config()
    clone.set_weights(dist.get_weights())
    z = points(name)
    np.testing.assert_allclose(numpy(clone.log_prob(z)), numpy(dist.log_prob(z)), rtol=1e-6)
    np.testing.assert_allclose(numpy(clone.sample(8, seed=1)), numpy(dist.sample(8, seed=1)),
                               rtol=1e-6)


def test_fixed_parameters_with_trainable_false():
    dist = kf.VonMisesFisher(3, concentration=2.0, trainable=False)
    assert dist.trainable_weights == [] and len(dist.non_trainable_weights) == 2
    assert kf.Dirichlet(3, trainable=False).trainable_weights == []
    # kappa = 0: the uniform density, learned or not.
    zero = kf.VonMisesFisher(3, concentration=0.0, dtype="float64")
    z = np.array([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(numpy(zero.log_prob(z)), -math.log(4 * math.pi), rtol=1e-10)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="`dim` must be an integer >= 2"):
        kf.VonMisesFisher(1)
    with pytest.raises(ValueError, match="`mean_direction` must be a unit vector of length 3"):
        kf.VonMisesFisher(3, mean_direction=[1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="`concentration` must be a finite number >= 0"):
        kf.PowerSpherical(3, concentration=-1.0)
    with pytest.raises(ValueError, match="`concentration` must be a number > 0 or 3"):
        kf.Dirichlet(3, concentration=[1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="`num_classes` must be an integer >= 2"):
        kf.UniformSimplex(1)
    # The event shape follows from `dim` or `num_classes`: a second one is refused, not dropped.
    for make in (lambda: kf.UniformSphere(3, event_shape=(4,)),
                 lambda: kf.VonMisesFisher(3, event_shape=(3,)),
                 lambda: kf.UniformSimplex(3, event_shape=(3,)),
                 lambda: kf.Dirichlet(3, event_shape=(2,))):
        with pytest.raises(TypeError, match="event_shape"):
            make()
