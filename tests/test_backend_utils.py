"""The per-backend helper, run on whichever backend the suite runs on."""

import numpy as np
import keras
from keras import ops

from keras_flows.utils import is_concrete


def test_eager_tensors_are_concrete():
    assert is_concrete(ops.ones((2,)))
    assert is_concrete(np.ones(2))


def _compile(fn):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    import torch

    return torch.compile(fn)


def test_traced_tensors_are_not_concrete():
    fn = _compile(lambda x: x + 1.0 if is_concrete(x) else x - 1.0)
    assert float(ops.convert_to_numpy(fn(ops.zeros((1,))))[0]) == -1.0
    assert not is_concrete(keras.KerasTensor((None, 2)))


# -- float64 through the ops the library uses ---------------------------------
#
# With Keras 3.15, `keras.backend.result_type` maps float64 to float32 on JAX
# and PyTorch, and several ops compute (or return) float32 for float64 inputs
# there. Each case feeds float64 and compares with NumPy float64. The raw
# Keras ops that drop are listed in `_DROPS` (xfail on those backends, a
# record of what the library must route around); the library's own forms
# (`utils.math`, `utils.backend.matmul`, `layers.Dense`) must keep float64.

import pytest  # noqa: E402
import scipy.special  # noqa: E402

from keras_flows.layers import Dense  # noqa: E402
from keras_flows.utils import math as kf_math  # noqa: E402
from keras_flows.utils.backend import matmul  # noqa: E402

_RNG = np.random.default_rng(0)
_A = _RNG.normal(size=(6, 5))
_B = _RNG.normal(size=(5, 3))
_S = _RNG.normal(size=(5, 5)) + 5.0 * np.eye(5)
_U = _RNG.uniform(-0.9, 0.9, size=(6, 5))
_IMG = _RNG.normal(size=(2, 5, 5, 2))
_L = 10.0 * _RNG.normal(size=(16, 3))


def _t(a):
    return ops.convert_to_tensor(a, "float64")


def _dense_case(layer_cls):
    def run():
        layer = layer_cls(3, dtype="float64")
        y = layer(_t(_A))
        kernel, bias = (ops.convert_to_numpy(v) for v in layer.weights)
        return y, _A @ kernel + bias
    return run


def _conv_case():
    layer = keras.layers.Conv2D(3, 3, padding="same", dtype="float64")
    y = layer(_t(_IMG))
    kernel, bias = (ops.convert_to_numpy(v) for v in layer.weights)
    padded = np.pad(_IMG, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.empty((2, 5, 5, 3))
    for i in range(5):
        for j in range(5):
            ref[:, i, j] = np.einsum("bhwc,hwco->bo", padded[:, i:i + 3, j:j + 3], kernel)
    return y, ref + bias


def _softplus(a):
    return np.logaddexp(0.0, a)


_CASES = {
    # The library's float64-safe forms.
    "backend.matmul": lambda: (matmul(_t(_A), _t(_B)), _A @ _B),
    "math.tanh": lambda: (kf_math.tanh(_t(_U)), np.tanh(_U)),
    "math.arctanh": lambda: (kf_math.arctanh(_t(_U)), np.arctanh(_U)),
    "math.safe_norm": lambda: (kf_math.safe_norm(_t(_A)), np.linalg.norm(_A, axis=-1)),
    "math.softmax": lambda: (kf_math.softmax(_t(_A)), scipy.special.softmax(_A, axis=-1)),
    "math.softmax(16 entries)": lambda: (kf_math.softmax(_t(_L), axis=0),
                                         scipy.special.softmax(_L, axis=0)),
    "layers.Dense": _dense_case(Dense),
    "layers.Dense(tanh)": lambda: (
        (lambda layer: (layer(_t(_A)), np.tanh(
            _A @ ops.convert_to_numpy(layer.kernel) + ops.convert_to_numpy(layer.bias))))(
            Dense(3, activation="tanh", dtype="float64"))),
    # Keras ops the library uses that keep float64 on every backend.
    "ops.einsum": lambda: (ops.einsum("ij,jk->ik", _t(_A), _t(_B)), _A @ _B),
    "ops.slogdet": lambda: (ops.slogdet(_t(_S))[1], np.linalg.slogdet(_S)[1]),
    "ops.inv": lambda: (ops.inv(_t(_S)), np.linalg.inv(_S)),
    "ops.solve_triangular": lambda: (
        ops.solve_triangular(_t(np.tril(_S)), _t(_B), lower=True),
        np.linalg.solve(np.tril(_S), _B)),
    "ops.qr": lambda: (ops.abs(ops.qr(_t(_S))[1]), np.abs(np.linalg.qr(_S)[1])),
    "ops.logsumexp": lambda: (ops.logsumexp(_t(_A), axis=-1),
                              scipy.special.logsumexp(_A, axis=-1)),
    "ops.log_softmax": lambda: (ops.log_softmax(_t(_A), axis=-1),
                                scipy.special.log_softmax(_A, axis=-1)),
    "ops.softplus": lambda: (ops.softplus(_t(_A)), _softplus(_A)),
    "ops.sigmoid": lambda: (ops.sigmoid(_t(_A)), scipy.special.expit(_A)),
    "ops.log_sigmoid": lambda: (ops.log_sigmoid(_t(_A)), -_softplus(-_A)),
    "ops.exp": lambda: (ops.exp(_t(_A)), np.exp(_A)),
    "ops.log": lambda: (ops.log(_t(np.abs(_A))), np.log(np.abs(_A))),
    "ops.log1p": lambda: (ops.log1p(_t(_U)), np.log1p(_U)),
    "ops.expm1": lambda: (ops.expm1(_t(_U)), np.expm1(_U)),
    "ops.sqrt": lambda: (ops.sqrt(_t(np.abs(_A))), np.sqrt(np.abs(_A))),
    "ops.sum": lambda: (ops.sum(_t(_A), axis=0), _A.sum(axis=0)),
    "ops.square": lambda: (ops.square(_t(_A)), _A ** 2),
    "ops.clip(tensor bounds)": lambda: (ops.clip(_t(_A), _t(-0.3), _t(0.3)),
                                        np.clip(_A, -0.3, 0.3)),
    "keras.layers.Conv2D": _conv_case,
    # Raw Keras ops that lose float64 somewhere (see _DROPS).
    "ops.matmul": lambda: (ops.matmul(_t(_A), _t(_B)), _A @ _B),
    "ops.dot": lambda: (ops.dot(_t(_A), _t(_B)), _A @ _B),
    "ops.tensordot": lambda: (ops.tensordot(_t(_A), _t(_B), axes=1), _A @ _B),
    "ops.tanh": lambda: (ops.tanh(_t(_U)), np.tanh(_U)),
    "ops.arctanh": lambda: (ops.arctanh(_t(_U)), np.arctanh(_U)),
    "ops.norm": lambda: (ops.norm(_t(_A), axis=-1), np.linalg.norm(_A, axis=-1)),
    "ops.mean": lambda: (ops.mean(_t(_A), axis=0), _A.mean(axis=0)),
    "ops.var": lambda: (ops.var(_t(_A), axis=0), _A.var(axis=0)),
    "ops.logaddexp": lambda: (ops.logaddexp(_t(_A), _t(_A[::-1].copy())),
                              np.logaddexp(_A, _A[::-1])),
    "ops.cumsum": lambda: (ops.cumsum(_t(_A), axis=-1), np.cumsum(_A, axis=-1)),
    "ops.clip(float bounds)": lambda: (ops.clip(_t(_A), -0.3, 0.3), np.clip(_A, -0.3, 0.3)),
    "keras.activations.tanh": lambda: (keras.activations.tanh(_t(_A)), np.tanh(_A)),
    "keras.layers.Dense": _dense_case(keras.layers.Dense),
}

# Measured with Keras 3.15.1 (JAX 0.10, TensorFlow 2.21, PyTorch 2.13):
# backends where the raw op returns float32, or float64 computed in float32.
_DROPS = {
    "ops.matmul": ("torch",),
    "ops.dot": ("torch",),
    "ops.tensordot": ("torch",),
    "ops.tanh": ("jax",),
    "ops.arctanh": ("jax",),
    "ops.norm": ("jax", "torch"),
    "ops.mean": ("jax", "torch"),  # float64 result, float32 accumulation
    "ops.var": ("jax", "torch"),
    "ops.logaddexp": ("jax", "torch"),
    "ops.cumsum": ("torch",),
    "ops.clip(float bounds)": ("torch",),  # the bounds are rounded to float32
    "keras.activations.tanh": ("jax",),
    "keras.layers.Dense": ("torch",),  # float64 result of a float32 product
}


def _case_params():
    backend = keras.backend.backend()
    for name in _CASES:
        marks = ()
        if backend in _DROPS.get(name, ()):
            marks = pytest.mark.xfail(
                reason=f"Keras 3.15 {name} loses float64 on {backend}", strict=False)
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_case_params()))
def test_op_keeps_float64(name):
    result, expected = _CASES[name]()
    assert keras.backend.standardize_dtype(result.dtype) == "float64"
    result = ops.convert_to_numpy(result)
    np.testing.assert_allclose(result, expected, rtol=1e-12,
                               atol=1e-13 * np.max(np.abs(expected)))


def test_matmul_promotes_and_traces():
    a = _RNG.normal(size=(2, 4, 5))
    # Batched, mixed float32 x float64 promotes to float64 as NumPy does.
    y = matmul(_t(a), ops.convert_to_tensor(_B, "float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "float64"
    np.testing.assert_allclose(ops.convert_to_numpy(y), a @ _B.astype("float32"),
                               rtol=1e-12)
    spec = matmul(keras.KerasTensor((None, 5), dtype="float64"),
                  keras.KerasTensor((5, 3), dtype="float64"))
    assert tuple(spec.shape) == (None, 3)
    assert keras.backend.standardize_dtype(spec.dtype) == "float64"


@pytest.mark.parametrize("dtypes", [("float32",) * 3, ("float64",) * 3,
                                    ("float32", "float64", "float64")])
@pytest.mark.parametrize("leading", [(6,), (2, 6)])
def test_linear_matches_numpy_and_its_gradients(dtypes, leading):
    from keras_flows.utils.backend import linear

    # 2-D with one dtype is PyTorch's `addmm` path; the rest go through `matmul`.
    x, bias = _RNG.normal(size=(*leading, 5)), _RNG.normal(size=(3,))
    kernel = keras.Variable(_B, dtype=dtypes[1], trainable=True)
    y = linear(ops.convert_to_tensor(x, dtypes[0]), kernel,
               ops.convert_to_tensor(bias, dtypes[2]))
    tol = 1e-12 if dtypes[0] == "float64" else 1e-5
    expected = x.astype(dtypes[0]) @ _B + bias
    assert keras.backend.standardize_dtype(y.dtype) == ("float32" if set(dtypes) == {"float32"}
                                                        else "float64")
    np.testing.assert_allclose(ops.convert_to_numpy(y), expected, rtol=tol, atol=tol)
    no_bias = linear(ops.convert_to_tensor(x, dtypes[1]), kernel)
    np.testing.assert_allclose(ops.convert_to_numpy(no_bias), x @ _B, rtol=tol, atol=tol)
    # d<g, x W + b>/d(x, b) = (g W^T, sum of g over the leading axes).
    g = _RNG.normal(size=(*leading, 3))
    dtype = dtypes[0]
    _, pull_x = pullback(lambda t: linear(t, ops.convert_to_tensor(_B, dtype),
                                          ops.convert_to_tensor(bias, dtype)),
                         ops.convert_to_tensor(x, dtype))
    _, pull_b = pullback(lambda t: linear(ops.convert_to_tensor(x, dtype),
                                          ops.convert_to_tensor(_B, dtype), t),
                         ops.convert_to_tensor(bias, dtype))
    g = ops.convert_to_tensor(g, dtype)
    np.testing.assert_allclose(ops.convert_to_numpy(pull_x(g)),
                               ops.convert_to_numpy(g) @ _B.T, rtol=tol, atol=tol)
    np.testing.assert_allclose(ops.convert_to_numpy(pull_b(g)),
                               ops.convert_to_numpy(g).reshape(-1, 3).sum(0),
                               rtol=tol, atol=tol)


def test_relu_is_keras_relu_and_serializes_as_relu():
    from keras_flows.utils.backend import relu

    for dtype in ("float32", "float64"):
        x = ops.convert_to_tensor(_A, dtype)
        y = relu(x)
        assert keras.backend.standardize_dtype(y.dtype) == dtype
        np.testing.assert_array_equal(ops.convert_to_numpy(y), np.maximum(_A, 0).astype(dtype))
    spec = relu(keras.KerasTensor((None, 5), dtype="float64"))
    assert tuple(spec.shape) == (None, 5)
    layer = Dense(3, activation="relu")
    assert layer.activation is relu
    assert layer.get_config()["activation"] == "relu"
    assert Dense.from_config(layer.get_config()).activation is relu


def test_uniform_like_is_keras_uniform_and_draws_inside_a_torch_graph():
    from keras_flows.utils.backend import uniform_like

    x = ops.zeros((256, 3), dtype="float64")
    got = uniform_like(x, keras.random.SeedGenerator(7))
    assert keras.backend.standardize_dtype(got.dtype) == "float64"
    np.testing.assert_array_equal(
        ops.convert_to_numpy(got),
        ops.convert_to_numpy(keras.random.uniform((256, 3), seed=keras.random.SeedGenerator(7),
                                                  dtype="float64")))
    if keras.backend.backend() == "torch":
        import torch

        # fullgraph=True raises at a graph break, as Keras's own draw makes.
        torch._dynamo.reset()
        seed = keras.random.SeedGenerator(7)
        draw = torch.compile(lambda x: uniform_like(x, seed), fullgraph=True,
                             backend="aot_eager")
        a, b = (ops.convert_to_numpy(draw(ops.zeros((256, 3)))) for _ in range(2))
        assert a.shape == (256, 3) and a.dtype == np.float32
        assert 0.0 <= a.min() and a.max() < 1.0 and 0.4 < a.mean() < 0.6
        assert not np.array_equal(a, b)


def _numpy_conv_same(x, kernel):
    """Stride-1 'same' cross-correlation, (B, H, W, I) * (h, w, I, O), odd h, w."""
    h, w = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), (h // 2, h // 2), (w // 2, w // 2), (0, 0)))
    out = np.zeros((*x.shape[:3], kernel.shape[3]))
    for i in range(h):
        for j in range(w):
            out += padded[:, i:i + x.shape[1], j:j + x.shape[2]] @ kernel[i, j]
    return out


@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv2d_matches_numpy_and_its_gradient_is_the_adjoint(size, dtype):
    from keras_flows.utils.backend import conv2d

    x = _RNG.normal(size=(2, 6, 5, 3))
    kernel = _RNG.normal(size=(size, size, 3, 4))
    upstream = _RNG.normal(size=(2, 6, 5, 4))
    expected = _numpy_conv_same(x, kernel)
    tol = 1e-12 if dtype == "float64" else 1e-5
    y = conv2d(ops.convert_to_tensor(x, dtype), ops.convert_to_tensor(kernel, dtype))
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    assert tuple(y.shape) == expected.shape
    np.testing.assert_allclose(ops.convert_to_numpy(y), expected, rtol=tol, atol=tol * 10)
    # d<upstream, conv(x)>/dx is the adjoint convolution of `upstream`: the
    # same 'same' correlation with the kernel flipped and its channels swapped.
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    _, pull = pullback(lambda t: conv2d(t, ops.convert_to_tensor(kernel, dtype)),
                       ops.convert_to_tensor(x, dtype))
    np.testing.assert_allclose(
        ops.convert_to_numpy(pull(ops.convert_to_tensor(upstream, dtype))),
        _numpy_conv_same(upstream, flipped), rtol=tol, atol=tol * 10)


def test_conv2d_layer_is_keras_conv2d():
    from keras_flows.layers import Conv2D

    x = ops.convert_to_tensor(_RNG.normal(size=(2, 7, 7, 3)), "float32")
    for kwargs in ({"padding": "same", "activation": "relu"},
                   {"padding": "valid", "strides": 2}):
        ours = Conv2D(4, 3, **kwargs)
        theirs = keras.layers.Conv2D(4, 3, **kwargs)
        ours.build(x.shape)
        theirs.build(x.shape)
        assert [w.path.split("/")[-1] for w in ours.weights] == ["kernel", "bias"]
        theirs.set_weights(ours.get_weights())
        np.testing.assert_allclose(ops.convert_to_numpy(ours(x)),
                                   ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert type(restored) is Conv2D and restored.strides == (2, 2)


# -- vector-Jacobian products and the divergence (`backend.vjp`, `utils.trace`) --
#
# f(x) = x A^T + w x*x, row-wise on x of shape (B, D): the Jacobian of row b is
# J_b = A + 2 w diag(x_b), so v^T J_b = v_b A + 2 w v_b x_b and
# tr(J_b) = tr(A) + 2 w sum(x_b).

from keras_flows.utils.backend import pullback, vjp  # noqa: E402
from keras_flows.utils.trace import divergence  # noqa: E402

_JA = _RNG.normal(size=(4, 4))
_JX = _RNG.normal(size=(3, 4))
_JV = _RNG.normal(size=(3, 4))
_JW = 0.8


def _jf(w=_JW):
    a_t = _t(_JA.T)
    return lambda x: matmul(x, a_t) + w * x * x


def _jacobians(x, w=_JW):
    return np.stack([_JA + 2 * w * np.diag(row) for row in x])


def test_vjp_matches_closed_form():
    y, g = vjp(_jf(), _t(_JX), _t(_JV))
    np.testing.assert_allclose(ops.convert_to_numpy(y), _JX @ _JA.T + _JW * _JX ** 2,
                               rtol=1e-12)
    expected = np.einsum("bi,bij->bj", _JV, _jacobians(_JX))
    assert keras.backend.standardize_dtype(g.dtype) == "float64"
    np.testing.assert_allclose(ops.convert_to_numpy(g), expected, rtol=1e-12)
    # A list of cotangents: one evaluation, a list of products.
    _, gs = vjp(_jf(), _t(_JX), [_t(_JV), _t(2 * _JV)])
    np.testing.assert_allclose(ops.convert_to_numpy(gs[1]), 2 * expected, rtol=1e-12)
    # An f that ignores x: zeros.
    _, g0 = vjp(lambda x: ops.ones_like(x), _t(_JX), _t(_JV))
    np.testing.assert_array_equal(ops.convert_to_numpy(g0), 0.0)


def test_pullback_evaluates_f_once_for_many_products():
    calls = []

    def f(x):
        calls.append(1)
        return _jf()(x)

    y, pull = pullback(f, _t(_JX))
    np.testing.assert_allclose(ops.convert_to_numpy(y), _JX @ _JA.T + _JW * _JX ** 2,
                               rtol=1e-12)
    jacobians = _jacobians(_JX)
    # u^T J^3, the third term of a power series, inside a while loop.
    _, u = ops.while_loop(lambda k, u: k < 3, lambda k, u: (k + 1, pull(u)),
                          (ops.convert_to_tensor(0), _t(_JV)))
    expected = np.einsum("bi,bij->bj", _JV, np.einsum("bij,bjk,bkl->bil", *[jacobians] * 3))
    assert keras.backend.standardize_dtype(u.dtype) == "float64"
    np.testing.assert_allclose(ops.convert_to_numpy(u), expected, rtol=1e-12)
    assert len(calls) == 1
    _, pull_zero = pullback(lambda x: ops.ones_like(x), _t(_JX))
    np.testing.assert_array_equal(ops.convert_to_numpy(pull_zero(_t(_JV))), 0.0)


def test_exact_divergence():
    y, div = divergence(_jf(), _t(_JX))
    np.testing.assert_allclose(ops.convert_to_numpy(y), _JX @ _JA.T + _JW * _JX ** 2,
                               rtol=1e-12)
    np.testing.assert_allclose(ops.convert_to_numpy(div),
                               np.trace(_jacobians(_JX), axis1=1, axis2=2), rtol=1e-12)
    # An event of rank 2: f(x) = w x*x on (B, 2, 3), tr = 2 w sum(x).
    x = _RNG.normal(size=(2, 2, 3))
    _, div = divergence(lambda x: _JW * x * x, _t(x))
    np.testing.assert_allclose(ops.convert_to_numpy(div), 2 * _JW * x.sum(axis=(1, 2)),
                               rtol=1e-12)


def test_hutchinson_divergence():
    jac = _jacobians(_JX)
    # One probe: exactly eps^T J eps per row.
    eps = _RNG.choice([-1.0, 1.0], size=_JX.shape)
    _, div = divergence(_jf(), _t(_JX), method="hutchinson", noise=_t(eps))
    np.testing.assert_allclose(ops.convert_to_numpy(div),
                               np.einsum("bi,bij,bj->b", eps, jac, eps), rtol=1e-12)
    # Many Rademacher probes: eps^T J eps = tr(J) + sum_{i != j} eps_i eps_j J_ij,
    # whose variance is sum_{i != j} J_ij (J_ij + J_ji) per probe; the mean of
    # K = 2000 (seeded) lies within 4 standard errors of the trace.
    k = 2000
    probes = np.random.default_rng(1).choice([-1.0, 1.0], size=(k,) + _JX.shape)
    _, div = divergence(_jf(), _t(_JX), method="hutchinson", noise=_t(probes))
    off = jac - np.einsum("bii->bi", jac)[:, :, None] * np.eye(4)
    std_error = np.sqrt(np.einsum("bij,bij->b", off, off + off.transpose(0, 2, 1)) / k)
    trace = np.trace(jac, axis1=1, axis2=2)
    assert np.all(np.abs(ops.convert_to_numpy(div) - trace) < 4 * std_error)
    with pytest.raises(ValueError, match="noise"):
        divergence(_jf(), _t(_JX), method="hutchinson")


def _param_grad(fn, w):
    """d fn(w) / d w by the backend's own autodiff."""
    backend = keras.backend.backend()
    w = ops.convert_to_tensor(np.array(w, dtype="float64"))
    if backend == "jax":
        import jax

        return float(jax.grad(fn)(w))
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(w)
            out = fn(w)
        return float(tape.gradient(out, w))
    import torch

    w.requires_grad_()
    return float(torch.autograd.grad(fn(w), w)[0])


@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_divergence_keeps_graph_for_outer_gradient(method):
    # f(x) = w x*x: div = 2 w sum(x), so d sum(div) / dw = 2 sum(x) (and
    # eps^T J eps = 2 w sum(eps^2 x) = 2 w sum(x) for Rademacher eps).
    eps = _t(_RNG.choice([-1.0, 1.0], size=_JX.shape)) if method == "hutchinson" else None

    def total(w):
        _, div = divergence(lambda x: w * x * x, _t(_JX), method=method, noise=eps)
        return ops.sum(div)

    np.testing.assert_allclose(_param_grad(total, 0.3), 2 * _JX.sum(), rtol=1e-12)


def test_divergence_traces():
    fn = _compile(lambda x: divergence(_jf(), x)[1])
    if keras.backend.backend() == "torch":
        fn = lambda x: divergence(_jf(), x)[1]  # noqa: E731 (eager; torch.compile untested)
    np.testing.assert_allclose(ops.convert_to_numpy(fn(_t(_JX))),
                               np.trace(_jacobians(_JX), axis1=1, axis2=2), rtol=1e-12)


def test_known_true_reads_a_flag_after_each_write_on_torch_only():
    from keras_flows.utils.backend import known_true

    flag = keras.Variable(0.0, trainable=False)
    torch = keras.backend.backend() == "torch"
    assert not known_true(flag)
    flag.assign(1.0)
    assert known_true(flag) == torch  # elsewhere the value is never read
    assert known_true(flag) == torch
    flag.assign(0.0)
    assert not known_true(flag)
    flag.assign(1.0)
    assert known_true(flag) == torch


def test_call_layer_skips_dunder_call_only_where_it_changes_nothing():
    from keras_flows.layers import MLP
    from keras_flows.utils.backend import call_layer

    class Counted(MLP):
        calls = 0

        def __call__(self, *args, **kwargs):
            self.calls += 1
            return super().__call__(*args, **kwargs)

    def counted(dtype):
        layer = Counted(3, hidden_units=[5], dtype=dtype)
        layer.build((None, 4))
        rng = np.random.default_rng(0)
        for w in layer.weights:
            w.assign(rng.normal(size=w.shape))
        return layer

    x = np.random.default_rng(1).normal(size=(6, 4))
    layer = counted("float32")
    expected = ops.convert_to_numpy(layer(x.astype("float32")))
    calls = layer.calls
    out = call_layer(layer, ops.convert_to_tensor(x, "float32"))
    assert layer.calls == calls  # built, float32 in, float32 variables: `call`
    np.testing.assert_array_equal(ops.convert_to_numpy(out), expected)

    out = call_layer(layer, ops.convert_to_tensor(x, "float64"))  # needs the input cast
    assert layer.calls == calls + 1
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, rtol=1e-6)

    mixed = counted("mixed_bfloat16")  # float32 variables read as bfloat16 only in its scope
    x16 = ops.convert_to_tensor(x, "bfloat16")
    expected16 = ops.convert_to_numpy(ops.cast(mixed(x16), "float32"))
    out = call_layer(mixed, x16)
    assert mixed.calls == 2
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_array_equal(ops.convert_to_numpy(ops.cast(out, "float32")), expected16)

    fresh = Counted(3, hidden_units=[5])
    call_layer(fresh, ops.convert_to_tensor(x, "float32"))
    assert fresh.calls == 1 and fresh.built

    with keras.RematScope(mode="full"):
        remat = counted("float32")
    call_layer(remat, ops.convert_to_tensor(x, "float32"))
    assert remat.calls == 1   # rematerialised by its `__call__`

    symbolic = call_layer(layer, keras.KerasTensor((None, 4)))
    assert keras.backend.is_keras_tensor(symbolic) and tuple(symbolic.shape) == (None, 3)
    assert layer.calls == calls + 2


def test_call_layer_passes_training_when_call_takes_it():
    from keras_flows.utils.backend import call_layer

    class Doubles(keras.layers.Layer):
        def call(self, x, training=None):
            return x * 2.0 if training else x

    layer = Doubles()
    layer.build((None, 2))
    x = ops.ones((1, 2))
    assert float(ops.sum(call_layer(layer, x, training=True))) == 4.0
    assert float(ops.sum(call_layer(layer, x, training=False))) == 2.0
