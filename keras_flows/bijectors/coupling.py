"""Coupling layers: half the input conditions an elementwise map of the other half."""

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.base import (Bijector, deserialize_sublayers,
                                        serialize_sublayers, sum_except_batch)
from keras_flows.layers.conditioners import MLP, ConvNet, ResNet
from keras_flows.transformers import Additive, Affine, Transformer
from keras_flows.utils.backend import call_layer


def set_output_size(conditioner, size):
    """Sizes a conditioner's output for `size` values, or checks its size."""
    attribute = "output_dim" if hasattr(conditioner, "output_dim") else "output_channels"
    current = getattr(conditioner, attribute, None)
    if current is None:
        setattr(conditioner, attribute, size)
    elif current != size:
        raise ValueError(
            f"The conditioner {conditioner.name!r} has {attribute}={current}, but its "
            f"transformer needs {size} parameters here; leave {attribute} unset "
            "(None) so the structure sizes it."
        )


@keras.saving.register_keras_serializable(package="keras_flows")
class Coupling(Bijector):
    """Coupling: a kept part of the input parameterises an elementwise map
    of the rest.

    Forward:  z_a = x_a;  z_b = T(x_b; theta),  theta = NN(x_a, c)
    Inverse:  x_a = z_a;  x_b = T^-1(z_b; theta), theta = NN(z_a, c)
    Log-det:  forward sum log|dT/dx_b|; inverse the negative.

    `T` is a `Transformer` (additive, affine, spline) and `NN` the
    conditioner, a network emitting `T.params_per_feature` values per
    transformed element.

    - `mask="channel"`: the last axis is split; with `reverse=False`, `x_a`
      is the first `D // 2` features, with `reverse=True` the rest, so
      alternating layers transform both halves. Vectors `(B, D)` or images
      `(B, H, W, C)`.
    - `mask="checkerboard"` (RealNVP's images): with the binary mask
      m[i, j] = 1 if (i + j) % 2 == reverse, the conditioner sees `x * m`
      (every channel) and T acts only where `m = 0`:
      z = m x + (1 - m) T(x; NN(x m, c)), log-det summed where m = 0.

    The context `c` is concatenated to the conditioner's input on the last
    axis; on images a vector context `(B, K)` is broadcast over H and W, an
    image context `(B, H, W, K)` is used as is.

    Args:
        transformer: the `Transformer`.
        conditioner: a layer mapping `(..., features)` to `(..., n)`, whose
            output size (`output_dim`, or `output_channels` for conv nets) is
            left None for the coupling to set. By default an `MLP` (vectors)
            or a `ConvNet` (images) of default sizes.
        mask: "channel" or "checkerboard".
        reverse: which half (or which checkerboard colour) is kept.
        context_shape: shape of one context row, or None.

    Example:
        >>> Coupling(RationalQuadraticSpline(bins=8, bound=5.0),
        ...          conditioner=MLP(hidden_units=[64, 64]))

    Reference: Dinh, Krueger & Bengio 2015, arXiv:1410.8516; Dinh,
    Sohl-Dickstein & Bengio 2017, arXiv:1605.08803; Durkan, Bekasov, Murray
    & Papamakarios 2019, arXiv:1906.04545.
    """

    def __init__(self, transformer, conditioner=None, mask="channel", reverse=False,
                 context_shape=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(transformer, Transformer):
            raise TypeError("`transformer` must be a keras_flows.transformers.Transformer; "
                            f"got {transformer!r}.")
        if conditioner is not None and not isinstance(conditioner, keras.layers.Layer):
            raise TypeError(f"`conditioner` must be a Keras layer or None; got {conditioner!r}.")
        if mask not in ("channel", "checkerboard"):
            raise ValueError(f"`mask` must be 'channel' or 'checkerboard'; got {mask!r}.")
        for part in (transformer, conditioner):
            if part is not None and part.dtype_policy.name != self.dtype_policy.name:
                raise ValueError(
                    f"{part.name!r} computes in {part.dtype_policy.name} but the coupling "
                    f"in {self.dtype_policy.name}: pass the same `dtype` to both.")
        self.transformer = transformer
        self.conditioner = conditioner
        self.mask = mask
        self.reverse = bool(reverse)
        self.context_shape = None if context_shape is None else tuple(context_shape)

    def default_conditioner(self, image):
        """The conditioner used when none is given."""
        if image:
            return ConvNet(dtype=self.dtype_policy, name="conditioner")
        return MLP(dtype=self.dtype_policy, name="conditioner")

    def build(self, input_shape):
        image = len(input_shape) == 4
        name = type(self).__name__
        features = input_shape[-1]
        if self.mask == "checkerboard":
            if not image or None in tuple(input_shape[1:]):
                raise ValueError(
                    f"{name} with mask='checkerboard' acts on images of known size: "
                    f"expected input shape (batch, H, W, C); got {tuple(input_shape)}.")
            rows, cols = np.indices(input_shape[1:3])
            kept = ((rows + cols) % 2 == int(self.reverse)).astype("float32")
            self._kept = kept[None, :, :, None]
            size_a = size_b = features
        else:
            if features is None or features < 2:
                raise ValueError(
                    f"{name} needs at least 2 features on the last axis to split; got "
                    f"input shape {tuple(input_shape)}.")
            size_a = features // 2
            size_b = features - size_a
            self._first = size_b if self.reverse else size_a
        if image and self.context_shape is not None and (
                len(self.context_shape) not in (1, 3) or (
                    len(self.context_shape) == 3
                    and tuple(self.context_shape[:2]) != tuple(input_shape[1:3]))):
            raise ValueError(
                f"{name} on images takes a vector context (K,) or an image context "
                f"(H, W, K) of the input's H, W; got context_shape={self.context_shape} "
                f"for input shape {tuple(input_shape)}.")
        if self.conditioner is None:
            self.conditioner = self.default_conditioner(image)
        set_output_size(self.conditioner, size_b * self.transformer.params_per_feature)
        context_size = 0 if self.context_shape is None else self.context_shape[-1]
        self.conditioner.build((*input_shape[:-1], size_a + context_size))
        self.transformer.build((*input_shape[:-1], size_b))
        self.transformer.built = True

    def _split(self, x):
        first, second = x[..., : self._first], x[..., self._first:]
        return (second, first) if self.reverse else (first, second)

    def _merge(self, a, b):
        return ops.concatenate([b, a] if self.reverse else [a, b], axis=-1)

    def _params(self, a, b, context, training):
        """The transformer's parameters for `b`, shape `b.shape + (P,)`."""
        h = a
        if context is not None:
            if len(a.shape) == 4 and len(context.shape) == 2:
                # (B, K) -> (B, H, W, K): repeat the vector at every pixel.
                context = ops.ones_like(a[..., :1]) * context[:, None, None, :]
            h = ops.concatenate([a, context], axis=-1)
        out = call_layer(self.conditioner, h, training=training)
        return ops.reshape(out, (-1, *b.shape[1:], self.transformer.params_per_feature))

    def _apply(self, x, context, training, inverse):
        step = self.transformer.inverse if inverse else self.transformer.forward
        if self.mask == "checkerboard":
            kept = ops.convert_to_tensor(self._kept, dtype=x.dtype)
            y, log_det = step(x, self._params(x * kept, x, context, training))
            keep = ops.broadcast_to(kept > 0.5, ops.shape(x))
            return (ops.where(keep, x, y),
                    sum_except_batch(ops.where(keep, ops.zeros_like(log_det), log_det)))
        a, b = self._split(x)
        b, log_det = step(b, self._params(a, b, context, training))
        return self._merge(a, b), sum_except_batch(log_det)

    def _forward(self, x, context=None, training=False):
        return self._apply(x, context, training, inverse=False)

    def _inverse(self, z, context=None, training=False):
        return self._apply(z, context, training, inverse=True)

    def get_config(self):
        config = super().get_config()
        config.update(
            **serialize_sublayers(transformer=self.transformer, conditioner=self.conditioner),
            mask=self.mask, reverse=self.reverse,
            context_shape=None if self.context_shape is None else list(self.context_shape))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_sublayers(config, "transformer", "conditioner"))


class _NamedCoupling(Coupling):
    """A `Coupling` whose conditioner is sized by arguments: an `MLP` with
    `hidden_units` on vectors; on images a `ConvNet` with `hidden_channels`,
    or a `ResNet` with `num_blocks` residual blocks when that is set."""

    def __init__(self, transformer, hidden_units, activation, reverse, context_shape,
                 hidden_channels, mask, num_blocks, **kwargs):
        super().__init__(transformer, None, mask=mask, reverse=reverse,
                         context_shape=context_shape, **kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.hidden_channels = int(hidden_channels)
        self.num_blocks = None if num_blocks is None else int(num_blocks)

    def default_conditioner(self, image):
        dtype = self.dtype_policy
        if not image:
            return MLP(None, self.hidden_units, self.activation, dtype=dtype,
                       name="conditioner")
        if self.num_blocks is None:
            return ConvNet(None, self.hidden_channels, dtype=dtype, name="conditioner")
        return ResNet(None, self.hidden_channels, self.num_blocks, dtype=dtype,
                      name="conditioner")

    def get_config(self):
        config = super().get_config()
        del config["transformer"], config["conditioner"]
        config.update(hidden_units=list(self.hidden_units), activation=self.activation,
                      hidden_channels=self.hidden_channels, num_blocks=self.num_blocks)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class AdditiveCoupling(_NamedCoupling):
    """Additive coupling (NICE): `Coupling(Additive(), ...)`.

    Forward:  z_a = x_a;  z_b = x_b + t(x_a, c)
    Inverse:  x_b = z_b - t(z_a, c)
    Log-det:  0 in both directions (volume preserving).

    Args:
        hidden_units: hidden sizes of the MLP conditioner `t` (vectors).
        activation: its activation.
        reverse: transform the first half instead of the second; with
            `mask="checkerboard"`, keep the pixels with `(i + j)` odd.
        context_shape: shape of the conditioning input, or None.
        hidden_channels: hidden channels of the image conditioner.
        mask: "channel" (split the last axis) or "checkerboard" (images only).
        num_blocks: None for Glow's `ConvNet` conditioner on images, or the
            number of residual blocks of a `ResNet` conditioner (RealNVP's).

    Reference: Dinh, Krueger & Bengio 2015, arXiv:1410.8516.
    """

    def __init__(self, hidden_units=(64, 64), activation="relu", reverse=False,
                 context_shape=None, hidden_channels=512, mask="channel", num_blocks=None,
                 **kwargs):
        super().__init__(Additive(dtype=kwargs.get("dtype"), name="transformer"),
                         hidden_units, activation, reverse, context_shape,
                         hidden_channels, mask, num_blocks, **kwargs)


@keras.saving.register_keras_serializable(package="keras_flows")
class AffineCoupling(_NamedCoupling):
    """Affine coupling (RealNVP, Glow): `Coupling(Affine(scale), ...)`.

    Forward:  z_a = x_a;  z_b = x_b * exp(s(x_a, c)) + t(x_a, c)
    Inverse:  x_b = (z_b - t(z_a, c)) * exp(-s(z_a, c))
    Log-det:  forward sum(s(x_a, c)); inverse the negative.

    s is a bounded function of the network's raw output (`scale`, see
    `keras_flows.transformers.Affine`): "tanh" (B tanh(h / B)), "sigmoid"
    (Glow's exp(s) = sigmoid(h + 2), whose inverse is unbounded and can
    overflow when sampling), "bounded_sigmoid" (Glow's with a floor e^-B:
    the inverse expands by at most e^B) or "learned_tanh" (a_c tanh(h),
    RealNVP's images).

    Args:
        hidden_units: hidden sizes of the MLP conditioner giving (s, t)
            (vectors).
        activation: its activation.
        reverse: transform the first half instead of the second; with
            `mask="checkerboard"`, keep the pixels with `(i + j)` odd.
        context_shape: shape of the conditioning input, or None.
        scale: "tanh", "sigmoid", "bounded_sigmoid" or "learned_tanh".
        scale_bound: B for "tanh" and "bounded_sigmoid": |s| < B.
        hidden_channels: hidden channels of the image conditioner.
        mask: "channel" (split the last axis) or "checkerboard" (images only).
        num_blocks: None for Glow's `ConvNet` conditioner on images, or the
            number of residual blocks of a `ResNet` conditioner (RealNVP's).

    Reference: Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803 (RealNVP,
    checkerboard and channel masks); Kingma & Dhariwal 2018, arXiv:1807.03039
    (Glow, convolutional conditioner); Behrmann, Vicol, Wang, Grosse &
    Jacobsen 2021, arXiv:2006.09347 (exploding inverses).
    """

    scales = ("tanh", "sigmoid", "bounded_sigmoid", "learned_tanh")

    def __init__(self, hidden_units=(64, 64), activation="relu", reverse=False,
                 context_shape=None, scale="tanh", scale_bound=3.0,
                 hidden_channels=512, mask="channel", num_blocks=None, **kwargs):
        if scale not in self.scales:
            raise ValueError(f"`scale` must be one of {self.scales}; got {scale!r}.")
        super().__init__(Affine(scale, scale_bound, dtype=kwargs.get("dtype"),
                                name="transformer"),
                         hidden_units, activation, reverse, context_shape,
                         hidden_channels, mask, num_blocks, **kwargs)
        self.scale = scale
        self.scale_bound = float(scale_bound)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, scale_bound=self.scale_bound)
        return config
