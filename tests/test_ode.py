"""`utils.ode.odeint` against closed forms, on whichever backend the suite runs on.

Everything runs in float64 (JAX with x64 enabled by conftest) so that the
error orders are measured well above round-off.
"""

import math

import numpy as np
import pytest
import keras
from keras import ops

from keras_flows.utils.ode import odeint

BACKEND = keras.backend.backend()


def _t(a, dtype="float64"):
    return ops.convert_to_tensor(np.asarray(a, dtype=dtype))


def _np(x):
    return ops.convert_to_numpy(x)


def _decay(t, y):
    return -y


def _rotation(t, y):
    x, v = y
    return (v, -x)


_Y0 = np.array([1.0, -0.5, 2.0])


def _decay_error(method, steps, t0=0.0, t1=1.0):
    y, _ = odeint(_decay, _t(_Y0), t0, t1, method=method, steps=steps)
    return np.max(np.abs(_np(y) - _Y0 * np.exp(-(t1 - t0))))


@pytest.mark.parametrize("method,steps,order", [("euler", (20, 40, 80), 1),
                                                ("rk4", (8, 16, 32), 4)])
def test_fixed_step_error_order(method, steps, order):
    errors = [_decay_error(method, n) for n in steps]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # Halving h divides the global error by 2^order, up to O(h) corrections.
    np.testing.assert_allclose(orders, order, atol=0.1)


@pytest.mark.parametrize("method,steps", [("euler", 50), ("rk4", 10), ("dopri5", None)])
def test_polynomial(method, steps):
    # dy/dt = t: y(1.5) = y(0.5) + (1.5^2 - 0.5^2) / 2 = y0 + 1. Euler's error is
    # exactly -h (t1 - t0) / 2 (a left Riemann sum); RK4 and dopri5 integrate
    # polynomials in t of degree <= 3 exactly.
    y0 = _t([0.0, 1.0])
    y, stats = odeint(lambda t, y: t * ops.ones_like(y), y0, 0.5, 1.5, method=method,
                      steps=steps)
    expected = np.array([1.0, 2.0])
    if method == "euler":
        expected -= 1.0 / steps / 2
    np.testing.assert_allclose(_np(y), expected, rtol=0, atol=1e-12)
    assert bool(_np(stats["converged"]))


def test_dopri5_tolerance_and_nfe():
    # The rotation (harmonic oscillator): x(t) = x0 cos t + v0 sin t.
    x0, v0, t1 = _t([1.0, 0.0]), _t([0.0, 2.0]), 3.0
    expected = (np.array([math.cos(t1), 2 * math.sin(t1)]),
                np.array([-math.sin(t1), 2 * math.cos(t1)]))
    results = {}
    for tol in (1e-4, 1e-8):
        (x, v), stats = odeint(_rotation, (x0, v0), 0.0, t1, rtol=tol, atol=tol)
        assert keras.backend.standardize_dtype(x.dtype) == "float64"
        error = max(np.max(np.abs(_np(x) - expected[0])), np.max(np.abs(_np(v) - expected[1])))
        results[tol] = error, int(_np(stats["nfe"])), int(_np(stats["steps"]))
        assert bool(_np(stats["converged"]))
        # Global error: a few local tolerances (tolerance proportionality).
        assert error < 30 * tol, (tol, error)
    (_, nfe_loose, steps_loose), (_, nfe_tight, steps_tight) = results[1e-4], results[1e-8]
    assert nfe_loose < nfe_tight and steps_loose < steps_tight
    # Two evaluations for the first step, six per attempt.
    assert (nfe_tight - 2) % 6 == 0


def test_dopri5_decay_float64():
    y, stats = odeint(_decay, _t(_Y0), 0.0, 2.0, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(_np(y), _Y0 * np.exp(-2.0), rtol=1e-7, atol=1e-8)
    assert int(_np(stats["nfe"])) > 0


@pytest.mark.parametrize("method,steps", [("euler", 2000), ("rk4", 20), ("dopri5", None)])
def test_backwards(method, steps):
    # From y(1) = y0 e^-1 back to t = 0.
    y, _ = odeint(_decay, _t(_Y0 * math.exp(-1.0)), 1.0, 0.0, method=method, steps=steps,
                  rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(_np(y), _Y0, rtol=1e-3 if method == "euler" else 1e-6)


@pytest.mark.parametrize("method,steps", [("rk4", 20), ("dopri5", None)])
def test_tuple_and_list_state(method, steps):
    # (y, integral of y): dy/dt = -y, dI/dt = y, I(1) = y0 (1 - e^-1); float32 z
    # beside a float64 integral keeps each component's dtype.
    def f(t, state):
        y, integral = state
        return [-y, ops.sum(ops.cast(y, "float64"), axis=-1)]

    y0 = [_t([[1.0, 2.0]], "float32"), _t([0.0])]
    (y, integral), _ = odeint(f, y0, 0.0, 1.0, method=method, steps=steps,
                              rtol=1e-7, atol=1e-7)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert keras.backend.standardize_dtype(integral.dtype) == "float64"
    np.testing.assert_allclose(_np(y), [[math.exp(-1), 2 * math.exp(-1)]], rtol=1e-5)
    np.testing.assert_allclose(_np(integral), [3 * (1 - math.exp(-1))], rtol=1e-5)
    out, _ = odeint(f, tuple(y0), 0.0, 1.0, method=method, steps=steps)
    assert isinstance(out, tuple)


def test_float32_stays_float32():
    y, _ = odeint(_decay, _t(_Y0, "float32"), 0.0, 1.0)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    np.testing.assert_allclose(_np(y), _Y0 * math.exp(-1), rtol=1e-4)


def _jit(fn):
    """Compiled on JAX and TensorFlow (XLA); PyTorch runs eagerly."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn  # torch: eager (torch.compile of the solver is not tested)


@pytest.mark.parametrize("method,steps", [("euler", 100), ("rk4", 10), ("dopri5", None)])
def test_under_jit(method, steps):
    fn = _jit(lambda y0: odeint(_decay, y0, 0.0, 1.0, method=method, steps=steps,
                                rtol=1e-8, atol=1e-8))
    y, stats = fn(_t(_Y0))
    eager, _ = odeint(_decay, _t(_Y0), 0.0, 1.0, method=method, steps=steps,
                      rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(_np(y), _np(eager), rtol=1e-12)
    assert bool(_np(stats["converged"]))


@pytest.mark.parametrize("max_steps", [3, 5])  # on JAX, 2 chunks of 2 and 2 of 3 iterations
def test_max_steps(max_steps):
    with pytest.raises(RuntimeError, match=f"max_steps={max_steps}"):
        odeint(_decay, _t(_Y0), 0.0, 100.0, rtol=1e-10, atol=1e-10, max_steps=max_steps)
    if BACKEND == "torch":
        return  # eager: no traced form to check
    fn = _jit(lambda y0: odeint(_decay, y0, 0.0, 100.0, rtol=1e-10, atol=1e-10,
                                max_steps=max_steps))
    _, stats = fn(_t(_Y0))
    assert not bool(_np(stats["converged"]))
    assert int(_np(stats["steps"])) + int(_np(stats["rejected"])) == max_steps


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        odeint(_decay, _t(_Y0), 0.0, 1.0, method="rk45")
    with pytest.raises(ValueError, match="steps"):
        odeint(_decay, _t(_Y0), 0.0, 1.0, method="rk4")
    with pytest.raises(ValueError, match="steps"):
        odeint(_decay, _t(_Y0), 0.0, 1.0, steps=10)


def _grad(fn, *args):
    """The gradient of the scalar fn(*args) with respect to each argument."""
    args = [_t(a) for a in args]
    if BACKEND == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(fn, argnums=tuple(range(len(args))))(*args)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(args)
            out = fn(*args)
        return [g.numpy() for g in tape.gradient(out, args)]
    import torch

    args = [a.requires_grad_() for a in args]
    return [g.numpy() for g in torch.autograd.grad(fn(*args), args)]


@pytest.mark.parametrize("method,steps,rtol", [("euler", 200, 1e-2), ("rk4", 20, 1e-6),
                                               ("dopri5", None, 1e-6)])
def test_gradient_through_solver(method, steps, rtol):
    # dy/dt = a y: y(1) = y0 e^a, so d y(1)/d y0 = e^a and d y(1)/d a = y0 e^a.
    a_value = 0.7

    def y1(y0, a):
        y, _ = odeint(lambda t, y: a * y, y0, 0.0, 1.0, method=method, steps=steps,
                      rtol=1e-9, atol=1e-9)
        return ops.sum(y)

    d_y0, d_a = _grad(y1, 1.0, a_value)
    np.testing.assert_allclose([d_y0, d_a], [math.exp(a_value)] * 2, rtol=rtol)


def test_gradient_when_compiled():
    # JAX: jax.jit(jax.grad(...)), reverse mode through the bounded loop (a scan).
    # TensorFlow: a GradientTape inside tf.function(jit_compile=True): XLA needs
    # the loop's `maximum_iterations` for the gradient of a while loop, which
    # `utils.backend.fori_loop` sets. PyTorch: eager, tested above.
    def y1(a):
        y, _ = odeint(lambda t, y: a * y, _t([1.0]), 0.0, 1.0, rtol=1e-9, atol=1e-9,
                      max_steps=100)
        return ops.sum(y)

    if BACKEND == "jax":
        import jax

        grad = jax.jit(jax.grad(y1))
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def grad(a):
            with tf.GradientTape() as tape:
                tape.watch(a)
                out = y1(a)
            return tape.gradient(out, a)
    else:
        pytest.skip("PyTorch runs the solver eagerly")
    np.testing.assert_allclose(_np(grad(_t(0.7))), math.exp(0.7), rtol=1e-6)


def test_compiled_gradient_keeps_one_state_per_iteration_on_jax():
    # A scan's backward pass keeps residuals per iteration. With the loop
    # body checkpointed, raising max_steps from 10 to 1000 (same solve, a
    # handful of attempts) adds about one state (y and its derivative) per
    # iteration; unchecked it added every residual of an attempt: ~800 KB
    # an iteration for this MLP, hundreds of times the state.
    if BACKEND != "jax":
        pytest.skip("JAX's compiled memory analysis; TensorFlow's loop is flat and "
                    "PyTorch's is Python (see odeint's docstring)")
    import jax

    rng = np.random.default_rng(0)
    w1, w2 = _t(rng.normal(size=(2, 256)) / 2), _t(rng.normal(size=(256, 2)) / 16)
    y0 = _t(rng.normal(size=(64, 2)))

    def loss(w1, max_steps):
        y, _ = odeint(lambda t, y: ops.tanh(y @ w1) @ w2, y0, 0.0, 1.0, rtol=1e-6,
                      atol=1e-6, max_steps=max_steps)
        return ops.sum(y)

    def compiled(max_steps):
        return jax.jit(jax.grad(lambda w: loss(w, max_steps))).lower(w1).compile()

    temp = {n: compiled(n).memory_analysis().temp_size_in_bytes for n in (10, 1000)}
    state_bytes = 2 * 64 * 2 * 8  # y and k, float64
    assert (temp[1000] - temp[10]) / 990 < 4 * state_bytes
    np.testing.assert_allclose(_np(compiled(10)(w1)), _np(compiled(1000)(w1)), rtol=1e-12)


def test_gradient_with_respect_to_end_time():
    # d y(t1) / d t1 = f(t1, y(t1)) = -y(t1): only the clipped last step carries it.
    def y1(t1):
        y, _ = odeint(_decay, _t([1.0]), 0.0, t1, rtol=1e-9, atol=1e-9)
        return ops.sum(y)

    (d_t1,) = _grad(y1, 1.3)
    np.testing.assert_allclose(d_t1, -math.exp(-1.3), rtol=1e-5)
