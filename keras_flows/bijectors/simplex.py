"""Bijections of the open probability simplex: calibration maps.

The open simplex S_K = {p in R^K : p_i > 0, sum_i p_i = 1} is a (K-1)-dimensional
manifold. Densities on it (the Dirichlet's) are taken with respect to Lebesgue
measure on the first K-1 coordinates p' = (p_1, ..., p_{K-1}), p_K = 1 - sum p';
the "log volume ratio" returned here is log|det dq'/dp'| in that chart.

Both maps are linear in log-ratio coordinates. With the additive log-ratio
u_i = log(p_i / p_K), i < K, whose Jacobian is

    det du/dp' = det(diag(1/p') + 1 1^T / p_K) = (1 + sum_{i<K} p_i / p_K) / prod_{i<K} p_i
               = 1 / prod_{i<=K} p_i,

a map that is u -> B u + d in these coordinates has log volume ratio

    log|det dq'/dp'| = log|det B| + sum_i log q_i - sum_i log p_i.

Any other basis of log-ratio coordinates (the isometric log-ratio used below)
gives the same determinant: a change of basis T enters as T and T^-1.

Reference: Kull et al. 2019, "Beyond temperature scaling: obtaining
well-calibrated multiclass probabilities with Dirichlet calibration",
arXiv:1910.12656; Guo et al. 2017, "On calibration of modern neural networks",
arXiv:1706.04599; Aitchison 1986, "The Statistical Analysis of Compositional
Data" (log-ratio coordinates).
"""

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.base import Bijector
from keras_flows.utils.backend import constant, matmul


def helmert_basis(num_classes):
    """An orthonormal basis of the sum-zero subspace of R^K, shape (K, K-1).

    Column j (0-based) is (1, ..., 1, -(j+1), 0, ..., 0) / sqrt((j+1)(j+2)),
    with j+1 ones: H^T H = I, H^T 1 = 0 and H H^T = I - 1 1^T / K.
    """
    k = int(num_classes)
    basis = np.zeros((k, k - 1))
    for j in range(k - 1):
        basis[:j + 1, j] = 1.0
        basis[j + 1, j] = -(j + 1.0)
        basis[:, j] /= np.sqrt((j + 1.0) * (j + 2.0))
    return basis


def _check_num_classes(num_classes, name):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ValueError(
            f"{name}: `num_classes` must be an integer >= 2 (the length K of a "
            f"probability row); got {num_classes!r}."
        )
    return int(num_classes)


class _SimplexBijector(Bijector):
    """Shared by the calibration maps: shape checks and the log ratio."""

    manifold = "simplex"

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes, type(self).__name__)

    def _check_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} acts on probability rows: expected input "
                f"shape (batch, {self.num_classes}); got {tuple(input_shape)}."
            )

    @staticmethod
    def _map(log_p, logits, log_det_linear):
        """softmax(logits) and its log volume ratio from p = exp(log_p)."""
        log_q = ops.log_softmax(logits, axis=-1)
        log_ratio = log_det_linear + ops.sum(log_q, axis=-1) - ops.sum(log_p, axis=-1)
        return ops.exp(log_q), log_ratio

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class Calibration(_SimplexBijector):
    """Scalar calibration of probability rows: temperature and class shifts.

    Forward:  q = softmax(log(p) / a + c),  a = exp(log_a) > 0
    Inverse:  p = softmax(a (log(q) - c))
    Log volume ratio (Lebesgue on the first K-1 coordinates):
              forward  -(K-1) log a + sum_i log q_i - sum_i log p_i;
              inverse the negative, at p = inverse(q).

    In additive log-ratio coordinates u_i = log(p_i / p_K) the map is
    u -> u / a + (c_i - c_K), whose determinant is a^-(K-1); the rest is the
    log-ratio Jacobian 1 / prod p (module docstring). It is a bijection of the
    open simplex for every a > 0 and c. Only c modulo constant vectors
    matters: c and c + t 1 give the same map.

    With `shift=False` there is no c: this is temperature scaling,
    q = softmax(log(p) / T) with T = a (Guo et al. 2017). With `shift=True` it
    is the scalar (a, c) calibration; `GeneralizedCalibration` replaces 1/a
    by a matrix. Both start at the identity map (a = 1, c = 0).

    Args:
        num_classes: K, the length of a probability row (>= 2).
        shift: whether to learn the class shifts c (shape (K,)).

    Weights: `log_a` (scalar), and `shift` (shape (K,)) when `shift=True`.

    Example:
        >>> cal = Calibration(10)
        >>> q, log_ratio = cal.forward(probs)          # probs: (B, 10) rows
    """

    def __init__(self, num_classes, shift=True, **kwargs):
        super().__init__(num_classes, **kwargs)
        if not isinstance(shift, (bool, np.bool_)):
            raise ValueError(f"Calibration: `shift` must be True or False; got {shift!r}.")
        self.use_shift = bool(shift)

    def build(self, input_shape):
        self._check_shape(input_shape)
        self.log_a = self.add_weight(name="log_a", shape=(), initializer="zeros")
        self.shift = (self.add_weight(name="shift", shape=(self.num_classes,),
                                      initializer="zeros")
                      if self.use_shift else None)
        self.built = True

    def _shift(self, dtype):
        if self.shift is None:
            return ops.zeros((self.num_classes,), dtype=dtype)
        return ops.cast(self.shift, dtype)

    def matrix(self):
        """A = I / a: the map is q = softmax(A log p + c)."""
        eye = ops.eye(self.num_classes, dtype=self.compute_dtype)
        return eye * ops.exp(-ops.cast(self.log_a, self.compute_dtype))

    def _forward(self, x, context=None, training=False):
        log_a = ops.cast(self.log_a, x.dtype)
        log_p = ops.log(x)
        return self._map(log_p, log_p * ops.exp(-log_a) + self._shift(x.dtype),
                         -(self.num_classes - 1) * log_a)

    def _inverse(self, z, context=None, training=False):
        log_a = ops.cast(self.log_a, z.dtype)
        log_q = ops.log(z)
        return self._map(log_q, (log_q - self._shift(z.dtype)) * ops.exp(log_a),
                         (self.num_classes - 1) * log_a)

    def get_config(self):
        config = super().get_config()
        config.update(shift=self.use_shift)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class GeneralizedCalibration(_SimplexBijector):
    """Matrix calibration of probability rows: q = softmax(A log p + c).

    Parameterisation: A = H M H^T + 1 1^T / K, where H (K x (K-1),
    `helmert_basis`) is an orthonormal basis of the sum-zero subspace and M,
    the weight `matrix`, is (K-1) x (K-1); c, the weight `shift`, is (K,).
    Then A 1 = 1 (the condition A 1 = lambda 1, with lambda = 1: any lambda
    gives the same map, since softmax ignores the term lambda log p_K 1 that
    A adds to A (log p - log p_K 1)), and in isometric log-ratio coordinates
    h = H^T log p the map is h -> M h + H^T c.

    Forward:  q = softmax(H M H^T log p + c)
    Inverse:  p = softmax(H M^-1 H^T (log q - c))
    Log volume ratio (Lebesgue on the first K-1 coordinates):
              forward  log|det M| + sum_i log q_i - sum_i log p_i;
              inverse the negative, at p = inverse(q).

    Bijection condition: M invertible, i.e. A restricted to the sum-zero
    subspace, followed by the centering projection I - 1 1^T / K, is
    invertible (equivalently, the map A induces on R^K / span(1) is). M is a
    free matrix, not a triangular factorisation, so that two calibrations
    compose exactly into one (`compose`); it starts at the identity, and
    log|det M| -> -inf as M nears a singular matrix, so maximum-likelihood
    training of a density never crosses one. The condition is not enforced
    otherwise: fitted on labels alone, a singular M gives a well-defined but
    non-invertible map (log ratio -inf, `inverse` undefined).

    Composition: applying (A1, c1), then (A2, c2) is the single calibration
    (A2 A1, A2 c1 + c2), since log softmax(s) = s - logsumexp(s) 1 and
    A2 1 is a multiple of 1. In M: M = M2 M1. See `compose`.

    `Calibration` is the special case A = I / a (M = I / a). Starts at the
    identity map (M = I, c = 0).

    Args:
        num_classes: K, the length of a probability row (>= 2).

    Weights: `matrix_weight` (M, named "matrix", shape (K-1, K-1)) and
    `shift` (c, shape (K,)). `matrix()` gives A.

    Reference: Kull et al. 2019 (Dirichlet calibration, q = softmax(W log p + b)),
    arXiv:1910.12656.
    """

    def build(self, input_shape):
        self._check_shape(input_shape)
        k = self.num_classes
        self.matrix_weight = self.add_weight(
            name="matrix", shape=(k - 1, k - 1), initializer="identity")
        self.shift = self.add_weight(name="shift", shape=(k,), initializer="zeros")
        self.built = True

    def basis(self, dtype=None):
        """H, the (K, K-1) Helmert basis, as a constant made in the caller's trace."""
        return constant(helmert_basis(self.num_classes), dtype=dtype or self.compute_dtype)

    def matrix(self):
        """The K x K matrix A = H M H^T + 1 1^T / K (A 1 = 1)."""
        basis = self.basis()
        m = ops.cast(self.matrix_weight, basis.dtype)
        k = self.num_classes
        return matmul(matmul(basis, m), ops.transpose(basis)) + ops.ones((k, k), basis.dtype) / k

    def _log_abs_det(self, x):
        # log|det M| = sum_i log|R_ii| for M = Q R. Not `ops.slogdet`: TensorFlow
        # has no XLA kernel for it, so a `jit_compile=True` step would fail.
        r = ops.qr(ops.cast(self.matrix_weight, x.dtype))[1]
        return ops.sum(ops.log(ops.abs(ops.diagonal(r)))) * ops.ones_like(x[:, 0])

    def _forward(self, x, context=None, training=False):
        basis = self.basis(x.dtype)
        m = ops.cast(self.matrix_weight, x.dtype)
        log_p = ops.log(x)
        h = matmul(matmul(log_p, basis), ops.transpose(m))
        logits = matmul(h, ops.transpose(basis)) + ops.cast(self.shift, x.dtype)
        return self._map(log_p, logits, self._log_abs_det(x))

    def _inverse(self, z, context=None, training=False):
        basis = self.basis(z.dtype)
        m = ops.cast(self.matrix_weight, z.dtype)
        log_q = ops.log(z)
        h = matmul(log_q - ops.cast(self.shift, z.dtype), basis)
        h = ops.transpose(ops.solve(m, ops.transpose(h)))
        return self._map(log_q, matmul(h, ops.transpose(basis)), -self._log_abs_det(z))

    @classmethod
    def compose(cls, first, second, **kwargs):
        """The single `GeneralizedCalibration` equal to `first`, then `second`.

        `second.forward(first.forward(p)[0])` equals `compose(first,
        second).forward(p)` (values and log ratios): with A_i, c_i the maps'
        matrices and shifts, the result has A = A2 A1 and c = A2 c1 + c2
        (M = M2 M1 in the Helmert basis). Each argument is a built
        `Calibration` or `GeneralizedCalibration` on the same K. `kwargs`
        (e.g. `name`, `dtype`) go to the new layer; its dtype defaults to
        `first`'s.
        """
        for layer in (first, second):
            if not isinstance(layer, (Calibration, GeneralizedCalibration)) or not layer.built:
                raise ValueError(
                    "compose takes two built Calibration or GeneralizedCalibration "
                    f"layers; got {layer!r}."
                )
        if first.num_classes != second.num_classes:
            raise ValueError(
                "compose needs calibrations on the same number of classes; got "
                f"{first.num_classes} and {second.num_classes}."
            )
        k = first.num_classes
        basis = helmert_basis(k)

        def parts(layer):
            a = np.asarray(ops.convert_to_numpy(layer.matrix()), dtype=np.float64)
            c = (np.zeros(k) if getattr(layer, "shift", None) is None
                 else np.asarray(ops.convert_to_numpy(layer.shift), dtype=np.float64))
            return a, c

        (a1, c1), (a2, c2) = parts(first), parts(second)
        kwargs.setdefault("dtype", first.dtype_policy)
        result = cls(k, **kwargs)
        result.build((None, k))
        result.matrix_weight.assign((basis.T @ (a2 @ a1) @ basis).astype(result.variable_dtype))
        result.shift.assign((a2 @ c1 + c2).astype(result.variable_dtype))
        return result
