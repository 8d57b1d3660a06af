"""Composition of bijectors: `Chain` and `Invert`."""

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector
from keras_flows.utils.math import upcast


@keras.saving.register_keras_serializable(package="keras_flows")
class Chain(Bijector):
    """Composition of bijectors, applied in list order from data to latent.

    Forward:  z = f_n(... f_2(f_1(x)))
    Inverse:  x = f_1^-1(f_2^-1(... f_n^-1(z)))
    Log-det:  forward sum_i log|det J_{f_i}| at each intermediate point;
              inverse the same sum for the inverse maps; half-precision
              log-dets (mixed precision) are summed in float32.

    `context` is passed to every member that has a `context_shape`.

    Args:
        bijectors: list of `Bijector`s, first applied first in `forward`.
    """

    def __init__(self, bijectors, **kwargs):
        super().__init__(**kwargs)
        self.bijectors = [
            b if isinstance(b, Bijector) else keras.saving.deserialize_keras_object(b)
            for b in bijectors
        ]
        self.exact_inverse = all(b.exact_inverse for b in self.bijectors)
        shapes = [b.context_shape for b in self.bijectors
                  if getattr(b, "context_shape", None) is not None]
        self.context_shape = shapes[0] if shapes else None

    def build(self, input_shape):
        self.built = True

    def compute_output_shape(self, input_shape):
        for b in self.bijectors:
            input_shape = b.compute_output_shape(input_shape)
        return input_shape

    def inverse_output_shape(self, z_shape):
        for b in reversed(self.bijectors):
            z_shape = b.inverse_output_shape(z_shape)
        return z_shape

    def _forward(self, x, context=None, training=False):
        if not self.bijectors:  # the identity
            return x, upcast(ops.zeros(ops.shape(x)[:1], x.dtype))
        total = 0.0
        for b in self.bijectors:
            x, log_det = b.forward(x, **_context_for(b, context), training=training)
            total = total + upcast(log_det)
        return x, total

    def _inverse(self, z, context=None, training=False):
        if not self.bijectors:
            return z, upcast(ops.zeros(ops.shape(z)[:1], z.dtype))
        total = 0.0
        for b in reversed(self.bijectors):
            z, log_det = b.inverse(z, **_context_for(b, context), training=training)
            total = total + upcast(log_det)
        return z, total

    def get_config(self):
        config = super().get_config()
        config["bijectors"] = [keras.saving.serialize_keras_object(b) for b in self.bijectors]
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class Invert(Bijector):
    """Swaps the directions of a bijector.

    Forward:  z = f^-1(x), log-det log|det J_{f^-1}(x)|
    Inverse:  x = f(z),    log-det log|det J_f(z)|

    Useful to turn a sampling-direction transform (e.g. `Sigmoid` into a
    logit) into a density-direction one.
    """

    def __init__(self, bijector, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(bijector, Bijector):
            bijector = keras.saving.deserialize_keras_object(bijector)
        self.bijector = bijector
        self.context_shape = getattr(bijector, "context_shape", None)
        self.exact_inverse = bijector.exact_inverse

    def build(self, input_shape):
        self.built = True

    def compute_output_shape(self, input_shape):
        return self.bijector.inverse_output_shape(input_shape)

    def inverse_output_shape(self, z_shape):
        return self.bijector.compute_output_shape(z_shape)

    def _forward(self, x, context=None, training=False):
        return self.bijector.inverse(x, **_context_for(self.bijector, context),
                                     training=training)

    def _inverse(self, z, context=None, training=False):
        return self.bijector.forward(z, **_context_for(self.bijector, context),
                                     training=training)

    def get_config(self):
        config = super().get_config()
        config["bijector"] = keras.saving.serialize_keras_object(self.bijector)
        return config


def _context_for(bijector, context):
    if getattr(bijector, "context_shape", None) is None:
        return {}
    return {"context": context}
