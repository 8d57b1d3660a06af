"""Masked autoregressive bijector (MAF; IAF is its inverse)."""

import keras
from keras import ops

from keras_flows.bijectors.base import (Bijector, deserialize_sublayers,
                                        serialize_sublayers, sum_except_batch)
from keras_flows.bijectors.coupling import set_output_size
from keras_flows.layers.made import MADE
from keras_flows.transformers import Transformer
from keras_flows.utils.backend import call_layer, fori_loop, is_concrete


@keras.saving.register_keras_serializable(package="keras_flows")
class MaskedAutoregressive(Bijector):
    """Autoregressive elementwise map of a vector, parameterised by MADE.

    Forward:  z_i = T(x_i; theta_i(x_<i, c))          one conditioner pass
    Inverse:  x_i = T^-1(z_i; theta_i(x_<i, c))       D passes, in order
    Log-det:  forward sum_i log|dT/dx_i|; inverse the negative.

    `<i` is "before i in the conditioner's input order". The Jacobian is
    triangular in that order, so its log-det is the sum of the diagonal.
    The inverse starts from x = 0 and applies x <- T^-1(z; theta(x, c)) D
    times: after pass k the first k features (in order) are exact, because
    theta_i depends only on the features before i. Traced (under `jit`), the
    passes run in one `fori_loop`, so they trace once whatever D is.

    Used as is, this is a MAF layer (density in one pass, sampling in D).
    `Invert(MaskedAutoregressive(...))` is an IAF layer: sampling (its
    inverse) in one pass, density in D.

    Args:
        transformer: the elementwise `Transformer` (affine, spline, ...).
        conditioner: a `MADE` whose `output_dim` is left None for this layer
            to set; by default `MADE()` with its default sizes.
        context_shape: shape `(K,)` of a context vector that every output of
            the conditioner may see, or None.

    Example:
        >>> MaskedAutoregressive(Affine(), conditioner=MADE(hidden_units=[64, 64]))

    Reference: Papamakarios, Pavlakou & Murray 2017, arXiv:1705.07057 (MAF);
    Kingma et al. 2016, arXiv:1606.04934 (IAF); Germain, Gregor, Murray &
    Larochelle 2015, arXiv:1502.03509 (MADE).
    """

    def __init__(self, transformer, conditioner=None, context_shape=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(transformer, Transformer):
            raise TypeError("`transformer` must be a keras_flows.transformers.Transformer; "
                            f"got {transformer!r}.")
        if conditioner is not None and not isinstance(conditioner, MADE):
            raise TypeError("`conditioner` must be a keras_flows.layers.MADE (its masks "
                            f"make the map autoregressive) or None; got {conditioner!r}.")
        for part in (transformer, conditioner):
            if part is not None and part.dtype_policy.name != self.dtype_policy.name:
                raise ValueError(
                    f"{part.name!r} computes in {part.dtype_policy.name} but the layer in "
                    f"{self.dtype_policy.name}: pass the same `dtype` to both.")
        if context_shape is not None and len(context_shape) != 1:
            raise ValueError("MaskedAutoregressive takes a vector context: `context_shape` "
                             f"must be (K,); got {tuple(context_shape)}.")
        self.transformer = transformer
        self.conditioner = conditioner
        self.context_shape = None if context_shape is None else tuple(context_shape)

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} acts on vectors: expected input shape "
                             f"(batch, D) with D known; got {tuple(input_shape)}.")
        if self.conditioner is None:
            self.conditioner = MADE(dtype=self.dtype_policy, name="conditioner")
        set_output_size(self.conditioner, input_shape[-1] * self.transformer.params_per_feature)
        self.conditioner.build(input_shape, None if self.context_shape is None
                               else (input_shape[0], *self.context_shape))
        self.transformer.build(input_shape)
        self.transformer.built = True

    def _params(self, x, context, training):
        out = call_layer(self.conditioner, x, context, training=training)
        return ops.reshape(out, (-1, x.shape[-1], self.transformer.params_per_feature))

    def _forward(self, x, context=None, training=False):
        z, log_det = self.transformer.forward(x, self._params(x, context, training))
        return z, sum_except_batch(log_det)

    def _inverse(self, z, context=None, training=False):
        def step(_, state):
            x, _ = state
            return self.transformer.inverse(z, self._params(x, context, training))

        state = (ops.zeros_like(z), ops.zeros_like(z))
        if is_concrete(z):
            # Eagerly, a plain loop: JAX would compile a traced loop anew on
            # every call, its body being a new closure each time.
            for i in range(z.shape[-1]):
                state = step(i, state)
        else:
            state = fori_loop(0, z.shape[-1], step, state)
        return state[0], sum_except_batch(state[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            **serialize_sublayers(transformer=self.transformer, conditioner=self.conditioner),
            context_shape=None if self.context_shape is None else list(self.context_shape))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_sublayers(config, "transformer", "conditioner"))
