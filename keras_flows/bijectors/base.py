"""The bijector contract shared by every transform in keras_flows."""

import math

import keras
from keras import ops

from keras_flows.utils.math import upcast


def sum_except_batch(x):
    """Sums every axis but the first: one value per example.

    Half-precision terms (mixed precision) are summed in float32: a log-det
    is a sum of thousands of terms, which bfloat16's 8-bit mantissa cannot hold.
    """
    x = upcast(x)
    if len(x.shape) == 1:
        return x
    return ops.sum(x, axis=tuple(range(1, len(x.shape))))


def num_positions(x):
    """prod(shape[1:-1]): event positions sharing one channel's parameters.

    1 for vectors `(B, D)`, `H * W` for images `(B, H, W, C)`. A Python number
    when the shape is static, else a tensor of `x`'s dtype.
    """
    dims = x.shape[1:-1]
    if all(d is not None for d in dims):
        return float(math.prod(dims))
    n = ops.cast(1, x.dtype)
    for i in range(1, len(x.shape) - 1):
        n = n * ops.cast(ops.shape(x)[i], x.dtype)
    return n


def per_example(x, value):
    """Broadcasts the scalar `value` to shape `(batch,)` of `x`."""
    first = x[(slice(None),) + (0,) * (len(x.shape) - 1)]
    return ops.ones_like(first) * value


def serialize_sublayers(**layers):
    """`get_config` entries for sublayers passed to a constructor (None stays None)."""
    return {name: None if layer is None else keras.saving.serialize_keras_object(layer)
            for name, layer in layers.items()}


def deserialize_sublayers(config, *names):
    """A copy of `config` with the named serialized sublayers rebuilt."""
    config = dict(config)
    for name in names:
        if isinstance(config.get(name), dict):
            config[name] = keras.saving.deserialize_keras_object(config[name])
    return config


class Bijector(keras.layers.Layer):
    """An invertible map between data `x` and latent `z`, with its log-det.

    `forward(x)` maps data to latent and returns `(z, log|det dz/dx|)`;
    `inverse(z)` maps latent to data and returns `(x, log|det dx/dz|)`. Each
    log-det is summed over the event: one value per example, shape `(batch,)`.
    Both take an optional `context` (the conditioning input) and `training`.

    Subclasses implement `_forward` and `_inverse` with the same signature and
    create their weights in `build(input_shape)`; this class builds them on
    first use, casts inputs to the layer's compute dtype, and checks that a
    `context` is given exactly when the bijector has a `context_shape`.

    Calling the layer is `forward`.
    """

    #: Whether `_inverse` is exact (closed form) rather than a numerical solve.
    exact_inverse = True

    def forward(self, x, context=None, training=False):
        x, context = self._prepare(x, context)
        return self._forward(x, context=context, training=training)

    def inverse(self, z, context=None, training=False):
        z, context = self._prepare(z, context, inverse=True)
        return self._inverse(z, context=context, training=training)

    def call(self, x, context=None, training=False):
        return self.forward(x, context=context, training=training)

    def compute_output_spec(self, x, context=None, training=False):
        z_shape = self.compute_output_shape(x.shape)
        return (
            keras.KerasTensor(z_shape, dtype=self.compute_dtype),
            keras.KerasTensor((x.shape[0],), dtype=self.compute_dtype),
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def _prepare(self, x, context, inverse=False):
        x = ops.cast(x, self.compute_dtype)
        context_shape = getattr(self, "context_shape", None)
        if context_shape is not None and context is None:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} is conditional: pass "
                f"`context=` with shape (batch, *{tuple(context_shape)})."
            )
        if context_shape is None and context is not None:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} is not conditional but "
                "was given a `context`; build it with `context_shape=` to "
                "condition it."
            )
        if context is not None:
            context = ops.cast(context, self.compute_dtype)
        if not self.built:
            self.build(self.inverse_output_shape(x.shape) if inverse else x.shape)
        return x, context

    def inverse_output_shape(self, z_shape):
        """The data shape for a latent of shape `z_shape` (identity here)."""
        return z_shape

    def _forward(self, x, context=None, training=False):
        raise NotImplementedError

    def _inverse(self, z, context=None, training=False):
        raise NotImplementedError
