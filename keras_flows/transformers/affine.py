"""Additive and affine transformers: y = x + t and y = x exp(s) + t."""

import math

import keras
from keras import ops

from keras_flows.transformers.base import Transformer
from keras_flows.utils.math import tanh


@keras.saving.register_keras_serializable(package="keras_flows")
class Additive(Transformer):
    """Shift (NICE).

    Forward:  y = x + t
    Inverse:  x = y - t
    Log-det:  0 both ways (volume preserving).

    Parameters per feature: 1, `t`.

    Reference: Dinh, Krueger & Bengio 2015, arXiv:1410.8516.
    """

    params_per_feature = 1

    def forward(self, x, params):
        return x + params[..., 0], ops.zeros_like(x)

    def inverse(self, y, params):
        return y - params[..., 0], ops.zeros_like(y)


@keras.saving.register_keras_serializable(package="keras_flows")
class Affine(Transformer):
    """Scale and shift (RealNVP, Glow, MAF).

    Forward:  y = x exp(s) + t
    Inverse:  x = (y - t) exp(-s)
    Log-det:  forward s; inverse -s (elementwise).

    Parameters per feature: 2, `(h, t)`; the log-scale s is a bounded
    function of the raw `h`, so exp(s) cannot overflow:
    - `scale="tanh"`: s = B tanh(h / B), B = `scale_bound` (soft clamp;
      s = 0 at h = 0);
    - `scale="sigmoid"`: exp(s) = sigmoid(h + 2) (Glow), in (0, 1). Bounded
      above only: the inverse multiplies by 1 + e^-(h+2), unbounded when a
      conditioner meets inputs unlike its training data, so that sampling can
      overflow (Behrmann et al. 2021). At h = 0 it is sigmoid(2), not 1;
    - `scale="bounded_sigmoid"`: Glow's scale with a floor m = e^-B,
          exp(s) = m + (1 - m) sigmoid(h + 2),  in (e^-B, 1),
          s = log1p((e^B - 1) sigmoid(h + 2)) - B,
      so the forward never expands and the inverse expands by at most e^B;
      where sigmoid(h + 2) >> m it equals `"sigmoid"`;
    - `scale="learned_tanh"`: s = a tanh(h), with `a` a learned factor per
      feature (the last axis of x), starting at 1 (RealNVP's images).
    - `scale="exp"`: s = h, unbounded (MAF's original form; the inverse can
      overflow as with `"sigmoid"`).

    Args:
        scale: "tanh", "sigmoid", "bounded_sigmoid", "learned_tanh" or "exp".
        scale_bound: B for "tanh" and "bounded_sigmoid", > 0.

    Reference: Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803;
    Kingma & Dhariwal 2018, arXiv:1807.03039; Papamakarios, Pavlakou &
    Murray 2017, arXiv:1705.07057; Behrmann, Vicol, Wang, Grosse & Jacobsen
    2021, arXiv:2006.09347.
    """

    params_per_feature = 2
    scales = ("tanh", "sigmoid", "bounded_sigmoid", "learned_tanh", "exp")

    def __init__(self, scale="tanh", scale_bound=3.0, **kwargs):
        super().__init__(**kwargs)
        if scale not in self.scales:
            raise ValueError(f"`scale` must be one of {self.scales}; got {scale!r}.")
        if not scale_bound > 0:
            raise ValueError(f"`scale_bound` must be > 0; got {scale_bound}.")
        self.scale = scale
        self.scale_bound = float(scale_bound)

    def build(self, input_shape):
        if self.scale == "learned_tanh":
            self.scale_factor = self.add_weight(name="scale_factor",
                                                shape=(input_shape[-1],),
                                                initializer="ones")

    def log_scale(self, h):
        """s as a function of the raw parameter h."""
        if self.scale == "tanh":
            return self.scale_bound * tanh(h / self.scale_bound)
        if self.scale == "learned_tanh":
            return ops.cast(self.scale_factor, h.dtype) * tanh(h)
        if self.scale == "bounded_sigmoid":
            # m + (1 - m) sigmoid = m (1 + (e^B - 1) sigmoid): one log1p, exact
            # where sigmoid(h + 2) is tiny, and 0 where it is 1.
            return ops.log1p(math.expm1(self.scale_bound)
                             * ops.sigmoid(h + 2.0)) - self.scale_bound
        if self.scale == "sigmoid":
            return ops.log_sigmoid(h + 2.0)
        return h

    def _build_for(self, x):
        if not self.built:
            self.build(x.shape)
            self.built = True

    def forward(self, x, params):
        self._build_for(x)
        s = self.log_scale(params[..., 0])
        return x * ops.exp(s) + params[..., 1], s

    def inverse(self, y, params):
        self._build_for(y)
        s = self.log_scale(params[..., 0])
        return (y - params[..., 1]) * ops.exp(-s), -s

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, scale_bound=self.scale_bound)
        return config
