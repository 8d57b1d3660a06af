"""Layers with a bounded Lipschitz constant, for residual flows."""

import numpy as np
import keras
from keras import ops

from keras_flows.layers.dense import Dense, get_activation, serialize_activation
from keras_flows.utils.backend import conv2d, matmul


def _unit(x):
    return x / ops.sqrt(ops.sum(ops.square(x)) + 1e-24)


def _check(coefficient, power_iterations):
    if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or \
            not coefficient > 0:
        raise ValueError(f"`coefficient` must be a number > 0; got {coefficient!r}.")
    if (isinstance(power_iterations, bool) or not isinstance(power_iterations, int)
            or power_iterations < 1):
        raise ValueError(f"`power_iterations` must be a positive integer; got "
                         f"{power_iterations!r}.")


class _PowerIteration:
    """Spectral normalisation of a linear map A (the layer's kernel applied to
    an input), shared by `SpectralDense` and `SpectralConv2D`.

        W' = W / max(1, sigma / c),   sigma = ||A u||,

    u the stored unit vector of the input space (`u`), moved towards the top
    right singular vector of A by `power_iterations` iterations

        v <- A u / ||A u||,   u <- A^T v / ||A^T v||

    at every call, without gradient. sigma = ||A u|| <= ||A||_2, equal for the
    top singular vector; the gradient reaches W through sigma with u held
    fixed (Miyato et al. 2018). A call does not store the iterated u, so that
    every evaluation between two updates sees the same W'; `update()` stores
    it (the residual block calls it once per training step: the estimate
    warm-starts and converges over training); `converge(iterations)` runs
    many at once.
    """

    def _apply(self, kernel, u):
        raise NotImplementedError

    def _adjoint(self, kernel, v):
        raise NotImplementedError

    def _iterate(self, iterations):
        kernel = ops.stop_gradient(ops.convert_to_tensor(self.kernel))
        u = ops.cast(ops.stop_gradient(ops.convert_to_tensor(self.u)), kernel.dtype)
        for _ in range(iterations):
            u = _unit(self._adjoint(kernel, _unit(self._apply(kernel, u))))
        return u

    def converge(self, iterations=100):
        """Stores u after `iterations` power iterations."""
        self.u.assign(ops.cast(self._iterate(iterations), self.u.dtype))

    def update(self):
        """Stores u after `power_iterations` more iterations."""
        self.converge(self.power_iterations)

    def sigma(self):
        """The estimate ||A u|| of ||A||_2 (differentiable in the kernel)."""
        kernel = ops.convert_to_tensor(self.kernel)
        return ops.sqrt(ops.sum(ops.square(self._apply(kernel,
                                                       self._iterate(self.power_iterations)))))

    def scale(self):
        """1 / max(1, sigma / c): W' = scale W."""
        ratio = self.sigma() / self.coefficient
        # Not ops.maximum: on PyTorch (Keras 3.15) it returns float32 for float64.
        return 1.0 / ops.where(ratio > 1.0, ratio, ops.ones_like(ratio))

    def _kernel(self):
        return ops.convert_to_tensor(self.kernel) * self.scale()


@keras.saving.register_keras_serializable(package="keras_flows")
class SpectralDense(_PowerIteration, Dense):
    """A dense layer whose kernel's spectral norm is at most `coefficient`.

        y = act(x W' + b),   W' = W / max(1, sigma(W) / c)

    so that Lip(x -> x W' + b) = ||W'||_2 <= c when sigma(W) is exact. sigma
    is estimated by power iteration on x -> x W (see `_PowerIteration`);
    `build` starts u at the exact top singular vector of the initial kernel
    (NumPy's SVD).

    Args:
        units: size of the output.
        coefficient: the bound c on the spectral norm, in (0, 1] for a
            contraction (residual flows use 0.9 to 0.98).
        power_iterations: iterations per call (>= 1).
        **kwargs: those of `Dense`.

    References: Miyato, Kataoka, Koyama & Yoshida 2018, arXiv:1802.05957;
    Behrmann et al. 2019 (i-ResNet), arXiv:1811.00995.
    """

    def __init__(self, units, coefficient=0.97, power_iterations=1, **kwargs):
        super().__init__(units, **kwargs)
        _check(coefficient, power_iterations)
        self.coefficient = float(coefficient)
        self.power_iterations = power_iterations

    def build(self, input_shape):
        super().build(input_shape)
        kernel = ops.convert_to_numpy(self.kernel).astype(np.float64)
        self.u = self.add_weight(name="u", shape=(kernel.shape[0],), trainable=False,
                                 initializer="zeros")
        self.u.assign(np.linalg.svd(kernel)[0][:, 0].astype(self.u.dtype))

    def _apply(self, kernel, u):
        return matmul(u[None, :], kernel)[0]

    def _adjoint(self, kernel, v):
        return matmul(kernel, v[:, None])[:, 0]

    def get_config(self):
        config = super().get_config()
        config.update(coefficient=self.coefficient, power_iterations=self.power_iterations)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class SpectralConv2D(_PowerIteration, keras.layers.Layer):
    """A stride-1 "same" convolution whose operator norm is at most `coefficient`.

        y = act(conv(x, W') + b),   W' = W / max(1, sigma / c)

    with sigma the spectral norm of x -> conv(x, W) on inputs of the built
    height and width (not of the kernel reshaped to a matrix: the operator's
    norm is what bounds the Lipschitz constant), by power iteration with
    `conv` and its adjoint `conv_transpose` (see `_PowerIteration`; u has
    the shape of one input image). `build` runs 200 iterations from a seeded
    random u. Products keep float64 on every backend (`utils.backend.conv2d`,
    `ops.conv_transpose`).

    Args:
        filters: output channels.
        kernel_size: odd size of the square kernel.
        coefficient: the bound c on the operator norm.
        power_iterations: iterations per call (>= 1).
        activation: an activation name or callable (None for linear).
        kernel_initializer: initializer of the kernel.
        seed: seed of u's start.

    Reference: Gouk, Frank, Pfahringer & Cree 2021, arXiv:1804.04368;
    Behrmann et al. 2019, arXiv:1811.00995.
    """

    def __init__(self, filters, kernel_size=3, coefficient=0.97, power_iterations=1,
                 activation=None, kernel_initializer="glorot_uniform", seed=None, **kwargs):
        super().__init__(**kwargs)
        _check(coefficient, power_iterations)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or \
                kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be a positive odd integer; got "
                             f"{kernel_size!r}.")
        self.filters = int(filters)
        self.kernel_size = kernel_size
        self.coefficient = float(coefficient)
        self.power_iterations = power_iterations
        self.activation = get_activation(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = None if seed is None else int(seed)

    def build(self, input_shape):
        if len(input_shape) != 4 or None in tuple(input_shape[1:]):
            raise ValueError(f"{type(self).__name__} needs images (batch, height, width, "
                             f"channels) of known size; got {tuple(input_shape)}.")
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(k, k, input_shape[-1], self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        self.u = self.add_weight(name="u", shape=(1, *input_shape[1:]), trainable=False,
                                 initializer=keras.initializers.RandomNormal(seed=self.seed))
        self.converge(200)

    def _apply(self, kernel, u):
        # u twice: PyTorch's CPU convolution cannot differentiate in the kernel
        # with one image and one output channel ("slow_conv2d: grad_weight must
        # be contiguous").
        return conv2d(ops.concatenate([u, u]), kernel)[:1]

    def _adjoint(self, kernel, v):
        return ops.conv_transpose(v, kernel, padding="same")

    def call(self, x):
        return self.activation(conv2d(x, self._kernel()) + self.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        activation = serialize_activation(self.activation)
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      coefficient=self.coefficient, power_iterations=self.power_iterations,
                      activation=activation,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class LipSwish(keras.layers.Layer):
    """LipSwish(x) = x * sigmoid(beta x) / 1.1, beta = softplus(w) learned.

    Swish's derivative lies in [-0.0998, 1.0998] for every beta > 0, so the
    division by 1.1 makes it 1-Lipschitz (Chen et al. 2019). w starts at 0.5
    (beta = 0.974), one value per layer.

    Reference: Chen, Behrmann, Duvenaud & Jacobsen 2019 (Residual Flows),
    arXiv:1906.02735.
    """

    def build(self, input_shape):
        self.beta_weight = self.add_weight(name="beta", shape=(),
                                           initializer=keras.initializers.Constant(0.5))

    def beta(self):
        return ops.softplus(ops.convert_to_tensor(self.beta_weight))

    def call(self, x):
        return x * ops.sigmoid(ops.cast(self.beta(), x.dtype) * x) / 1.1
