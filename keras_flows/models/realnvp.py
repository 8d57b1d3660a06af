"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017) for vectors."""

import keras

from keras_flows.bijectors import AffineCoupling, BatchNorm, Chain
from keras_flows.models.flow import Flow


@keras.saving.register_keras_serializable(package="keras_flows")
class RealNVP(Flow):
    """Affine couplings on alternating halves, optionally with batch norm.

    f = C_n o [BN] o ... o C_1, C_i affine couplings (odd ones transform the
    first half, even ones the second), each followed by a `BatchNorm`
    bijector when `batch_norm=True` (the paper's choice).
    log p(x) = log N(f(x); 0, I) + sum_i log|det J_i|.

    Args:
        event_shape: shape of one data vector, `(D,)`.
        num_layers: number of coupling layers.
        hidden_units: hidden sizes of each coupling's MLP.
        activation: MLP activation.
        batch_norm: insert a `BatchNorm` bijector after each coupling.
        context_shape: shape of a conditioning vector, or None.
        base: base distribution (N(0, I) by default).

    Reference: arXiv:1605.08803.
    """

    def __init__(self, event_shape, num_layers=8, hidden_units=(64, 64),
                 activation="relu", batch_norm=False, context_shape=None, base=None,
                 **kwargs):
        self.num_layers = int(num_layers)
        self.hidden_units = tuple(hidden_units)
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        dtype = kwargs.get("dtype")
        layers = []
        for i in range(self.num_layers):
            layers.append(AffineCoupling(hidden_units, activation, reverse=i % 2 == 1,
                                         context_shape=context_shape, dtype=dtype,
                                         name=f"coupling_{i}"))
            if self.batch_norm and i < self.num_layers - 1:
                layers.append(BatchNorm(dtype=dtype, name=f"batch_norm_{i}"))
        super().__init__(Chain(layers, dtype=dtype, name="chain"), event_shape,
                         base=base, context_shape=context_shape, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["bijector"]
        config.update(num_layers=self.num_layers, hidden_units=list(self.hidden_units),
                      activation=self.activation, batch_norm=self.batch_norm)
        return config
