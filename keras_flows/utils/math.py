"""Small numerical helpers shared by the bijectors.

Some exist because, with Keras 3.15, `ops.tanh`, `ops.arctanh` and
`ops.norm` return float32 for float64 inputs on JAX (x64 enabled), and
`ops.matmul` computes float64 products in float32 on PyTorch. These forms
stay in the input's dtype on every backend.
"""

import math

import numpy as np
import keras
from keras import ops


def upcast(x):
    """`x` in float32 if it is float16 or bfloat16, else unchanged."""
    if keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16"):
        return ops.cast(x, "float32")
    return x


def tanh(a):
    """tanh(a) in the dtype of `a` on every backend.

    `ops.tanh`, except for float64 on JAX, where Keras 3.15's returns
    float32. There tanh(a) = sign(a) (1 - e) / (1 + e), e = exp(-2|a|), and
    1 - e = -expm1(-2|a|) keeps full relative precision for small |a|; |a|
    is taken with `where`, not `ops.abs`, so that tanh'(0) = 1."""
    if keras.backend.backend() != "jax" or keras.backend.standardize_dtype(a.dtype) != "float64":
        return ops.tanh(a)
    negative = a < 0
    e_minus_one = ops.expm1(-2.0 * ops.where(negative, -a, a))
    t = -e_minus_one / (2.0 + e_minus_one)
    return ops.where(negative, -t, t)


def softmax(x, axis=-1):
    """softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m), m = max_j x_j, over `axis`.

    `ops.softmax`, except over an axis of fewer than 16 entries, where the
    formula is written out: PyTorch's CPU kernel is slow on a short last
    axis, 0.59 ms against 0.12 ms for a spline's (512, 8, 8) bin widths,
    and faster from 16 entries on (`benchmarks/op_overhead.py`). Under XLA
    the two compile alike. m carries no gradient; the softmax does not
    depend on it."""
    if x.shape[axis] is None or x.shape[axis] >= 16:
        return ops.softmax(x, axis=axis)
    e = ops.exp(x - ops.stop_gradient(ops.amax(x, axis=axis, keepdims=True)))
    return e / ops.sum(e, axis=axis, keepdims=True)


def arctanh(z):
    """atanh(z) = (log1p(z) - log1p(-z)) / 2."""
    return 0.5 * (ops.log1p(z) - ops.log1p(-z))


def dot(x, w):
    """Sum of x * w over the last axis."""
    return ops.sum(x * w, axis=-1)


def safe_norm(d):
    """|d| over the last axis, with a finite gradient at d = 0."""
    sq = ops.sum(ops.square(d), axis=-1)
    positive = sq > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, sq, ops.ones_like(sq))),
                     ops.zeros_like(sq))


def small_normal(seed, offset, stddev=0.01):
    """N(0, stddev^2) initializer seeded from `seed + offset` (or unseeded)."""
    return keras.initializers.RandomNormal(
        stddev=stddev, seed=None if seed is None else int(seed) + offset)


# Stirling's series for log Gamma(y), y >= 8: the first omitted term,
# 1 / (1188 y^9), is below 7e-12.
_STIRLING = (1.0 / 12.0, -1.0 / 360.0, 1.0 / 1260.0, -1.0 / 1680.0)
_SHIFT = 8


def log_gamma(x):
    """log Gamma(x) for x > 0, elementwise, in `x`'s dtype (`keras.ops` has no
    lgamma).

    log Gamma(x) = log Gamma(x + 8) - sum_{k<8} log(x + k) for x < 8, and for
    y >= 8 Stirling's series
    (y - 1/2) log y - y + log(2 pi) / 2 + 1/(12 y) - 1/(360 y^3) + 1/(1260 y^5)
    - 1/(1680 y^7), with an absolute error below 7e-12 (float64).
    """
    x = ops.convert_to_tensor(x)
    small = x < _SHIFT
    y = ops.where(small, x + _SHIFT, x)
    shift = 0.0
    for k in range(_SHIFT):
        shift = shift + ops.log(ops.where(small, x + k, ops.ones_like(x)))
    inv, inv2 = 1.0 / y, 1.0 / ops.square(y)
    series = inv * (_STIRLING[0] + inv2 * (_STIRLING[1] + inv2 * (
        _STIRLING[2] + inv2 * _STIRLING[3])))
    return (y - 0.5) * ops.log(y) - y + 0.5 * math.log(2.0 * math.pi) + series - shift


def exactly(values):
    """An initializer returning `values` in the weight's dtype, float64 included
    (`keras.initializers.Constant` of a list goes through float32 on TensorFlow)."""
    values = np.asarray(values, dtype="float64")

    def initializer(shape, dtype=None):
        return ops.convert_to_tensor(np.reshape(values, shape), dtype=dtype)

    return initializer
