"""Elementwise bijectors: learned affine, sigmoid, tanh."""

import math

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector, sum_except_batch
from keras_flows.utils.math import arctanh, tanh


@keras.saving.register_keras_serializable(package="keras_flows")
class ElementwiseAffine(Bijector):
    """Learned per-feature affine map (NICE's final scaling layer).

    Forward:  z = x * exp(log_scale) + shift
    Inverse:  x = (z - shift) * exp(-log_scale)
    Log-det:  forward sum(log_scale) (times the positions per feature for
              inputs of rank > 2); inverse the negative.

    Parameters live on the last axis and start at `shift`, `log(scale)`.
    """

    def __init__(self, shift=0.0, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        if scale <= 0:
            raise ValueError(f"`scale` must be positive; got {scale}.")
        self.initial_shift = float(shift)
        self.initial_scale = float(scale)

    def build(self, input_shape):
        d = input_shape[-1]
        self.shift = self.add_weight(
            shape=(d,), initializer=keras.initializers.Constant(self.initial_shift),
            name="shift")
        self.log_scale = self.add_weight(
            shape=(d,), initializer=keras.initializers.Constant(math.log(self.initial_scale)),
            name="log_scale")

    def _log_det(self, x):
        return sum_except_batch(ops.zeros_like(x) + self.log_scale)

    def _forward(self, x, context=None, training=False):
        return x * ops.exp(self.log_scale) + self.shift, self._log_det(x)

    def _inverse(self, z, context=None, training=False):
        return (z - self.shift) * ops.exp(-self.log_scale), -self._log_det(z)

    def get_config(self):
        config = super().get_config()
        config.update(shift=self.initial_shift, scale=self.initial_scale)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class Sigmoid(Bijector):
    """Logistic sigmoid, from R to (0, 1).

    Forward:  z = sigmoid(x)
    Inverse:  x = logit(z) = log(z) - log(1 - z)
    Log-det:  forward sum(log sigmoid(x) + log sigmoid(-x)); inverse the
              negative at x = logit(z).

    `Invert(Sigmoid())` is the logit map, from (0, 1) to R.
    """

    def build(self, input_shape):
        pass

    def _forward(self, x, context=None, training=False):
        log_det = sum_except_batch(ops.log_sigmoid(x) + ops.log_sigmoid(-x))
        return ops.sigmoid(x), log_det

    def _inverse(self, z, context=None, training=False):
        x = ops.log(z) - ops.log1p(-z)
        return x, -sum_except_batch(ops.log(z) + ops.log1p(-z))


@keras.saving.register_keras_serializable(package="keras_flows")
class Tanh(Bijector):
    """Hyperbolic tangent, from R to (-1, 1).

    Forward:  z = tanh(x)
    Inverse:  x = atanh(z)
    Log-det:  forward sum(log(1 - tanh(x)^2)), computed stably as
              sum(2 (log 2 - x - softplus(-2x))); inverse the negative.
    """

    def build(self, input_shape):
        pass

    def _forward(self, x, context=None, training=False):
        # log(1 - tanh^2 x) = log(4 e^-2x / (1 + e^-2x)^2), finite for large |x|.
        log_det = 2.0 * (math.log(2.0) - x - ops.softplus(-2.0 * x))
        return tanh(x), sum_except_batch(log_det)

    def _inverse(self, z, context=None, training=False):
        return arctanh(z), -sum_except_batch(ops.log1p(-ops.square(z)))
