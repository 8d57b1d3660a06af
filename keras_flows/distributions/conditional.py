"""Learned Gaussian priors of multi-scale image flows (Glow)."""

import keras
from keras import ops

from keras_flows.bijectors.base import sum_except_batch
from keras_flows.distributions.base import normal_log_prob
from keras_flows.layers.dense import Dense
from keras_flows.utils.math import tanh


class _GaussianPrior(keras.layers.Layer):
    """N(mu, diag(sigma^2)) whose parameters come from `_params(...)`."""

    def log_prob(self, z, *given):
        loc, log_scale = self._params(z, *given)
        return sum_except_batch(normal_log_prob(z, loc, log_scale))

    def sample(self, shape, *given, temperature=1.0, seed=None):
        eps = keras.random.normal(shape, seed=seed, dtype=self.compute_dtype)
        loc, log_scale = self._params(eps, *given)
        return loc + ops.exp(log_scale) * temperature * eps


@keras.saving.register_keras_serializable(package="keras_flows")
class SplitPrior(_GaussianPrior):
    """Glow's prior for a factored-out half `z` given the kept half `h`.

    p(z | h) = N(z; mu(h), diag(sigma(h)^2)),  [mu, a] = Conv3x3(h),
    log sigma = a, or with `scale_bound` B: log sigma = B tanh(a / B),

    the conv zero-initialised (so it starts at N(0, I)). Sampling draws
    z = mu(h) + sigma(h) T eps given the level above's `h`; when `h` is
    unlike the training data, an unbounded log sigma = a grows linearly with
    it and exp(a) overflows, so a bounded B caps the spread at e^B. Where
    |a| << B the two agree (tanh(u) = u - u^3 / 3 + ...).

    Args:
        channels: channels of `z`, and of `h`.
        scale_bound: B > 0, or None for the unbounded log sigma = a.
    """

    def __init__(self, channels, scale_bound=None, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(f"`scale_bound` must be > 0 or None; got {scale_bound}.")
        self.scale_bound = None if scale_bound is None else float(scale_bound)
        self.conv = keras.layers.Conv2D(2 * self.channels, 3, padding="same",
                                        kernel_initializer="zeros", dtype=self.dtype_policy,
                                        name="conv")
        self.conv.build((None, None, None, self.channels))  # h has as many channels as z
        self.built = True

    def _params(self, z, h):
        out = self.conv(h)
        loc, log_scale = out[..., 0::2], out[..., 1::2]
        if self.scale_bound is not None:
            log_scale = self.scale_bound * tanh(log_scale / self.scale_bound)
        return loc, log_scale

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, scale_bound=self.scale_bound)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class TopPrior(_GaussianPrior):
    """Learned prior of the last latent, optionally class-conditional.

    p(z | y) = N(z; mu + A onehot(y), diag(exp(s + B onehot(y))^2)), with the
    per-position `mu`, `s` and the class maps A, B all starting at zero. A
    label outside [0, num_classes) gives NaN.

    Args:
        shape: shape of the latent, (H, W, C).
        num_classes: number of classes for `y`, or None.
    """

    def __init__(self, shape, num_classes=None, **kwargs):
        super().__init__(**kwargs)
        self.shape = tuple(int(d) for d in shape)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.loc = self.add_weight(shape=self.shape, initializer="zeros", name="loc")
        self.log_scale = self.add_weight(shape=self.shape, initializer="zeros",
                                          name="log_scale")
        if self.num_classes is not None:
            self.class_map = Dense(
                2 * self.shape[-1], kernel_initializer="zeros", dtype=self.dtype_policy,
                name="class_map")
            self.class_map.build((None, self.num_classes))
        self.built = True

    def _params(self, z, y=None):
        loc, log_scale = self.loc, self.log_scale
        if self.num_classes is not None:
            # A label outside [0, num_classes) gives NaN (rather than a zero
            # one-hot, or an error on one backend only), which traced steps show.
            valid = ops.logical_and(y >= 0, y < self.num_classes)
            y = ops.clip(y, 0, self.num_classes - 1)
            out = self.class_map(ops.one_hot(y, self.num_classes, dtype=self.compute_dtype))
            out = ops.where(valid[:, None], out, float("nan"))
            loc = loc + out[:, None, None, 0::2]
            log_scale = log_scale + out[:, None, None, 1::2]
        return loc, log_scale

    def get_config(self):
        config = super().get_config()
        config.update(shape=list(self.shape), num_classes=self.num_classes)
        return config
