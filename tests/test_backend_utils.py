"""The per-backend helper, run on whichever backend the suite runs on."""

import numpy as np
import keras
from keras import ops

from keras_flows.utils import is_concrete


def test_eager_tensors_are_concrete():
    assert is_concrete(ops.ones((2,)))
    assert is_concrete(np.ones(2))


def _compile(fn):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    import torch

    return torch.compile(fn)


def test_traced_tensors_are_not_concrete():
    fn = _compile(lambda x: x + 1.0 if is_concrete(x) else x - 1.0)
    assert float(ops.convert_to_numpy(fn(ops.zeros((1,))))[0]) == -1.0
    assert not is_concrete(keras.KerasTensor((None, 2)))
