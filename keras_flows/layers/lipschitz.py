"""Layers with a bounded Lipschitz constant, for residual flows."""

import numpy as np
import keras
from keras import ops

from keras_flows.layers.dense import Dense
from keras_flows.utils.backend import matmul


def _unit(x):
    return x / ops.sqrt(ops.sum(ops.square(x)) + 1e-24)


@keras.saving.register_keras_serializable(package="keras_flows")
class SpectralDense(Dense):
    """A dense layer whose kernel's spectral norm is at most `coefficient`.

        y = act(x W' + b),   W' = W / max(1, sigma(W) / c)

    so that Lip(x -> x W' + b) = ||W'||_2 <= c (when sigma(W) is exact).
    sigma(W), the largest singular value, is estimated by power iteration
    (Miyato et al. 2018): from the stored unit vector `u` (the right singular
    vector's estimate), `power_iterations` times

        v <- (W u) / ||W u||,   u <- (W^T v) / ||W^T v||,

    then sigma = ||W u||, a lower bound of ||W||_2 that is exact when u is the
    top right singular vector. The iterations run without gradient; the
    gradient reaches W through sigma = ||W u|| (u held fixed), as in
    Behrmann et al. 2019 and Chen et al. 2019.

    Every call iterates from the stored `u` without storing the result, so
    all evaluations between two updates see the same W'. `update()` stores the
    iterated `u` (the residual block calls it once per training step), so the
    estimate warm-starts and converges over training. `build` starts `u` at
    the exact top singular vector of the initial kernel, and
    `converge(iterations)` brings it there again, e.g. after weights were set
    by hand.

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
        if not (isinstance(coefficient, (int, float)) and not isinstance(coefficient, bool)
                and 0 < coefficient):
            raise ValueError(f"`coefficient` must be a number > 0; got {coefficient!r}.")
        if (isinstance(power_iterations, bool) or not isinstance(power_iterations, int)
                or power_iterations < 1):
            raise ValueError(f"`power_iterations` must be a positive integer; got "
                             f"{power_iterations!r}.")
        self.coefficient = float(coefficient)
        self.power_iterations = power_iterations

    def build(self, input_shape):
        super().build(input_shape)
        self.u = self.add_weight(name="u", shape=(self.units,), trainable=False,
                                 initializer="ones")
        self.converge()

    def converge(self, iterations=None):
        """Sets `u` to the top right singular vector of the kernel: by NumPy's
        SVD when `iterations` is None, else by that many power iterations."""
        if iterations is None:
            kernel = ops.convert_to_numpy(self.kernel).astype(np.float64)
            u = np.linalg.svd(kernel)[2][0]
            self.u.assign(ops.convert_to_tensor(u, self.u.dtype))
        else:
            self.u.assign(ops.cast(self._iterate(iterations), self.u.dtype))

    def _iterate(self, iterations):
        kernel = ops.stop_gradient(ops.convert_to_tensor(self.kernel))
        u = ops.cast(ops.stop_gradient(ops.convert_to_tensor(self.u)), kernel.dtype)
        for _ in range(iterations):
            v = _unit(matmul(kernel, u[:, None])[:, 0])
            u = _unit(matmul(v[None, :], kernel)[0])
        return u

    def update(self):
        """Stores `u` after `power_iterations` more iterations."""
        self.converge(self.power_iterations)

    def sigma(self):
        """The estimate ||W u|| of ||W||_2 (differentiable in W)."""
        kernel = ops.convert_to_tensor(self.kernel)
        u = self._iterate(self.power_iterations)
        return ops.sqrt(ops.sum(ops.square(matmul(kernel, u[:, None]))))

    def _kernel(self):
        kernel = ops.convert_to_tensor(self.kernel)
        return kernel / ops.maximum(ops.cast(1.0, kernel.dtype),
                                    self.sigma() / self.coefficient)

    def get_config(self):
        config = super().get_config()
        config.update(coefficient=self.coefficient, power_iterations=self.power_iterations)
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
