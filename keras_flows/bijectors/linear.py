"""`LULinear`: a learned invertible dense map in LU form."""

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.base import Bijector
from keras_flows.utils.backend import constant


@keras.saving.register_keras_serializable(package="keras_flows")
class LULinear(Bijector):
    """Invertible linear map `W = P L U` on vectors `(B, D)`, plus a bias.

    Forward:  z = x W^T + b
    Inverse:  x = (z - b) W^-T, i.e. x^T = U^-1 L^-1 P^T (z - b)^T, two
              triangular solves (O(D^2) per example, no matrix inverse)
    Log-det:  forward sum_i log|U_ii| = sum(log_abs_diag), O(D);
              inverse the negative.

    - `P` is a fixed permutation matrix, `P[i, permutation[i]] = 1`, drawn at
      build time from `seed` (a fresh draw when `seed` is None) and stored in
      the config, so a saved layer reloads with the same `P`.
    - `L` is unit lower triangular; its strict lower part is learned.
    - `U` is upper triangular with diagonal `exp(log_abs_diag)`; its strict
      upper part is learned. The diagonal is kept positive: a continuously
      trained `W` can never change the sign of its determinant (that would
      pass through a singular matrix), so the sign is fixed at `det P` and
      only `log|U_ii|` is learned.

    At initialisation `L = U = I` and `b = 0`, so `W = P`: the layer starts
    as a random permutation, invertible and volume preserving.

    Args:
        seed: seed of the permutation `P`.
        permutation: the permutation itself (a list of `D` indices); given
            by `get_config`, so leave it None unless you want a chosen `P`.

    Reference: Kingma & Dhariwal 2018, "Glow" (LU-decomposed invertible 1x1
    convolution), arXiv:1807.03039; Durkan et al. 2019, "Neural Spline
    Flows", arXiv:1906.04032.
    """

    def __init__(self, seed=None, permutation=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = None if seed is None else int(seed)
        self.permutation = (None if permutation is None
                            else [int(i) for i in permutation])

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "LULinear acts on vectors: expected input shape (batch, D) with "
                f"a known D; got {tuple(input_shape)}."
            )
        dim = int(input_shape[-1])
        if self.permutation is None:
            rng = np.random.default_rng(self.seed)
            self.permutation = [int(i) for i in rng.permutation(dim)]
        if sorted(self.permutation) != list(range(dim)):
            raise ValueError(
                f"`permutation` must hold each of 0..{dim - 1} exactly once; "
                f"got {self.permutation}."
            )
        self.dim = dim
        self._permutation_tensor = constant(np.asarray(self.permutation, "int32"), "int32")
        self._inverse_tensor = constant(np.argsort(self.permutation).astype("int32"), "int32")
        self.lower = self.add_weight(name="lower", shape=(dim, dim),
                                     initializer="zeros")
        self.upper = self.add_weight(name="upper", shape=(dim, dim),
                                     initializer="zeros")
        self.log_abs_diag = self.add_weight(name="log_abs_diag", shape=(dim,),
                                            initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(dim,), initializer="zeros")
        self.built = True

    def _factors(self, dtype):
        """The triangular factors `L` and `U` in `dtype`."""
        ones = ops.ones((self.dim, self.dim), dtype=dtype)
        eye = ops.eye(self.dim, dtype=dtype)
        lower = ops.cast(self.lower, dtype) * ops.tril(ones, -1) + eye
        upper = (ops.cast(self.upper, dtype) * ops.triu(ones, 1)
                 + eye * ops.exp(ops.cast(self.log_abs_diag, dtype)))
        return lower, upper

    def weight(self, dtype=None):
        """The dense matrix `W = P L U`, shape `(D, D)`."""
        dtype = dtype or self.compute_dtype
        lower, upper = self._factors(dtype)
        # `einsum`, not `matmul`: Keras' torch `matmul` computes float64 in
        # float32 (its dtype promotion maps 64-bit types to 32-bit).
        return ops.take(ops.einsum("ij,jk->ik", lower, upper), self._permutation_tensor,
                        axis=0)

    def _log_det(self, x):
        value = ops.sum(ops.cast(self.log_abs_diag, x.dtype))
        return ops.ones_like(x[:, 0]) * value

    def _forward(self, x, context=None, training=False):
        w = self.weight(x.dtype)
        z = ops.einsum("bj,ij->bi", x, w) + ops.cast(self.bias, x.dtype)
        return z, self._log_det(x)

    def _inverse(self, z, context=None, training=False):
        lower, upper = self._factors(z.dtype)
        # The rows of P^T y.
        y = ops.take(z - ops.cast(self.bias, z.dtype), self._inverse_tensor, axis=1)
        y = ops.solve_triangular(lower, ops.transpose(y), lower=True)
        x = ops.solve_triangular(upper, y, lower=False)
        return ops.transpose(x), -self._log_det(z)

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed, permutation=self.permutation)
        return config
