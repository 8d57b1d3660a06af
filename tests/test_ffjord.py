"""ContinuousFlow, its concat-squash vector field and FFJORD, on whichever backend
the suite runs on.

Independent answers: a float64 central-difference Jacobian of the solver's map,
scipy's `expm` and `quad_vec` for a linear vector field, NumPy formulas, Monte
Carlo means within 3 standard errors, and the entropy of a Gaussian.
"""

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import keras
from keras import ops

from keras_flows.bijectors.continuous import ContinuousFlow
from keras_flows.layers.concat_squash import ConcatSquashDense, VectorField
from keras_flows.models.ffjord import FFJORD
from keras_flows.utils.backend import matmul
from fits import assert_image_flow_learns_mnist, correlated_gaussian

BACKEND = keras.backend.backend()
A = np.array([[-0.3, 0.8, 0.1], [-0.5, 0.2, 0.4], [0.3, -0.2, -0.6]])


def numpy(x):
    return ops.convert_to_numpy(x)


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


class LinearField(keras.layers.Layer):
    """f(t, z) = A z, for closed forms (test-only, not serialized)."""

    def __init__(self, matrix, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(matrix)

    def call(self, z, t, context=None):
        return matmul(z, ops.convert_to_tensor(self.matrix.T, dtype=z.dtype))


def linear_field():
    return LinearField(A, dtype="float64")


def randomise(layer, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for w in layer.trainable_weights:
        if w.path.endswith("end_time"):
            continue
        w.assign(rng.normal(scale=scale, size=w.shape).astype(w.dtype))
    return layer


def cnf(dtype="float64", context_shape=None, **kwargs):
    kwargs.setdefault("hidden_units", (8, 8))
    layer = ContinuousFlow(context_shape=context_shape, dtype=dtype, **kwargs)
    layer.build((None, 3))  # no solve: on JAX each eager solve compiles its loop
    return randomise(layer)


def data(n=4, d=3, seed=1, dtype="float64"):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def difference_rows(x, eps=1e-6):
    """x's rows, then x[i] + eps e_j and x[i] - eps e_j for each i and j."""
    n, d = x.shape
    eye = np.eye(d) * eps
    return np.concatenate([x] + [np.concatenate([x[i] + eye, x[i] - eye]) for i in range(n)])


def dense_log_det(out, n, d, eps=1e-6):
    """log|det J| at each of n rows from `out`, the map at `difference_rows`."""
    result = []
    for i in range(n):
        block = out[n + 2 * d * i: n + 2 * d * (i + 1)]
        jac = (block[:d] - block[d:]) / (2 * eps)
        result.append(np.linalg.slogdet(jac)[1])
    return np.array(result)


# -- the concat-squash layer ----------------------------------------------------

def test_concat_squash_formula_in_float64():
    layer = ConcatSquashDense(4, dtype="float64")
    x = data(5, 3)
    layer(x, ops.zeros((), "float64"))
    randomise(layer)
    w, b, wg, bg, ws = (numpy(v) for v in (layer.kernel, layer.bias, layer.gate_kernel,
                                           layer.gate_bias, layer.shift_kernel))
    for t in (0.7, np.linspace(0.0, 1.0, 5)):
        h = layer(x, ops.convert_to_tensor(t, dtype="float64"))
        tc = np.reshape(t, (-1, 1))
        expected = (x @ w + b) / (1 + np.exp(-(tc * wg + bg))) + tc * ws
        assert dtype_of(h) == "float64"
        np.testing.assert_allclose(numpy(h), expected, rtol=1e-12, atol=1e-12)


def test_vector_field_context_and_config():
    field = VectorField((6, 5), activation="tanh", context_dim=2, dtype="float64")
    z, c = data(4, 3), data(4, 2, seed=2)
    t = ops.convert_to_tensor(0.5, "float64")
    out = field(z, t, c)
    assert tuple(out.shape) == (4, 3) and dtype_of(out) == "float64"
    clone = VectorField.from_config(field.get_config())
    clone(z, t, c)
    clone.set_weights(field.get_weights())
    np.testing.assert_array_equal(numpy(clone(z, t, c)), numpy(out))
    with pytest.raises(ValueError, match="context"):
        field(z, t)


# -- the continuous bijector ----------------------------------------------------

@pytest.mark.parametrize("context_shape", [None, (2,)])
def test_log_det_matches_dense_jacobian_of_the_solve(context_shape):
    layer = cnf(context_shape=context_shape, solver="dopri5", rtol=1e-10, atol=1e-10)
    # One solve for the rows and their finite differences: dopri5's grid,
    # chosen for the whole batch, is then the same for all of them.
    x = data(3)
    rows = difference_rows(x)
    c = None
    if context_shape is not None:  # each difference row with its point's context
        c3 = data(3, 2, seed=5)
        c = np.concatenate([c3, np.repeat(c3, 6, axis=0)])
    z, log_det = layer.forward(rows, context=c)
    assert dtype_of(z) == "float64" and dtype_of(log_det) == "float64"
    expected = dense_log_det(numpy(z), 3, 3)
    np.testing.assert_allclose(numpy(log_det)[:3], expected, atol=1e-6)
    # The map is not the identity: the check has something to measure.
    assert np.max(np.abs(expected)) > 2e-3
    x2, inv = layer.inverse(z, context=c)
    np.testing.assert_allclose(numpy(x2), rows, atol=1e-7)
    np.testing.assert_allclose(numpy(inv), -numpy(log_det), atol=1e-7)


@pytest.mark.parametrize("solver,steps,tol", [("dopri5", None, 1e-7), ("rk4", 40, 1e-6)])
def test_linear_field_is_the_matrix_exponential(solver, steps, tol):
    end_time = 0.8
    layer = ContinuousFlow(linear_field(), solver=solver, steps=steps, rtol=1e-11,
                           atol=1e-11, end_time=end_time, dtype="float64")
    x = data(5)
    z, log_det = layer.forward(x)
    np.testing.assert_allclose(numpy(layer.time()), end_time, rtol=1e-12)
    np.testing.assert_allclose(numpy(z), x @ scipy.linalg.expm(A * end_time).T, atol=tol)
    # d log_det / dt = tr(A) at every point: the integral is T tr(A) exactly
    # (up to round-off) for any solver.
    np.testing.assert_allclose(numpy(log_det), end_time * np.trace(A), atol=1e-12)
    x2, inv = layer.inverse(z)
    np.testing.assert_allclose(numpy(x2), x, atol=tol)
    np.testing.assert_allclose(numpy(inv), -end_time * np.trace(A), atol=1e-12)


@pytest.mark.parametrize("solver,steps,atol", [("rk4", 10, 1e-4)])
def test_round_trip_float32(solver, steps, atol):
    layer = cnf("float32", solver=solver, steps=steps, rtol=1e-6, atol=1e-6)
    x = data(16, dtype="float32")
    z, fwd = layer.forward(x)
    x2, inv = layer.inverse(z)
    assert dtype_of(z) == "float32"
    np.testing.assert_allclose(numpy(x2), x, atol=atol)
    np.testing.assert_allclose(numpy(fwd) + numpy(inv), 0.0, atol=atol)
    assert np.max(np.abs(numpy(z) - x)) > 1e-2


def test_nfe_is_reported():
    layer = cnf(solver="rk4", steps=5)
    layer.forward(data())
    assert int(numpy(layer.nfe)) == 20  # four stages a step
    layer = cnf(solver="dopri5", rtol=1e-6, atol=1e-6)
    layer.forward(data())
    nfe = int(numpy(layer.nfe))
    assert nfe > 8 and (nfe - 2) % 6 == 0  # two for the first step, six per attempt
    assert not layer.nfe.trainable


def test_inference_solve_compiles_once_per_shape_on_jax():
    # On JAX an eager inference solve runs under one cached `jax.jit`, so the
    # field's Python code runs (is traced) on the first call of a shape only;
    # elsewhere it runs at every evaluation. On every backend the values are
    # the closed form z(T) = expm(A T) x, log-det T tr(A), with the current
    # weights (here the end time T), and the solver's errors still raise.
    calls = []

    class CountingField(LinearField):
        def call(self, z, t, context=None):
            calls.append(t)
            return super().call(z, t, context)

    layer = ContinuousFlow(vector_field=CountingField(A, dtype="float64"), rtol=1e-9,
                           atol=1e-9, dtype="float64")
    layer.build((None, 3))
    x = data()
    for end_time in (1.0, 0.5):
        layer.end_time_weight.assign(np.log(np.expm1(end_time)))
        before = len(calls)
        z, log_det = layer.forward(x)
        np.testing.assert_allclose(numpy(z), x @ scipy.linalg.expm(A * end_time).T,
                                   rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(numpy(log_det), end_time * np.trace(A), rtol=1e-7)
        nfe = int(numpy(layer.nfe))
        assert nfe > 8 and (nfe - 2) % 6 == 0
        if BACKEND == "jax" and end_time != 1.0:
            assert len(calls) == before  # the same shape: no new trace
        else:
            assert len(calls) > before
    layer.max_steps = 2
    with pytest.raises(RuntimeError, match="max_steps=2"):
        layer.forward(x)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_and_seeded(noise):
    # n copies of one point: each row gets its own probe, fixed along its solve.
    # The trajectory does not depend on the probe and the estimate is linear
    # in J, so the mean of the Hutchinson log-dets is the exact (discretised)
    # log-det: checked within 3 standard errors of the Monte Carlo mean.
    kwargs = dict(solver="rk4", steps=4, trace="hutchinson", noise=noise)
    layer = cnf(seed=3, **kwargs)
    n = 2000
    x = np.repeat(data(1), n, axis=0)
    _, exact = layer.forward(x[:1])                       # eval_trace="exact"
    _, estimates = layer.forward(x, training=True)
    estimates = numpy(estimates)
    error = abs(estimates.mean() - float(numpy(exact)[0]))
    standard_error = estimates.std(ddof=1) / np.sqrt(n)
    assert standard_error > 1e-4                          # a real estimate...
    assert error < 3 * standard_error, (error, standard_error)   # ...unbiased
    # Deterministic given the seed: a layer with the same seed and weights
    # draws the same probes; the next solve draws new ones.
    twin = cnf(seed=3, **kwargs)
    twin.set_weights(layer.get_weights())
    np.testing.assert_array_equal(numpy(twin.forward(x, training=True)[1]), estimates)
    _, again = layer.forward(x, training=True)
    assert not np.allclose(numpy(again), estimates)


def test_eval_trace_hutchinson_uses_a_fixed_seed():
    layer = cnf(solver="rk4", steps=4, eval_trace="hutchinson", eval_seed=7)
    x = np.repeat(data(1), 8, axis=0)
    _, a = layer.forward(x)
    _, b = layer.forward(x)
    np.testing.assert_array_equal(numpy(a), numpy(b))
    assert np.std(numpy(a)) > 0  # one probe per row: an estimate, not the trace


def test_regularisers_only_in_training_and_their_values():
    end_time = 0.6
    layer = ContinuousFlow(linear_field(), solver="dopri5", rtol=1e-10, atol=1e-10,
                           kinetic_energy=0.5, jacobian_norm=0.25, end_time=end_time,
                           dtype="float64")
    x = data(4)
    layer(x)
    assert layer.losses == []
    layer(x, training=True)
    kinetic, frobenius = (float(numpy(loss)) for loss in layer.losses)
    # int_0^T ||A expm(At) x||^2 dt by adaptive quadrature, batch mean.
    per_row = scipy.integrate.quad_vec(
        lambda t: np.sum((x @ (A @ scipy.linalg.expm(A * t)).T) ** 2, axis=1),
        0.0, end_time, epsabs=1e-12, epsrel=1e-12)[0]
    np.testing.assert_allclose(kinetic, 0.5 * per_row.mean(), rtol=1e-6)
    # The exact trace gives the exact Frobenius norm: int_0^T ||A||_F^2 dt.
    np.testing.assert_allclose(frobenius, 0.25 * end_time * np.sum(A ** 2), rtol=1e-6)
    # The inverse solve (backwards in time) gives the same positive integrals.
    z, _ = layer.forward(x)
    layer.inverse(z, training=True)
    # Called outside `__call__`, a layer's losses accumulate until its next call.
    np.testing.assert_allclose([float(numpy(v)) for v in layer.losses[2:]],
                               [kinetic, frobenius], rtol=1e-6)
    # (Keras keeps added losses in float32, hence rtol=1e-6.)
    # Coefficients 0: nothing added, in training either.
    plain = ContinuousFlow(linear_field(), solver="rk4", steps=4, dtype="float64")
    plain(x, training=True)
    assert plain.losses == []


def test_hutchinson_jacobian_norm_is_unbiased():
    layer = ContinuousFlow(linear_field(), solver="rk4", steps=2, trace="hutchinson",
                           jacobian_norm=1.0, seed=0, dtype="float64")
    n = 4000
    layer(np.ones((n, 3)), training=True)
    # For one row the estimate is ||e^T A||^2 T, and its batch mean is the
    # loss: E ||e^T A||^2 = ||A||_F^2. Its per-row spread for Rademacher
    # probes is bounded by that of 2 sum_{i<j} |(A A^T)_ij|; a generous 5%.
    np.testing.assert_allclose(float(numpy(layer.losses[0])), np.sum(A ** 2), rtol=0.05)


def test_end_time_is_learnable():
    layer = cnf(solver="rk4", steps=4)
    assert any(w.path.endswith("end_time") for w in layer.trainable_weights)
    frozen = cnf(solver="rk4", steps=4, learn_end_time=False, end_time=2.0)
    assert not any(w.path.endswith("end_time") for w in frozen.trainable_weights)
    np.testing.assert_allclose(numpy(frozen.time()), 2.0, rtol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="solver"):
        ContinuousFlow(solver="rk45")
    with pytest.raises(ValueError, match="trace"):
        ContinuousFlow(trace="approximate")
    with pytest.raises(ValueError, match="eval_trace"):
        ContinuousFlow(eval_trace="none")
    with pytest.raises(ValueError, match="noise"):
        ContinuousFlow(noise="uniform")
    with pytest.raises(ValueError, match="kinetic_energy"):
        ContinuousFlow(kinetic_energy=-0.1)
    with pytest.raises(ValueError, match="jacobian_norm"):
        ContinuousFlow(jacobian_norm=-1.0)
    with pytest.raises(ValueError, match="steps"):
        ContinuousFlow(solver="rk4")
    with pytest.raises(ValueError, match="steps"):
        ContinuousFlow(steps=10)
    with pytest.raises(ValueError, match="rtol"):
        ContinuousFlow(rtol=0.0)
    with pytest.raises(ValueError, match="end_time"):
        ContinuousFlow(end_time=-1.0)
    with pytest.raises(ValueError, match="vector_field"):
        ContinuousFlow(linear_field(), hidden_units=(8,))
    with pytest.raises(ValueError, match=r"\(batch, D\)"):
        ContinuousFlow(solver="euler", steps=2).forward(np.zeros((2, 2, 2), "float32"))
    with pytest.raises(ValueError, match="event_shape"):
        FFJORD(event_shape=(4, 4, 1))
    with pytest.raises(ValueError, match="num_blocks"):
        FFJORD(event_shape=(2,), num_blocks=0)
    flow = FFJORD(event_shape=(2,), hidden_units=(4,), solver="euler", steps=2)
    with pytest.raises(ValueError, match="trace"):
        flow.log_prob(np.zeros((2, 2), "float32"), trace="approximate")


# -- FFJORD -------------------------------------------------------------------

def small_ffjord(**kwargs):
    config = dict(event_shape=(2,), hidden_units=(8, 8), num_blocks=2, solver="rk4",
                  steps=4, trace="hutchinson", seed=0)
    config.update(kwargs)
    return FFJORD(**config)


def test_ffjord_log_prob_is_deterministic_and_save_load(tmp_path):
    flow = small_ffjord(num_blocks=1, kinetic_energy=0.01, jacobian_norm=0.01)
    for block in flow.blocks:
        randomise(block)
    x = data(6, 2, dtype="float32")
    first = numpy(flow.log_prob(x))
    np.testing.assert_array_equal(numpy(flow.log_prob(x)), first)
    assert not np.allclose(numpy(flow.log_prob(x, trace="hutchinson")), first)
    assert flow.nfe() == [16]
    path = str(tmp_path / "ffjord.keras")
    flow.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, FFJORD)
    assert loaded.get_config() == flow.get_config()
    np.testing.assert_array_equal(numpy(loaded.log_prob(x)), first)
    z = data(4, 2, seed=3, dtype="float32")
    np.testing.assert_array_equal(numpy(loaded.decode(z)), numpy(flow.decode(z)))


def test_ffjord_float64_and_context():
    flow = small_ffjord(num_blocks=1, dtype="float64", context_shape=(3,))
    x, c = data(5, 2), data(5, 3, seed=4)
    log_prob = flow.log_prob(x, c)
    assert dtype_of(log_prob) == "float64"
    samples = flow.sample(5, context=c, seed=0)
    assert dtype_of(samples) == "float64" and tuple(samples.shape) == (5, 2)
    np.testing.assert_allclose(numpy(flow.encode(samples, c)),
                               numpy(flow.base.sample(5, seed=0)), atol=1e-3)


def test_ffjord_training_step_under_jit():
    flow = small_ffjord(num_blocks=1, kinetic_energy=0.01, jacobian_norm=0.01)
    flow.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    x = data(64, 2, dtype="float32")
    before = [numpy(w).copy() for w in flow.trainable_weights]
    history = flow.fit(x, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(not np.array_equal(numpy(w), b) for w, b in zip(flow.trainable_weights, before))


def test_ffjord_fits_a_gaussian():
    train, test, cov, entropy = correlated_gaussian()
    baseline = 0.5 * np.trace(cov) + np.log(2 * np.pi)   # N(0, I) on this data: 3.96
    flow = FFJORD(event_shape=(2,), hidden_units=(16, 16), solver="rk4", steps=4,
                  trace="exact", seed=0)
    flow.compile(optimizer=keras.optimizers.Adam(1e-2))
    flow.fit(train, batch_size=256, epochs=30, verbose=0)
    nll = -float(np.mean(numpy(flow.log_prob(test, batch_size=len(test)))))
    # Monte Carlo error of the held-out mean: about 0.02 nats.
    assert nll < entropy + 0.1, (nll, entropy, baseline)


def test_concat_squash_conv_formula_in_float64():
    from keras_flows.layers import ConcatSquashConv2D

    layer = ConcatSquashConv2D(3, 3, dtype="float64")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 4, 2))
    t = np.array([0.3, 0.7])
    layer.build(x.shape)
    for w in layer.trainable_weights:
        w.assign(rng.normal(size=w.shape))
    kernel = numpy(layer.kernel)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.zeros((2, 4, 4, 3))
    for i in range(4):
        for j in range(4):
            conv[:, i, j] = np.einsum("bhwc,hwco->bo", padded[:, i:i + 3, j:j + 3], kernel)
    tt = t[:, None, None, None]
    gate = 1 / (1 + np.exp(-(tt * numpy(layer.gate_kernel)[0] + numpy(layer.gate_bias))))
    expected = (conv + numpy(layer.bias)) * gate + tt * numpy(layer.shift_kernel)[0]
    np.testing.assert_allclose(numpy(layer(x, ops.convert_to_tensor(t))), expected, rtol=1e-10)


def test_image_ffjord_learns_real_mnist(tmp_path):
    flow = FFJORD(image_shape=(28, 28, 1), levels=2, blocks_per_level=1, hidden_channels=8,
                  num_layers=2, solver="rk4", steps=2, seed=0)
    assert type(flow).__name__ == "ImageFFJORD"
    assert_image_flow_learns_mnist(flow, tmp_path)
    assert flow.nfe() == [8, 8]                       # rk4, 2 steps: 4 evaluations each
