"""Gaussian base distributions."""

import math

import keras
from keras import ops

from keras_flows.distributions.base import Distribution, normal_log_prob
from keras_flows.utils.math import upcast


@keras.saving.register_keras_serializable(package="keras_flows")
class StandardNormal(Distribution):
    """N(0, I) on `event_shape`.

    log p(z) = -0.5 * (|z|^2 + D log(2 pi))
    """

    def log_prob(self, z):
        z = upcast(self._flat(z))
        return -0.5 * (ops.sum(ops.square(z), axis=-1) + self.event_size * math.log(2.0 * math.pi))

    def sample(self, n, seed=None, temperature=1.0):
        eps = self._normal(n, seed) * temperature
        return ops.reshape(eps, (-1, *self.event_shape))


@keras.saving.register_keras_serializable(package="keras_flows")
class DiagonalNormal(Distribution):
    """N(mu, diag(sigma^2)) with learned `mu` and `log sigma` (both start at 0).

    log p(z) = sum_i -0.5 ((z_i - mu_i) / sigma_i)^2 - log sigma_i - 0.5 log(2 pi)
    """

    def build(self, input_shape):
        self.loc = self.add_weight(shape=(self.event_size,), initializer="zeros", name="loc")
        self.log_scale = self.add_weight(shape=(self.event_size,), initializer="zeros",
                                         name="log_scale")
        self.built = True

    def log_prob(self, z):
        return ops.sum(normal_log_prob(self._flat(z), self.loc, self.log_scale), axis=-1)

    def sample(self, n, seed=None, temperature=1.0):
        z = self.loc + ops.exp(self.log_scale) * temperature * self._normal(n, seed)
        return ops.reshape(z, (-1, *self.event_shape))
