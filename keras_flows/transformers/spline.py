"""Monotone rational-quadratic spline transformer (Neural Spline Flows)."""

import math

import keras
from keras import ops

from keras_flows.transformers.base import Transformer
from keras_flows.utils.backend import matmul
from keras_flows.utils.math import softmax, upcast


@keras.saving.register_keras_serializable(package="keras_flows")
class RationalQuadraticSpline(Transformer):
    """Monotone rational-quadratic spline on [-B, B], identity outside (NSF).

    K bins with knots (x_k, y_k), k = 0..K, x_0 = y_0 = -B, x_K = y_K = B, and
    derivatives d_k > 0 at the knots, d_0 = d_K = 1 so that the spline joins
    the identity tails with a continuous slope. In bin k, with
    w_k = x_{k+1} - x_k, h_k = y_{k+1} - y_k, s_k = h_k / w_k and
    xi = (x - x_k) / w_k in [0, 1]:

    Forward:  y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / D,
              D = s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)
    Log-det:  log dy/dx = 2 log s_k
                + log(d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2)
                - 2 log D
    Inverse:  xi is the root in [0, 1] of a xi^2 + b xi + c = 0 with
              a = h_k (s_k - d_k) + (y - y_k)(d_{k+1} + d_k - 2 s_k),
              b = h_k d_k - (y - y_k)(d_{k+1} + d_k - 2 s_k),
              c = -s_k (y - y_k),
              taken as xi = 2c / (-b - sqrt(b^2 - 4ac)), free of the
              cancellation of (-b + sqrt(.)) / 2a; x = x_k + w_k xi, and
              log dx/dy is minus the forward log-det at xi.
    Tails:    |x| > B: y = x, log-det 0 (both ways).

    Parameters per feature: 3K - 1, in this order: K unnormalised widths u,
    K unnormalised heights v, K - 1 unnormalised interior derivatives z:
        w = 2B [m_w + (1 - K m_w) softmax(u)],   h likewise with m_h,
        d_k = m_d + softplus(z_k + c),  c = log(expm1(1 - m_d)),
    so that all-zero parameters give K equal bins with every derivative 1:
    the identity.

    Args:
        bins: K, the number of bins, an int >= 1.
        bound: B > 0; the spline acts on [-B, B].
        min_bin_width: m_w, the least width of a bin as a fraction of 2B;
            0 < m_w and K m_w < 1.
        min_bin_height: m_h, likewise for heights.
        min_derivative: m_d, the least derivative at an interior knot;
            0 < m_d < 1.

    Reference: Durkan, Bekasov, Murray & Papamakarios 2019, arXiv:1906.04545;
    Gregory & Delbourgo 1982, IMA J. Numer. Anal. 2(2).
    """

    def __init__(self, bins=8, bound=3.0, min_bin_width=1e-3, min_bin_height=1e-3,
                 min_derivative=1e-3, **kwargs):
        super().__init__(**kwargs)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"`bins` must be an int >= 1; got {bins!r}.")
        if not bound > 0 or not math.isfinite(bound):
            raise ValueError(f"`bound` must be finite and > 0; got {bound}.")
        for name, value in (("min_bin_width", min_bin_width),
                            ("min_bin_height", min_bin_height)):
            if not (value > 0 and value * bins < 1):
                raise ValueError(f"`{name}` must be > 0 with `{name}` * bins < 1; "
                                 f"got {value} with bins={bins}.")
        if not 0 < min_derivative < 1:
            raise ValueError(f"`min_derivative` must be in (0, 1); got {min_derivative}.")
        self.bins = bins
        self.bound = float(bound)
        self.min_bin_width = float(min_bin_width)
        self.min_bin_height = float(min_bin_height)
        self.min_derivative = float(min_derivative)
        # softplus(c) = 1 - m_d, so z = 0 gives d = 1.
        self._derivative_shift = math.log(math.expm1(1.0 - self.min_derivative))

    @property
    def params_per_feature(self):
        return 3 * self.bins - 1

    def _knots(self, unnormalised, minimum):
        """Knot positions (..., K + 1) from -B to B and bin sizes (..., K)."""
        # One bin has size 1 (ops.softmax warns on an axis of size 1).
        fractions = (softmax(unnormalised) if self.bins > 1
                     else ops.ones_like(unnormalised))
        sizes = minimum + (1.0 - minimum * self.bins) * fractions
        # cumsum over the last axis as a product with the upper triangle of
        # ones: ops.cumsum returns float32 for float64 input on PyTorch (Keras
        # 3.15). Sizes sum to 1, so the end knots are set to exactly -B and B.
        upper = ops.triu(ops.ones((self.bins, self.bins), dtype=sizes.dtype))
        inner = matmul(sizes, upper)[..., :-1]
        edge = ops.ones_like(sizes[..., :1]) * self.bound
        knots = ops.concatenate([-edge, 2.0 * self.bound * inner - self.bound, edge], axis=-1)
        return knots, knots[..., 1:] - knots[..., :-1]

    def _spline(self, params, dtype):
        """(x knots, y knots, widths, heights, derivatives) from raw params."""
        params = ops.cast(params, dtype)
        k = self.bins
        xk, w = self._knots(params[..., :k], self.min_bin_width)
        yk, h = self._knots(params[..., k:2 * k], self.min_bin_height)
        inner = self.min_derivative + ops.softplus(params[..., 2 * k:] + self._derivative_shift)
        one = ops.ones_like(params[..., :1])
        d = ops.concatenate([one, inner, one], axis=-1)
        return xk, yk, w, h, d

    def _bin(self, v, knots, xk, yk, w, h, d):
        """Bin index of v among `knots` and that bin's (x_k, y_k, w, h, d_k, d_k+1)."""
        # Interior knots at or below v: 0..K-1, so a knot starts its upper bin
        # and v = B falls in the last bin at xi = 1.
        idx = ops.sum(ops.cast(v[..., None] >= knots[..., 1:-1], "int32"), axis=-1)[..., None]

        def take(t):
            return ops.take_along_axis(t, idx, axis=-1)[..., 0]

        return (take(xk), take(yk), take(w), take(h), take(d[..., :-1]),
                take(d[..., 1:]))

    @staticmethod
    def _log_derivative(xi, s, d0, d1):
        one_minus = 1.0 - xi
        mid = xi * one_minus
        denominator = s + (d1 + d0 - 2.0 * s) * mid
        numerator = d1 * ops.square(xi) + 2.0 * s * mid + d0 * ops.square(one_minus)
        return 2.0 * ops.log(s) + ops.log(numerator) - 2.0 * ops.log(denominator)

    def _inside(self, v):
        inside = ops.logical_and(v >= -self.bound, v <= self.bound)
        # The spline is evaluated at 0 outside, and the result discarded, so no
        # inf or NaN reaches the gradient through the unused branch of `where`.
        return inside, ops.where(inside, v, ops.zeros_like(v))

    def forward(self, x, params):
        dtype = x.dtype
        v = upcast(x)
        xk, yk, w, h, d = self._spline(params, v.dtype)
        inside, v_in = self._inside(v)
        x0, y0, wk, hk, d0, d1 = self._bin(v_in, xk, xk, yk, w, h, d)
        s = hk / wk
        xi = (v_in - x0) / wk
        mid = xi * (1.0 - xi)
        y = y0 + hk * (s * ops.square(xi) + d0 * mid) / (s + (d1 + d0 - 2.0 * s) * mid)
        log_det = self._log_derivative(xi, s, d0, d1)
        y = ops.where(inside, y, v)
        log_det = ops.where(inside, log_det, ops.zeros_like(v))
        return ops.cast(y, dtype), ops.cast(log_det, dtype)

    def inverse(self, y, params):
        dtype = y.dtype
        v = upcast(y)
        xk, yk, w, h, d = self._spline(params, v.dtype)
        inside, v_in = self._inside(v)
        x0, y0, wk, hk, d0, d1 = self._bin(v_in, yk, xk, yk, w, h, d)
        s = hk / wk
        dy = v_in - y0
        curvature = d1 + d0 - 2.0 * s
        a = hk * (s - d0) + dy * curvature
        b = hk * d0 - dy * curvature
        c = -s * dy
        # a + b = h s > 0 and c <= 0, so -b - sqrt(b^2 - 4ac) < 0 in a bin.
        discriminant = ops.relu(ops.square(b) - 4.0 * a * c)
        xi = 2.0 * c / (-b - ops.sqrt(discriminant))
        x = x0 + wk * xi
        log_det = -self._log_derivative(xi, s, d0, d1)
        x = ops.where(inside, x, v)
        log_det = ops.where(inside, log_det, ops.zeros_like(v))
        return ops.cast(x, dtype), ops.cast(log_det, dtype)

    def get_config(self):
        config = super().get_config()
        config.update(bins=self.bins, bound=self.bound, min_bin_width=self.min_bin_width,
                      min_bin_height=self.min_bin_height,
                      min_derivative=self.min_derivative)
        return config
