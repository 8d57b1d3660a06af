"""Base distributions against scipy's closed forms and sample moments."""

import numpy as np
import pytest
from keras import ops
from scipy import special, stats

import keras_flows as kf


def numpy(x):
    return ops.convert_to_numpy(x)


def randomise(dist, seed=0):
    rng = np.random.default_rng(seed)
    for w in dist.trainable_weights:
        w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))


@pytest.mark.parametrize("event_shape", [(3,), (2, 2, 1)])
def test_standard_normal_log_prob(event_shape):
    dist = kf.StandardNormal(event_shape)
    z = np.random.default_rng(0).normal(size=(5, *event_shape)).astype("float32")
    expected = stats.norm.logpdf(z.reshape(5, -1)).sum(axis=1)
    np.testing.assert_allclose(numpy(dist.log_prob(z)), expected, rtol=1e-5)


def test_diagonal_normal_log_prob():
    dist = kf.DiagonalNormal((4,))
    randomise(dist)
    loc, scale = numpy(dist.loc), np.exp(numpy(dist.log_scale))
    z = np.random.default_rng(1).normal(size=(6, 4)).astype("float32")
    expected = stats.multivariate_normal(loc, np.diag(scale**2)).logpdf(z)
    np.testing.assert_allclose(numpy(dist.log_prob(z)), expected, rtol=1e-5)


def test_gaussian_mixture_log_prob():
    dist = kf.GaussianMixture((2,), num_components=3, seed=0)
    randomise(dist)
    weights = special.softmax(numpy(dist.logits))
    loc, scale = numpy(dist.loc), np.exp(numpy(dist.log_scale))
    z = np.random.default_rng(2).normal(size=(7, 2)).astype("float32")
    expected = np.log(sum(
        weights[k] * stats.multivariate_normal(loc[k], np.diag(scale[k] ** 2)).pdf(z)
        for k in range(3)))
    np.testing.assert_allclose(numpy(dist.log_prob(z)), expected, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_normal_samples_have_the_right_moments(temperature):
    dist = kf.DiagonalNormal((2,))
    randomise(dist)
    z = numpy(dist.sample(40_000, seed=0, temperature=temperature))
    assert z.shape == (40_000, 2)
    scale = np.exp(numpy(dist.log_scale)) * temperature
    assert np.all(np.abs(z.mean(0) - numpy(dist.loc)) < 5 * scale / 200)   # 5 standard errors
    np.testing.assert_allclose(z.std(0), scale, rtol=0.03)


def test_mixture_samples_follow_the_weights():
    dist = kf.GaussianMixture((1,), num_components=2, seed=0)
    dist.logits.assign(np.log(np.array([0.25, 0.75], "float32")))
    dist.loc.assign(np.array([[-10.0], [10.0]], "float32"))
    dist.log_scale.assign(np.zeros((2, 1), "float32"))
    z = numpy(dist.sample(20_000, seed=1))[:, 0]
    assert abs((z > 0).mean() - 0.75) < 0.02
    np.testing.assert_allclose(z[z > 0].std(), 1.0, rtol=0.05)


def test_sampling_is_seeded():
    dist = kf.StandardNormal((3,))
    np.testing.assert_array_equal(numpy(dist.sample(4, seed=3)), numpy(dist.sample(4, seed=3)))
    assert not np.allclose(numpy(dist.sample(4, seed=3)), numpy(dist.sample(4, seed=4)))
