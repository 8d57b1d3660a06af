"""Time-dependent dense layers for continuous flows (FFJORD's concat-squash)."""

import keras
from keras import ops

from keras_flows.layers.dense import get_activation
from keras_flows.utils import math
from keras_flows.utils.backend import matmul


def _time_column(t, dtype):
    """`t` (a scalar or one time per row) as a column (1 or B, 1)."""
    return ops.reshape(ops.cast(t, dtype), (-1, 1))


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
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], units),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(units,),
                                    initializer=self.bias_initializer)
        self.gate_kernel = self.add_weight(name="gate_kernel", shape=(1, units),
                                           initializer=self.kernel_initializer)
        self.gate_bias = self.add_weight(name="gate_bias", shape=(units,),
                                         initializer=self.bias_initializer)
        self.shift_kernel = self.add_weight(name="shift_kernel", shape=(1, units),
                                            initializer=self.kernel_initializer)

    def call(self, x, t):
        t = _time_column(t, self.compute_dtype)
        gate = ops.sigmoid(t * self.gate_kernel + self.gate_bias)
        return (matmul(x, self.kernel) + self.bias) * gate + t * self.shift_kernel

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
class VectorField(keras.layers.Layer):
    """A time-dependent vector field f(t, z; c) on vectors: FFJORD's network.

        h_0 = [z, c];  h_i = act(CS_i(h_{i-1}, t));  f = CS_out(h_n, t)

    with `ConcatSquashDense` layers CS (the last has D = z's size units and no
    activation) and the context `c`, if any, concatenated to `z` at the input.

    Args:
        hidden_units: sizes of the hidden concat-squash layers.
        activation: activation between them (tanh keeps float64 on every
            backend, see `layers.dense.get_activation`).
        context_dim: size of the context vector, or None for f(t, z).

    Call: `field(z, t, context=None)` with z (batch, D), t a scalar tensor
    (or one time per row) and context (batch, context_dim); returns (batch, D).

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
        self.hidden = [ConcatSquashDense(u, dtype=self.dtype_policy, name=f"concat_squash_{i}")
                       for i, u in enumerate(self.hidden_units)]

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} expects z of shape (batch, D) with D "
                             f"known; got {tuple(input_shape)}.")
        features = input_shape[-1]
        shape = (input_shape[0], features + (self.context_dim or 0))
        for layer in self.hidden:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.out = ConcatSquashDense(features, dtype=self.dtype_policy, name="out")
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
            activation = ("tanh" if self._activation is math.tanh
                          else keras.activations.serialize(self._activation))
        config.update(hidden_units=list(self.hidden_units), activation=activation,
                      context_dim=self.context_dim)
        return config
