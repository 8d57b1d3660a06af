"""The little per-backend code keras_flows needs, one branch per backend."""

import contextlib

import numpy as np
import keras
from keras import ops


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


def matmul(a, b):
    """`a @ b` in the inputs' own dtype, float64 included, on every backend.

    With Keras 3.15, `keras.backend.result_type` maps float64 to float32 on
    JAX and PyTorch; PyTorch's `ops.matmul` (and `ops.dot`, `ops.tensordot`)
    casts its operands to that type, so two float64 tensors are multiplied
    in float32. There `torch.matmul` is called directly (after promoting the
    operands to a common dtype, as NumPy would). `ops.einsum` keeps float64
    too, but is measurably slower on PyTorch: about 140 us against 130 us
    for a float64 (512, 64) x (64, 64) product on CPU, 63 us against 47 us in
    float32. JAX's and TensorFlow's `ops.matmul` keep float64.
    """
    if keras.backend.is_keras_tensor(a) or keras.backend.is_keras_tensor(b):
        # Symbolic: Keras' own spec reports float32 for float64 on JAX too.
        return keras.KerasTensor(ops.matmul(a, b).shape, dtype=_promote(a.dtype, b.dtype))
    if keras.backend.backend() != "torch":
        return ops.matmul(a, b)
    import torch

    a = ops.convert_to_tensor(a)
    b = ops.convert_to_tensor(b)
    if a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    return torch.matmul(a, b)


def _promote(*dtypes):
    """The common dtype of `dtypes` as NumPy promotes them (float64 stays)."""
    dtypes = [keras.backend.standardize_dtype(d) for d in dtypes]
    if len(set(dtypes)) == 1:
        return dtypes[0]
    try:
        return np.promote_types(*dtypes).name
    except TypeError:  # bfloat16, which NumPy does not know
        return keras.backend.result_type(*dtypes)


def constant(value, dtype=None):
    """`value` (a NumPy array) as a backend tensor made eagerly, even when
    called while a function is being traced.

    A layer that keeps a fixed array (a mask) can make it once in `build`
    and use it in `call`: converting the NumPy array in `call` instead fails
    under `torch.compile` (Dynamo does not trace `ndarray.dtype`), and a
    tensor made while TensorFlow traces a graph would belong to that graph,
    hence `tf.init_scope` there. JAX makes a concrete array either way.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.init_scope():
            return ops.convert_to_tensor(value, dtype=dtype)
    return ops.convert_to_tensor(value, dtype=dtype)
