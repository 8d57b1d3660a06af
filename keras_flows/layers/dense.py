"""Dense layers that compute in their own dtype, float64 included, on every
backend."""

import numpy as np
import keras

from keras_flows.utils import math
from keras_flows.utils.backend import constant, linear, relu


def get_activation(identifier):
    """`keras.activations.get(identifier)`, with tanh replaced by a form that
    keeps float64 (Keras 3.15's tanh returns float32 for float64 inputs on
    JAX) and relu by `utils.backend.relu` (the same function, faster in
    eager PyTorch); the other built-in activations keep the input's dtype."""
    fn = keras.activations.get(identifier)
    return {keras.activations.tanh: math.tanh, keras.activations.relu: relu}.get(fn, fn)


def serialize_activation(fn):
    """The config entry of an activation from `get_activation`."""
    return {math.tanh: "tanh", relu: "relu"}.get(fn) or keras.activations.serialize(fn)


@keras.saving.register_keras_serializable(package="keras_flows")
class Dense(keras.layers.Layer):
    """y = act(x W + b) on the last axis.

    `keras.layers.Dense` computes float64 products in float32 on PyTorch
    (Keras 3.15 `ops.matmul`); this one uses `utils.backend.linear`, so a
    layer with `dtype="float64"` computes in float64 on every backend. Its
    variables are those of `keras.layers.Dense`, with the same names, shapes
    and order, `kernel` (in, units) then `bias` (units,), so weight files
    written with `keras.layers.Dense` inside a network load into this one.

    Args:
        units: size of the output.
        activation: an activation name or callable (None for linear).
        kernel_initializer: initializer of the kernel.
        bias_initializer: initializer of the bias.
        use_bias: add the bias (and create its variable).
    """

    def __init__(self, units, activation=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = get_activation(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} needs a known last axis; got input "
                             f"shape {tuple(input_shape)}.")
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                      initializer=self.kernel_initializer)
        self.bias = (self.add_weight(name="bias", shape=(self.units,),
                                     initializer=self.bias_initializer)
                     if self.use_bias else None)

    def _kernel(self):
        return self.kernel

    def call(self, x):
        return self.activation(linear(x, self._kernel(), self.bias))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        activation = serialize_activation(self.activation)
        serialize = keras.initializers.serialize
        config.update(units=self.units, activation=activation,
                      kernel_initializer=serialize(self.kernel_initializer),
                      bias_initializer=serialize(self.bias_initializer),
                      use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class MaskedDense(Dense):
    """y = act(x (W * M) + b), M a fixed 0/1 mask of the kernel's shape.

    The mask is a constant (a NumPy array), not a variable: the variables are
    `kernel` and `bias` as in `Dense`, and whoever builds the layer (MADE)
    derives the mask from its own config. Masked entries of `W` get zero
    gradient and never reach the output.

    Args:
        units: size of the output.
        mask: array-like (in, units) of zeros and ones; `x_j` reaches `y_k`
            only where `mask[j, k] = 1`.
        **kwargs: those of `Dense`.
    """

    def __init__(self, units, mask, **kwargs):
        super().__init__(units, **kwargs)
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.shape[1] != self.units:
            raise ValueError(f"`mask` must have shape (input_dim, {self.units}); got "
                             f"shape {mask.shape}.")
        if not np.all((mask == 0) | (mask == 1)):
            raise ValueError("`mask` must hold only zeros and ones.")
        self.kernel_mask = mask.astype(bool)

    def build(self, input_shape):
        if input_shape[-1] != self.kernel_mask.shape[0]:
            raise ValueError(f"{type(self).__name__}'s mask has "
                             f"{self.kernel_mask.shape[0]} rows; the input has "
                             f"{input_shape[-1]} features.")
        super().build(input_shape)
        self._mask_tensor = constant(self.kernel_mask, dtype=self.variable_dtype)

    def _kernel(self):
        kernel = keras.ops.convert_to_tensor(self.kernel)  # autocast to the compute dtype
        mask = self._mask_tensor
        if mask.dtype != kernel.dtype:  # mixed precision
            mask = keras.ops.cast(mask, kernel.dtype)
        return kernel * mask

    def get_config(self):
        config = super().get_config()
        config.update(mask=self.kernel_mask.astype(int).tolist())
        return config
