"""Distributions on the open probability simplex: uniform and Dirichlet.

The simplex S_K = {x in R^K : x_i > 0, sum_i x_i = 1} is (K-1)-dimensional.
Densities are taken, as usual for the Dirichlet, with respect to Lebesgue
measure on the first K-1 coordinates (x_K = 1 - x_1 - ... - x_{K-1}); the
surface measure of S_K in R^K is sqrt(K) times that one, so densities in that
convention are these divided by sqrt(K). The simplex bijectors
(`keras_flows.bijectors.Calibration`, `GeneralizedCalibration`) use the same
chart, so `ManifoldFlow` adds their log volume ratios to these log-densities.

Temperature: sampling at temperature T divides the concentration by T:
Dirichlet(alpha / T). T = 1 samples the distribution, T < 1 concentrates the
samples about the mean alpha / sum(alpha), T = 0 returns that mean, T > 1
spreads them toward the vertices. (This is not the tempered density p^(1/T),
which is Dirichlet(1 + (alpha - 1) / T) and no density for alpha_i < 1 and
small T.)

Reference: Devroye 1986, "Non-Uniform Random Variate Generation", ch. XI.4
(Dirichlet by normalised gammas) and IV.6 (G(a) = G(a + 1) U^(1/a)).
"""

import math

import numpy as np
import keras
from keras import ops

from keras_flows.distributions.base import Distribution
from keras_flows.utils.math import exactly, log_gamma
from keras_flows.utils.random import seed_generator

def _check_num_classes(num_classes, name):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ValueError(f"{name}: `num_classes` must be an integer >= 2 (the length K of a "
                         f"probability row); got {num_classes!r}.")
    return int(num_classes)


def _at_least(x, value):
    """max(x, value) in x's dtype (`ops.maximum` with a scalar gives float32 on PyTorch)."""
    return ops.where(x > value, x, ops.zeros_like(x) + value)


def _sample_dirichlet(alpha, n, seed, temperature, dtype):
    """n draws of Dirichlet(alpha / T) (the mean alpha / sum(alpha) at T = 0).

    Each gamma is drawn in log space, log G(a) = log G(a + 1) + log(U) / a,
    so that small concentrations do not underflow to 0/0; entries are kept
    at least the dtype's smallest normal number, in the open simplex.
    """
    n = int(n)
    seed = seed_generator(seed)
    k, tiny = alpha.shape[-1], float(np.finfo(dtype).tiny)
    t = ops.cast(temperature, dtype)
    hot = t > 0
    a = ops.broadcast_to(alpha / ops.where(hot, t, ops.ones_like(t)), (n, k))
    log_g = ops.log(keras.random.gamma((n, k), a + 1.0, dtype=dtype, seed=seed))
    u = keras.random.uniform((n, k), minval=0.0, maxval=1.0, dtype=dtype, seed=seed)
    log_g = log_g + ops.log(_at_least(u, tiny)) / a
    # exp / sum rather than ops.softmax, which computes float64 in float32 on PyTorch.
    g = ops.exp(log_g - ops.max(log_g, axis=-1, keepdims=True))
    x = ops.where(hot, g / ops.sum(g, axis=-1, keepdims=True),
                  a / ops.sum(a, axis=-1, keepdims=True))
    return _at_least(x, tiny)


@keras.saving.register_keras_serializable(package="keras_flows")
class UniformSimplex(Distribution):
    """The uniform distribution on the simplex S_K, Dirichlet(1, ..., 1).

    log p(x) = log Gamma(K) = log (K - 1)!   (Lebesgue measure on x_1..x_{K-1})

    Sampling at temperature T draws Dirichlet(1/T, ..., 1/T) (see the module
    docstring); T = 0 gives the centre (1/K, ..., 1/K).

    Args:
        num_classes: K >= 2, the length of a probability row.
    """

    manifold = "simplex"

    def __init__(self, num_classes, **kwargs):
        self.num_classes = _check_num_classes(num_classes, type(self).__name__)
        super().__init__((self.num_classes,), **kwargs)

    def log_prob(self, z):
        z = self._flat(z)
        return ops.zeros_like(z[:, 0]) + math.lgamma(self.num_classes)

    def sample(self, n, seed=None, temperature=1.0):
        alpha = ops.ones((self.num_classes,), dtype=self.compute_dtype)
        return _sample_dirichlet(alpha, n, seed, temperature, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.pop("event_shape")
        config["num_classes"] = self.num_classes
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class Dirichlet(Distribution):
    """The Dirichlet distribution on the simplex S_K, concentration alpha > 0.

    log p(x) = sum_i (alpha_i - 1) log x_i + log Gamma(sum_i alpha_i)
               - sum_i log Gamma(alpha_i)
    (Lebesgue measure on x_1..x_{K-1}). Mean alpha / sum(alpha).

    The concentration is learned as log alpha (a weight `log_concentration`);
    pass `trainable=False` to keep it fixed. Sampling: x = g / sum(g) with
    g_i ~ Gamma(alpha_i / T) independent (T the temperature, see the module
    docstring).

    Args:
        num_classes: K >= 2.
        concentration: the initial alpha: a number > 0 (every class) or K
            numbers > 0; 1 (uniform) by default.

    Example:
        >>> d = Dirichlet(3, concentration=[2.0, 5.0, 3.0], trainable=False)
        >>> d.log_prob([[0.2, 0.5, 0.3]]); d.sample(100, seed=0)
    """

    manifold = "simplex"

    def __init__(self, num_classes, concentration=1.0, **kwargs):
        self.num_classes = _check_num_classes(num_classes, type(self).__name__)
        alpha = np.asarray(concentration, dtype="float64")
        if alpha.ndim == 0:
            alpha = np.full((self.num_classes,), float(alpha))
        if alpha.shape != (self.num_classes,) or not np.all(np.isfinite(alpha)) \
                or not np.all(alpha > 0):
            raise ValueError(
                f"Dirichlet: `concentration` must be a number > 0 or {self.num_classes} "
                f"finite numbers > 0; got {concentration!r}.")
        self.concentration_init = [float(a) for a in alpha]
        super().__init__((self.num_classes,), **kwargs)

    def build(self, input_shape):
        self.log_concentration = self.add_weight(
            shape=(self.num_classes,), name="log_concentration",
            initializer=exactly(np.log(self.concentration_init)))
        self.built = True

    @property
    def concentration(self):
        """alpha = exp(log_concentration), shape (K,)."""
        return ops.exp(self.log_concentration)

    def log_prob(self, z):
        z = self._flat(z)
        alpha = ops.cast(self.concentration, z.dtype)
        log_norm = log_gamma(ops.sum(alpha)) - ops.sum(log_gamma(alpha))
        return ops.sum((alpha - 1.0) * ops.log(z), axis=-1) + log_norm

    def sample(self, n, seed=None, temperature=1.0):
        alpha = ops.cast(self.concentration, self.compute_dtype)
        return _sample_dirichlet(alpha, n, seed, temperature, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.pop("event_shape")
        config.update(num_classes=self.num_classes, concentration=self.concentration_init)
        return config
