"""Planar flow (Rezende & Mohamed 2015): a one-unit residual tanh layer."""

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector
from keras_flows.utils.math import dot, small_normal, tanh


def _sech_squared(a):
    """1 - tanh(a)^2, computed as 4 e / (1 + e)^2 with e = exp(-2|a|).

    This form neither overflows nor loses precision to cancellation for
    large |a|, where 1 - tanh(a)^2 would round to 0.
    """
    e = ops.exp(-2.0 * ops.abs(a))
    return 4.0 * e / ops.square(1.0 + e)


@keras.saving.register_keras_serializable(package="keras_flows")
class Planar(Bijector):
    """Planar flow on vectors of shape (batch, D).

    Forward:  z = x + u_hat * tanh(w.x + b)
    Inverse:  no closed form. With alpha = w.x, taking `w.` of the forward map
              gives the scalar equation
                  w.z = alpha + (w.u_hat) * tanh(alpha + b),
              whose right side is strictly increasing in alpha. Since
              |tanh| <= 1 its root lies in
              [w.z - |w.u_hat|, w.z + |w.u_hat|]; this bracket is bisected
              `inverse_iterations` times, then
                  x = z - u_hat * tanh(alpha + b).
    Log-det:  forward log|1 + (w.u_hat) * (1 - tanh^2(w.x + b))|;
              inverse the negative of the forward log-det at the recovered x.

    Invertibility constraint (paper, appendix A.1): the map is invertible iff
    w.u_hat >= -1, enforced by reparametrising the free weight u as

        u_hat = u + (m(w.u) - w.u) * w / |w|^2,   m(a) = -1 + softplus(a),

    so that w.u_hat = m(w.u) = softplus(w.u) - 1 > -1 whatever u and w are
    (if w = 0 the correction is dropped: u_hat = u and w.u_hat = 0).
    Note that with small weights m(w.u) ~ log 2 - 1, so u_hat is of size
    ~0.3 / |w| and the initial map scales the component of x along w by
    ~log 2 rather than being the identity.

    Tolerance of the inverse (`exact_inverse = False`): each bisection step
    halves a bracket of width 2|w.u_hat|, so after n steps alpha is within
    2|w.u_hat| 2^-n of the root, i.e. at float precision for the default
    n = 60 in float32 and float64 alike. A final Newton step polishes alpha
    and, being taken from the bisection result with its gradient stopped,
    gives the exact implicit-function gradient of the inverse with respect to
    z and the weights (the bisection loop itself is not differentiated).
    `inverse_iterations` should let the bracket reach float precision before
    the Newton step (about 25 steps in float32, 55 in float64 for
    |w.u_hat| ~ 1). The remaining error is the conditioning of the map: where
    1 + (w.u_hat)(1 - tanh^2) is close to 0 (w.u_hat near -1), rounding in
    w.z is amplified by its reciprocal.

    Args:
        seed: integer seed of the weight initialisers (normal, stddev 0.01),
            or None for a random initialisation.
        inverse_iterations: number of bisection steps of the inverse.

    Weights: `u` (D,), `w` (D,), `b` scalar.

    Reference: Rezende & Mohamed 2015, "Variational Inference with
    Normalizing Flows", arXiv:1505.05770.
    """

    exact_inverse = False

    def __init__(self, seed=None, inverse_iterations=60, **kwargs):
        super().__init__(**kwargs)
        self.seed = None if seed is None else int(seed)
        self.inverse_iterations = int(inverse_iterations)
        if self.inverse_iterations < 1:
            raise ValueError(
                "`inverse_iterations` must be a positive integer; got "
                f"{inverse_iterations!r}.")

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "Planar expects vector inputs of shape (batch, D) with D "
                f"known; got input shape {tuple(input_shape)}.")
        features = input_shape[-1]
        self.u = self.add_weight(shape=(features,), name="u",
                                 initializer=small_normal(self.seed, 0))
        self.w = self.add_weight(shape=(features,), name="w",
                                 initializer=small_normal(self.seed, 1))
        self.b = self.add_weight(shape=(), name="b",
                                 initializer=small_normal(self.seed, 2))

    def _constrained(self, dtype):
        """(u_hat, w, b, w.u_hat), with w.u_hat > -1 by construction."""
        u = ops.cast(self.u, dtype)
        w = ops.cast(self.w, dtype)
        b = ops.cast(self.b, dtype)
        wu = ops.sum(w * u)
        w_sq = ops.sum(w * w)
        safe_w_sq = ops.where(w_sq > 0, w_sq, ops.ones_like(w_sq))
        # m(a) - a = softplus(a) - a - 1 = softplus(-a) - 1 (no cancellation).
        u_hat = u + (ops.softplus(-wu) - 1.0) * w / safe_w_sq
        return u_hat, w, b, ops.sum(w * u_hat)

    @staticmethod
    def _log_det(pre_activation, wu_hat):
        # 1 + (w.u_hat) sech^2 > 0 since w.u_hat > -1 and 0 < sech^2 <= 1.
        return ops.log1p(wu_hat * _sech_squared(pre_activation))

    def _forward(self, x, context=None, training=False):
        u_hat, w, b, wu_hat = self._constrained(x.dtype)
        pre = dot(x, w) + b
        z = x + ops.expand_dims(tanh(pre), -1) * u_hat
        return z, self._log_det(pre, wu_hat)

    def _inverse(self, z, context=None, training=False):
        u_hat, w, b, wu_hat = self._constrained(z.dtype)
        target = dot(z, w)

        # Bisection on f(alpha) = alpha + wu_hat tanh(alpha + b), increasing.
        t_const = ops.stop_gradient(target)
        c_const = ops.stop_gradient(wu_hat)
        b_const = ops.stop_gradient(b)
        half_width = ops.abs(c_const) * ops.ones_like(t_const)
        half = ops.cast(0.5, z.dtype)

        def body(i, bracket):
            lo, hi = bracket
            mid = half * (lo + hi)
            below = mid + c_const * tanh(mid + b_const) < t_const
            return ops.where(below, mid, lo), ops.where(below, hi, mid)

        lo, hi = ops.fori_loop(0, self.inverse_iterations, body,
                               (t_const - half_width, t_const + half_width))
        alpha = ops.stop_gradient(half * (lo + hi))

        # One Newton step: refines alpha and carries the implicit gradient.
        pre = alpha + b
        slope = 1.0 + wu_hat * _sech_squared(pre)
        alpha = alpha - (alpha + wu_hat * tanh(pre) - target) / slope

        pre = alpha + b
        x = z - ops.expand_dims(tanh(pre), -1) * u_hat
        return x, -self._log_det(pre, wu_hat)

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed, inverse_iterations=self.inverse_iterations)
        return config
