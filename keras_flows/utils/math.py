"""Precise forms of ops that lose float64 on some backends.

With Keras 3.15 on JAX (x64 enabled), `ops.tanh`, `ops.arctanh` and
`ops.norm` return float32 for float64 inputs. These forms stay in the input's
dtype on every backend and are accurate to the last bit or two.
"""

from keras import ops


def tanh(x):
    """tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|}), no cancellation."""
    e = ops.exp(-2.0 * ops.abs(x))
    return ops.sign(x) * (-ops.expm1(-2.0 * ops.abs(x))) / (1.0 + e)


def arctanh(z):
    """atanh(z) = (log1p(z) - log1p(-z)) / 2."""
    return 0.5 * (ops.log1p(z) - ops.log1p(-z))


def norm(x, axis=-1, keepdims=False):
    """Euclidean norm along `axis`."""
    return ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=keepdims))
