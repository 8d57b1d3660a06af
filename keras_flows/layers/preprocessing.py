"""Dequantization: discrete pixel values to a continuous density's domain."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_flows")
class Dequantize(keras.layers.Layer):
    """8-bit pixels in [0, 255] to continuous values in [0, B), B = 2^n_bits.

    q = floor(x / 2^(8 - n_bits))          (n_bits reduction; identity for 8)
    y = q + u,  u ~ U[0, 1)^D              (training: uniform dequantization)
    y = q + 1/2                            (evaluation: the bin's midpoint)

    Each discrete value owns a bin of width 1, so a density p on [0, B)^D
    gives the discrete log-likelihood bound log P(q) >= E_u log p(q + u), and
    bits/dim = -log p(y) / (D log 2) with no further constant: a uniform
    density is exactly n_bits bits/dim. Volume is unchanged: log-det 0.

    `to_pixels` maps back: clip(floor(y), 0, B - 1) * 2^(8 - n_bits).
    """

    def __init__(self, n_bits=8, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 1 <= int(n_bits) <= 8:
            raise ValueError(f"`n_bits` must be in 1..8; got {n_bits}.")
        self.n_bits = int(n_bits)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def bins(self):
        return 2 ** self.n_bits

    def discretize(self, x):
        return ops.floor(x / 2.0 ** (8 - self.n_bits))

    def call(self, x, training=False, noise=None):
        q = self.discretize(x)
        if noise is None:
            noise = (keras.random.uniform(ops.shape(q), seed=self.seed_generator,
                                          dtype=q.dtype) if training else 0.5)
        return q + noise

    def to_pixels(self, y):
        return ops.clip(ops.floor(y), 0.0, self.bins - 1.0) * 2.0 ** (8 - self.n_bits)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(n_bits=self.n_bits, seed=self.seed)
        return config
