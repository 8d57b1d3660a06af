"""Seeds, and the fixed probes of the stochastic log-det estimators at inference."""

import numpy as np
import keras
from keras import ops


def seed_generator(seed):
    """A `SeedGenerator` from an int, None, or an existing generator."""
    if isinstance(seed, keras.random.SeedGenerator):
        return seed
    return keras.random.SeedGenerator(seed)


def fixed_probe(shape, dtype, seed, noise="rademacher"):
    """A probe of the fully known `shape`, drawn with NumPy from the integer
    `seed`: Rademacher (+-1) or standard normal entries, the same values on
    every backend (the backends' `keras.random` generators differ), so that
    an estimate at inference is the same number on TensorFlow, JAX and
    PyTorch."""
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(shape) if noise == "gaussian"
              else 2.0 * rng.integers(0, 2, size=shape) - 1.0)
    return ops.convert_to_tensor(values, dtype=dtype)
