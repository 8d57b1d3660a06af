"""Invertible residual blocks (i-ResNet, Residual Flows)."""

import math

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.base import Bijector, per_example, sum_except_batch
from keras_flows.layers.lipschitz import LipSwish, SpectralConv2D, SpectralDense
from keras_flows.utils.backend import is_concrete, matmul, no_grad, pullback, vjp
from keras_flows.utils.random import fixed_probe

LOG_DETS = ("exact", "series")
NOISES = ("rademacher", "gaussian")


@keras.saving.register_keras_serializable(package="keras_flows")
class ResidualBlock(Bijector):
    """An invertible residual block: z = x + g(x), Lip(g) < 1.

    Forward:  z = x + g(x), g = linear -> LipSwish -> ... -> linear, each
              linear map's spectral norm at most c (`lipschitz`), LipSwish
              1-Lipschitz, so Lip(g) <= c < 1 and the map is invertible
              (Behrmann et al. 2019). On vectors (batch, D) the linear maps
              are `SpectralDense` layers of `hidden_units`; on images
              (batch, H, W, C) they are `SpectralConv2D` layers with
              `hidden_units` channels, 3x3 first and last and 1x1 between
              (Residual Flows' image block), normalised as operators on
              images of that size.
    Inverse:  the fixed point x = z - g(x), iterated from x_0 = z until
              max |x_{k+1} - x_k| < `inverse_atol` (at most
              `inverse_max_iterations` steps). The iteration contracts by
              Lip(g) per step, so the error is at most
              Lip(g) / (1 - Lip(g)) * inverse_atol: not exact
              (`exact_inverse = False`).
    Log-det:  log det(I + J_g(x)) (positive: the eigenvalues of J_g lie in the
              disc of radius c < 1), inverse the negative at the found x, by
              - `"exact"`: the dense Jacobian A = I + J_g from D
                vector-Jacobian products (D = H W C for images), log det A
                = sum_i log L_ii for L the Cholesky factor of A^T A; for
                small D;
              - `"series"` (Chen et al. 2019): log det(I + J) =
                sum_{k>=1} (-1)^(k+1) tr(J^k) / k, estimated with one probe v
                (E[v v^T] = I) and a random number of terms
                N = n + G, G ~ Geometric(p) on {0, 1, ...} (the Russian
                roulette), each term divided by P(N >= k):

                    sum_{k=1}^{N} (-1)^(k+1) / (k P(N >= k)) v^T J^k v,

                an unbiased estimate. Its gradient (in the weights and in x)
                is the Neumann-series estimate w^T (dJ) v with
                w^T = sum_{k=1}^{N} (-1)^(k+1) / P(N >= k) v^T J^(k-1), the
                derivative of the same estimate, computed without
                backpropagating through the N terms: they run without
                gradient, and only w^T J v is differentiated (one
                vector-Jacobian product kept for the outer gradient). With
                `geometric_p=None` the series stops after `series_terms`
                terms: i-ResNet's biased, truncated estimate.

    `log_det` is the method with `training=True`, `eval_log_det` with
    `training=False` (`log_prob`, `evaluate`, sampling); with `"series"` at
    inference the probe and N come from the fixed seed `eval_seed`, drawn
    with NumPy when the batch size is known (`utils.random.fixed_probe`), so
    a call is deterministic and gives the same estimate on every backend. Each training call also advances the spectral-norm
    power iteration of each linear layer by one update (warm start).

    Args:
        hidden_units: hidden sizes (vectors) or channels (images) of g.
        lipschitz: c, the spectral-norm bound of each linear layer, in (0, 1).
        power_iterations: power iterations per evaluation of g.
        log_det, eval_log_det: "exact" or "series".
        series_terms: n, the terms always computed (>= 1).
        geometric_p: p of the roulette's geometric tail, in (0, 1), or None.
        max_terms: hard bound on N (the roulette's tail beyond it has
            probability (1 - p)^(max_terms - n)).
        noise: probe distribution, "rademacher" or "gaussian".
        inverse_atol, inverse_max_iterations: the fixed-point iteration.
        eval_seed: integer seed of the series at inference.
        seed: seed of the training probes and roulette (None: random).

    References: Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen 2019
    (i-ResNet), arXiv:1811.00995; Chen, Behrmann, Duvenaud & Jacobsen 2019
    (Residual Flows), arXiv:1906.02735.
    """

    exact_inverse = False

    def __init__(self, hidden_units=(64, 64), lipschitz=0.97, power_iterations=1,
                 log_det="series", eval_log_det="exact", series_terms=2, geometric_p=0.5,
                 max_terms=64, noise="rademacher", inverse_atol=1e-6,
                 inverse_max_iterations=1000, eval_seed=0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        if not self.hidden_units or min(self.hidden_units) < 1:
            raise ValueError(f"`hidden_units` must be positive sizes; got {hidden_units!r}.")
        if not (isinstance(lipschitz, (int, float)) and 0 < lipschitz < 1):
            raise ValueError(f"`lipschitz` must be in (0, 1) for an invertible block; got "
                             f"{lipschitz!r}.")
        for name, value, choices in (("log_det", log_det, LOG_DETS),
                                     ("eval_log_det", eval_log_det, LOG_DETS),
                                     ("noise", noise, NOISES)):
            if value not in choices:
                raise ValueError(f"`{name}` must be one of {choices}; got {value!r}.")
        for name, value in (("power_iterations", power_iterations),
                            ("series_terms", series_terms), ("max_terms", max_terms),
                            ("inverse_max_iterations", inverse_max_iterations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if max_terms < series_terms:
            raise ValueError(f"`max_terms` ({max_terms}) must be >= `series_terms` "
                             f"({series_terms}).")
        if geometric_p is not None and not (isinstance(geometric_p, (int, float))
                                            and 0 < geometric_p < 1):
            raise ValueError(f"`geometric_p` must be in (0, 1), or None for a truncated "
                             f"series; got {geometric_p!r}.")
        if not (isinstance(inverse_atol, (int, float)) and inverse_atol > 0):
            raise ValueError(f"`inverse_atol` must be a number > 0; got {inverse_atol!r}.")
        self.lipschitz = float(lipschitz)
        self.power_iterations = power_iterations
        self.log_det = log_det
        self.eval_log_det = eval_log_det
        self.series_terms = series_terms
        self.geometric_p = None if geometric_p is None else float(geometric_p)
        self.max_terms = max_terms
        self.noise = noise
        self.inverse_atol = float(inverse_atol)
        self.inverse_max_iterations = inverse_max_iterations
        self.eval_seed = int(eval_seed)
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.linear_layers = []
        self.activations = []

    def build(self, input_shape):
        if len(input_shape) not in (2, 4) or None in tuple(input_shape[1:]):
            raise ValueError("ResidualBlock expects vectors (batch, D) or images (batch, "
                             "height, width, channels) of known size; got input shape "
                             f"{tuple(input_shape)}.")
        sizes = [*self.hidden_units, input_shape[-1]]
        shape = (None, *input_shape[1:])
        for i, units in enumerate(sizes):
            common = dict(coefficient=self.lipschitz, power_iterations=self.power_iterations,
                          dtype=self.dtype_policy)
            if len(shape) == 2:
                layer = SpectralDense(units, name=f"dense_{i}", **common)
            else:
                size = 3 if i in (0, len(sizes) - 1) else 1
                layer = SpectralConv2D(units, size, name=f"conv_{i}",
                                       seed=None if self.seed is None else self.seed + i,
                                       **common)
            layer.build(shape)
            self.linear_layers.append(layer)
            shape = (*shape[:-1], units)
            if i < len(sizes) - 1:
                activation = LipSwish(dtype=self.dtype_policy, name=f"lipswish_{i}")
                activation.build(shape)
                self.activations.append(activation)

    def residual(self, x):
        """g(x)."""
        h = x
        for i, layer in enumerate(self.linear_layers):
            h = layer(h)
            if i < len(self.activations):
                h = self.activations[i](h)
        return h

    def _forward(self, x, context=None, training=False):
        if training:
            for layer in self.linear_layers:
                layer.update()
        method = self.log_det if training else self.eval_log_det
        if method == "exact":
            gx, log_det = self._exact(x)
        else:
            gx, log_det = self._series(x, self.seed_generator if training else self.eval_seed)
        return x + gx, log_det

    def _inverse(self, z, context=None, training=False):
        x = self.fixed_point(z)
        _, log_det = self._forward(x)
        return x, -log_det

    def fixed_point(self, z):
        """x with x + g(x) = z, by x_{k+1} = z - g(x_k) from x_0 = z."""
        tolerance = ops.cast(self.inverse_atol, z.dtype)

        def step(i, x, change):
            x_next = z - self.residual(x)
            return i + 1, x_next, ops.max(ops.abs(x_next - x))

        with no_grad():
            _, x, _ = _while(lambda i, x, change: change >= tolerance, step,
                             (0, ops.stop_gradient(z), ops.cast(float("inf"), z.dtype)),
                             self.inverse_max_iterations)
        return ops.stop_gradient(x)

    def _exact(self, x):
        """g(x) and log det(I + J_g) from the dense Jacobian (D products)."""
        event = tuple(x.shape[1:])
        dim = math.prod(event)
        eye = ops.eye(dim, dtype=x.dtype)
        ones = ops.ones_like(x)
        gx, rows = vjp(self.residual, x,
                       [ones * ops.reshape(eye[i], event) for i in range(dim)])
        rows = [ops.reshape(r, (-1, dim)) for r in rows]
        jacobian = ops.stack(rows, axis=1) + eye  # (B, D, D): row i is e_i^T (I + J)
        # log|det A| = sum log diag(cholesky(A^T A)): XLA has no log-determinant
        # for TensorFlow, and det A > 0 here.
        gram = matmul(ops.transpose(jacobian, (0, 2, 1)), jacobian)
        # A non-finite input gives NaN, not a failed factorisation (PyTorch raises).
        finite = ops.all(ops.isfinite(gram), axis=(1, 2))
        gram = ops.where(finite[:, None, None], gram, eye)
        log_det = ops.sum(ops.log(ops.diagonal(ops.cholesky(gram), axis1=-2, axis2=-1)), -1)
        return gx, ops.where(finite, log_det, float("nan"))

    def _probe(self, x, seed):
        if isinstance(seed, int) and None not in x.shape:
            return fixed_probe(tuple(x.shape), x.dtype, seed, self.noise)
        if self.noise == "gaussian":
            return keras.random.normal(ops.shape(x), dtype=x.dtype, seed=seed)
        bits = keras.random.randint(ops.shape(x), 0, 2, seed=seed)
        return 2.0 * ops.cast(bits, x.dtype) - 1.0

    def _num_terms(self, seed):
        """N = n + G, G ~ Geometric(p) on {0, 1, ...} (n without roulette)."""
        if self.geometric_p is None:
            return ops.convert_to_tensor(self.series_terms)
        if isinstance(seed, int):  # the same N on every backend
            tail = np.random.default_rng(seed).geometric(self.geometric_p) - 1
            return ops.convert_to_tensor(min(tail + self.series_terms, self.max_terms), "int32")
        # G = floor(log U / log(1 - p)) for U uniform in (0, 1].
        uniform = 1.0 - keras.random.uniform((), seed=seed)
        tail = ops.floor(ops.log(uniform) / math.log1p(-self.geometric_p))
        return ops.cast(ops.minimum(tail + self.series_terms, self.max_terms), "int32")

    def _series(self, x, seed):
        """g(x) and the Russian-roulette power-series estimate (see class doc)."""
        v = self._probe(x, seed)
        # An integer seed gives the probe and N from two unrelated streams.
        num_terms = self._num_terms(seed if not isinstance(seed, int) else seed + 2**20)
        n = self.series_terms
        log_q = 0.0 if self.geometric_p is None else math.log1p(-self.geometric_p)

        def step(k, u, value, w):
            # u = v^T J^(k-1) on entry; c_k = (-1)^(k+1) / P(N >= k).
            kf = ops.cast(k, x.dtype)  # k is a Python int in eager mode
            sign = 1.0 - 2.0 * ops.cast(k % 2 == 0, x.dtype)
            tail = ops.where(kf > n, kf - n, ops.zeros_like(kf))  # ops.maximum: float32 on torch
            coefficient = sign * ops.exp(-log_q * tail)
            u_next = pull(u)
            value = value + coefficient / kf * sum_except_batch(u_next * v)
            return k + 1, u_next, value, w + coefficient * u

        with no_grad():
            _, pull = pullback(self.residual, x)
            zeros = per_example(x, 0.0)
            _, _, value, w = _while(lambda k, u, value, w: k <= num_terms, step,
                                    (1, v, zeros, ops.zeros_like(x)), self.max_terms)
        value, w = ops.stop_gradient(value), ops.stop_gradient(w)
        gx, w_jacobian = vjp(self.residual, x, w)
        surrogate = sum_except_batch(w_jacobian * v)
        return gx, value + surrogate - ops.stop_gradient(surrogate)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_units=list(self.hidden_units), lipschitz=self.lipschitz,
            power_iterations=self.power_iterations, log_det=self.log_det,
            eval_log_det=self.eval_log_det, series_terms=self.series_terms,
            geometric_p=self.geometric_p, max_terms=self.max_terms, noise=self.noise,
            inverse_atol=self.inverse_atol,
            inverse_max_iterations=self.inverse_max_iterations, eval_seed=self.eval_seed,
            seed=self.seed)
        return config


def _while(condition, body, state, maximum_iterations):
    """`ops.while_loop`, or a Python loop when the condition is concrete
    (eager), which spares JAX a compilation of the loop at every call."""
    if is_concrete(condition(*state)):
        for _ in range(maximum_iterations):
            if not bool(ops.convert_to_numpy(condition(*state))):
                break
            state = body(*state)
        return state
    state = (ops.convert_to_tensor(state[0], "int32"), *state[1:])
    return ops.while_loop(condition, body, state, maximum_iterations=maximum_iterations)
