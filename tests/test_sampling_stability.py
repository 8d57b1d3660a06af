"""Bounded inverses: the "bounded_sigmoid" coupling scale against its closed form.

Glow's scale exp(s) = sigmoid(h + 2) makes the inverse multiply by
1 + e^-(h+2), which overflows when the conditioner meets inputs far from its
training data (benchmarks/README.md, "Sampling overflow"). The bounded form
m + (1 - m) sigmoid(h + 2), m = e^-B, caps that factor at e^B.
"""

import inspect
import math

import numpy as np
import pytest
from keras import ops

import keras_flows as kf
from keras_flows import bijectors as kb

B = 3.0


def numpy(x):
    return ops.convert_to_numpy(x)


def constant_coupling(scale, h, t):
    """A vector coupling on 4 features whose conditioner outputs h and t
    everywhere, whatever its input (zero kernels, bias [h, t, h, t])."""
    coupling = kb.AffineCoupling((8,), scale=scale, scale_bound=B)
    coupling.forward(np.zeros((1, 4), "float32"))
    for w in coupling.conditioner.weights:
        w.assign(np.zeros(w.shape, "float32"))
    coupling.conditioner.out.bias.assign(np.array([h, t, h, t], "float32"))
    return coupling


@pytest.mark.parametrize("h", [-200.0, -30.0, -2.0, 0.0, 5.0, 40.0])
def test_bounded_inverse_equals_its_closed_form_for_any_network_output(h):
    # h = -200: sigmoid(h + 2) underflows, Glow's 1 / sigmoid is inf.
    z = np.array([[0.3, -1.2, 250.0, -7.5], [1e3, 2.0, -1e4, 0.5]], "float32")
    x, log_det = constant_coupling("bounded_sigmoid", h, 0.25).inverse(z)
    m = math.exp(-B)
    scale = m + (1.0 - m) / (1.0 + math.exp(-(h + 2.0)))     # float64
    expected = z.astype("float64")
    expected[:, 2:] = (expected[:, 2:] - 0.25) / scale
    np.testing.assert_allclose(numpy(x), expected, rtol=1e-5)
    np.testing.assert_allclose(numpy(log_det), -2.0 * math.log(scale), rtol=1e-5, atol=1e-5)
    assert np.all(numpy(log_det) <= 2.0 * B + 1e-5)


def test_glow_sigmoid_scale_overflows_where_the_bounded_one_does_not():
    z = np.array([[0.3, -1.2, 250.0, -7.5]], "float32")
    x, log_det = constant_coupling("sigmoid", -200.0, 0.25).inverse(z)
    assert not np.all(np.isfinite(numpy(x)))
    x, log_det = constant_coupling("bounded_sigmoid", -200.0, 0.25).inverse(z)
    assert np.all(np.isfinite(numpy(x)))


@pytest.mark.parametrize("latent_scale", [1.0, 1e2, 1e4])
def test_inverse_expansion_is_bounded_on_adversarial_latents(latent_scale):
    # A Glow coupling with large random weights, fed latents far outside any
    # training data: each inverse multiplies x_b by exp(-s) in [1, e^B), so
    # the inverse log-det of the C/2 * H * W transformed values lies in
    # [0, B * C/2 * H * W], and x_b * exp(s) + t recovers z_b.
    rng = np.random.default_rng(0)
    z = (latent_scale * rng.standard_cauchy((8, 4, 4, 4))).astype("float32")
    coupling = kb.AffineCoupling(hidden_channels=16, scale="bounded_sigmoid", scale_bound=B)
    coupling.forward(z[:1])
    for w in coupling.trainable_weights:
        w.assign(rng.normal(scale=1.0, size=w.shape).astype("float32"))
    x, log_det = coupling.inverse(z)
    x, log_det = numpy(x), numpy(log_det)
    assert np.all(np.isfinite(x))
    assert np.all(log_det >= -1e-3) and np.all(log_det <= B * 2 * 4 * 4 * (1 + 1e-6))
    gain = np.abs(x[..., 2:]) / np.maximum(np.abs(z[..., 2:]), 1e-30)
    assert gain.max() > 1.5          # the adversarial latents do push the bound
    # |z_b - t| <= |x_b|, so float32 round-off is a few eps of |z| + |x|.
    z_back, _ = coupling.forward(x)
    np.testing.assert_allclose(numpy(z_back), z, rtol=0,
                               atol=1e-5 * (np.abs(z).max() + np.abs(x).max()))


def test_glow_scale_is_saved_and_old_configs_keep_glows_sigmoid():
    config = dict(image_shape=[8, 8, 1], levels=1, steps_per_level=1, hidden_channels=8,
                  seed=0, scale="bounded_sigmoid", scale_bound=2.5)
    glow = kf.Glow.from_config(config)
    coupling = glow.multiscale.levels[0].bijectors[-1].bijectors[-1]
    assert (coupling.scale, coupling.scale_bound) == ("bounded_sigmoid", 2.5)
    saved = glow.get_config()
    assert (saved["scale"], saved["scale_bound"]) == ("bounded_sigmoid", 2.5)
    # Configs written before `scale` existed (the presets up to 2026-11-26)
    # keep Glow's sigmoid, so they load and score exactly as before.
    assert inspect.signature(kf.Glow).parameters["scale"].default == "sigmoid"
    with pytest.raises(ValueError, match="scale"):
        kf.Glow(image_shape=(8, 8, 1), levels=1, scale="tanh")
    with pytest.raises(ValueError, match="scale_bound"):
        kb.AffineCoupling(scale="bounded_sigmoid", scale_bound=0.0)


@pytest.mark.parametrize("bound", [None, 4.0])
def test_split_prior_scale_is_bounded_for_any_given_half(bound):
    # The level above hands the split prior an h far outside the training
    # data: log sigma = a grows with h and exp overflows; B tanh(a / B) stays
    # within [-B, B], and the density is the Gaussian of those parameters.
    from scipy.stats import norm

    prior = kf.bijectors.SplitPrior(scale_bound=bound)
    prior.build((None, 2, 2, 4))
    rng = np.random.default_rng(0)
    prior.conv.kernel.assign(rng.normal(size=prior.conv.kernel.shape).astype("float32"))
    h = np.full((3, 2, 2, 2), 1e3, "float32") * np.array([1, -1, 0.01], "float32")[:, None,
                                                                                 None, None]
    out = numpy(prior.conv(h))
    a = out[..., 1::2]
    log_sigma = a if bound is None else bound * np.tanh(a / bound)
    eps = rng.normal(size=(3, 2, 2, 2)).astype("float32")
    with np.errstate(over="ignore", invalid="ignore"):
        z = numpy(prior.inverse(np.concatenate([eps, h], -1))[0])[..., :2]
    if bound is None:
        assert not np.isfinite(z).all()
    else:
        assert np.isfinite(z).all() and np.abs(log_sigma).max() <= bound
        expected = norm.logpdf(z, out[..., 0::2], np.exp(log_sigma)).reshape(3, -1).sum(1)
        e, log_det = prior.forward(np.concatenate([z, h], -1))
        log_p = norm.logpdf(numpy(e)[..., :2]).reshape(3, -1).sum(1) + numpy(log_det)
        np.testing.assert_allclose(log_p, expected, rtol=1e-5)
    assert prior.get_config()["scale_bound"] == bound
