"""Masked autoregressive flows: MAF (Papamakarios et al. 2017) and IAF
(Kingma et al. 2016)."""

import keras

from keras_flows.bijectors import (ActNorm, BatchNorm, Chain, Invert, MaskedAutoregressive,
                                   RandomPermutation, Reverse)
from keras_flows.layers import MADE
from keras_flows.models.flow import Flow
from keras_flows.transformers import Affine


def autoregressive_chain(make_layer, num_layers, normalization, permutation, seed, dtype):
    """`make_layer(i)` for each i, with `normalization` and `permutation`
    between consecutive layers.

    [layer_0, norm, perm, layer_1, ..., layer_n-1]: the permutations make
    every feature condition every other one somewhere in the stack."""
    if normalization not in (None, "actnorm", "batch"):
        raise ValueError("`normalization` must be None, 'actnorm' or 'batch'; got "
                         f"{normalization!r}.")
    if permutation not in ("reverse", "random"):
        raise ValueError(f"`permutation` must be 'reverse' or 'random'; got {permutation!r}.")
    layers = []
    for i in range(num_layers):
        layers.append(make_layer(i))
        if i == num_layers - 1:
            break
        if normalization == "actnorm":
            layers.append(ActNorm(dtype=dtype, name=f"actnorm_{i}"))
        elif normalization == "batch":
            layers.append(BatchNorm(dtype=dtype, name=f"batch_norm_{i}"))
        if permutation == "reverse":
            layers.append(Reverse(dtype=dtype, name=f"reverse_{i}"))
        else:
            layers.append(RandomPermutation(seed=None if seed is None else seed + i,
                                            dtype=dtype, name=f"permutation_{i}"))
    return Chain(layers, dtype=dtype, name="chain")


class AutoregressiveFlow(Flow):
    """A vector flow of `num_layers` layers `make_layer(i, context_shape,
    dtype)`, with `normalization` and `permutation` between them (see
    `autoregressive_chain`): MAF, IAF and NSF are its configurations."""

    def __init__(self, event_shape, num_layers, hidden_units, activation, context_shape,
                 normalization, permutation, seed, base, **kwargs):
        self.num_layers = int(num_layers)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.normalization = normalization
        self.permutation = permutation
        self.seed = None if seed is None else int(seed)
        if len(tuple(event_shape)) != 1:
            raise ValueError(f"{type(self).__name__} models vectors: `event_shape` must be "
                             f"(D,); got {tuple(event_shape)}.")
        dtype = kwargs.get("dtype")
        context_shape = None if context_shape is None else tuple(context_shape)
        chain = autoregressive_chain(lambda i: self.make_layer(i, context_shape, dtype),
                                     self.num_layers, normalization, permutation,
                                     self.seed, dtype)
        super().__init__(chain, event_shape, base=base, context_shape=context_shape,
                         **kwargs)

    def made(self, i, context_shape, dtype):
        return MADE(hidden_units=self.hidden_units, activation=self.activation,
                    context_dim=None if context_shape is None else context_shape[0],
                    dtype=dtype, name=f"made_{i}")

    def get_config(self):
        config = super().get_config()
        del config["bijector"]
        config.update(num_layers=self.num_layers, hidden_units=list(self.hidden_units),
                      activation=self.activation, normalization=self.normalization,
                      permutation=self.permutation, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class MAF(AutoregressiveFlow):
    """Masked autoregressive flow: a stack of affine autoregressive layers.

    Each layer, in its input order:
        z_i = x_i exp(s_i) + t_i,  (s_i, t_i) = MADE(x_<i, c),  s = 3 tanh(h / 3)
    log-det sum_i s_i. Density in one pass per layer; sampling inverts each
    layer in D passes. Between layers the order is reversed (or randomly
    permuted), optionally with an `ActNorm` or `BatchNorm` (the paper's).

    log p(x | c) = log N(f(x; c); 0, I) + sum over layers of sum_i s_i.

    Args:
        event_shape: `(D,)`.
        num_layers: number of autoregressive layers.
        hidden_units: hidden sizes of each layer's MADE.
        activation: MADE activation.
        context_shape: `(K,)` for a conditional flow p(x | c), or None.
        normalization: None, "actnorm" or "batch", between layers.
        permutation: "reverse" or "random" (seeded by `seed`), between layers.
        seed: seed of the random permutations.
        base: base distribution (N(0, I) by default).

    Example:
        >>> flow = MAF(event_shape=(2,), num_layers=5, hidden_units=[64, 64])
        >>> flow.compile(optimizer="adam"); flow.fit(x, batch_size=512, epochs=20)

    Reference: Papamakarios, Pavlakou & Murray 2017, arXiv:1705.07057.
    """

    preset_family = "maf"

    def __init__(self, event_shape, num_layers=5, hidden_units=(64, 64), activation="relu",
                 context_shape=None, normalization=None, permutation="reverse", seed=None,
                 base=None, **kwargs):
        super().__init__(event_shape, num_layers, hidden_units, activation, context_shape,
                         normalization, permutation, seed, base, **kwargs)

    def make_layer(self, i, context_shape, dtype):
        return MaskedAutoregressive(Affine(dtype=dtype, name="transformer"),
                                    self.made(i, context_shape, dtype),
                                    context_shape=context_shape, dtype=dtype,
                                    name=f"maf_{i}")


@keras.saving.register_keras_serializable(package="keras_flows")
class IAF(MAF):
    """Inverse autoregressive flow: MAF's layers used the other way round.

    Each layer maps latent to data autoregressively in the *latent*:
        x_i = u_i exp(s_i) + t_i,  (s_i, t_i) = MADE(u_<i, c),
    so sampling takes one pass per layer and the density of a given x
    D passes (each layer is `Invert(MaskedAutoregressive(...))`). Use it where
    samples and their densities are needed together (variational
    inference); for density estimation MAF is D times faster to train.

    Args: as `MAF`.

    Reference: Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016,
    arXiv:1606.04934.
    """

    preset_family = "iaf"

    def make_layer(self, i, context_shape, dtype):
        return Invert(super().make_layer(i, context_shape, dtype), dtype=dtype,
                      name=f"iaf_{i}")
