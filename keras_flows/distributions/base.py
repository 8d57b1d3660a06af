"""The base-distribution contract."""

import math

import keras
from keras import ops

from keras_flows.utils.math import upcast


class Distribution(keras.layers.Layer):
    """A density on `event_shape`, with `log_prob` and `sample`.

    `log_prob(z)` returns one value per example, shape `(batch,)`;
    `sample(n, seed=None, temperature=1.0)` returns `(n, *event_shape)`.
    `temperature` scales the spread of the samples (the standard deviation of
    a Gaussian), as in Glow's reduced-temperature sampling.
    """

    def __init__(self, event_shape, **kwargs):
        super().__init__(**kwargs)
        self.event_shape = tuple(int(d) for d in event_shape)
        self.event_size = math.prod(self.event_shape)
        self.build((None, *self.event_shape))

    def build(self, input_shape):
        self.built = True

    def call(self, z):
        return self.log_prob(z)

    def log_prob(self, z):
        raise NotImplementedError

    def sample(self, n, seed=None, temperature=1.0):
        raise NotImplementedError

    def _flat(self, z):
        return ops.reshape(ops.cast(z, self.compute_dtype), (-1, self.event_size))

    def _normal(self, n, seed):
        # A tensor `n` (TensorFlow graphs: the exported sampler) stays one.
        n = n if keras.ops.is_tensor(n) else int(n)
        return keras.random.normal((n, self.event_size), seed=seed, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config["event_shape"] = list(self.event_shape)
        return config


def normal_log_prob(z, loc, log_scale):
    """Elementwise log N(z; loc, exp(log_scale)^2), in float32 for half-precision z."""
    z = upcast(z)
    loc, log_scale = ops.cast(loc, z.dtype), ops.cast(log_scale, z.dtype)
    u = (z - loc) * ops.exp(-log_scale)
    return -0.5 * ops.square(u) - log_scale - 0.5 * math.log(2.0 * math.pi)
