"""Fixed permutations of the last axis."""

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.base import Bijector
from keras_flows.utils.backend import constant


class _Permutation(Bijector):
    """Permutes the last axis: z[..., i] = x[..., perm[i]]. Log-det 0."""

    def _permutation(self, size):
        raise NotImplementedError

    def build(self, input_shape):
        perm = np.asarray(self._permutation(input_shape[-1]), dtype="int32")
        self._perm = constant(perm, dtype="int32")
        self._inv = constant(np.argsort(perm).astype("int32"), dtype="int32")

    def _zero(self, x):
        return ops.zeros((ops.shape(x)[0],), dtype=x.dtype)

    def _forward(self, x, context=None, training=False):
        return ops.take(x, self._perm, axis=-1), self._zero(x)

    def _inverse(self, z, context=None, training=False):
        return ops.take(z, self._inv, axis=-1), self._zero(z)


@keras.saving.register_keras_serializable(package="keras_flows")
class Reverse(_Permutation):
    """Reverses the order of the last axis: z_i = x_{D-1-i}. Log-det 0."""

    def _permutation(self, size):
        return np.arange(size)[::-1]


@keras.saving.register_keras_serializable(package="keras_flows")
class RandomPermutation(_Permutation):
    """A fixed random permutation of the last axis, drawn once from `seed`.

    Forward:  z_i = x_{perm(i)};  Inverse: x_{perm(i)} = z_i;  Log-det: 0.

    The permutation itself is part of the config, so a saved model restores
    the same one on any backend and numpy version.

    Args:
        seed: integer seed for the draw.
        permutation: an explicit permutation (set by `get_config`).
    """

    def __init__(self, seed=None, permutation=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.permutation = None if permutation is None else [int(i) for i in permutation]

    def _permutation(self, size):
        if self.permutation is None:
            self.permutation = np.random.default_rng(self.seed).permutation(size).tolist()
        if sorted(self.permutation) != list(range(size)):
            raise ValueError(f"`permutation` must be a permutation of range({size}); "
                             f"got {self.permutation}.")
        return self.permutation

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed, permutation=self.permutation)
        return config
