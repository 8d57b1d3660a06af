"""Time-dependent dense and convolutional layers for continuous flows (FFJORD's
concat-squash)."""

import keras
from keras import ops

from keras_flows.layers.dense import get_activation, serialize_activation
from keras_flows.utils.backend import conv2d, matmul


def _time_column(t, x, dtype):
    """`t` (a scalar or one time per row) shaped to broadcast against `x`:
    (1 or B, 1) for vectors, (1 or B, 1, 1, 1) for images."""
    return ops.reshape(ops.cast(t, dtype), (-1,) + (1,) * (len(x.shape) - 1))


@keras.saving.register_keras_serializable(package="keras_flows")
class ConcatSquashDense(keras.layers.Layer):
    """A dense layer gated and shifted by time (FFJORD's `ConcatSquashLinear`).

        h = (x W + b) * sigmoid(t w_g + b_g) + t w_b

    `x` is (batch, in), `t` a scalar or one time per row, `h` (batch, units);
    w_g, b_g and w_b are (units,) vectors (stored as (1, units), (units,),
    (1, units)). Products go through `utils.backend.matmul`, so a layer with
    `dtype="float64"` computes in float64 on every backend.

    Args:
        units: size of the output.
        kernel_initializer: initializer of W, w_g and w_b.
        bias_initializer: initializer of b and b_g.

    Call: `layer(x, t)`, t a tensor (Keras takes only tensors positionally).

    Reference: Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019,
    arXiv:1810.01367 (code: `diffeq_layers.ConcatSquashLinear`).
    """

    def __init__(self, units, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        if self.units < 1:
            raise ValueError(f"`units` must be a positive integer; got {units!r}.")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} needs a known last axis; got input "
                             f"shape {tuple(input_shape)}.")
        units = self.units
        self.kernel = self.add_weight(name="kernel", shape=self._kernel_shape(input_shape),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(units,),
                                    initializer=self.bias_initializer)
        self.gate_kernel = self.add_weight(name="gate_kernel", shape=(1, units),
                                           initializer=self.kernel_initializer)
        self.gate_bias = self.add_weight(name="gate_bias", shape=(units,),
                                         initializer=self.bias_initializer)
        self.shift_kernel = self.add_weight(name="shift_kernel", shape=(1, units),
                                            initializer=self.kernel_initializer)

    def _kernel_shape(self, input_shape):
        return (input_shape[-1], self.units)

    def _product(self, x):
        return matmul(x, self.kernel)

    def call(self, x, t):
        t = _time_column(t, x, self.compute_dtype)
        gate = ops.sigmoid(t * self.gate_kernel[0] + self.gate_bias)
        return (self._product(x) + self.bias) * gate + t * self.shift_kernel[0]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        serialize = keras.initializers.serialize
        config.update(units=self.units,
                      kernel_initializer=serialize(self.kernel_initializer),
                      bias_initializer=serialize(self.bias_initializer))
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class ConcatSquashConv2D(ConcatSquashDense):
    """A stride-1 "same" convolution gated and shifted by time (FFJORD's
    `ConcatSquashConv2d`).

        h = (conv(x, W) + b) * sigmoid(t w_g + b_g) + t w_b

    `x` is (batch, height, width, in), `h` (batch, height, width, units), W a
    (k, k, in, units) kernel; the time terms are those of `ConcatSquashDense`,
    one per output channel.

    Args:
        units: output channels.
        kernel_size: odd size of the square kernel.
        kernel_initializer, bias_initializer: as in `ConcatSquashDense`.

    Reference: Grathwohl et al. 2019, arXiv:1810.01367.
    """

    def __init__(self, units, kernel_size=3, **kwargs):
        super().__init__(units, **kwargs)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or \
                kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be a positive odd integer; got "
                             f"{kernel_size!r}.")
        self.kernel_size = kernel_size

    def _kernel_shape(self, input_shape):
        return (self.kernel_size, self.kernel_size, input_shape[-1], self.units)

    def _product(self, x):
        return conv2d(x, self.kernel)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class VectorField(keras.layers.Layer):
    """A time-dependent vector field f(t, z; c) on vectors or images: FFJORD's network.

        h_0 = [z, c];  h_i = act(CS_i(h_{i-1}, t));  f = CS_out(h_n, t)

    with concat-squash layers CS (the last has z's size, or channels, and no
    activation): `ConcatSquashDense` on vectors, with the context `c`, if
    any, concatenated to `z` at the input; 3x3 `ConcatSquashConv2D` on
    images (batch, height, width, channels), unconditional.

    Args:
        hidden_units: sizes (vectors) or channels (images) of the hidden
            concat-squash layers.
        activation: activation between them (tanh keeps float64 on every
            backend, see `layers.dense.get_activation`).
        context_dim: size of the context vector, or None for f(t, z).

    Call: `field(z, t, context=None)` with z (batch, D) or (batch, H, W, C), t a
    scalar tensor (or one time per row) and context (batch, context_dim);
    returns f of z's shape.

    Reference: Grathwohl et al. 2019, arXiv:1810.01367.
    """

    def __init__(self, hidden_units=(64, 64, 64), activation="tanh", context_dim=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        if any(u < 1 for u in self.hidden_units):
            raise ValueError(f"`hidden_units` must be positive integers; got {hidden_units!r}.")
        self.activation = activation
        self._activation = get_activation(activation)
        self.context_dim = None if context_dim is None else int(context_dim)
        if self.context_dim is not None and self.context_dim < 1:
            raise ValueError(f"`context_dim` must be a positive integer or None; got "
                             f"{context_dim!r}.")

    def build(self, input_shape):
        if len(input_shape) not in (2, 4) or None in tuple(input_shape[1:]):
            raise ValueError(f"{type(self).__name__} expects z of shape (batch, D) or "
                             f"(batch, height, width, channels) of known size; got "
                             f"{tuple(input_shape)}.")
        if len(input_shape) == 4 and self.context_dim is not None:
            raise ValueError(f"{type(self).__name__} takes a context only on vectors; got "
                             f"z of shape {tuple(input_shape)}.")
        layer = ConcatSquashDense if len(input_shape) == 2 else ConcatSquashConv2D
        features = input_shape[-1]
        shape = (*input_shape[:-1], features + (self.context_dim or 0))
        self.hidden = []
        for i, units in enumerate(self.hidden_units):
            self.hidden.append(layer(units, dtype=self.dtype_policy, name=f"concat_squash_{i}"))
            self.hidden[-1].build(shape)
            shape = self.hidden[-1].compute_output_shape(shape)
        self.out = layer(features, dtype=self.dtype_policy, name="out")
        self.out.build(shape)

    def call(self, z, t, context=None):
        if (context is None) != (self.context_dim is None):
            raise ValueError("VectorField: pass `context` exactly when built with "
                             f"`context_dim` (context_dim={self.context_dim}).")
        h = z if context is None else ops.concatenate([z, ops.cast(context, z.dtype)], -1)
        for layer in self.hidden:
            h = self._activation(layer(h, t))
        return self.out(h, t)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        activation = self.activation
        if not isinstance(activation, str) and activation is not None:
            activation = serialize_activation(self._activation)
        config.update(hidden_units=list(self.hidden_units), activation=activation,
                      context_dim=self.context_dim)
        return config
