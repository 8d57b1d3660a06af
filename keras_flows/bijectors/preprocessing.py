"""Pixel preprocessing as bijectors, so that its log-det counts in bits/dim.

`Dequantize` maps 8-bit pixels to [0, B), B = 2^n_bits, where each discrete
value owns a bin of width 1; `Rescale` and `LogitTransform` act there.
"""

import math
import warnings

import numpy as np

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector, per_example, sum_except_batch
from keras_flows.utils.backend import is_concrete, uniform_like


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


@keras.saving.register_keras_serializable(package="keras_flows")
class Dequantize(Bijector):
    """8-bit pixels in [0, 255] to continuous values in [0, B), B = 2^n_bits.

    Forward:  q = floor(x / 2^(8 - n_bits))    (n_bits reduction; identity for 8)
              y = q + u, u ~ U[0, 1)^D         (training: uniform dequantization)
              y = q + 1/2                      (otherwise: the bin's midpoint)
    Inverse:  x = clip(floor(y), 0, B - 1) 2^(8 - n_bits)
    Log-det:  0 both ways.

    Not a bijection but a surjection (`surjective = True`): forward is
    one-to-one from pixels, inverse many-to-one onto them, so the inverse of
    the forward is exact on pixels but not the other way round. Each discrete
    value owns a bin of width 1, so a density p on [0, B)^D gives the
    discrete log-likelihood bound log P(q) >= E_u log p(q + u), and bits/dim
    = -log p(y) / (D log 2) with no further constant: a uniform density is
    exactly n_bits bits/dim.

    The inverse sets non-finite values (a flow's inverse can overflow
    float32 for latents far in the tails) to 0, with a warning when eager.

    Args:
        n_bits: bits per pixel value modelled, 1 to 8.
        seed: seed of the training noise.
    """

    surjective = True

    def __init__(self, n_bits=8, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 1 <= int(n_bits) <= 8:
            raise ValueError(f"`n_bits` must be in 1..8; got {n_bits}.")
        self.n_bits = int(n_bits)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        self.built = True

    @property
    def bins(self):
        return 2 ** self.n_bits

    def discretize(self, x):
        """q = floor(x / 2^(8 - n_bits)): the bin of each pixel."""
        return ops.floor(x / 2.0 ** (8 - self.n_bits))

    def to_pixels(self, y):
        """clip(floor(y), 0, B - 1) 2^(8 - n_bits)."""
        return ops.clip(ops.floor(y), 0.0, self.bins - 1.0) * 2.0 ** (8 - self.n_bits)

    def _forward(self, x, context=None, training=False):
        q = self.discretize(x)
        noise = uniform_like(q, self.seed_generator) if training else 0.5
        return q + noise, per_example(x, 0.0)

    def _inverse(self, y, context=None, training=False):
        finite = ops.isfinite(y)
        if is_concrete(y):
            bad = np.sum(~ops.convert_to_numpy(ops.all(ops.reshape(finite, (y.shape[0], -1)),
                                                       axis=1)))
            if bad:
                warnings.warn(f"{bad} of {y.shape[0]} images overflowed float32 while "
                              "inverting the flow; their non-finite pixels are set to 0. "
                              "A lower temperature or a better-trained model avoids it.",
                              stacklevel=5)
        return self.to_pixels(ops.where(finite, y, ops.zeros_like(y))), per_example(y, 0.0)

    def get_config(self):
        config = super().get_config()
        config.update(n_bits=self.n_bits, seed=self.seed)
        return config
