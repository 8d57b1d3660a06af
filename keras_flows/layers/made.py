"""MADE: the masked network that conditions masked autoregressive flows."""

import numpy as np
import keras

from keras_flows.layers.dense import Dense, MaskedDense, get_activation

_ORDERS = ("natural", "reversed", "random")


@keras.saving.register_keras_serializable(package="keras_flows")
class MADE(keras.layers.Layer):
    """Masked autoencoder for distribution estimation: a dense network whose
    output for feature i depends only on the inputs before i.

    For x of shape (B, D) it returns (B, D * P): output i * P + p is parameter
    p of feature i (the layout of `keras_flows.transformers`), and it depends
    only on the x_j with order[j] < order[i] (and on the context). The feature
    first in the order gets an output constant in x (its bias, plus a function
    of the context if there is one), as does the only feature when D = 1.
    Masks make this hold (Germain et al. 2015):

        degrees:  input j           m(j) = order[j] + 1            in 1..D
                  hidden unit k     m(k) = k % max(1, D - 1) + 1   in 1..D-1
                                    (with a context: k % D         in 0..D-1)
                  output i * P + p  m    = order[i] + 1
        masks:    into a hidden unit l:  M[k, l] = 1 if m(k) <= m(l)
                  into an output o:      M[k, o] = 1 if m(k) <  m(o)

    A hidden unit of degree m sees only inputs of degree <= m, so an output of
    degree d, which sees only hidden units of degree < d, sees only inputs of
    degree < d. The hidden degrees cycle deterministically (as zuko and nflows
    do), so the masks follow from the config alone; a layer of fewer units
    than degrees leaves some inputs reaching no output.

    The context c (B, K) counts as an input of degree 0: it enters the first
    hidden layer through an unmasked dense map V (no bias), so every hidden
    unit sees all of it. Hidden units of degree 0, which exist only when there
    is a context, see the context and no input; they are what the first
    feature's outputs see, so that every output depends on the context (with
    degrees from 1, as in nflows, the first feature would get a bias only).
    With no hidden layers the context enters the output layer, V then
    starting at zero.

        h_1 = act(x (W_1 * M_1) + c V + b_1)
        h_1 <- h_1 + act(h_1 (A_k * M) + a_k) (B_k * M) + b_k       (k = 1..K)
        h_l = act(h_{l-1} (W_l * M_l) + b_l)                        (l = 2..L)
        out = h_L (W_o * M_o) + b_o,   W_o = b_o = 0 at initialisation

    The K residual blocks (`residual_blocks`) act after the first hidden layer;
    their masks keep the degrees of the hidden layer (M[k, l] = 1 if
    m(k) <= m(l)), so the skip and the block both preserve the ordering, and
    they need all hidden layers of one size. The zero output layer makes a
    flow that uses MADE start as the identity. All layers are
    `keras_flows.layers.Dense` or `MaskedDense`, which compute in the layer's
    dtype (float64 included) on every backend.

    Called as `made(x, context=None)`. The context size comes from
    `context_dim`, or, when that is None, from the context shape given to
    `build(x_shape, context_shape)` (or seen on the first call); it is in
    `get_config` once known. A context must be given exactly when the layer
    was built with one.

    Args:
        output_dim: D * P, or None to let the structure that uses MADE set
            `made.output_dim` before building (a ValueError if still None).
        hidden_units: sizes of the hidden layers.
        activation: activation of the hidden layers.
        order: "natural" (0..D-1), "reversed" (D-1..0), "random" (a
            permutation drawn from `seed`), or a permutation of range(D):
            `order[j]` is the position of x_j in the autoregressive order.
        residual_blocks: number of masked residual blocks after the first
            hidden layer (0 for none).
        context_dim: size K of the context vector, or None (see above).
        seed: seed of the "random" order; when None with order="random" one
            is drawn at construction and kept in the config, so a reloaded
            layer has the same order.

    Example:
        >>> made = MADE(output_dim=6, hidden_units=(16, 16), order="reversed")
        >>> made(np.zeros((4, 3))).shape
        (4, 6)

    Reference: Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked
    autoencoder for distribution estimation", arXiv:1502.03509.
    """

    def __init__(self, output_dim=None, hidden_units=(64, 64), activation="relu",
                 order="natural", residual_blocks=0, context_dim=None, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.output_dim = None if output_dim is None else int(output_dim)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self._act = get_activation(activation)
        self.residual_blocks = int(residual_blocks)
        self.context_dim = None if context_dim is None else int(context_dim)
        if isinstance(order, str):
            if order not in _ORDERS:
                raise ValueError(f"`order` must be one of {_ORDERS} or a permutation of "
                                 f"range(D); got {order!r}.")
            self.order = order
        else:
            order = [int(i) for i in order]
            if sorted(order) != list(range(len(order))):
                raise ValueError(f"`order` must be a permutation of range(D); got {order}.")
            self.order = tuple(order)
        if self.order == "random" and seed is None:
            seed = int(np.random.default_rng().integers(2**31 - 1))
        self.seed = None if seed is None else int(seed)
        if any(u < 1 for u in self.hidden_units):
            raise ValueError(f"`hidden_units` must be positive; got {self.hidden_units}.")
        if self.residual_blocks < 0:
            raise ValueError(f"`residual_blocks` must be >= 0; got {residual_blocks}.")
        if self.residual_blocks and (not self.hidden_units
                                     or len(set(self.hidden_units)) != 1):
            raise ValueError("MADE with residual blocks needs at least one hidden layer "
                             "and all hidden layers of one size; got "
                             f"hidden_units={self.hidden_units}.")
        if self.context_dim is not None and self.context_dim < 1:
            raise ValueError(f"`context_dim` must be >= 1 or None; got {context_dim}.")

    def input_order(self, features):
        """`order[j]`, the position of input j in the autoregressive order."""
        if self.order == "natural":
            return np.arange(features)
        if self.order == "reversed":
            return np.arange(features)[::-1].copy()
        if self.order == "random":
            return np.random.default_rng(self.seed).permutation(features)
        if len(self.order) != features:
            raise ValueError(f"MADE's `order` has {len(self.order)} entries; the input "
                             f"has {features} features.")
        return np.asarray(self.order)

    def build(self, x_shape, context_shape=None):
        if self.built:  # e.g. built from its saved build config, then by its structure
            return
        features = x_shape[-1]
        if features is None:
            raise ValueError(f"MADE needs a known number of features; got input shape "
                             f"{tuple(x_shape)}.")
        if self.output_dim is None:
            raise ValueError("MADE.output_dim is None at build time: pass `output_dim=` "
                             "to MADE(...), or set `made.output_dim = n` before building "
                             "(the structure that uses it knows n).")
        self.output_dim = int(self.output_dim)
        if self.output_dim < 1 or self.output_dim % features:
            raise ValueError(f"MADE's output_dim ({self.output_dim}) must be a multiple of "
                             f"the number of features ({features}): P parameters for each.")
        if context_shape is not None:
            if self.context_dim is None:
                self.context_dim = int(context_shape[-1])
            elif context_shape[-1] != self.context_dim:
                raise ValueError(f"MADE has context_dim={self.context_dim}; got a context "
                                 f"of shape {tuple(context_shape)}.")
        params = self.output_dim // features
        degree_in = self.input_order(features) + 1
        degree_out = np.repeat(degree_in, params)
        if self.context_dim is None:
            degrees = [np.arange(u) % max(1, features - 1) + 1 for u in self.hidden_units]
        else:
            degrees = [np.arange(u) % features for u in self.hidden_units]
        dtype = self.dtype_policy

        self.hidden = []
        previous = degree_in
        for i, degree in enumerate(degrees):
            mask = previous[:, None] <= degree[None, :]
            self.hidden.append(MaskedDense(len(degree), mask, dtype=dtype, name=f"dense_{i}"))
            previous = degree
        self.blocks = []
        for k in range(self.residual_blocks):
            same = degrees[0][:, None] <= degrees[0][None, :]
            self.blocks += [MaskedDense(len(degrees[0]), same, dtype=dtype,
                                        name=f"block_{k}_dense_{j}") for j in (0, 1)]
        self.out = MaskedDense(self.output_dim, previous[:, None] < degree_out[None, :],
                               kernel_initializer="zeros", bias_initializer="zeros",
                               dtype=dtype, name="out")
        self.context_layer = None
        if self.context_dim is not None:
            first = self.hidden_units[0] if self.hidden_units else self.output_dim
            self.context_layer = Dense(
                first, use_bias=False, dtype=dtype, name="context",
                kernel_initializer="glorot_uniform" if self.hidden_units else "zeros")

        shape = tuple(x_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        for layer in self.blocks:
            layer.build(shape)
        self.out.build(shape)
        if self.context_layer is not None:
            self.context_layer.build((*x_shape[:-1], self.context_dim))

    def call(self, x, context=None):
        if self.context_layer is None and context is not None:
            raise ValueError("This MADE was built without a context (context_dim=None) but "
                             "was given one.")
        if self.context_layer is not None and context is None:
            raise ValueError(f"This MADE takes a context of size {self.context_dim}; call "
                             "it as made(x, context).")
        # The built members run through `call`, as in `conditioners.MLP`.
        h = x
        for i, layer in enumerate(self.hidden):
            h = layer.call(h)
            if i == 0:
                if context is not None:
                    h = h + self.context_layer.call(context)
                h = self._act(h)
                for k in range(0, len(self.blocks), 2):
                    r = self._act(self.blocks[k].call(h))
                    h = h + self.blocks[k + 1].call(r)
            else:
                h = self._act(h)
        out = self.out.call(h)
        if not self.hidden and context is not None:
            out = out + self.context_layer.call(context)
        return out

    def compute_output_shape(self, x_shape, context_shape=None):
        if self.output_dim is None:
            raise ValueError("MADE.output_dim is None: set it before use.")
        return (*x_shape[:-1], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(output_dim=self.output_dim, hidden_units=list(self.hidden_units),
                      activation=self.activation,
                      order=self.order if isinstance(self.order, str) else list(self.order),
                      residual_blocks=self.residual_blocks, context_dim=self.context_dim,
                      seed=self.seed)
        return config
