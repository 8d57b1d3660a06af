"""Coupling layers (NICE, RealNVP, Glow): half the input conditions the other half."""

import math

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.base import Bijector, sum_except_batch
from keras_flows.layers.conditioners import MLP, ConvNet, ResNet
from keras_flows.utils.math import tanh


class _Coupling(Bijector):
    """Splits the input into a kept part `x_a` and a transformed part `x_b`.

    Vectors `(B, D)`: the last axis is split; with `reverse=False`, `x_a` is
    the first `D // 2` features, with `reverse=True` the rest, so alternating
    layers transform both halves. The conditioner is an `MLP` that sees `x_a`
    concatenated with `context`.

    Images `(B, H, W, C)`: the conditioner is a `ConvNet` (Glow's) when
    `num_blocks` is None, else a `ResNet` with `num_blocks` residual blocks
    (RealNVP's), and `mask` chooses the split:
    - `"channel"`: the channel axis is split as the last axis of a vector;
    - `"checkerboard"` (RealNVP): with the binary mask
      `m[i, j] = 1 if (i + j) % 2 == reverse`, the kept set is where `m = 1`:
      the conditioner sees `x * m` (every channel) and the transform acts
      only where `1 - m`, its log-det summed over those positions.
    A vector context `(B, K)` is broadcast over `H, W`; an image context
    `(B, H, W, K)` is used as is; either is concatenated on the channels.
    """

    params_per_feature = 1

    def __init__(self, hidden_units=(64, 64), activation="relu", reverse=False,
                 context_shape=None, hidden_channels=512, mask="channel", num_blocks=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_blocks = None if num_blocks is None else int(num_blocks)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.reverse = bool(reverse)
        self.context_shape = None if context_shape is None else tuple(context_shape)
        self.hidden_channels = int(hidden_channels)
        if mask not in ("channel", "checkerboard"):
            raise ValueError(f"`mask` must be 'channel' or 'checkerboard'; got {mask!r}.")
        self.mask = mask

    def build(self, input_shape):
        image = len(input_shape) == 4
        if self.mask == "checkerboard" and not image:
            raise ValueError(
                f"{type(self).__name__} with mask='checkerboard' acts on images: "
                f"expected input shape (batch, H, W, C); got {tuple(input_shape)}."
            )
        features = input_shape[-1]
        if self.mask == "checkerboard":
            height, width = input_shape[1:3]
            if features is None or height is None or width is None:
                raise ValueError(
                    f"{type(self).__name__} with mask='checkerboard' needs known "
                    f"H, W and C; got input shape {tuple(input_shape)}."
                )
            rows, cols = np.indices((height, width))
            kept = ((rows + cols) % 2 == int(self.reverse)).astype("float32")
            self._checkerboard = kept[None, :, :, None]
            size_a = size_b = features
        else:
            if features is None or features < 2:
                raise ValueError(
                    f"{type(self).__name__} needs at least 2 features on the last "
                    f"axis to split; got input shape {tuple(input_shape)}."
                )
            half = features // 2
            self._sizes = (features - half, half) if self.reverse else (half, features - half)
            size_a, size_b = half, features - half
        context_size = 0 if self.context_shape is None else self.context_shape[-1]
        if image:
            if self.context_shape is not None and (
                    len(self.context_shape) not in (1, 3) or (
                        len(self.context_shape) == 3
                        and tuple(self.context_shape[:2]) != tuple(input_shape[1:3]))):
                raise ValueError(
                    f"{type(self).__name__} on images takes a vector context "
                    "(K,) or an image context (H, W, K) of the input's H, W; got "
                    f"context_shape={self.context_shape} for input shape "
                    f"{tuple(input_shape)}."
                )
            if self.num_blocks is None:
                self.network = ConvNet(size_b * self.params_per_feature,
                                       self.hidden_channels, dtype=self.dtype_policy,
                                       name="network")
            else:
                self.network = ResNet(size_b * self.params_per_feature,
                                      self.hidden_channels, self.num_blocks,
                                      dtype=self.dtype_policy, name="network")
        else:
            self.network = MLP(size_b * self.params_per_feature, self.hidden_units,
                               self.activation, dtype=self.dtype_policy, name="network")
        self.network.build((*input_shape[:-1], size_a + context_size))

    def _split(self, x):
        first, second = x[..., : self._sizes[0]], x[..., self._sizes[0]:]
        return (second, first) if self.reverse else (first, second)

    def _merge(self, a, b):
        return ops.concatenate([b, a] if self.reverse else [a, b], axis=-1)

    def _params(self, a, context, training=False):
        if context is None:
            h = a
        elif len(a.shape) == 4 and len(context.shape) == 2:
            # (B, K) -> (B, H, W, K): repeat the vector at every pixel.
            h = ops.concatenate(
                [a, ops.ones_like(a[..., :1]) * context[:, None, None, :]], axis=-1)
        else:
            h = ops.concatenate([a, context], axis=-1)
        return self.network(h, training=training)

    def _forward(self, x, context=None, training=False):
        if self.mask == "checkerboard":
            kept = ops.convert_to_tensor(self._checkerboard, dtype=x.dtype)
            return self._transform(x, self._params(x * kept, context, training),
                                   1.0 - kept)
        a, b = self._split(x)
        b, log_det = self._transform(b, self._params(a, context, training))
        return self._merge(a, b), log_det

    def _inverse(self, z, context=None, training=False):
        if self.mask == "checkerboard":
            kept = ops.convert_to_tensor(self._checkerboard, dtype=z.dtype)
            return self._untransform(z, self._params(z * kept, context, training),
                                     1.0 - kept)
        a, b = self._split(z)
        b, log_det = self._untransform(b, self._params(a, context, training))
        return self._merge(a, b), log_det

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_units=list(self.hidden_units), activation=self.activation,
            reverse=self.reverse,
            context_shape=None if self.context_shape is None else list(self.context_shape),
            hidden_channels=self.hidden_channels, mask=self.mask,
            num_blocks=self.num_blocks,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class AdditiveCoupling(_Coupling):
    """Additive coupling (NICE).

    Forward:  z_a = x_a;  z_b = x_b + t(x_a, c)
    Inverse:  x_b = z_b - t(z_a, c)
    Log-det:  0 in both directions (volume preserving).

    With `mask="checkerboard"` on images (kept mask `m`):
    z = x + (1 - m) * t(x * m, c), and x = z - (1 - m) * t(z * m, c).

    Vectors `(B, D)` use an `MLP` conditioner, images `(B, H, W, C)` a
    `ConvNet`, or a `ResNet` with `num_blocks` set (see `_Coupling` for the
    split and the context).

    Args:
        hidden_units: hidden sizes of the MLP conditioner `t` (vectors).
        activation: its activation.
        reverse: transform the first half instead of the second; with
            `mask="checkerboard"`, keep the pixels with `(i + j)` odd instead
            of even.
        context_shape: shape of the conditioning input, or None.
        hidden_channels: hidden channels of the image conditioner.
        mask: "channel" (split the last axis) or "checkerboard" (images only).
        num_blocks: None for Glow's `ConvNet` conditioner on images, or the
            number of residual blocks of a `ResNet` conditioner (RealNVP's).

    Reference: Dinh, Krueger & Bengio 2015, arXiv:1410.8516.
    """

    def _transform(self, b, t, where=None):
        if where is not None:
            t = t * where
        return b + t, ops.zeros((ops.shape(b)[0],), dtype=b.dtype)

    def _untransform(self, b, t, where=None):
        if where is not None:
            t = t * where
        return b - t, ops.zeros((ops.shape(b)[0],), dtype=b.dtype)


@keras.saving.register_keras_serializable(package="keras_flows")
class AffineCoupling(_Coupling):
    """Affine coupling (RealNVP).

    Forward:  z_a = x_a;  z_b = x_b * exp(s(x_a, c)) + t(x_a, c)
    Inverse:  x_b = (z_b - t(z_a, c)) * exp(-s(z_a, c))
    Log-det:  forward sum(s(x_a, c)); inverse the negative.

    With `mask="checkerboard"` on images (kept mask `m`), s and t are
    computed from `x * m` and multiplied by `1 - m`:
    z = x * exp((1 - m) s) + (1 - m) t, log-det sum((1 - m) s).

    Vectors `(B, D)` use an `MLP` conditioner, images `(B, H, W, C)` a
    `ConvNet`, or a `ResNet` with `num_blocks` set (see `_Coupling` for the
    split and the context).

    The raw network output `h` is bounded before use, so `exp(s)` cannot
    overflow:
    - `scale="tanh"`: s = B * tanh(h / B) with `B = scale_bound` (soft clamp,
      s = 0 at initialisation);
    - `scale="sigmoid"`: exp(s) = sigmoid(h + 2) (Glow), in (0, 1). Bounded
      above only: the inverse multiplies by 1 / sigmoid(h + 2) = 1 + e^-(h+2),
      unbounded when the conditioner meets inputs unlike its training data,
      so that sampling can overflow (Behrmann et al. 2021);
    - `scale="bounded_sigmoid"`: Glow's scale with a floor m = exp(-B),
      B = `scale_bound`:
          exp(s) = m + (1 - m) sigmoid(h + 2),  in (e^-B, 1),
          s = log1p((e^B - 1) sigmoid(h + 2)) - B;  log-det sum(s).
      The forward never expands (exp(s) < 1) and the inverse expands by at
      most e^B: |x_b| <= e^B |z_b - t| for any latent. Where sigmoid(h + 2)
      >> m it equals `"sigmoid"`, so Glow weights trained with that carry over;
    - `scale="learned_tanh"`: s = a * tanh(h) with `a` a learned per-channel
      scale (one per transformed channel), starting at 1 (RealNVP's choice).

    Args:
        hidden_units: hidden sizes of the MLP conditioner giving (s, t)
            (vectors).
        activation: its activation.
        reverse: transform the first half instead of the second; with
            `mask="checkerboard"`, keep the pixels with `(i + j)` odd instead
            of even.
        context_shape: shape of the conditioning input, or None.
        scale: "tanh", "sigmoid", "bounded_sigmoid" or "learned_tanh", as
            above.
        scale_bound: B for `scale="tanh"` and `"bounded_sigmoid"`: |s| < B.
        hidden_channels: hidden channels of the image conditioner.
        mask: "channel" (split the last axis) or "checkerboard" (images only).
        num_blocks: None for Glow's `ConvNet` conditioner on images, or the
            number of residual blocks of a `ResNet` conditioner (RealNVP's).

    Reference: Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803 (RealNVP,
    checkerboard and channel masks); Kingma & Dhariwal 2018, arXiv:1807.03039
    (Glow, convolutional conditioner); Behrmann, Vicol, Wang, Grosse &
    Jacobsen 2021, arXiv:2006.09347 (exploding inverses, bi-Lipschitz
    couplings).
    """

    params_per_feature = 2
    scales = ("tanh", "sigmoid", "bounded_sigmoid", "learned_tanh")

    def __init__(self, hidden_units=(64, 64), activation="relu", reverse=False,
                 context_shape=None, scale="tanh", scale_bound=3.0,
                 hidden_channels=512, mask="channel", num_blocks=None, **kwargs):
        super().__init__(hidden_units, activation, reverse, context_shape,
                         hidden_channels=hidden_channels, mask=mask,
                         num_blocks=num_blocks, **kwargs)
        if scale not in self.scales:
            raise ValueError(f"`scale` must be one of {self.scales}; got {scale!r}.")
        if not scale_bound > 0:
            raise ValueError(f"`scale_bound` must be > 0; got {scale_bound}.")
        self.scale = scale
        self.scale_bound = float(scale_bound)

    def build(self, input_shape):
        super().build(input_shape)
        if self.scale == "learned_tanh":
            # One factor per transformed channel: all C under a checkerboard
            # mask, else the C - C // 2 channels of x_b.
            channels = input_shape[-1]
            if self.mask != "checkerboard":
                channels -= channels // 2
            self.scale_factor = self.add_weight(name="scale_factor", shape=(channels,),
                                                initializer="ones")

    def _log_scale_and_shift(self, params, where=None):
        h, shift = params[..., 0::2], params[..., 1::2]
        if self.scale == "tanh":
            log_scale = self.scale_bound * tanh(h / self.scale_bound)
        elif self.scale == "learned_tanh":
            log_scale = ops.cast(self.scale_factor, h.dtype) * tanh(h)
        elif self.scale == "bounded_sigmoid":
            # m + (1 - m) sigmoid = m (1 + (e^B - 1) sigmoid): one log1p, exact
            # where sigmoid(h + 2) is tiny, and 0 where it is 1.
            log_scale = ops.log1p(math.expm1(self.scale_bound)
                                  * ops.sigmoid(h + 2.0)) - self.scale_bound
        else:
            log_scale = ops.log_sigmoid(h + 2.0)
        if where is not None:
            # Masked-out entries get s = t = 0: the identity, log-det 0.
            log_scale, shift = log_scale * where, shift * where
        return log_scale, shift

    def _transform(self, b, params, where=None):
        log_scale, shift = self._log_scale_and_shift(params, where)
        return b * ops.exp(log_scale) + shift, sum_except_batch(log_scale)

    def _untransform(self, b, params, where=None):
        log_scale, shift = self._log_scale_and_shift(params, where)
        return (b - shift) * ops.exp(-log_scale), -sum_except_batch(log_scale)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, scale_bound=self.scale_bound)
        return config
