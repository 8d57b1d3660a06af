"""Bijections of the unit sphere S^(n-1) in R^n: normalized translation, linear
and affine maps.

Each map is y = g(x) / ||g(x)|| for an ambient map g, restricted to the
sphere. A density on the sphere (with respect to its surface measure)
changes by the log volume ratio: the log of the factor by which the map
scales an infinitesimal (n-1)-volume on the sphere,

    log|det(E_y^T J E_x)|,

with J the Jacobian of the ambient map x -> g(x) / ||g(x)|| and E_x, E_y
orthonormal bases of the tangent spaces at x and y. It is derived in each
class from two facts:

- Linear g(x) = M x: in polar coordinates x = r theta, M x = rho phi,
  rho = r ||M theta||, the volumes r^(n-1) dr dtheta and rho^(n-1) drho dphi
  differ by |det M|; with drho/dr = ||M theta|| at fixed theta,
  dphi/dtheta = |det M| r^(n-1) / (rho^(n-1) ||M theta||) = |det M| / ||M theta||^n.
  (The angular central Gaussian density; Tyler 1987.)
- Translation g(x) = x + c: the tangent map is v -> (I - y y^T) v / ||x + c||;
  the orthogonal projection of x's tangent space onto y's has determinant
  x.y = (1 + x.c) / ||x + c||, so the ratio is (1 + x.c) / ||x + c||^n.

Reference: Rezende et al. 2020, "Normalizing flows on tori and spheres",
arXiv:2002.02428 (volume ratios of flows on spheres); Gemici et al. 2016,
"Normalizing flows on Riemannian manifolds", arXiv:1611.02304; Tyler 1987,
"Statistical analysis for the angular central Gaussian distribution on the
sphere", Biometrika 74(3).
"""

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.base import Bijector
from keras_flows.utils.backend import matmul


def _norm(v):
    return ops.sqrt(ops.sum(ops.square(v), axis=-1))


def _inside_unit_ball(v):
    """v / sqrt(1 + ||v||^2): a smooth bijection of R^n onto the open unit ball."""
    return v / ops.sqrt(1.0 + ops.sum(ops.square(v)))


def _translate(x, b):
    """y = (x + b) / ||x + b|| for ||x|| = 1, ||b|| < 1, and its log ratio
    log(1 + x.b) - n log||x + b||."""
    n = x.shape[-1]
    g = x + b
    norm = _norm(g)
    log_ratio = ops.log1p(ops.sum(x * b, axis=-1)) - n * ops.log(norm)
    return g / norm[:, None], log_ratio


def _untranslate(y, b):
    """The x with ||x|| = 1 on the ray x + b = t y (t > 0), and the inverse log
    ratio, the negative of `_translate`'s at x.

    ||t y - b|| = 1 is t^2 - 2 t (y.b) + ||b||^2 - 1 = 0; the product of its roots
    is ||b||^2 - 1 < 0, so exactly one is positive:
    t = y.b + sqrt(disc), disc = (y.b)^2 + 1 - ||b||^2, taken as
    (1 - ||b||^2) / (sqrt(disc) - y.b) when y.b < 0 (no cancellation).
    Then 1 + x.b = t sqrt(disc) and ||x + b|| = t.
    """
    n = y.shape[-1]
    yb = ops.sum(y * b, axis=-1)
    one_minus_b2 = 1.0 - ops.sum(ops.square(b))
    root = ops.sqrt(ops.square(yb) + one_minus_b2)
    negative_part = ops.where(yb < 0, yb, ops.zeros_like(yb))  # ops.minimum: float32 on torch
    t = ops.where(yb >= 0, yb + root, one_minus_b2 / (root - negative_part))
    x = t[:, None] * y - b
    log_ratio = ops.log(t) + ops.log(root) - n * ops.log(t)
    return x, -log_ratio


class _SphereBijector(Bijector):
    """Shared by the sphere maps: `dim` and the input shape check."""

    manifold = "sphere"

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
            raise ValueError(
                f"{type(self).__name__}: `dim` must be an integer >= 2 (points on "
                f"S^(dim-1) in R^dim); got {dim!r}."
            )
        self.dim = int(dim)

    def _check_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} acts on unit vectors: expected input shape "
                f"(batch, {self.dim}); got {tuple(input_shape)}."
            )

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim)
        return config


class _LinearPart:
    """M = L U: L unit lower triangular, U upper triangular with diagonal
    exp(log_diag) > 0, so det M = exp(sum(log_diag)) > 0 and M is invertible
    for every value of the weights. All three weights at 0 give M = I."""

    def _build_linear(self, initializer):
        d = self.dim
        self.lower = self.add_weight(name="lower", shape=(d, d), initializer=initializer)
        self.upper = self.add_weight(name="upper", shape=(d, d), initializer=initializer)
        self.log_diag = self.add_weight(name="log_diag", shape=(d,), initializer=initializer)

    def _factors(self, dtype):
        ones = ops.ones((self.dim, self.dim), dtype=dtype)
        eye = ops.eye(self.dim, dtype=dtype)
        lower = ops.cast(self.lower, dtype) * ops.tril(ones, -1) + eye
        upper = (ops.cast(self.upper, dtype) * ops.triu(ones, 1)
                 + eye * ops.exp(ops.cast(self.log_diag, dtype)))
        return lower, upper

    def matrix(self, dtype=None):
        """The invertible matrix M = L U, shape (dim, dim)."""
        lower, upper = self._factors(dtype or self.compute_dtype)
        return matmul(lower, upper)

    def _log_det(self, dtype):
        return ops.sum(ops.cast(self.log_diag, dtype))

    def _apply(self, x):
        """x M^T, rows of M x."""
        return matmul(x, ops.transpose(self.matrix(x.dtype)))

    def _solve(self, y):
        """Rows of M^-1 y: two triangular solves."""
        lower, upper = self._factors(y.dtype)
        v = ops.solve_triangular(lower, ops.transpose(y), lower=True)
        return ops.transpose(ops.solve_triangular(upper, v, lower=False))


@keras.saving.register_keras_serializable(package="keras_flows")
class NormalizedTranslation(_SphereBijector):
    """Normalized translation of the sphere S^(n-1): y = (x + c) / ||x + c||.

    Forward:  y = (x + c) / ||x + c||
    Inverse:  x = t y - c,  t = y.c + sqrt((y.c)^2 + 1 - ||c||^2)
              (the positive root of ||t y - c|| = 1 along the ray)
    Log volume ratio:
              forward  log(1 + x.c) - n log||x + c||;
              inverse  -(log(t sqrt((y.c)^2 + 1 - ||c||^2)) - n log t), the
              negative of the forward ratio at x (1 + x.c = t sqrt(...),
              ||x + c|| = t).

    Derivation: the tangent map at x is v -> (I - y y^T) v / ||x + c||, the
    projection of T_x onto T_y (determinant x.y = (1 + x.c) / ||x + c||)
    divided by ||x + c|| in each of the n-1 directions.

    Bijection condition: ||c|| < 1. Then x + c != 0 on the sphere and the
    quadratic above has exactly one positive root for every y; for
    ||c|| >= 1 the map is undefined at x = -c (||c|| = 1) or covers only a
    cap. The parameterisation enforces it: c = v / sqrt(1 + ||v||^2) for the
    unconstrained weight v, a smooth bijection of R^n onto the open unit
    ball. The map moves mass towards c.

    Args:
        dim: n, the ambient dimension (points on S^(n-1), n >= 2).
        translation_initializer: initializer of v; "zeros" (c = 0, the
            identity map) by default. A small random one (e.g.
            `keras.initializers.RandomNormal(0.1, seed=0)`) breaks the
            symmetry between layers stacked in a `Chain`.

    Weights: `translation` (v, shape (n,)). `translation_vector()` gives c.
    """

    def __init__(self, dim, translation_initializer="zeros", **kwargs):
        super().__init__(dim, **kwargs)
        self.translation_initializer = keras.initializers.get(translation_initializer)

    def build(self, input_shape):
        self._check_shape(input_shape)
        self.translation = self.add_weight(name="translation", shape=(self.dim,),
                                           initializer=self.translation_initializer)
        self.built = True

    def translation_vector(self, dtype=None):
        """c = v / sqrt(1 + ||v||^2), with ||c|| < 1."""
        return _inside_unit_ball(ops.cast(self.translation, dtype or self.compute_dtype))

    def _forward(self, x, context=None, training=False):
        return _translate(x, self.translation_vector(x.dtype))

    def _inverse(self, z, context=None, training=False):
        return _untranslate(z, self.translation_vector(z.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(translation_initializer=keras.initializers.serialize(
            self.translation_initializer))
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class NormalizedLinear(_LinearPart, _SphereBijector):
    """Normalized linear map of the sphere S^(n-1): y = M x / ||M x||.

    Forward:  y = M x / ||M x||
    Inverse:  x = M^-1 y / ||M^-1 y||
    Log volume ratio:
              forward  log|det M| - n log||M x||;
              inverse  -log|det M| - n log||M^-1 y||, the negative of the
              forward ratio at x (||M^-1 y|| = 1 / ||M x||).

    Derivation (polar coordinates, module docstring): M scales n-volume by
    |det M| and the radius along x by ||M x||, so the directions are scaled by
    |det M| / ||M x||^n. Pushing the uniform distribution on the sphere
    through the inverse gives the angular central Gaussian, density
    |det M| ||M x||^-n / |S^(n-1)|, with Sigma = (M^T M)^-1 (Tyler 1987).

    Bijection condition: M invertible. The parameterisation M = L U (unit
    lower triangular L, upper triangular U with positive diagonal
    exp(log_diag)) keeps det M = exp(sum(log_diag)) > 0 for every value of
    the weights. The map is invariant to the scale of M (M and s M, s > 0,
    give the same y), so one direction of the weights changes nothing.

    Args:
        dim: n, the ambient dimension (points on S^(n-1), n >= 2).
        matrix_initializer: initializer of the weights `lower`, `upper`
            (strict triangles) and `log_diag`; "zeros" (M = I, the identity
            map) by default.

    Weights: `lower` and `upper` (shape (n, n), only their strict triangles
    are used) and `log_diag` (shape (n,)). `matrix()` gives M.

    Reference: Tyler 1987, "Statistical analysis for the angular central
    Gaussian distribution on the sphere", Biometrika 74(3).
    """

    def __init__(self, dim, matrix_initializer="zeros", **kwargs):
        super().__init__(dim, **kwargs)
        self.matrix_initializer = keras.initializers.get(matrix_initializer)

    def build(self, input_shape):
        self._check_shape(input_shape)
        self._build_linear(self.matrix_initializer)
        self.built = True

    def _forward(self, x, context=None, training=False):
        g = self._apply(x)
        norm = _norm(g)
        return g / norm[:, None], self._log_det(x.dtype) - self.dim * ops.log(norm)

    def _inverse(self, z, context=None, training=False):
        g = self._solve(z)
        norm = _norm(g)
        return g / norm[:, None], -self._log_det(z.dtype) - self.dim * ops.log(norm)

    def get_config(self):
        config = super().get_config()
        config.update(matrix_initializer=keras.initializers.serialize(
            self.matrix_initializer))
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class NormalizedAffine(_LinearPart, _SphereBijector):
    """Normalized affine map of the sphere S^(n-1): y = (M x + c) / ||M x + c||.

    Parameterised by M and b = M^-1 c (c = M b), so that
    y = M (x + b) / ||M (x + b)||: the normalized translation by b, then the
    normalized linear map M (normalizing in between changes nothing, the
    linear one being scale invariant).

    Forward:  y = (M x + c) / ||M x + c||
    Inverse:  w = M^-1 y / ||M^-1 y||;  x = t w - b,
              t = w.b + sqrt((w.b)^2 + 1 - ||b||^2)
    Log volume ratio (sum of the two parts' ratios, the ||x + b|| terms
    cancelling):
              forward  log|det M| + log(1 + x.b) - n log||M x + c||;
              inverse  the negative of the forward ratio at x, i.e.
              -log|det M| - n log||M^-1 y|| - log(t sqrt((w.b)^2 + 1 - ||b||^2)) + n log t.

    Bijection condition: M invertible and ||M^-1 c|| < 1. If ||M^-1 c|| >= 1,
    x + b vanishes on the sphere or its direction covers only a cap. Both are
    enforced: M = L U with positive diagonal (as in `NormalizedLinear`) and
    b = v / sqrt(1 + ||v||^2) for the unconstrained weight v.

    Args:
        dim: n, the ambient dimension (points on S^(n-1), n >= 2).
        matrix_initializer: initializer of M's weights; "zeros" (M = I).
        translation_initializer: initializer of v; "zeros" (c = 0).
            Both zeros: the identity map.

    Weights: `lower`, `upper`, `log_diag` (M, as in `NormalizedLinear`) and
    `translation` (v, shape (n,)). `matrix()` gives M, `translation_vector()`
    gives c = M b.
    """

    def __init__(self, dim, matrix_initializer="zeros", translation_initializer="zeros",
                 **kwargs):
        super().__init__(dim, **kwargs)
        self.matrix_initializer = keras.initializers.get(matrix_initializer)
        self.translation_initializer = keras.initializers.get(translation_initializer)

    def build(self, input_shape):
        self._check_shape(input_shape)
        self._build_linear(self.matrix_initializer)
        self.translation = self.add_weight(name="translation", shape=(self.dim,),
                                           initializer=self.translation_initializer)
        self.built = True

    def _pre_translation(self, dtype):
        """b = M^-1 c, with ||b|| < 1."""
        return _inside_unit_ball(ops.cast(self.translation, dtype))

    def translation_vector(self, dtype=None):
        """c = M b."""
        b = self._pre_translation(dtype or self.compute_dtype)
        return self._apply(b[None])[0]

    def _forward(self, x, context=None, training=False):
        b = self._pre_translation(x.dtype)
        g = self._apply(x + b)
        norm = _norm(g)
        log_ratio = (self._log_det(x.dtype) + ops.log1p(ops.sum(x * b, axis=-1))
                     - self.dim * ops.log(norm))
        return g / norm[:, None], log_ratio

    def _inverse(self, z, context=None, training=False):
        w = self._solve(z)
        norm = _norm(w)
        x, log_ratio = _untranslate(w / norm[:, None], self._pre_translation(z.dtype))
        return x, log_ratio - self._log_det(z.dtype) - self.dim * ops.log(norm)

    def get_config(self):
        config = super().get_config()
        config.update(
            matrix_initializer=keras.initializers.serialize(self.matrix_initializer),
            translation_initializer=keras.initializers.serialize(
                self.translation_initializer))
        return config
