"""NICE (Dinh, Krueger & Bengio 2015) for vectors."""

import keras

from keras_flows.bijectors import AdditiveCoupling, Chain, ElementwiseAffine
from keras_flows.models.flow import Flow


@keras.saving.register_keras_serializable(package="keras_flows")
class NICE(Flow):
    """Additive couplings on alternating halves, then a learned diagonal scaling.

    f = S o C_n o ... o C_1, C_i additive couplings (odd ones transform the
    first half, even ones the second), S(x) = x * exp(s) + b.
    log p(x) = log N(f(x); 0, I) + sum(s): the couplings preserve volume.

    The paper's base is the logistic distribution; here it is N(0, I) unless
    `base` is given.

    Args:
        event_shape: shape of one data vector, `(D,)`.
        num_layers: number of coupling layers.
        hidden_units: hidden sizes of each coupling's MLP.
        context_shape: shape of a conditioning vector, or None.

    Reference: arXiv:1410.8516.
    """

    preset_family = "nice"

    def __init__(self, event_shape, num_layers=4, hidden_units=(64, 64),
                 activation="relu", context_shape=None, base=None, **kwargs):
        self.num_layers = int(num_layers)
        self.hidden_units = tuple(hidden_units)
        self.activation = activation
        dtype = kwargs.get("dtype")
        layers = [
            AdditiveCoupling(hidden_units, activation, reverse=i % 2 == 1,
                             context_shape=context_shape, dtype=dtype, name=f"coupling_{i}")
            for i in range(self.num_layers)
        ]
        layers.append(ElementwiseAffine(dtype=dtype, name="scaling"))
        super().__init__(Chain(layers, dtype=dtype, name="chain"), event_shape,
                         base=base, context_shape=context_shape, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["bijector"]
        config.update(num_layers=self.num_layers, hidden_units=list(self.hidden_units),
                      activation=self.activation)
        return config
