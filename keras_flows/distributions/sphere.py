"""Distributions on the unit sphere S^(n-1) = {x in R^n : |x| = 1}.

Densities are with respect to the surface measure of S^(n-1), whose total is
|S^(n-1)| = 2 pi^(n/2) / Gamma(n/2). The sphere bijectors
(`keras_flows.bijectors.NormalizedTranslation`, ...) return log volume ratios
for the same measure, so `ManifoldFlow` adds them to these log-densities.

Temperature: sampling at temperature T divides the concentration kappa by T.
For the von Mises-Fisher and power spherical families that is exactly the
tempered density p^(1/T) (normalised); T = 0 returns the mode mu, and the
uniform distribution (kappa = 0) is the same at every temperature.

References: Mardia & Jupp 2000, "Directional Statistics", ch. 9; Wood 1994,
"Simulation of the von Mises Fisher distribution", Comm. Stat. Simul.
Comput. 23(1); De Cao & Aziz 2020, "The power spherical distribution",
arXiv:2006.04437; Olver 1997, "Asymptotics and Special Functions", ch. 10.7
(uniform asymptotic expansion of I_nu).
"""

import math
import numbers

import numpy as np
import keras
from keras import ops

from keras_flows.distributions.base import Distribution
from keras_flows.utils.math import exactly, log_gamma
from keras_flows.utils.random import seed_generator

#: Proposals drawn per sample by Wood's rejection sampler (see `VonMisesFisher`).
WOOD_PROPOSALS = 16

# Debye's polynomials u_k(t) of the uniform asymptotic expansion
# I_mu(mu z) ~ exp(mu eta) / (sqrt(2 pi mu) (1 + z^2)^(1/4)) sum_k u_k(t) / mu^k,
# t = 1 / sqrt(1 + z^2): coefficients of t^0, t^1, ... (Abramowitz & Stegun 9.3.9).
_DEBYE = (
    np.array([0.0, 3.0, 0.0, -5.0]) / 24.0,
    np.array([0.0, 0.0, 81.0, 0.0, -462.0, 0.0, 385.0]) / 1152.0,
    np.array([0.0, 0.0, 0.0, 30375.0, 0.0, -369603.0, 0.0, 765765.0, 0.0, -425425.0])
    / 414720.0,
    np.array([0.0, 0.0, 0.0, 0.0, 4465125.0, 0.0, -94121676.0, 0.0, 349922430.0, 0.0,
              -446185740.0, 0.0, 185910725.0]) / 39813120.0,
)
# Below this order the expansion's error (~u_5(t) / mu^5) is too large: the
# order is raised by the recurrence of the Bessel functions instead.
_DEBYE_MIN_ORDER = 30.0


def _debye_log_sum(mu, t):
    total = 1.0
    for k, coefficients in enumerate(_DEBYE, start=1):
        u = 0.0
        for c in coefficients[::-1]:
            u = u * t + float(c)
        total = total + u / mu**k
    return ops.log(total)


def _excess_debye(mu, kappa):
    """E(mu, kappa) = log I_mu(kappa) - kappa - mu log kappa for mu >= 30.

    With g = sqrt(mu^2 + kappa^2), the expansion gives
    E = mu^2 / (g + kappa) - mu log(mu + g) - log(2 pi g) / 2 + log S,
    S = sum_k u_k(mu / g) / mu^k; every term is moderate for all kappa >= 0.
    """
    g = ops.sqrt(mu * mu + ops.square(kappa))
    return (mu * mu / (g + kappa) - mu * ops.log(mu + g) - 0.5 * ops.log(2.0 * math.pi * g)
            + _debye_log_sum(mu, mu / g))


def _log_ratio_debye(mu, kappa):
    """log(kappa I_mu(kappa) / I_(mu+1)(kappa)) = E(mu) - E(mu + 1) for mu >= 30,
    written without the cancellation of the two large terms."""
    g0 = ops.sqrt(mu * mu + ops.square(kappa))
    g1 = ops.sqrt((mu + 1.0) ** 2 + ops.square(kappa))
    d = (2.0 * mu + 1.0) / (g0 + g1)   # = g1 - g0
    return (-d + ops.log(mu + 1.0 + g1) + mu * ops.log1p((1.0 + d) / (mu + g0))
            + 0.5 * ops.log1p(d / g0)
            + _debye_log_sum(mu, mu / g0) - _debye_log_sum(mu + 1.0, (mu + 1.0) / g1))


def log_bessel_excess(order, kappa):
    """E = log I_nu(kappa) - kappa - nu log kappa, elementwise in `kappa` >= 0
    (`order` nu >= 0 a Python number), finite at kappa = 0, where it is
    -nu log 2 - log Gamma(nu + 1).

    For nu >= 30 the uniform asymptotic expansion of I_nu with terms to
    u_4 / nu^4 (the omitted terms, ~u_5 / nu^5, below 1e-9). Below, the order
    is first raised to mu = nu + K >= 30 and the ratios s_k = kappa I_(nu+k) / I_(nu+k+1)
    come down the recurrence I_(v-1) = I_(v+1) + (2v / kappa) I_v:

        s_(k-1) = kappa^2 / s_k + 2 (nu + k),   E(nu) = E(mu) + sum_(k<K) log s_k,

    a sum of positive terms (stable: I is the minimal solution), with s_K
    from the expansion.
    """
    nu = float(order)
    kappa = ops.convert_to_tensor(kappa)
    steps = max(0, math.ceil(_DEBYE_MIN_ORDER - nu))
    mu = nu + steps
    excess = _excess_debye(mu, kappa)
    if steps:
        kappa2 = ops.square(kappa)
        s = ops.exp(_log_ratio_debye(mu, kappa))
        for k in range(steps, 0, -1):
            s = kappa2 / s + 2.0 * (nu + k)
            excess = excess + ops.log(s)
    return excess


def vmf_log_normalizer(dim, kappa):
    """log C_n(kappa) = (n/2 - 1) log kappa - (n/2) log(2 pi) - log I_(n/2-1)(kappa),
    the von Mises-Fisher log-normaliser on S^(n-1), `dim` = n >= 2, for
    kappa >= 0 (the kappa -> 0 limit, -log|S^(n-1)|, at 0).

    Computed as -(n/2) log(2 pi) - kappa - E(n/2 - 1, kappa) with
    `log_bessel_excess`, so that log kappa never appears. Measured against
    `scipy.special.ive` (and the power series where ive underflows) for n in
    [2, 1000] and kappa in {0} and [1e-6, 1e4]: float64 relative error below
    2e-10 (absolute below 1e-9); float32 relative 2e-5, absolute 1e-5 near
    kappa = 0 (the recurrence sums terms of size ~100) and 4e-4 at
    kappa = 1e4, where log C is ~1e4 (tests/test_manifold_distributions.py).
    """
    kappa = ops.convert_to_tensor(kappa)
    return -0.5 * dim * math.log(2.0 * math.pi) - kappa - log_bessel_excess(dim / 2.0 - 1.0,
                                                                            kappa)


def _check_dim(dim, name):
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
        raise ValueError(f"{name}: `dim` must be an integer >= 2 (points on S^(dim-1) in "
                         f"R^dim); got {dim!r}.")
    return int(dim)


def _norm(x):
    return ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))


def _uniform_directions(n, dim, seed, dtype):
    v = keras.random.normal((n, dim), seed=seed, dtype=dtype)
    return v / _norm(v)


def _rotate_from_e1(x, mu):
    """An orthogonal map of each row of `x` that takes e_1 to the unit vector mu:
    -s H_u, H_u the Householder reflection in u = e_1 + s mu, s = +1 if
    mu_1 > 0 else -1, so that |u|^2 = 2 + 2 |mu_1| >= 2."""
    s = ops.where(mu[0] > 0, 1.0, -1.0)
    e1 = ops.cast(ops.arange(mu.shape[0]) == 0, mu.dtype)
    u = e1 + ops.cast(s, mu.dtype) * mu
    reflected = x - 2.0 * ops.sum(x * u, axis=-1, keepdims=True) * u / ops.sum(u * u)
    return -ops.cast(s, x.dtype) * reflected


def _tempered(kappa, temperature, dtype):
    """(kappa / T, T > 0), with T = 0 mapped to a finite placeholder."""
    t = ops.cast(temperature, dtype)
    hot = t > 0
    return kappa / ops.where(hot, t, ops.ones_like(t)), hot


class _Directional(Distribution):
    """Shared by the von Mises-Fisher and power spherical distributions: a
    learned mean direction mu = m / |m| and concentration kappa = exp(log k)."""

    manifold = "sphere"

    def __init__(self, dim, mean_direction=None, concentration=1.0, **kwargs):
        name = type(self).__name__
        self.dim = _check_dim(dim, name)
        if mean_direction is None:
            mean_direction = np.eye(self.dim)[0]
        m = np.asarray(mean_direction, dtype="float64")
        if m.shape != (self.dim,) or not np.all(np.isfinite(m)) or \
                abs(np.linalg.norm(m) - 1.0) > 1e-6:
            raise ValueError(f"{name}: `mean_direction` must be a unit vector of length "
                             f"{self.dim}; got {mean_direction!r}.")
        if isinstance(concentration, bool) or not isinstance(concentration, numbers.Real) \
                or not math.isfinite(concentration) or concentration < 0:
            raise ValueError(f"{name}: `concentration` must be a finite number >= 0; got "
                             f"{concentration!r}.")
        self.mean_direction_init = [float(v) for v in m]
        self.concentration_init = float(concentration)
        super().__init__((self.dim,), **kwargs)

    def build(self, input_shape):
        self.direction = self.add_weight(
            shape=(self.dim,), name="direction",
            initializer=exactly(self.mean_direction_init))
        with np.errstate(divide="ignore"):
            log_kappa = float(np.log(self.concentration_init))
        self.log_concentration = self.add_weight(
            shape=(), name="log_concentration",
            initializer=exactly(log_kappa))
        self.built = True

    @property
    def mean_direction(self):
        """mu = m / |m|, shape (dim,)."""
        return self.direction / ops.sqrt(ops.sum(ops.square(self.direction)))

    @property
    def concentration(self):
        """kappa = exp(log_concentration) >= 0, a scalar."""
        return ops.exp(self.log_concentration)

    def _params(self, dtype):
        return ops.cast(self.mean_direction, dtype), ops.cast(self.concentration, dtype)

    def _sample_about_mode(self, n, seed, temperature, draw):
        """Rows `draw(n, kappa / T, seed) = (w, sqrt(1 - w^2))` about e_1, turned
        to mu; mu itself at T = 0."""
        n, dtype = int(n), self.compute_dtype
        seed = seed_generator(seed)
        mu, kappa = self._params(dtype)
        kappa, hot = _tempered(kappa, temperature, dtype)
        w, r = draw(n, kappa, seed)
        v = _uniform_directions(n, self.dim - 1, seed, dtype)
        x = _rotate_from_e1(ops.concatenate([w[:, None], r[:, None] * v], axis=-1), mu)
        return ops.where(hot, x, ops.broadcast_to(mu, (n, self.dim)))

    def get_config(self):
        config = super().get_config()
        config.pop("event_shape")
        config.update(dim=self.dim, mean_direction=self.mean_direction_init,
                      concentration=self.concentration_init)
        return config


def _gamma_pair(n, shape_a, shape_b, seed, dtype, proposals=None):
    """(Z, 1 - Z) for Z ~ Beta(a, b), as X / (X + Y), Y / (X + Y) with gamma
    draws, so that 1 - Z keeps its relative precision near Z = 1."""
    size = (n,) if proposals is None else (n, proposals)
    x = keras.random.gamma(size, ops.broadcast_to(ops.cast(shape_a, dtype), size),
                           dtype=dtype, seed=seed)
    y = keras.random.gamma(size, ops.broadcast_to(ops.cast(shape_b, dtype), size),
                           dtype=dtype, seed=seed)
    total = x + y
    return x / total, y / total


@keras.saving.register_keras_serializable(package="keras_flows")
class UniformSphere(Distribution):
    """The uniform distribution on S^(n-1) in R^n.

    log p(x) = -log|S^(n-1)| = log Gamma(n/2) - log 2 - (n/2) log pi

    Sampling normalises standard normal vectors. Every temperature gives the
    same distribution (a uniform density tempered is itself; see the module
    docstring).

    Args:
        dim: n >= 2, the dimension of the embedding space.
    """

    manifold = "sphere"

    def __init__(self, dim, **kwargs):
        self.dim = _check_dim(dim, type(self).__name__)
        super().__init__((self.dim,), **kwargs)

    def log_prob(self, z):
        z = self._flat(z)
        log_area = math.log(2.0) + 0.5 * self.dim * math.log(math.pi) - math.lgamma(self.dim / 2)
        return ops.zeros_like(z[:, 0]) - log_area

    def sample(self, n, seed=None, temperature=1.0):
        return _uniform_directions(int(n), self.dim, seed, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.pop("event_shape")
        config["dim"] = self.dim
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class VonMisesFisher(_Directional):
    """The von Mises-Fisher distribution on S^(n-1), mean direction mu and
    concentration kappa >= 0.

    log p(x) = kappa mu^T x + log C_n(kappa),
    log C_n(kappa) = (n/2 - 1) log kappa - (n/2) log(2 pi) - log I_(n/2-1)(kappa)

    (`vmf_log_normalizer`: stable for large n and large kappa, the uniform
    density at kappa = 0). Mean resultant length
    E[mu^T x] = A_n(kappa) = I_(n/2)(kappa) / I_(n/2-1)(kappa).

    mu = m / |m| and kappa = exp(log k) are learned (weights `direction` and
    `log_concentration`); pass `trainable=False` to fix them. A concentration
    of 0 (log k = -inf) stays 0.

    Sampling is Wood's (1994) exact algorithm: w = mu^T x by rejection from
    the envelope w = (1 - (1 + b) Z) / (1 - (1 - b) Z), Z ~ Beta((n-1)/2, (n-1)/2),
    b = (n - 1) / (2 kappa + sqrt(4 kappa^2 + (n - 1)^2)), then x = w mu +
    sqrt(1 - w^2) v with v uniform on the sphere orthogonal to mu. So that
    it traces under jit, each sample draws `WOOD_PROPOSALS` = 16 proposals at
    once and keeps the first accepted. The acceptance probability, measured
    over n in [2, 1000] and kappa in [1e-3, 1e7], is at least 0.65 (its
    minimum, at n = 2 and large kappa), so a sample has no accepted proposal
    with probability below 0.35^16 = 5e-8; such a sample
    takes the first proposal, a draw from the envelope.

    Args:
        dim: n >= 2.
        mean_direction: the initial mu, a unit vector of length n; e_1 by default.
        concentration: the initial kappa >= 0; 1 by default.

    Example:
        >>> vmf = VonMisesFisher(3, mean_direction=[0.0, 0.0, 1.0], concentration=10.0)
        >>> x = vmf.sample(1000, seed=0); vmf.log_prob(x)
    """

    def log_prob(self, z):
        z = self._flat(z)
        mu, kappa = self._params(z.dtype)
        cosine = ops.sum(z * mu, axis=-1)
        return (kappa * (cosine - 1.0) - 0.5 * self.dim * math.log(2.0 * math.pi)
                - log_bessel_excess(self.dim / 2.0 - 1.0, kappa))

    def sample(self, n, seed=None, temperature=1.0):
        return self._sample_about_mode(n, seed, temperature, self._wood)

    def _wood(self, n, kappa, seed):
        # In Wood's acceptance test kappa w + m log(1 - x0 w) - c >= log U,
        # with x0 = (1 - b) / (1 + b), c = kappa x0 + m log(1 - x0^2), m = n - 1
        # and D = 1 - (1 - b) Z = (1 - Z) + b Z, every difference of numbers
        # near 1 has a closed form: 1 - w = 2 b Z / D, 1 + w = 2 (1 - Z) / D,
        # w - x0 = 2 b (1 - 2 Z) / ((1 + b) D), 1 - x0 w = 2 b / ((1 + b) D).
        dtype = self.compute_dtype
        m = float(self.dim - 1)
        b = m / (2.0 * kappa + ops.sqrt(4.0 * ops.square(kappa) + m * m))
        z, z_c = _gamma_pair(n, m / 2.0, m / 2.0, seed, dtype, WOOD_PROPOSALS)
        d = z_c + b * z
        log_u = ops.log(keras.random.uniform((n, WOOD_PROPOSALS), dtype=dtype, seed=seed))
        score = (2.0 * kappa * b * (z_c - z) / ((1.0 + b) * d)
                 + m * ops.log((1.0 + b) / (2.0 * d)))
        first = ops.argmax(ops.cast(score >= log_u, "int32"), axis=-1)[:, None]
        z, z_c, d = (ops.take_along_axis(a, first, axis=-1)[:, 0] for a in (z, z_c, d))
        w = (z_c - b * z) / d
        r = 2.0 * ops.sqrt(b * z * z_c) / d
        return w, r


@keras.saving.register_keras_serializable(package="keras_flows")
class PowerSpherical(_Directional):
    """The power spherical distribution on S^(n-1) (De Cao & Aziz 2020), mean
    direction mu and concentration kappa >= 0.

    log p(x) = kappa log(1 + mu^T x) + log C,
    log C = -[(a + b) log 2 + b log pi + log Gamma(a) - log Gamma(a + b)],
    a = (n - 1)/2 + kappa, b = (n - 1)/2.

    Sampling is exact, with no rejection: (1 + mu^T x) / 2 ~ Beta(a, b) (drawn
    as a ratio of gammas), x = t mu + sqrt(1 - t^2) v with t = mu^T x and v
    uniform on the sphere orthogonal to mu (a Householder reflection takes
    e_1 to mu). E[mu^T x] = kappa / (n - 1 + kappa).

    Parameters as in `VonMisesFisher`.

    Example:
        >>> ps = PowerSpherical(3, concentration=10.0)
        >>> x = ps.sample(1000, seed=0); ps.log_prob(x)
    """

    def _log_normalizer(self, kappa):
        b = 0.5 * (self.dim - 1)
        a = b + kappa
        return -((a + b) * math.log(2.0) + b * math.log(math.pi) + log_gamma(a)
                 - log_gamma(a + b))

    def log_prob(self, z):
        z = self._flat(z)
        mu, kappa = self._params(z.dtype)
        return kappa * ops.log1p(ops.sum(z * mu, axis=-1)) + self._log_normalizer(kappa)

    def sample(self, n, seed=None, temperature=1.0):
        return self._sample_about_mode(n, seed, temperature, self._draw)

    def _draw(self, n, kappa, seed):
        b = 0.5 * (self.dim - 1)
        z, z_c = _gamma_pair(n, b + kappa, b, seed, self.compute_dtype)
        return z - z_c, 2.0 * ops.sqrt(z * z_c)
