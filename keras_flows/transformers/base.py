"""The transformer contract: an elementwise monotone map with parameters."""

import keras


class Transformer(keras.layers.Layer):
    """An elementwise, strictly increasing map y = T(x; theta), one theta per
    element of x.

    `forward(x, params)` returns `(y, log|dy/dx|)` and `inverse(y, params)`
    returns `(x, log|dx/dy|)`, both log-dets elementwise (the shape of x, not
    summed). `params` has the shape of x plus a last axis of
    `params_per_feature` values: for an input x of shape (..., F) a network
    emits F * P numbers, reshaped to (..., F, P), so that parameter p of
    feature i is output i * P + p.

    All-zero parameters give the identity, so a conditioner whose last layer
    starts at zero makes its flow start as the identity.

    Structures (`Coupling`, `MaskedAutoregressive`) size their conditioner by
    `params_per_feature` and sum the log-dets over the event.
    """

    #: Parameters per transformed element, P.
    params_per_feature = 1

    def forward(self, x, params):
        raise NotImplementedError

    def inverse(self, y, params):
        raise NotImplementedError

    def call(self, x, params):
        return self.forward(x, params)

    def compute_output_spec(self, x, params):
        return (keras.KerasTensor(x.shape, dtype=self.compute_dtype),
                keras.KerasTensor(x.shape, dtype=self.compute_dtype))
