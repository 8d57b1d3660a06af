"""Pixel preprocessing as bijectors, so that its log-det counts in bits/dim.

Both act on dequantized pixels `x` in [0, B), B = 2^n_bits, where each
discrete value owns a bin of width 1.
"""

import math

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector, sum_except_batch


@keras.saving.register_keras_serializable(package="keras_flows")
class Rescale(Bijector):
    """Pixels in [0, B) to [-0.5, 0.5) (Glow).

    Forward:  y = x / B - 1/2
    Inverse:  x = (y + 1/2) B
    Log-det:  forward -D log B; inverse D log B (D values per example).

    Args:
        n_bits: bits per pixel value; B = 2^n_bits.
    """

    def __init__(self, n_bits=8, **kwargs):
        super().__init__(**kwargs)
        self.n_bits = int(n_bits)

    def build(self, input_shape):
        pass

    def _log_det(self, x):
        return sum_except_batch(ops.full_like(x, -self.n_bits * math.log(2.0)))

    def _forward(self, x, context=None, training=False):
        return x / 2.0 ** self.n_bits - 0.5, self._log_det(x)

    def _inverse(self, y, context=None, training=False):
        return (y + 0.5) * 2.0 ** self.n_bits, -self._log_det(y)

    def get_config(self):
        config = super().get_config()
        config["n_bits"] = self.n_bits
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class LogitTransform(Bijector):
    """Pixels in [0, B) to R through a squeezed logit (RealNVP).

    Forward:  p = alpha + (1 - 2 alpha) x / B;  y = log p - log(1 - p)
    Inverse:  x = (sigmoid(y) - alpha) B / (1 - 2 alpha)
    Log-det:  forward sum[log((1 - 2 alpha) / B) - log p - log(1 - p)];
              inverse the negative.

    `alpha` keeps p away from 0 and 1, where the logit is infinite.

    Args:
        alpha: the squeeze, 0.05 in RealNVP.
        n_bits: bits per pixel value; B = 2^n_bits.

    Reference: Dinh et al. 2017, arXiv:1605.08803, section 4.1.
    """

    def __init__(self, alpha=0.05, n_bits=8, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"`alpha` must be in [0, 0.5); got {alpha}.")
        self.alpha = float(alpha)
        self.n_bits = int(n_bits)

    def build(self, input_shape):
        pass

    def _log_det(self, p):
        scale = math.log((1.0 - 2.0 * self.alpha) / 2.0 ** self.n_bits)
        return sum_except_batch(scale - ops.log(p) - ops.log1p(-p))

    def _forward(self, x, context=None, training=False):
        p = self.alpha + (1.0 - 2.0 * self.alpha) * x / 2.0 ** self.n_bits
        return ops.log(p) - ops.log1p(-p), self._log_det(p)

    def _inverse(self, y, context=None, training=False):
        p = ops.sigmoid(y)
        x = (p - self.alpha) * 2.0 ** self.n_bits / (1.0 - 2.0 * self.alpha)
        return x, -self._log_det(p)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, n_bits=self.n_bits)
        return config
