"""Radial flow (Rezende & Mohamed 2015): contraction/expansion around a point."""

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector
from keras_flows.utils.math import safe_norm, small_normal


@keras.saving.register_keras_serializable(package="keras_flows")
class Radial(Bijector):
    """Radial flow on vectors of shape (batch, D).

    With r = |x - x0| and h(r) = 1 / (alpha_hat + r):

    Forward:  z = x + beta_hat * h(r) * (x - x0)
    Inverse:  r_z = |z - x0| = r (1 + beta_hat h(r)), i.e. r is the
              non-negative root of
                  r^2 + (alpha_hat + beta_hat - r_z) r - alpha_hat r_z = 0,
              taken in the cancellation-free form (p = alpha_hat + beta_hat - r_z)
                  r = 2 alpha_hat r_z / (p + sqrt(p^2 + 4 alpha_hat r_z))  if p >= 0,
                  r = (-p + sqrt(p^2 + 4 alpha_hat r_z)) / 2              if p < 0;
              then x = x0 + (z - x0) / (1 + beta_hat h(r)).
    Log-det:  forward (D - 1) log(1 + beta_hat h) + log(1 + beta_hat h + beta_hat h'(r) r),
              h'(r) = -1 / (alpha_hat + r)^2; inverse the negative at the
              recovered r. Both logs are evaluated from sums of positive
              terms: 1 + beta_hat h = (softplus(b) + r) h and
              1 + beta_hat h + beta_hat h' r
                = (alpha_hat softplus(b) + 2 alpha_hat r + r^2) h^2.

    Invertibility constraint (paper, appendix A.2): the map is invertible iff
    beta_hat >= -alpha_hat, enforced by the reparametrisation

        alpha_hat = softplus(a) > 0,   beta_hat = -alpha_hat + softplus(b),

    so alpha_hat + beta_hat = softplus(b) > 0 and r -> r_z is strictly
    increasing for any raw a, b. The inverse is closed form
    (`exact_inverse = True`).

    Args:
        seed: integer seed of the weight initialisers (normal, stddev 0.01),
            or None for a random initialisation.

    Weights: `x0` (D,), `a` scalar, `b` scalar.

    Reference: Rezende & Mohamed 2015, "Variational Inference with
    Normalizing Flows", arXiv:1505.05770.
    """

    exact_inverse = True

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = None if seed is None else int(seed)

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "Radial expects vector inputs of shape (batch, D) with D "
                f"known; got input shape {tuple(input_shape)}.")
        self.features = int(input_shape[-1])
        self.x0 = self.add_weight(shape=(self.features,), name="x0",
                                  initializer=small_normal(self.seed, 0))
        self.a = self.add_weight(shape=(), name="a",
                                 initializer=small_normal(self.seed, 1))
        self.b = self.add_weight(shape=(), name="b",
                                 initializer=small_normal(self.seed, 2))

    def _constrained(self, dtype):
        """(x0, alpha_hat, softplus(b) = alpha_hat + beta_hat)."""
        x0 = ops.cast(self.x0, dtype)
        alpha_hat = ops.softplus(ops.cast(self.a, dtype))
        sum_hat = ops.softplus(ops.cast(self.b, dtype))
        return x0, alpha_hat, sum_hat

    def _log_det(self, r, alpha_hat, sum_hat):
        log_a_r = ops.log(alpha_hat + r)
        dims_minus_one = ops.cast(self.features - 1, r.dtype)
        radial_part = ops.log(alpha_hat * sum_hat + 2.0 * alpha_hat * r
                              + ops.square(r)) - 2.0 * log_a_r
        return dims_minus_one * (ops.log(sum_hat + r) - log_a_r) + radial_part

    def _forward(self, x, context=None, training=False):
        x0, alpha_hat, sum_hat = self._constrained(x.dtype)
        d = x - x0
        r = safe_norm(d)
        # 1 + beta_hat h(r) = (softplus(b) + r) / (alpha_hat + r).
        scale = (sum_hat + r) / (alpha_hat + r)
        z = x0 + ops.expand_dims(scale, -1) * d
        return z, self._log_det(r, alpha_hat, sum_hat)

    def _inverse(self, z, context=None, training=False):
        x0, alpha_hat, sum_hat = self._constrained(z.dtype)
        d = z - x0
        r_z = safe_norm(d)
        p = sum_hat - r_z
        root = ops.sqrt(ops.square(p) + 4.0 * alpha_hat * r_z)
        nonneg = p >= 0
        # For p >= 0, p + root >= softplus(b) > 0; the guard only keeps the
        # unused branch finite for the gradient.
        denominator = ops.where(nonneg, p + root, ops.ones_like(p))
        r = ops.where(nonneg, 2.0 * alpha_hat * r_z / denominator,
                      0.5 * (root - p))
        scale = (alpha_hat + r) / (sum_hat + r)
        x = x0 + ops.expand_dims(scale, -1) * d
        return x, -self._log_det(r, alpha_hat, sum_hat)

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config
