"""Transformers: elementwise monotone maps with parameters.

Every exported transformer has cases in `CASES` (a test fails when one has
none) and gets, with random parameters, in float64: inverse(forward(x)) = x,
a forward and an inverse log-det equal to the log of float64 central finite
differences, and log-dets that cancel. Affine scales are checked against
their closed forms in numpy; the spline against a numpy implementation that
shares no code with it, against TensorFlow Probability's spline (its numpy
substrate, in a subprocess, on every backend), and at its knots, bound and
far tails with finite gradients.
"""

import math

import numpy as np
import keras
import pytest
from keras import ops

from keras_flows import transformers as kt
from keras_flows.transformers import Additive, Affine, RationalQuadraticSpline

BACKEND = keras.backend.backend()
SHAPE = (5, 3)  # a batch of 5, 3 features


def numpy(t):
    return np.asarray(ops.convert_to_numpy(t))


def tensor(a):
    return ops.convert_to_tensor(np.asarray(a))


def _learned_tanh():
    layer = Affine("learned_tanh")
    layer.build(SHAPE)
    layer.scale_factor.assign(np.array([0.4, 1.3, 2.5]))
    return layer


# name: (factory, standard deviation of the random x)
CASES = {
    "Additive": (Additive, 3.0),
    "Affine[tanh]": (lambda: Affine("tanh", scale_bound=2.0), 3.0),
    "Affine[sigmoid]": (lambda: Affine("sigmoid"), 3.0),
    "Affine[bounded_sigmoid]": (lambda: Affine("bounded_sigmoid", scale_bound=2.0), 3.0),
    "Affine[learned_tanh]": (_learned_tanh, 3.0),
    "Affine[exp]": (lambda: Affine("exp"), 3.0),
    # x ~ N(0, 3^2) puts some points in the tails as well as inside.
    "RationalQuadraticSpline": (RationalQuadraticSpline, 3.0),
    "RationalQuadraticSpline[3 bins, B=1.5]": (
        lambda: RationalQuadraticSpline(bins=3, bound=1.5), 2.0),
    "RationalQuadraticSpline[12 bins, B=5, minimums]": (
        lambda: RationalQuadraticSpline(bins=12, bound=5.0, min_bin_width=0.02,
                                        min_bin_height=0.01, min_derivative=0.1), 4.0),
}


def make(name):
    return CASES[name][0]()


def inputs(name, seed=0, shape=SHAPE):
    """Float64 x and random params (normal, scale 1) for case `name`."""
    layer = make(name)
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=CASES[name][1], size=shape)
    params = rng.normal(size=shape + (layer.params_per_feature,))
    return layer, x, params


def test_every_exported_transformer_has_a_case():
    classes = {type(make(name)) for name in CASES}
    for export in kt.__all__:
        cls = getattr(kt, export)
        if cls is not kt.Transformer:
            assert cls in classes, f"{export} has no case in CASES"


# -- every transformer --------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_round_trip_and_log_dets_against_finite_differences(name):
    layer, x, params = inputs(name)
    p = tensor(params)
    y, log_det = layer.forward(tensor(x), p)
    x_back, inverse_log_det = layer.inverse(y, p)
    for t in (y, log_det, x_back, inverse_log_det):
        assert keras.backend.standardize_dtype(t.dtype) == "float64"
        assert tuple(t.shape) == SHAPE
    y, log_det = numpy(y), numpy(log_det)
    np.testing.assert_allclose(numpy(x_back), x, rtol=0, atol=1e-10)
    np.testing.assert_allclose(numpy(inverse_log_det), -log_det, rtol=0, atol=1e-10)

    # Each output depends on its own input only, so one shift of every element
    # gives every elementwise derivative.
    eps = 1e-6

    def derivative(f, v):
        plus = numpy(f(tensor(v + eps), p)[0])
        minus = numpy(f(tensor(v - eps), p)[0])
        return (plus - minus) / (2 * eps)

    np.testing.assert_allclose(log_det, np.log(derivative(layer.forward, x)),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(numpy(inverse_log_det), np.log(derivative(layer.inverse, y)),
                               rtol=0, atol=1e-6)
    if not isinstance(layer, Additive):  # not the identity by accident
        assert np.abs(log_det).max() > 0.1
        assert np.abs(y - x).max() > 0.1


@pytest.mark.parametrize("name", CASES)
def test_float32_round_trip(name):
    layer, x, params = inputs(name, seed=1)
    x, params = x.astype("float32"), params.astype("float32")
    y, log_det = layer.forward(tensor(x), tensor(params))
    x_back, inverse_log_det = layer.inverse(y, tensor(params))
    for t in (y, log_det, x_back, inverse_log_det):
        assert keras.backend.standardize_dtype(t.dtype) == "float32"
    np.testing.assert_allclose(numpy(x_back), x, rtol=0, atol=1e-4)
    np.testing.assert_allclose(numpy(inverse_log_det), -numpy(log_det), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_config_round_trip(name):
    layer, x, params = inputs(name, seed=2)
    layer.forward(tensor(x), tensor(params))  # builds learned_tanh's weight
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"].startswith("keras_flows>")
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    clone.forward(tensor(x), tensor(params))
    clone.set_weights(layer.get_weights())
    for method in ("forward", "inverse"):
        expected = getattr(layer, method)(tensor(x), tensor(params))
        got = getattr(clone, method)(tensor(x), tensor(params))
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(numpy(g), numpy(e))


# -- closed forms -------------------------------------------------------------

def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def test_additive_closed_form():
    layer, x, params = inputs("Additive")
    y, log_det = layer.forward(tensor(x), tensor(params))
    np.testing.assert_allclose(numpy(y), x + params[..., 0], rtol=1e-14)
    np.testing.assert_array_equal(numpy(log_det), np.zeros(SHAPE))
    back, inverse_log_det = layer.inverse(tensor(x), tensor(params))
    np.testing.assert_allclose(numpy(back), x - params[..., 0], rtol=1e-14)
    np.testing.assert_array_equal(numpy(inverse_log_det), np.zeros(SHAPE))


AFFINE_SCALES = {  # exp(s) as a function of h, in numpy
    "tanh": lambda h: np.exp(2.0 * np.tanh(h / 2.0)),
    "sigmoid": lambda h: _sigmoid(h + 2.0),
    "bounded_sigmoid": lambda h: np.exp(-2.0) + (1 - np.exp(-2.0)) * _sigmoid(h + 2.0),
    # The factor is a float32 weight (the layer's dtype), cast to float64.
    "learned_tanh": lambda h: np.exp(np.float32([0.4, 1.3, 2.5]).astype("float64")
                                     * np.tanh(h)),
    "exp": np.exp,
}


@pytest.mark.parametrize("scale", AFFINE_SCALES)
def test_affine_closed_forms(scale):
    layer, x, params = inputs(f"Affine[{scale}]", seed=3)
    params[0, 0, 0] = 40.0  # saturated scales stay finite and exact
    params[0, 1, 0] = -8.0
    h, t = params[..., 0], params[..., 1]
    scale_value = AFFINE_SCALES[scale](h)
    y, log_det = layer.forward(tensor(x), tensor(params))
    np.testing.assert_allclose(numpy(y), x * scale_value + t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(numpy(log_det), np.log(scale_value), rtol=1e-12, atol=1e-12)
    back, inverse_log_det = layer.inverse(tensor(x), tensor(params))
    np.testing.assert_allclose(numpy(back), (x - t) / scale_value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(numpy(inverse_log_det), -np.log(scale_value),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", ["tanh", "bounded_sigmoid", "learned_tanh", "exp"])
def test_affine_zero_params_are_the_identity(scale):
    layer = make(f"Affine[{scale}]") if scale != "learned_tanh" else Affine("learned_tanh")
    x = np.random.default_rng(4).normal(size=SHAPE)
    y, log_det = layer.forward(tensor(x), tensor(np.zeros(SHAPE + (2,))))
    if scale == "bounded_sigmoid":  # exp(s) = m + (1 - m) sigmoid(2), not 1
        expected = np.exp(-2.0) + (1 - np.exp(-2.0)) * _sigmoid(2.0)
        np.testing.assert_allclose(numpy(y), x * expected, rtol=1e-12)
    else:
        np.testing.assert_allclose(numpy(y), x, rtol=1e-14)
        np.testing.assert_allclose(numpy(log_det), np.zeros(SHAPE), atol=1e-14)


# -- the spline ---------------------------------------------------------------

SPLINES = [name for name in CASES if name.startswith("RationalQuadraticSpline")]


def reference_spline(layer, raw):
    """Knots and interior derivatives from raw params, in numpy, from the
    formulas of the docstring (no code shared with the layer)."""
    k, bound = layer.bins, layer.bound

    def softmax(u):
        e = np.exp(u - u.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    widths = 2 * bound * (layer.min_bin_width
                          + (1 - layer.min_bin_width * k) * softmax(raw[..., :k]))
    heights = 2 * bound * (layer.min_bin_height
                           + (1 - layer.min_bin_height * k) * softmax(raw[..., k:2 * k]))
    shift = np.log(np.expm1(1 - layer.min_derivative))
    slopes = layer.min_derivative + np.logaddexp(0.0, raw[..., 2 * k:] + shift)
    return widths, heights, slopes


def reference_forward(layer, x, raw):
    """y and log dy/dx of the spline, elementwise, by loops in numpy."""
    widths, heights, slopes = reference_spline(layer, raw)
    bound = layer.bound
    y, log_det = np.array(x, dtype=float), np.zeros(np.shape(x))
    for i in np.ndindex(np.shape(x)):
        if abs(x[i]) > bound:
            continue
        xk = np.concatenate([[-bound], -bound + np.cumsum(widths[i])])
        yk = np.concatenate([[-bound], -bound + np.cumsum(heights[i])])
        d = np.concatenate([[1.0], slopes[i], [1.0]])
        k = min(np.searchsorted(xk, x[i], side="right") - 1, layer.bins - 1)
        w, h = widths[i][k], heights[i][k]
        s, xi = h / w, (x[i] - xk[k]) / w
        den = s + (d[k + 1] + d[k] - 2 * s) * xi * (1 - xi)
        y[i] = yk[k] + h * (s * xi ** 2 + d[k] * xi * (1 - xi)) / den
        log_det[i] = np.log(s ** 2 * (d[k + 1] * xi ** 2 + 2 * s * xi * (1 - xi)
                                      + d[k] * (1 - xi) ** 2) / den ** 2)
    return y, log_det


def knots(layer, raw):
    """x and y knots, (..., K + 1), and all K + 1 derivatives, in numpy."""
    widths, heights, slopes = reference_spline(layer, raw)
    start = -layer.bound * np.ones(widths.shape[:-1] + (1,))
    xk = np.concatenate([start, start + np.cumsum(widths, axis=-1)], axis=-1)
    yk = np.concatenate([start, start + np.cumsum(heights, axis=-1)], axis=-1)
    one = np.ones_like(start)
    return xk, yk, np.concatenate([one, slopes, one], axis=-1)


def test_spline_params_per_feature():
    assert RationalQuadraticSpline().params_per_feature == 23
    assert RationalQuadraticSpline(bins=1).params_per_feature == 2
    assert RationalQuadraticSpline(bins=5).params_per_feature == 14


@pytest.mark.parametrize("name", SPLINES)
def test_spline_matches_a_numpy_reference(name):
    layer, x, params = inputs(name, seed=5, shape=(64,))
    y, log_det = layer.forward(tensor(x), tensor(params))
    y_ref, log_det_ref = reference_forward(layer, x, params)
    np.testing.assert_allclose(numpy(y), y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(numpy(log_det), log_det_ref, rtol=0, atol=1e-12)


# TFP's numpy substrate runs the same bijector code as `tfp.bijectors` on
# TensorFlow, without TensorFlow or tf-keras. It runs in a subprocess: in a
# process that has loaded TensorFlow (this one, on that backend), importing
# TFP at all requires tf-keras, whose wheel depends on the `tensorflow`
# distribution, a second TensorFlow beside the `tensorflow-cpu` used here.
_TFP_SCRIPT = """
import sys
import numpy as np
from tensorflow_probability.substrates import numpy as tfp

data = np.load(sys.argv[1])
out = {}
for case in sorted({key.split("/")[0] for key in data.files}):
    spline = tfp.bijectors.RationalQuadraticSpline(
        bin_widths=data[case + "/widths"], bin_heights=data[case + "/heights"],
        knot_slopes=data[case + "/slopes"], range_min=-float(data[case + "/bound"]))
    x, y = data[case + "/x"], data[case + "/y"]
    out[case + "/forward"] = np.asarray(spline.forward(x))
    out[case + "/forward_log_det"] = np.asarray(spline.forward_log_det_jacobian(x, 0))
    out[case + "/inverse"] = np.asarray(spline.inverse(y))
    out[case + "/inverse_log_det"] = np.asarray(spline.inverse_log_det_jacobian(y, 0))
np.savez(sys.argv[2], **out)
"""


def tfp_inputs(name):
    """Raw params and points inside and outside the bound, x and y."""
    layer, x, params = inputs(name, seed=6, shape=(64,))
    y = np.random.default_rng(16).normal(scale=CASES[name][1], size=x.shape)
    return layer, x, y, params


@pytest.fixture(scope="module")
def tfp_reference(tmp_path_factory):
    """TFP's forward, inverse and log-dets for every spline case."""
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("tfp")
    data = {}
    for i, name in enumerate(SPLINES):
        layer, x, y, params = tfp_inputs(name)
        widths, heights, slopes = reference_spline(layer, params)
        data.update({f"{i}/widths": widths, f"{i}/heights": heights, f"{i}/slopes": slopes,
                     f"{i}/bound": layer.bound, f"{i}/x": x, f"{i}/y": y})
    np.savez(folder / "in.npz", **data)
    subprocess.run([sys.executable, "-c", _TFP_SCRIPT, str(folder / "in.npz"),
                    str(folder / "out.npz")], check=True, timeout=300)
    with np.load(folder / "out.npz") as out:
        return {name: {key: out[f"{i}/{key}"] for key in
                       ("forward", "forward_log_det", "inverse", "inverse_log_det")}
                for i, name in enumerate(SPLINES)}


@pytest.mark.parametrize("name", SPLINES)
def test_spline_matches_tensorflow_probability(name, tfp_reference):
    layer, x, y, params = tfp_inputs(name)
    expected = tfp_reference[name]
    for v in (x, y):  # both inside and tails are checked
        assert 10 < (np.abs(v) < layer.bound).sum() < len(v)
    forward, forward_log_det = layer.forward(tensor(x), tensor(params))
    np.testing.assert_allclose(numpy(forward), expected["forward"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(numpy(forward_log_det), expected["forward_log_det"],
                               rtol=0, atol=1e-10)
    inverse, inverse_log_det = layer.inverse(tensor(y), tensor(params))
    np.testing.assert_allclose(numpy(inverse), expected["inverse"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(numpy(inverse_log_det), expected["inverse_log_det"],
                               rtol=0, atol=1e-10)
    assert np.abs(expected["forward"] - x).max() > 0.1  # not the identity


@pytest.mark.parametrize("name, dtype", [(name, "float64") for name in SPLINES]
                         + [("RationalQuadraticSpline", "float32")])
def test_spline_zero_params_are_the_identity(name, dtype):
    layer = make(name)
    x = np.linspace(-2 * layer.bound, 2 * layer.bound, 64).astype(dtype)
    params = np.zeros(x.shape + (layer.params_per_feature,), dtype)
    # A few ulps of rounding in s = h / w, the 2 log s of the log-det included.
    tol = 1e-6 if dtype == "float32" else 1e-14
    for method in (layer.forward, layer.inverse):
        out, log_det = method(tensor(x), tensor(params))
        assert keras.backend.standardize_dtype(out.dtype) == dtype
        assert keras.backend.standardize_dtype(log_det.dtype) == dtype
        np.testing.assert_allclose(numpy(out), x, rtol=0, atol=tol * layer.bound)
        np.testing.assert_allclose(numpy(log_det), np.zeros_like(x), rtol=0, atol=10 * tol)


def test_one_bin_is_the_identity_for_any_params():
    layer = RationalQuadraticSpline(bins=1, bound=2.0)
    x = np.linspace(-3, 3, 13)
    params = np.random.default_rng(7).normal(scale=3, size=(13, 2))
    y, log_det = layer.forward(tensor(x), tensor(params))
    np.testing.assert_allclose(numpy(y), x, rtol=0, atol=1e-14)
    np.testing.assert_allclose(numpy(log_det), np.zeros(13), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", SPLINES)
def test_spline_tails_are_the_identity(name):
    layer = make(name)
    bound = layer.bound
    side = np.concatenate([[bound + 1e-9, bound + 1e-3, 10 * bound, 1e4],
                           bound + np.random.default_rng(8).exponential(size=28)])
    x = np.concatenate([-side, side])
    params = np.random.default_rng(8).normal(scale=2, size=x.shape + (layer.params_per_feature,))
    for method in (layer.forward, layer.inverse):
        out, log_det = method(tensor(x), tensor(params))
        np.testing.assert_array_equal(numpy(out), x)
        np.testing.assert_array_equal(numpy(log_det), np.zeros_like(x))


@pytest.mark.parametrize("name", SPLINES)
def test_spline_is_monotone(name):
    layer = make(name)
    x = np.linspace(-1.5 * layer.bound, 1.5 * layer.bound, 3001)
    raw = np.random.default_rng(9).normal(scale=2, size=layer.params_per_feature)
    params = np.broadcast_to(raw, x.shape + raw.shape)
    y, log_det = layer.forward(tensor(x), tensor(params))
    assert np.all(np.diff(numpy(y)) > 0)
    assert np.all(np.isfinite(numpy(log_det)))
    x_back, _ = layer.inverse(y, tensor(params))
    np.testing.assert_allclose(numpy(x_back), x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", SPLINES)
def test_spline_at_and_beside_the_knots(name):
    """At the knots y = y_k and dy/dx = d_k; on either side within 1e-10 the
    values and the log-derivative agree: continuous and C1, at ±B too."""
    layer = make(name)
    raw = np.random.default_rng(10).normal(scale=2, size=layer.params_per_feature)
    xk, yk, d = knots(layer, raw)
    params = np.broadcast_to(raw, xk.shape + raw.shape)
    for offset in (0.0, -1e-10, 1e-10):
        # log d moves by about 1e-10 |d'/d| beside a knot, up to ~1e3 / bound
        # in the narrowest bins here.
        tol = 1e-10 if offset == 0 else 1e-6
        y, log_det = layer.forward(tensor(xk + offset), tensor(params))
        np.testing.assert_allclose(numpy(y), yk + offset * d, rtol=0, atol=1e-13)
        np.testing.assert_allclose(numpy(log_det), np.log(d), rtol=0, atol=tol)
        # The inverse by the same step in x: yk + offset d maps to xk + offset.
        x, inverse_log_det = layer.inverse(tensor(yk + offset * d), tensor(params))
        np.testing.assert_allclose(numpy(x), xk + offset, rtol=0, atol=1e-13)
        np.testing.assert_allclose(numpy(inverse_log_det), -np.log(d), rtol=0, atol=tol)
    assert np.abs(np.log(d)).max() > 0.1  # the knots are not all of slope 1


# -- gradients ------------------------------------------------------------------

def gradients(f, *arrays):
    """Gradients of each scalar of the list f(*tensors) with respect to every
    input, by the backend's own autodiff: [[df_i/da_j for j] for i]."""
    if BACKEND == "jax":
        import jax

        argnums = tuple(range(len(arrays)))

        # Compiled once: op-by-op differentiation in eager JAX takes seconds.
        @jax.jit
        def grads(*a):
            return [jax.grad(lambda *b, i=i: f(*b)[i], argnums)(*a)
                    for i in range(len(f(*a)))]

        return [[np.asarray(g) for g in row]
                for row in grads(*[jax.numpy.asarray(a) for a in arrays])]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        variables = [tf.constant(a) for a in arrays]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(variables)
            values = f(*variables)
        zero = tf.UnconnectedGradients.ZERO
        return [[g.numpy() for g in tape.gradient(v, variables, unconnected_gradients=zero)]
                for v in values]
    if BACKEND == "torch":
        import torch

        variables = [torch.tensor(a, requires_grad=True) for a in arrays]
        values = f(*variables)
        return [[g.numpy() for g in torch.autograd.grad(v, variables, retain_graph=True,
                                                        materialize_grads=True)]
                for v in values]
    raise NotImplementedError(BACKEND)


@pytest.mark.parametrize("name, params_kind", [(name, "random") for name in SPLINES]
                         + [("RationalQuadraticSpline", "zero")])
def test_spline_gradients_are_finite_and_right_at_knots_bound_and_tails(name, params_kind):
    layer = make(name)
    raw = np.random.default_rng(11).normal(scale=2, size=layer.params_per_feature)
    if params_kind == "zero":
        raw = np.zeros_like(raw)
    xk, yk, d = knots(layer, raw)
    bound = layer.bound
    n = len(xk)
    extra = np.array([-bound, bound, 0.0, -1e4, -bound - 1.0, bound + 1.0, 1e4])
    x = np.concatenate([xk, extra])
    y = np.concatenate([yk, extra])
    for v in (x, y):  # the end knots exactly, not cumsum's rounding
        v[0], v[n - 1] = -bound, bound
    params = np.ascontiguousarray(np.broadcast_to(raw, x.shape + raw.shape))

    def scalars(x_t, y_t, p_t):
        y_out, forward_log_det = layer.forward(x_t, p_t)
        x_out, inverse_log_det = layer.inverse(y_t, p_t)
        return [ops.sum(y_out), ops.sum(forward_log_det),
                ops.sum(x_out), ops.sum(inverse_log_det)]

    (dy_dx, _, dy_dp), (dfl_dx, _, dfl_dp), (_, dx_dy, dx_dp), (_, dil_dy, dil_dp) = (
        gradients(scalars, x, y, params))
    for g in (dy_dx, dy_dp, dfl_dx, dfl_dp, dx_dy, dx_dp, dil_dy, dil_dp):
        assert g.dtype == np.float64
        assert np.all(np.isfinite(g))
    # d out / d in: the knots' slopes, and 1 in the tails, where the params
    # have no effect.
    np.testing.assert_allclose(dy_dx[:n], d, rtol=1e-7)
    np.testing.assert_allclose(dx_dy[:n], 1 / d, rtol=1e-7)
    for g in (dy_dx, dx_dy):
        np.testing.assert_array_equal(g[-4:], np.ones(4))
    for g in (dfl_dx, dil_dy):
        np.testing.assert_array_equal(g[-4:], np.zeros(4))
    for g in (dy_dp, dfl_dp, dx_dp, dil_dp):
        np.testing.assert_array_equal(g[-4:], np.zeros((4, raw.size)))
    if params_kind == "zero":
        np.testing.assert_allclose(dy_dx, np.ones_like(x), rtol=1e-12)
        np.testing.assert_allclose(dx_dy, np.ones_like(y), rtol=1e-12)
    else:  # the params do act inside
        assert np.abs(dy_dp[1:n - 1]).max() > 1e-3
        assert np.abs(dx_dp[1:n - 1]).max() > 1e-3


@pytest.mark.parametrize("name, dtype", [(name, "float64") for name in SPLINES]
                         + [("RationalQuadraticSpline", "float32")])
def test_spline_tail_gradients_are_zero_for_params_and_one_for_inputs(name, dtype):
    """Far from the bound, the formula of an end bin, extended, overflows,
    takes the log of a negative number or the square root of one (as the end
    bin's d_k + d_k+1 - 2 s_k has one sign or the other); that branch is
    discarded by `where`, and must not turn the gradients into NaN."""
    layer = make(name)
    bound = layer.bound
    huge = 1e200 if dtype == "float64" else 1e30
    side = np.array([bound + 1e-5, bound + 0.5, 3 * bound, 1e4, huge])
    v = np.tile(np.concatenate([-side, side]), 32).astype(dtype)
    params = np.random.default_rng(14).normal(
        scale=2, size=v.shape + (layer.params_per_feature,)).astype(dtype)

    def scalars(x_t, y_t, p_t):
        y_out, forward_log_det = layer.forward(x_t, p_t)
        x_out, inverse_log_det = layer.inverse(y_t, p_t)
        return [ops.sum(y_out) + ops.sum(forward_log_det),
                ops.sum(x_out) + ops.sum(inverse_log_det)]

    (dx, _, dpx), (_, dy, dpy) = gradients(scalars, v, v, params)
    np.testing.assert_array_equal(dx, np.ones_like(v))
    np.testing.assert_array_equal(dy, np.ones_like(v))
    np.testing.assert_array_equal(dpx, np.zeros_like(params))
    np.testing.assert_array_equal(dpy, np.zeros_like(params))


def test_spline_gradients_in_float32_are_finite():
    layer = RationalQuadraticSpline(bins=4, bound=2.0)
    raw = np.random.default_rng(12).normal(scale=2, size=11)
    xk, _, _ = knots(layer, raw)
    x = np.concatenate([xk, [-2.0, 2.0, -1e4, 1e4, 0.0]]).astype("float32")
    params = np.ascontiguousarray(np.broadcast_to(raw, x.shape + raw.shape)).astype("float32")

    def total(v_t, p_t):
        y, log_det = layer.forward(v_t, p_t)
        x_back, inverse_log_det = layer.inverse(y, p_t)
        return [ops.sum(x_back) + ops.sum(log_det) + ops.sum(inverse_log_det)]

    for g in gradients(total, x, params)[0]:
        assert g.dtype == np.float32
        assert np.all(np.isfinite(g))


def test_spline_traces_under_jit():
    layer, x, params = inputs("RationalQuadraticSpline", seed=13)

    def both(v, p):
        y, log_det = layer.forward(v, p)
        x_back, inverse_log_det = layer.inverse(y, p)
        return y, log_det + inverse_log_det, x_back

    if BACKEND == "jax":
        import jax

        compiled = jax.jit(both)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(both, jit_compile=True)
    else:
        import torch

        # Dynamo's full graph capture without Inductor's slow CPU code
        # generation: fails on any Python branch on a tensor value.
        compiled = torch.compile(both, fullgraph=True, backend="eager")
    y, log_det_sum, x_back = compiled(tensor(x), tensor(params))
    y_eager, _ = layer.forward(tensor(x), tensor(params))
    np.testing.assert_allclose(numpy(y), numpy(y_eager), rtol=0, atol=1e-12)
    np.testing.assert_allclose(numpy(x_back), x, rtol=0, atol=1e-10)
    np.testing.assert_allclose(numpy(log_det_sum), np.zeros(SHAPE), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bins=0), "bins"),
    (dict(bins=2.0), "bins"),
    (dict(bins=True), "bins"),
    (dict(bound=0.0), "bound"),
    (dict(bound=-1.0), "bound"),
    (dict(bound=math.inf), "bound"),
    (dict(bins=10, min_bin_width=0.1), "min_bin_width"),
    (dict(min_bin_width=0.0), "min_bin_width"),
    (dict(bins=4, min_bin_height=0.3), "min_bin_height"),
    (dict(min_derivative=0.0), "min_derivative"),
    (dict(min_derivative=1.0), "min_derivative"),
])
def test_spline_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RationalQuadraticSpline(**kwargs)


@pytest.mark.parametrize("scale", ["tanh", "learned_tanh", "exp"])
def test_affine_scale_gradient_at_zero_params_is_one(scale):
    # A zero-initialised conditioner starts every flow at h = 0 exactly; with
    # d|a|/da = 0 there (TensorFlow, PyTorch), a tanh built on abs had
    # ds/dh = 0 and the scales could not start to learn on those backends.
    layer = Affine(scale)
    layer.build(SHAPE)
    x = np.random.default_rng(0).normal(size=SHAPE)
    params = np.zeros(SHAPE + (2,))

    def total(p_t):
        return [ops.sum(layer.forward(tensor(x), p_t)[1])]

    (grad,), = gradients(total, params)
    np.testing.assert_allclose(numpy(grad)[..., 0], 1.0, rtol=1e-12)
    np.testing.assert_allclose(numpy(grad)[..., 1], 0.0, atol=0)
