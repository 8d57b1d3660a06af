"""Conditioner networks: the learned functions inside coupling layers."""

import keras

from keras_flows.layers.conv import Conv2D
from keras_flows.layers.dense import Dense


def _output_size(layer, attr):
    """`layer.<attr>` as an int, or a clear error when it was never set."""
    size = getattr(layer, attr)
    if size is None:
        name = type(layer).__name__
        raise ValueError(
            f"{name}.{attr} is None at build time: pass `{attr}=` to {name}(...), or "
            f"set `{name.lower()}.{attr} = n` before building (the structure that "
            "uses the network knows n)."
        )
    size = int(size)
    if size < 1:
        raise ValueError(f"{type(layer).__name__}.{attr} must be >= 1; got {size}.")
    setattr(layer, attr, size)  # a plain int in get_config, whatever was set
    return size


class _Stack(keras.layers.Layer):
    """`self.hidden` layers in order, then `self.out`, which `build` makes
    with `_make_out()` once the output size is known."""

    def build(self, input_shape):
        if self.built:  # e.g. built from its saved build config, then by its structure
            return
        for layer in self.hidden:
            layer.build(input_shape)
            input_shape = layer.compute_output_shape(input_shape)
        self.out = self._make_out()
        self.out.build(input_shape)

    def call(self, x):
        # The built members run through `call`: their `__call__` would only
        # repeat this layer's input cast and scope, for about 0.1 ms a layer
        # in eager PyTorch (benchmarks/README.md, "Where the time goes").
        for layer in self.hidden:
            x = layer.call(x)
        return self.out.call(x)


@keras.saving.register_keras_serializable(package="keras_flows")
class MLP(_Stack):
    """Dense network whose last layer starts at zero.

    h_0 = x;  h_i = act(W_i h_{i-1} + b_i);  out = W_o h_n + b_o, W_o = b_o = 0

    The zero output at initialisation makes every coupling that uses it start
    as the identity (Glow's trick), so a new flow is exactly its base.

    The layers are `keras_flows.layers.Dense`, which compute in the layer's
    dtype (float64 included) on every backend and hold the same variables as
    `keras.layers.Dense` (so older weight files load).

    Args:
        output_dim: size of the output, or None to let the structure that uses
            the network set `mlp.output_dim = n` before building it (building
            with it still None raises a ValueError).
        hidden_units: sizes of the hidden layers.
        activation: activation of the hidden layers.
    """

    def __init__(self, output_dim=None, hidden_units=(64, 64), activation="relu",
                 **kwargs):
        super().__init__(**kwargs)
        self.output_dim = None if output_dim is None else int(output_dim)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.hidden = [
            Dense(u, activation=activation, dtype=self.dtype_policy, name=f"dense_{i}")
            for i, u in enumerate(self.hidden_units)
        ]

    def _make_out(self):
        return Dense(_output_size(self, "output_dim"), kernel_initializer="zeros",
                     bias_initializer="zeros", dtype=self.dtype_policy, name="out")

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], _output_size(self, "output_dim"))

    def get_config(self):
        config = super().get_config()
        config.update(output_dim=self.output_dim, hidden_units=list(self.hidden_units),
                      activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class ConvNet(_Stack):
    """Glow's coupling network on images `(B, H, W, C)`; the last conv starts
    at zero.

    h_1 = relu(conv_kxk(x));  h_2 = relu(conv_1x1(h_1));
    out = conv_kxk(h_2), its kernel and bias zero at initialisation

    Every convolution keeps the spatial size (`padding="same"`), so the output
    is `(B, H, W, output_channels)`. As with `MLP`, the zero output makes a
    coupling that uses it start as the identity.

    Args:
        output_channels: channels of the output, or None to let the structure
            set `convnet.output_channels = n` before building.
        hidden_channels: channels of the two hidden layers (512 in Glow).
        kernel_size: size of the first and last (square) kernels.

    Reference: Kingma & Dhariwal 2018, "Glow", arXiv:1807.03039.
    """

    def __init__(self, output_channels=None, hidden_channels=512, kernel_size=3,
                 **kwargs):
        super().__init__(**kwargs)
        self.output_channels = None if output_channels is None else int(output_channels)
        self.hidden_channels = int(hidden_channels)
        self.kernel_size = int(kernel_size)
        self.hidden = [
            Conv2D(self.hidden_channels, self.kernel_size, padding="same",
                   activation="relu", dtype=self.dtype_policy, name="conv_0"),
            Conv2D(self.hidden_channels, 1, padding="same",
                   activation="relu", dtype=self.dtype_policy, name="conv_1"),
        ]

    def _make_out(self):
        return Conv2D(
            _output_size(self, "output_channels"), self.kernel_size, padding="same",
            kernel_initializer="zeros", bias_initializer="zeros",
            dtype=self.dtype_policy, name="out",
        )

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "ConvNet acts on images: expected input shape (batch, H, W, C); "
                f"got {tuple(input_shape)}."
            )
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], _output_size(self, "output_channels"))

    def get_config(self):
        config = super().get_config()
        config.update(output_channels=self.output_channels,
                      hidden_channels=self.hidden_channels,
                      kernel_size=self.kernel_size)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class ResNet(keras.layers.Layer):
    """RealNVP's residual coupling network on images `(B, H, W, C)`; the last
    conv starts at zero.

    h_0 = conv_3x3(x)                                   (hidden_channels)
    h_k = h_{k-1} + conv_3x3(relu(bn(conv_3x3(relu(bn(h_{k-1}))))))
                                                        (k = 1..num_blocks)
    out = conv_3x3(relu(bn(h_K))), its kernel and bias zero at initialisation

    `bn` is `keras.layers.BatchNormalization` (batch statistics under
    `training=True`, moving averages otherwise), so in inference mode the
    network is a fixed function of each example. Pre-activation blocks (norm
    and ReLU before each conv) keep the skip path an identity. Every
    convolution keeps the spatial size (`padding="same"`). The zero output
    makes a coupling that uses it start as the identity, as with `MLP` and
    `ConvNet`.

    The paper also weight-normalises the convolutions; Keras 3 has no
    weight-normalisation wrapper, and the batch normalisation in every block
    already conditions the activations, so it is left out here.

    Args:
        output_channels: channels of the output, or None to let the structure
            set `resnet.output_channels = n` before building.
        hidden_channels: feature maps of the residual blocks (64 for RealNVP
            on CIFAR-10).
        num_blocks: number of residual blocks (8 for RealNVP on CIFAR-10).
        momentum: momentum of the batch normalisation moving statistics.

    Reference: Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803;
    He et al. 2016, "Identity mappings in deep residual networks",
    arXiv:1603.05027.
    """

    def __init__(self, output_channels=None, hidden_channels=64, num_blocks=8,
                 momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = None if output_channels is None else int(output_channels)
        self.hidden_channels = int(hidden_channels)
        self.num_blocks = int(num_blocks)
        self.momentum = float(momentum)
        if self.num_blocks < 0:
            raise ValueError(f"`num_blocks` must be >= 0; got {num_blocks}.")
        dtype = self.dtype_policy

        def conv(name, channels=self.hidden_channels, **kw):
            return Conv2D(channels, 3, padding="same", dtype=dtype, name=name, **kw)

        def norm(name):
            return keras.layers.BatchNormalization(momentum=self.momentum, dtype=dtype,
                                                   name=name)

        self.conv_in = conv("conv_in")
        self.blocks = [
            (norm(f"block_{k}_norm_0"), conv(f"block_{k}_conv_0"),
             norm(f"block_{k}_norm_1"), conv(f"block_{k}_conv_1"))
            for k in range(self.num_blocks)
        ]
        self.norm_out = norm("norm_out")

    def build(self, input_shape):
        if self.built:  # e.g. built from its saved build config, then by its structure
            return
        if len(input_shape) != 4:
            raise ValueError(
                "ResNet acts on images: expected input shape (batch, H, W, C); "
                f"got {tuple(input_shape)}."
            )
        self.conv_in.build(input_shape)
        shape = (*input_shape[:-1], self.hidden_channels)
        for norm_0, conv_0, norm_1, conv_1 in self.blocks:
            for layer in (norm_0, conv_0, norm_1, conv_1):
                layer.build(shape)
        self.norm_out.build(shape)
        self.out = Conv2D(
            _output_size(self, "output_channels"), 3, padding="same",
            kernel_initializer="zeros", bias_initializer="zeros",
            dtype=self.dtype_policy, name="out")
        self.out.build(shape)
        self.built = True

    def call(self, x, training=None):
        h = self.conv_in(x)
        for norm_0, conv_0, norm_1, conv_1 in self.blocks:
            r = conv_0(keras.activations.relu(norm_0(h, training=training)))
            r = conv_1(keras.activations.relu(norm_1(r, training=training)))
            h = h + r
        return self.out(keras.activations.relu(self.norm_out(h, training=training)))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], _output_size(self, "output_channels"))

    def get_config(self):
        config = super().get_config()
        config.update(output_channels=self.output_channels,
                      hidden_channels=self.hidden_channels, num_blocks=self.num_blocks,
                      momentum=self.momentum)
        return config
