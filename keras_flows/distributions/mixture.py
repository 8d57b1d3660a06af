"""Mixture of diagonal Gaussians."""

import keras
from keras import ops

from keras_flows.distributions.base import Distribution, normal_log_prob
from keras_flows.utils.random import seed_generator


@keras.saving.register_keras_serializable(package="keras_flows")
class GaussianMixture(Distribution):
    """sum_k pi_k N(mu_k, diag(sigma_k^2)), with all parameters learned.

    log p(z) = logsumexp_k [log pi_k + sum_i log N(z_i; mu_ki, sigma_ki)]
    with pi = softmax(logits). The means start spread out (N(0, 1) draws, from
    `seed`), the scales at 1 and the weights equal.

    Args:
        event_shape: shape of one sample.
        num_components: K.
        seed: seed for the initial means.
    """

    def __init__(self, event_shape, num_components=4, seed=None, **kwargs):
        self.num_components = int(num_components)
        self.seed = seed
        super().__init__(event_shape, **kwargs)

    def build(self, input_shape):
        k, d = self.num_components, self.event_size
        self.logits = self.add_weight(shape=(k,), initializer="zeros", name="logits")
        self.loc = self.add_weight(
            shape=(k, d), initializer=keras.initializers.RandomNormal(seed=self.seed),
            name="loc")
        self.log_scale = self.add_weight(shape=(k, d), initializer="zeros", name="log_scale")
        self.built = True

    def log_prob(self, z):
        z = self._flat(z)[:, None, :]
        per_component = ops.sum(normal_log_prob(z, self.loc, self.log_scale), axis=-1)
        return ops.logsumexp(ops.log_softmax(self.logits) + per_component, axis=-1)

    def sample(self, n, seed=None, temperature=1.0):
        seed = seed_generator(seed)
        logits = ops.broadcast_to(ops.log_softmax(self.logits), (int(n), self.num_components))
        k = ops.reshape(keras.random.categorical(logits, 1, seed=seed), (-1,))
        loc = ops.take(self.loc, k, axis=0)
        scale = ops.exp(ops.take(self.log_scale, k, axis=0))
        z = loc + scale * temperature * self._normal(n, seed)
        return ops.reshape(z, (-1, *self.event_shape))

    def get_config(self):
        config = super().get_config()
        config.update(num_components=self.num_components, seed=self.seed)
        return config
