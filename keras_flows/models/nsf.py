"""Neural spline flows (Durkan, Bekasov, Murray & Papamakarios 2019)."""

import keras

from keras_flows.bijectors import Coupling, MaskedAutoregressive
from keras_flows.layers import MLP
from keras_flows.models.maf import AutoregressiveFlow
from keras_flows.transformers import RationalQuadraticSpline


@keras.saving.register_keras_serializable(package="keras_flows")
class NSF(AutoregressiveFlow):
    """Neural spline flow: MAF, or a coupling flow, with rational-quadratic
    spline transformers.

    Each layer maps every feature (autoregressive) or the second half
    (coupling) through a monotone rational-quadratic spline on [-B, B] with
    `bins` bins and identity tails outside, its knots emitted by a MADE
    (`z_i = RQS(x_i; theta(x_<i, c))`) or by an MLP of the kept half
    (`z_b = RQS(x_b; theta(x_a, c))`); log-det the sum of log RQS'. See
    `keras_flows.transformers.RationalQuadraticSpline`. Between layers the
    order is reversed (or randomly permuted), so that with `coupling=True`
    the halves alternate.

    The autoregressive form (NSF-AR in the paper) has the density in one
    pass and samples in D passes; the coupling form (NSF-C) both in one.

    Args:
        event_shape: `(D,)`.
        num_layers: number of spline layers.
        hidden_units: hidden sizes of each conditioner (MADE or MLP).
        bins: number of spline bins K.
        bound: B: the splines act on [-B, B].
        coupling: coupling layers (True) or autoregressive ones (False).
        activation, context_shape, normalization, permutation, seed, base: as
            in `MAF`.

    Example:
        >>> NSF(event_shape=(2,), num_layers=5, hidden_units=[64, 64], bins=8, bound=4.0)

    Reference: Durkan, Bekasov, Murray & Papamakarios 2019, arXiv:1906.04545.
    """

    preset_family = "nsf"

    def __init__(self, event_shape, num_layers=5, hidden_units=(64, 64), bins=8, bound=5.0,
                 coupling=False, activation="relu", context_shape=None, normalization=None,
                 permutation="reverse", seed=None, base=None, **kwargs):
        self.bins = int(bins)
        self.bound = float(bound)
        self.coupling = bool(coupling)
        super().__init__(event_shape, num_layers, hidden_units, activation, context_shape,
                         normalization, permutation, seed, base, **kwargs)

    def make_layer(self, i, context_shape, dtype):
        spline = RationalQuadraticSpline(self.bins, self.bound, dtype=dtype,
                                         name="transformer")
        if self.coupling:
            return Coupling(spline, MLP(hidden_units=self.hidden_units,
                                        activation=self.activation, dtype=dtype,
                                        name="conditioner"),
                            context_shape=context_shape, dtype=dtype, name=f"coupling_{i}")
        return MaskedAutoregressive(spline, self.made(i, context_shape, dtype),
                                    context_shape=context_shape, dtype=dtype,
                                    name=f"spline_{i}")

    def get_config(self):
        config = super().get_config()
        config.update(bins=self.bins, bound=self.bound, coupling=self.coupling)
        return config
