"""Coupling layers (NICE, RealNVP): half the features condition the other half."""

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector, sum_except_batch
from keras_flows.layers.conditioners import MLP
from keras_flows.utils.math import tanh


class _Coupling(Bijector):
    """Splits the last axis into `x_a` (kept) and `x_b` (transformed).

    With `reverse=False`, `x_a` is the first `D // 2` features; with
    `reverse=True` it is the rest, so alternating layers transform both halves.
    The conditioner sees `x_a` concatenated with `context`.
    """

    params_per_feature = 1

    def __init__(self, hidden_units=(64, 64), activation="relu", reverse=False,
                 context_shape=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.reverse = bool(reverse)
        self.context_shape = None if context_shape is None else tuple(context_shape)

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None or features < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 features on the last "
                f"axis to split; got input shape {tuple(input_shape)}."
            )
        half = features // 2
        self._sizes = (features - half, half) if self.reverse else (half, features - half)
        size_a, size_b = half, features - half
        context_size = 0 if self.context_shape is None else self.context_shape[-1]
        self.network = MLP(size_b * self.params_per_feature, self.hidden_units,
                           self.activation, dtype=self.dtype_policy, name="network")
        self.network.build((*input_shape[:-1], size_a + context_size))

    def _split(self, x):
        first, second = x[..., : self._sizes[0]], x[..., self._sizes[0]:]
        return (second, first) if self.reverse else (first, second)

    def _merge(self, a, b):
        return ops.concatenate([b, a] if self.reverse else [a, b], axis=-1)

    def _params(self, a, context):
        h = a if context is None else ops.concatenate([a, context], axis=-1)
        return self.network(h)

    def _forward(self, x, context=None, training=False):
        a, b = self._split(x)
        b, log_det = self._transform(b, self._params(a, context))
        return self._merge(a, b), log_det

    def _inverse(self, z, context=None, training=False):
        a, b = self._split(z)
        b, log_det = self._untransform(b, self._params(a, context))
        return self._merge(a, b), log_det

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_units=list(self.hidden_units), activation=self.activation,
            reverse=self.reverse,
            context_shape=None if self.context_shape is None else list(self.context_shape),
        )
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class AdditiveCoupling(_Coupling):
    """Additive coupling (NICE).

    Forward:  z_a = x_a;  z_b = x_b + t(x_a, c)
    Inverse:  x_b = z_b - t(z_a, c)
    Log-det:  0 in both directions (volume preserving).

    Args:
        hidden_units: hidden sizes of the MLP conditioner `t`.
        activation: its activation.
        reverse: transform the first half instead of the second.
        context_shape: shape of the conditioning input, or None.

    Reference: Dinh, Krueger & Bengio 2015, arXiv:1410.8516.
    """

    def _transform(self, b, t):
        return b + t, ops.zeros((ops.shape(b)[0],), dtype=b.dtype)

    def _untransform(self, b, t):
        return b - t, ops.zeros((ops.shape(b)[0],), dtype=b.dtype)


@keras.saving.register_keras_serializable(package="keras_flows")
class AffineCoupling(_Coupling):
    """Affine coupling (RealNVP).

    Forward:  z_a = x_a;  z_b = x_b * exp(s(x_a, c)) + t(x_a, c)
    Inverse:  x_b = (z_b - t(z_a, c)) * exp(-s(z_a, c))
    Log-det:  forward sum(s(x_a, c)); inverse the negative.

    The raw network output `h` is bounded before use, so `exp(s)` can neither
    overflow nor vanish:
    - `scale="tanh"`: s = B * tanh(h / B) with `B = scale_bound` (soft clamp,
      s = 0 at initialisation);
    - `scale="sigmoid"`: exp(s) = sigmoid(h + 2) (Glow), in (0, 1).

    Args:
        hidden_units: hidden sizes of the MLP conditioner giving (s, t).
        activation: its activation.
        reverse: transform the first half instead of the second.
        context_shape: shape of the conditioning input, or None.
        scale: "tanh" or "sigmoid", as above.
        scale_bound: B for `scale="tanh"`.

    Reference: Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803.
    """

    params_per_feature = 2

    def __init__(self, hidden_units=(64, 64), activation="relu", reverse=False,
                 context_shape=None, scale="tanh", scale_bound=3.0, **kwargs):
        super().__init__(hidden_units, activation, reverse, context_shape, **kwargs)
        if scale not in ("tanh", "sigmoid"):
            raise ValueError(f"`scale` must be 'tanh' or 'sigmoid'; got {scale!r}.")
        self.scale = scale
        self.scale_bound = float(scale_bound)

    def _log_scale_and_shift(self, params):
        h, shift = params[..., 0::2], params[..., 1::2]
        if self.scale == "tanh":
            return self.scale_bound * tanh(h / self.scale_bound), shift
        return ops.log_sigmoid(h + 2.0), shift

    def _transform(self, b, params):
        log_scale, shift = self._log_scale_and_shift(params)
        return b * ops.exp(log_scale) + shift, sum_except_batch(log_scale)

    def _untransform(self, b, params):
        log_scale, shift = self._log_scale_and_shift(params)
        return (b - shift) * ops.exp(-log_scale), -sum_except_batch(log_scale)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, scale_bound=self.scale_bound)
        return config
