"""The little per-backend code keras_flows needs, one branch per backend."""

import contextlib

import keras


def is_concrete(x):
    """True when `x` holds values now (eager), False while it is being traced.

    `keras.ops` has no form of this: JAX traces with `Tracer`s, TensorFlow
    with graph tensors inside `tf.function`, PyTorch runs eagerly except
    under `torch.compile`.
    """
    if keras.backend.is_keras_tensor(x):
        return False
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.is_tensor(x) or tf.executing_eagerly()
    if backend == "torch":
        import torch

        return not torch.compiler.is_compiling()
    return True


def no_grad():
    """A context in which PyTorch's autograd records nothing.

    JAX and TensorFlow record gradients only inside `jax.grad` or a
    `GradientTape`, so there it is a no-op; on PyTorch every op on a tensor
    that requires grad keeps its graph (and its activations) until freed.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
