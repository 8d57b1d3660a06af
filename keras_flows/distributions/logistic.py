"""The standard logistic distribution (NICE's prior)."""

import keras
from keras import ops

from keras_flows.distributions.base import Distribution


@keras.saving.register_keras_serializable(package="keras_flows")
class StandardLogistic(Distribution):
    """Independent standard logistic components on `event_shape`.

    log p(z) = sum_i -z_i - 2 softplus(-z_i);  sampling: z = logit(u), u ~ U(0, 1).
    `temperature` scales z.
    """

    def log_prob(self, z):
        z = self._flat(z)
        return ops.sum(-z - 2.0 * ops.softplus(-z), axis=-1)

    def sample(self, n, seed=None, temperature=1.0):
        u = keras.random.uniform((int(n), self.event_size), minval=1e-7, maxval=1.0 - 1e-7,
                                 seed=seed, dtype=self.compute_dtype)
        z = (ops.log(u) - ops.log1p(-u)) * temperature
        return ops.reshape(z, (-1, *self.event_shape))
