"""Planar and Radial flows: constraints, inverses and log-dets.

Every expected value is independent of the layer's own code: dense Jacobians
by central finite differences (numpy, float64), the matrix-determinant-lemma
closed form, or the round trip itself.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_flows.bijectors.planar import Planar
from keras_flows.bijectors.radial import Radial

D = 4


def _np(t):
    return np.asarray(ops.convert_to_numpy(t), dtype=np.float64)


def _softplus(a):
    return np.logaddexp(0.0, a)


def _built(cls, dtype, **kwargs):
    layer = cls(dtype=dtype, **kwargs)
    layer.forward(np.zeros((1, D), dtype=dtype))
    return layer


def _set(layer, **values):
    dtype = layer.variable_dtype
    for name, value in values.items():
        getattr(layer, name).assign(np.asarray(value, dtype=dtype))


def _fd_jacobian(fn, x, eps=1e-6):
    """Dense Jacobian (n, D, D) of a batched map by central differences."""
    n, d = x.shape
    steps = eps * np.eye(d)
    points = np.concatenate([x[:, None, :] + steps, x[:, None, :] - steps], axis=1)
    values = fn(points.reshape(-1, d)).reshape(n, 2 * d, d)
    # values[:, j] is f(x + eps e_j); column j of the Jacobian is its difference.
    return np.transpose((values[:, :d] - values[:, d:]) / (2 * eps), (0, 2, 1))


def _log_abs_det(jac):
    sign, logdet = np.linalg.slogdet(jac)
    assert np.all(sign != 0)
    return logdet


def _forward(layer):
    return lambda x: _np(layer.forward(x)[0])


def _inverse(layer):
    return lambda z: _np(layer.inverse(z)[0])


def _data(dtype, n=16, scale=2.0, seed=0):
    return (scale * np.random.default_rng(seed).normal(size=(n, D))).astype(dtype)


# Raw Planar weights with w.u = -5: unconstrained, 1 + w.u (1 - tanh^2) would
# reach -4 and the map would fold over itself.
W_ADV = np.array([1.0, 0.5, -0.5, 0.25])
ORTH = np.array([0.5, -1.0, 0.0, 0.0])  # orthogonal to W_ADV
U_ADV = -5.0 * W_ADV / np.dot(W_ADV, W_ADV) + ORTH

PLANAR_WEIGHTS = {
    "init": None,
    "adversarial": dict(u=U_ADV, w=W_ADV, b=0.3),
    "large": dict(u=[1.5, -0.7, 0.2, 2.0], w=[0.8, 1.1, -0.4, 0.3], b=-0.5),
}
RADIAL_WEIGHTS = {
    "init": None,
    # beta_hat = -alpha_hat + softplus(-5): almost the strongest contraction.
    "adversarial": dict(x0=[0.3, -0.2, 0.1, 0.5], a=2.0, b=-5.0),
    "expanding": dict(x0=[-0.4, 0.2, 0.0, 1.0], a=-1.0, b=3.0),
}


def _planar(dtype, weights):
    layer = _built(Planar, dtype, seed=1)
    if PLANAR_WEIGHTS[weights] is not None:
        _set(layer, **PLANAR_WEIGHTS[weights])
    return layer


def _radial(dtype, weights):
    layer = _built(Radial, dtype, seed=1)
    if RADIAL_WEIGHTS[weights] is not None:
        _set(layer, **RADIAL_WEIGHTS[weights])
    return layer


# ----------------------------------------------------------------- Planar


@pytest.mark.parametrize("wu", [-5.0, -2.0, 0.0, 3.0])
def test_planar_constraint_holds_for_adversarial_weights(wu):
    layer = _planar("float64", "init")
    w = W_ADV
    u = wu * w / np.dot(w, w) + ORTH
    _set(layer, u=u, w=w, b=0.3)
    assert abs(np.dot(w, u) - wu) < 1e-12
    # Points with w.x + b = 0, where tanh' = 1: the determinant is smallest.
    x = _data("float64", n=6)
    x = x - ((x @ w + 0.3) / np.dot(w, w))[:, None] * w
    det = np.linalg.det(_fd_jacobian(_forward(layer), x))
    # Matrix determinant lemma: det(I + u_hat w^T) = 1 + w.u_hat = softplus(w.u).
    np.testing.assert_allclose(det, _softplus(wu), rtol=1e-6)
    assert np.all(det > 0)
    # w.z is strictly increasing along w: the map does not fold.
    t = np.linspace(-6.0, 6.0, 241)
    line = t[:, None] * w / np.dot(w, w) + np.array([0.1, 0.2, 0.3, 0.4])
    assert np.all(np.diff(_forward(layer)(line) @ w) > 0)
    # And it is inverted, log-det included.
    x = _data("float64")
    z, log_det = layer.forward(x)
    x_back, inv_log_det = layer.inverse(z)
    np.testing.assert_allclose(_np(x_back), x, atol=1e-10)
    np.testing.assert_allclose(_np(inv_log_det), -_np(log_det), atol=1e-10)


def test_planar_degenerate_w_is_finite():
    layer = _planar("float64", "init")
    _set(layer, u=[1.0, 2.0, 3.0, 4.0], w=np.zeros(D), b=0.7)
    x = _data("float64")
    z, log_det = layer.forward(x)
    # w = 0: z = x + u tanh(b), constant shift, log-det 0.
    np.testing.assert_allclose(_np(z), x + np.tanh(0.7) * np.arange(1.0, 5.0), atol=1e-12)
    np.testing.assert_allclose(_np(log_det), 0.0, atol=1e-12)
    np.testing.assert_allclose(_np(layer.inverse(z)[0]), x, atol=1e-12)


@pytest.mark.parametrize("weights", list(PLANAR_WEIGHTS))
@pytest.mark.parametrize("dtype,atol", [("float32", 1e-5), ("float64", 1e-10)])
def test_planar_round_trip(weights, dtype, atol):
    log_det_atol = atol
    if weights == "adversarial" and dtype == "float32":
        # 1 + w.u_hat = softplus(-5) ~ 6.7e-3: the inverse amplifies float32
        # rounding of w.z by up to ~150x, and the log-det's slope in alpha is
        # of the same order; allow for that conditioning (not solver error:
        # float64 below meets 1e-10).
        atol, log_det_atol = 1e-4, 1e-3
    layer = _planar(dtype, weights)
    x = _data(dtype)
    z, log_det = layer.forward(x)
    x_back, inv_log_det = layer.inverse(z)
    for t in (z, log_det, x_back, inv_log_det):
        assert keras.backend.standardize_dtype(t.dtype) == dtype
    np.testing.assert_allclose(_np(x_back), x, atol=atol)
    np.testing.assert_allclose(_np(inv_log_det), -_np(log_det), atol=log_det_atol)


@pytest.mark.parametrize("weights", list(PLANAR_WEIGHTS))
def test_planar_log_det_matches_finite_differences(weights):
    layer = _planar("float64", weights)
    x = _data("float64", n=8)
    z, log_det = layer.forward(x)
    np.testing.assert_allclose(
        _np(log_det), _log_abs_det(_fd_jacobian(_forward(layer), x)), atol=1e-6)
    _, inv_log_det = layer.inverse(z)
    np.testing.assert_allclose(
        _np(inv_log_det), _log_abs_det(_fd_jacobian(_inverse(layer), _np(z))), atol=1e-6)


def test_planar_inverse_traces():
    layer = _planar("float32", "large")

    class InverseModel(keras.Model):
        def __init__(self, bijector):
            super().__init__()
            self.bijector = bijector

        def call(self, z):
            return self.bijector.inverse(z)[0]

    z = _data("float32", n=32)
    compiled = InverseModel(layer).predict(z, batch_size=16, verbose=0)
    np.testing.assert_allclose(compiled, _np(layer.inverse(z)[0]), atol=1e-5)
    np.testing.assert_allclose(_np(layer.forward(compiled)[0]), z, atol=1e-5)


def test_planar_config_round_trip():
    layer = Planar(seed=3, inverse_iterations=40, name="p")
    config = layer.get_config()
    assert config["seed"] == 3 and config["inverse_iterations"] == 40
    assert Planar.exact_inverse is False
    clone = Planar.from_config(config)
    x = _data("float32")
    # Same seed, same initial weights, same map.
    np.testing.assert_allclose(_np(clone(x)[0]), _np(layer(x)[0]), atol=1e-6)


# ----------------------------------------------------------------- Radial


def test_radial_constraint_holds_for_adversarial_weights():
    for a, b in [(2.0, -5.0), (-3.0, -8.0), (4.0, 0.0)]:
        layer = _radial("float64", "init")
        x0 = np.array([0.3, -0.2, 0.1, 0.5])
        _set(layer, x0=x0, a=a, b=b)
        # r -> r_z = |z - x0| is strictly increasing along a ray from x0.
        direction = np.array([1.0, 2.0, -1.0, 0.5]) / np.sqrt(6.25)
        r = np.linspace(0.0, 5.0, 501)
        r_z = np.linalg.norm(_forward(layer)(x0 + r[:, None] * direction) - x0, axis=1)
        assert np.all(np.diff(r_z) > 0)
        x = x0 + _data("float64", scale=0.5)
        det = np.linalg.det(_fd_jacobian(_forward(layer), x))
        assert np.all(det > 0)
        z = _forward(layer)(x)
        np.testing.assert_allclose(_inverse(layer)(z), x, atol=1e-10)


@pytest.mark.parametrize("weights", list(RADIAL_WEIGHTS))
@pytest.mark.parametrize("dtype,atol", [("float32", 1e-5), ("float64", 1e-10)])
def test_radial_round_trip_both_ways(weights, dtype, atol):
    log_det_atol = atol
    if weights == "adversarial" and dtype == "float32":
        # Near x0 the map contracts by (softplus(b) + r) / (alpha_hat + r)
        # ~ 3e-3: float32 rounding of z (at the scale of |x0|) is a ~1e-2
        # relative error in r_z, which moves the log-det by up to ~1e-3.
        log_det_atol = 5e-3
    layer = _radial(dtype, weights)
    # Points near x0 (small r) as well as far from it.
    x = np.concatenate([_data(dtype), _data(dtype, scale=1e-3, seed=1)]).astype(dtype)
    x = x + _np(layer.x0).astype(dtype)
    z, log_det = layer.forward(x)
    x_back, inv_log_det = layer.inverse(z)
    for t in (z, log_det, x_back, inv_log_det):
        assert keras.backend.standardize_dtype(t.dtype) == dtype
    np.testing.assert_allclose(_np(x_back), x, atol=atol)
    np.testing.assert_allclose(_np(inv_log_det), -_np(log_det), atol=log_det_atol)

    z2 = x  # any point is a latent too
    x2, inv_log_det2 = layer.inverse(z2)
    z2_back, log_det2 = layer.forward(x2)
    np.testing.assert_allclose(_np(z2_back), z2, atol=atol)
    np.testing.assert_allclose(_np(log_det2), -_np(inv_log_det2), atol=log_det_atol)


def test_radial_inverse_at_center():
    layer = _radial("float64", "adversarial")
    x0 = _np(layer.x0)[None]
    z, _ = layer.forward(x0)
    np.testing.assert_allclose(_np(z), x0, atol=1e-15)
    x, _ = layer.inverse(x0)
    np.testing.assert_allclose(_np(x), x0, atol=1e-15)
    assert np.all(np.isfinite(_np(layer.inverse(x0)[1])))


@pytest.mark.parametrize("weights", list(RADIAL_WEIGHTS))
def test_radial_log_det_matches_finite_differences(weights):
    layer = _radial("float64", weights)
    x = _np(layer.x0) + _data("float64", n=8, scale=1.0)
    z, log_det = layer.forward(x)
    np.testing.assert_allclose(
        _np(log_det), _log_abs_det(_fd_jacobian(_forward(layer), x)), atol=1e-6)
    _, inv_log_det = layer.inverse(z)
    np.testing.assert_allclose(
        _np(inv_log_det), _log_abs_det(_fd_jacobian(_inverse(layer), _np(z))), atol=1e-6)


def test_radial_config_round_trip():
    layer = Radial(seed=5, name="r")
    config = layer.get_config()
    assert config["seed"] == 5
    assert Radial.exact_inverse is True
    clone = Radial.from_config(config)
    x = _data("float32")
    np.testing.assert_allclose(_np(clone(x)[0]), _np(layer(x)[0]), atol=1e-6)
