"""`InvertibleConv1x1`: Glow's learned channel mixing."""

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.base import Bijector, num_positions, per_example
from keras_flows.utils.backend import constant
from keras_flows.utils.math import upcast


def _random_rotation(dim, seed):
    """A random orthogonal `(dim, dim)` matrix: the Q of a normal's QR."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


def _plu(a):
    """LU with partial pivoting: `a = P L U` as `(permutation, L, U)`, where
    `P[i, permutation[i]] = 1`, `L` is unit lower and `U` upper triangular."""
    u = np.array(a, dtype="float64")
    dim = len(u)
    lower = np.eye(dim)
    rows = np.arange(dim)
    for k in range(dim):
        p = k + int(np.argmax(np.abs(u[k:, k])))
        u[[k, p]], rows[[k, p]] = u[[p, k]], rows[[p, k]]
        lower[[k, p], :k] = lower[[p, k], :k]
        for i in range(k + 1, dim):
            lower[i, k] = u[i, k] / u[k, k]
            u[i, k:] -= lower[i, k] * u[k, k:]
    # a[rows] = L U, so a[i] = (L U)[argsort(rows)[i]].
    return [int(i) for i in np.argsort(rows)], lower, np.triu(u)


def _constant(value):
    return lambda shape, dtype=None: ops.convert_to_tensor(
        np.asarray(value).reshape(shape), dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_flows")
class InvertibleConv1x1(Bijector):
    """Invertible 1x1 convolution (Glow): one learned `C x C` matrix `W` mixes
    the channels of every pixel.

    Forward:  z[b, h, w, :] = W x[b, h, w, :]
    Inverse:  x[b, h, w, :] = W^-1 z[b, h, w, :]
    Log-det:  forward H * W_img * log|det W| (the number of pixels times the
              per-pixel log-det; N = prod(shape[1:-1]) in general, so vectors
              `(B, C)` work too); inverse the negative.

    - `lu=False`: `W` is learned directly, initialised to a random rotation
      (`log|det W| = 0` at the start); the log-det is `sum log|diag(R)|` of
      the QR decomposition `W = Q R` (the same value as `slogdet(W)`, which
      TensorFlow cannot XLA-compile), O(C^3), and the inverse is `inv(W)`.
    - `lu=True`: `W = P L (U + diag(sign_s * exp(log_s)))` with `P` a fixed
      permutation, `L` unit lower triangular, `U` strictly upper triangular
      and `sign_s` fixed signs; `L`, `U` and `log_s` are learned, starting at
      the LU decomposition of a random rotation. The log-det is
      `N * sum(log_s)`, O(C), and the inverse takes two triangular solves on
      `C x C` matrices. `permutation` and `sign` are stored in the config, so
      a saved layer reloads with the same `P` and `sign_s`.

    Products run through `einsum` so float64 stays float64 on every backend.

    Args:
        lu: use the LU parameterisation above.
        seed: seed of the initial rotation (a fresh draw when None).
        permutation: `P` as a list (`P[i, permutation[i]] = 1`), for `lu=True`;
            given by `get_config`, leave it None.
        sign: `sign_s` as a list of +-1, for `lu=True`; given by `get_config`.

    Reference: Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible
    1x1 Convolutions", arXiv:1807.03039.
    """

    def __init__(self, lu=False, seed=None, permutation=None, sign=None, **kwargs):
        super().__init__(**kwargs)
        self.lu = bool(lu)
        self.seed = None if seed is None else int(seed)
        self.permutation = (None if permutation is None
                            else [int(i) for i in permutation])
        self.sign = None if sign is None else [float(s) for s in sign]

    def build(self, input_shape):
        channels = input_shape[-1]
        if len(input_shape) < 2 or channels is None:
            raise ValueError(
                "InvertibleConv1x1 needs a known last (channel) axis: expected "
                f"input shape (batch, H, W, C); got {tuple(input_shape)}."
            )
        dim = self.dim = int(channels)
        rotation = _random_rotation(dim, self.seed)
        if not self.lu:
            self.kernel = self.add_weight(name="kernel", shape=(dim, dim),
                                          initializer=_constant(rotation), autocast=False)
            self.built = True
            return
        permutation, lower, upper = _plu(rotation)
        diag = np.diag(upper)
        sign = [float(s) for s in np.sign(diag)]
        if self.permutation is None and self.sign is None:
            self.permutation, self.sign = permutation, sign
        elif (self.permutation, self.sign) != (permutation, sign):
            # A given P and sign_s not from this draw (a reloaded layer, whose
            # weights are then loaded): start at W = P diag(sign_s).
            lower, upper, diag = np.eye(dim), np.zeros((dim, dim)), np.ones(dim)
        if sorted(self.permutation) != list(range(dim)):
            raise ValueError(
                f"`permutation` must hold each of 0..{dim - 1} exactly once; "
                f"got {self.permutation}."
            )
        if len(self.sign) != dim or any(s not in (1.0, -1.0) for s in self.sign):
            raise ValueError(f"`sign` must be {dim} values of +1 or -1; got {self.sign}.")
        self._permutation_tensor = constant(np.asarray(self.permutation, "int32"), "int32")
        self._sign_tensor = constant(np.asarray(self.sign), self.variable_dtype)
        self.lower = self.add_weight(name="lower", shape=(dim, dim),
                                     initializer=_constant(np.tril(lower, -1)),
                                     autocast=False)
        self.upper = self.add_weight(name="upper", shape=(dim, dim),
                                     initializer=_constant(np.triu(upper, 1)),
                                     autocast=False)
        self.log_s = self.add_weight(name="log_s", shape=(dim,),
                                     initializer=_constant(np.log(np.abs(diag))),
                                     autocast=False)
        self.built = True

    def _factors(self, dtype):
        """`L` and `U + diag(sign_s * exp(log_s))` in `dtype`."""
        ones = ops.ones((self.dim, self.dim), dtype=dtype)
        eye = ops.eye(self.dim, dtype=dtype)
        sign = ops.cast(self._sign_tensor, dtype)
        lower = ops.cast(self.lower, dtype) * ops.tril(ones, -1) + eye
        upper = (ops.cast(self.upper, dtype) * ops.triu(ones, 1)
                 + eye * (sign * ops.exp(ops.cast(self.log_s, dtype))))
        return lower, upper

    def weight(self, dtype=None):
        """The matrix `W`, shape `(C, C)`."""
        dtype = dtype or self.compute_dtype
        if not self.lu:
            return ops.cast(self.kernel, dtype)
        lower, upper = self._factors(dtype)
        return ops.take(ops.einsum("ij,jk->ik", lower, upper), self._permutation_tensor,
                        axis=0)

    def inverse_weight(self, dtype=None):
        """The matrix `W^-1`, shape `(C, C)`."""
        dtype = dtype or self.compute_dtype
        if not self.lu:
            return ops.inv(ops.cast(self.kernel, dtype))
        # W^-1 = (L U)^-1 P^T; column j of P^T is e_permutation[j].
        lower, upper = self._factors(dtype)
        eye = ops.eye(self.dim, dtype=dtype)
        lu_inverse = ops.solve_triangular(
            upper, ops.solve_triangular(lower, eye, lower=True), lower=False)
        return ops.take(lu_inverse, self._permutation_tensor, axis=1)

    def _log_det(self, x):
        # In the variables' dtype: float32 under mixed precision, where the
        # weights are not autocast (`build`) and the log-det stays float32.
        if self.lu:
            per_position = ops.sum(self.log_s)
        else:
            # log|det W| = sum_i log|R_ii| for W = Q R (Q orthogonal). Not
            # `ops.slogdet`: TensorFlow has no XLA kernel for it (nor for
            # `det`), so a `jit_compile=True` train step would fail; QR
            # compiles and differentiates (to W^-T) on every backend.
            r = ops.qr(ops.convert_to_tensor(self.kernel))[1]
            per_position = ops.sum(ops.log(ops.abs(ops.diagonal(r))))
        return upcast(per_example(x, 1.0)) * (num_positions(x) * upcast(per_position))

    def _forward(self, x, context=None, training=False):
        z = ops.einsum("...j,ij->...i", x, self.weight(x.dtype))
        return z, self._log_det(x)

    def _inverse(self, z, context=None, training=False):
        w_inverse = ops.cast(self.inverse_weight(self.variable_dtype), z.dtype)
        x = ops.einsum("...j,ij->...i", z, w_inverse)
        return x, -self._log_det(z)

    def get_config(self):
        config = super().get_config()
        config.update(lu=self.lu, seed=self.seed, permutation=self.permutation,
                      sign=self.sign)
        return config
