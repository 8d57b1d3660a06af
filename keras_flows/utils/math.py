"""Small numerical helpers shared by the bijectors.

Some exist because, with Keras 3.15, `ops.tanh`, `ops.arctanh` and
`ops.norm` return float32 for float64 inputs on JAX (x64 enabled), and
`ops.matmul` computes float64 products in float32 on PyTorch. These forms
stay in the input's dtype on every backend.
"""

import keras
from keras import ops


def upcast(x):
    """`x` in float32 if it is float16 or bfloat16, else unchanged."""
    if keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16"):
        return ops.cast(x, "float32")
    return x


def tanh(a):
    """tanh(a) = sign(a) (1 - e) / (1 + e), e = exp(-2|a|); 1 - e = -expm1(-2|a|)
    keeps full relative precision for small |a|.

    |a| is taken with `where`, not `ops.abs`: the gradient of abs at 0 is 0
    on TensorFlow and PyTorch, which would give tanh'(0) = 0 instead of 1
    (and freeze a zero-initialised scale network there)."""
    negative = a < 0
    e_minus_one = ops.expm1(-2.0 * ops.where(negative, -a, a))
    t = -e_minus_one / (2.0 + e_minus_one)
    return ops.where(negative, -t, t)


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
