"""Normalization bijectors: `ActNorm` (Glow) and `BatchNorm` (RealNVP)."""

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector, num_positions, per_example
from keras_flows.distribute import cross_replica_mean
from keras_flows.utils.backend import known_true
from keras_flows.utils.math import upcast


def _moments(x):
    """Per-channel mean and (biased) variance of `x` over the GLOBAL batch.

    The statistics run over every axis but the last (channel) one. Under
    data-parallel training each replica holds a share of the batch; with R
    replicas holding EQUAL shares (as `tf.distribute` splits a global batch),
    the replicas' mean m_r and variance v_r combine with equal weights:

        m = mean_r m_r,    v = mean_r (v_r + (m_r - m)^2)

    (the law of total variance; no cancellation, unlike E[x^2] - m^2).
    Elsewhere (one device, or JAX's `DataParallel`, which already sees the
    global batch) `cross_replica_mean` is the identity, m_r - m is exactly 0
    and the result is exactly `ops.mean` and `ops.var`.
    """
    axes = tuple(range(len(x.shape) - 1))
    local_mean, local_var = ops.mean(x, axis=axes), ops.var(x, axis=axes)
    mean = cross_replica_mean(local_mean)
    var = cross_replica_mean(local_var + ops.square(local_mean - mean))
    return mean, var


@keras.saving.register_keras_serializable(package="keras_flows")
class ActNorm(Bijector):
    """Activation normalization (Glow): a per-channel affine map.

    Forward:  z = (x + b) * exp(s)
    Inverse:  x = z * exp(-s) - b
    Log-det:  forward N * sum_c s_c with N = prod(shape[1:-1]) the number of
              positions per channel (1 for vectors, H*W for images);
              inverse the negative.

    `b` and `s` have one entry per channel (the LAST axis), so the layer takes
    vectors `(B, D)` and images `(B, H, W, C)` alike.

    Data-dependent initialisation: the first call with `training=True` (the
    first `fit` step) sets `b = -mean(x)` and `s = -log(std(x) + epsilon)` per
    channel from that batch, so that `z` has zero mean and unit variance per
    channel. Under data-parallel training (`tf.distribute`, JAX's
    `DataParallel`, PyTorch DDP) the statistics are those of the global
    batch, so every replica makes the same start; the replicas' shares of the
    batch must be of equal size. Until then the layer is the identity (also under
    `training=False`, e.g. in `Flow.build`, `predict` or `log_prob`).

    How it stays correct inside a compiled, stateless train step (JAX's
    `stateless_call` keeps assignments to non-trainable variables but drops
    assignments to trainable ones; TF/XLA and `torch.compile` forbid Python
    branching on tensor values):

    - the non-trainable variables `initial_bias`, `initial_log_scale` (zeros)
      and the float flag `initialized` (0.0) hold the data-dependent start;
    - the trainable variables `bias` and `log_scale` (zeros) are offsets
      learned on top of it: b = initial_bias + bias, s = initial_log_scale +
      log_scale;
    - with `training=True` the batch statistics (without gradient) give
      candidate starts; the effective start is
      `where(initialized > 0.5, initial_*, candidate)`, which is written back
      to `initial_*`, and `initialized` is set to 1. After the first training
      batch the write-back rewrites the stored values unchanged, so only the
      trainable offsets move from then on.

    All of this is tensor arithmetic, so it traces under `jit` on every
    backend; nothing depends on a Python flag, and the state is saved with
    the model's weights. Eager PyTorch skips the batch statistics and the
    write-back once it has read `initialized` as 1
    (`utils.backend.known_true`), which gives the same values.

    Args:
        epsilon: added to the batch standard deviation before the log.

    Reference: Kingma & Dhariwal 2018, "Glow", arXiv:1807.03039.
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "ActNorm needs a known last (channel) axis; got input shape "
                f"{tuple(input_shape)}."
            )
        shape = (int(channels),)
        self.bias = self.add_weight(name="bias", shape=shape, initializer="zeros")
        self.log_scale = self.add_weight(name="log_scale", shape=shape,
                                         initializer="zeros")
        # The state is never autocast: under mixed precision on PyTorch,
        # Keras 3.15 assigns an autocast variable into a temporary copy.
        state = dict(initializer="zeros", trainable=False, autocast=False)
        self.initial_bias = self.add_weight(name="initial_bias", shape=shape, **state)
        self.initial_log_scale = self.add_weight(name="initial_log_scale", shape=shape,
                                                 **state)
        self.initialized = self.add_weight(name="initialized", shape=(), **state)
        self.built = True

    def _stored_start(self, dtype):
        return (ops.cast(self.initial_bias, dtype),
                ops.cast(self.initial_log_scale, dtype))

    def _params(self, x, training):
        dtype = x.dtype
        init_bias, init_log_scale = self._stored_start(dtype)
        if training and not known_true(self.initialized):
            mean, var = _moments(ops.stop_gradient(x))
            std = ops.sqrt(var)
            done = ops.cast(self.initialized, dtype) > 0.5
            init_bias = ops.where(done, init_bias, -mean)
            init_log_scale = ops.where(done, init_log_scale,
                                       -ops.log(std + self.epsilon))
            self.initial_bias.assign(ops.cast(init_bias, self.initial_bias.dtype))
            self.initial_log_scale.assign(
                ops.cast(init_log_scale, self.initial_log_scale.dtype))
            self.initialized.assign(ops.ones((), dtype=self.initialized.dtype))
        bias = init_bias + ops.cast(self.bias, dtype)
        log_scale = init_log_scale + ops.cast(self.log_scale, dtype)
        return bias, log_scale

    def _log_det(self, x, log_scale):
        # Summed in float32 under mixed precision: N * sum(s) reaches
        # hundreds, where bfloat16 keeps less than one digit after the point.
        return upcast(per_example(x, 1.0)) * (num_positions(x) * ops.sum(upcast(log_scale)))

    def _forward(self, x, context=None, training=False):
        bias, log_scale = self._params(x, bool(training))
        return (x + bias) * ops.exp(log_scale), self._log_det(x, log_scale)

    def _inverse(self, z, context=None, training=False):
        bias, log_scale = self._params(z, False)
        return z * ops.exp(-log_scale) - bias, -self._log_det(z, log_scale)

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class BatchNorm(Bijector):
    """Batch normalization as a bijector (RealNVP).

    Forward:  z = (x - m) / sqrt(v + eps) * exp(g) + beta
    Inverse:  x = (z - beta) * exp(-g) * sqrt(v + eps) + m
    Log-det:  forward N * sum_c (g_c - 0.5 * log(v_c + eps)) with
              N = prod(shape[1:-1]) positions per channel (1 for vectors);
              inverse the negative.

    Statistics are per channel (the LAST axis), over every other axis.
    `g` (`log_gamma`) and `beta` are learned, both zero at the start.

    - `training=True` (`fit`): m, v are the batch mean and (biased) variance,
      of the global batch under data-parallel training (replicas holding
      equal shares of it), and gradients flow through them as in RealNVP; the log-det treats them
      as the constants they are for the batch. The non-trainable
      `moving_mean` / `moving_variance` are updated as
      `moving = momentum * moving + (1 - momentum) * batch`.
    - `training=False` (`log_prob`, `predict`, `evaluate`): m, v are the
      moving statistics, so the map is a fixed bijection of each example.
    - The inverse always uses the moving statistics, in training mode too:
      there is no batch of data to take statistics from when going from
      latent to data, and this makes `inverse` the exact inverse of the
      inference-mode `forward`.

    Args:
        momentum: decay of the moving statistics; 0.99 by default, as in
            `keras.layers.BatchNormalization`. Closer to 1 averages more
            batches.
        epsilon: added to the variance before the square root.

    Reference: Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803;
    Ioffe & Szegedy 2015, arXiv:1502.03167.
    """

    def __init__(self, momentum=0.99, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1]; got {momentum}.")
        if self.epsilon <= 0.0:
            raise ValueError(f"`epsilon` must be positive; got {epsilon}.")

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "BatchNorm needs a known last (channel) axis; got input shape "
                f"{tuple(input_shape)}."
            )
        shape = (int(channels),)
        self.log_gamma = self.add_weight(name="log_gamma", shape=shape,
                                         initializer="zeros")
        self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros")
        # Not autocast, as ActNorm's state (assignments would be lost on PyTorch).
        self.moving_mean = self.add_weight(name="moving_mean", shape=shape,
                                           initializer="zeros", trainable=False,
                                           autocast=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=shape,
                                               initializer="ones", trainable=False,
                                               autocast=False)
        self.built = True

    def _moving(self, dtype):
        return (ops.cast(self.moving_mean, dtype),
                ops.cast(self.moving_variance, dtype))

    def _log_scale(self, x, var):
        """Per-channel log of the forward scale: g - 0.5 log(v + eps)."""
        return ops.cast(self.log_gamma, x.dtype) - 0.5 * ops.log(var + self.epsilon)

    def _forward(self, x, context=None, training=False):
        dtype = x.dtype
        if training:
            mean, var = _moments(x)
            m = self.momentum
            for moving, batch in ((self.moving_mean, mean),
                                  (self.moving_variance, var)):
                batch = ops.cast(ops.stop_gradient(batch), moving.dtype)
                moving.assign(moving * m + batch * (1.0 - m))
        else:
            mean, var = self._moving(dtype)
        log_scale = self._log_scale(x, var)
        z = (x - mean) * ops.exp(log_scale) + ops.cast(self.beta, dtype)
        log_det = per_example(x, num_positions(x) * ops.sum(log_scale))
        return z, log_det

    def _inverse(self, z, context=None, training=False):
        mean, var = self._moving(z.dtype)
        log_scale = self._log_scale(z, var)
        x = (z - ops.cast(self.beta, z.dtype)) * ops.exp(-log_scale) + mean
        log_det = per_example(z, num_positions(z) * ops.sum(log_scale))
        return x, -log_det

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, epsilon=self.epsilon)
        return config
