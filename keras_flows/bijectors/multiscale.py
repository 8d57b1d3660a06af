"""The multi-scale structure of image flows (RealNVP, Glow): `MultiScale`, with
Glow's learned priors as bijectors onto N(0, I), `SplitPrior` and `TopPrior`."""

import math

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector, sum_except_batch
from keras_flows.layers.conv import Conv2D
from keras_flows.layers.dense import Dense
from keras_flows.utils.backend import call_layer
from keras_flows.utils.math import tanh, upcast


def split_shape(shape):
    """The shapes of the factored-out first C // 2 channels and of the rest,
    for a level's output of shape `(..., C)`."""
    channels = shape[-1] // 2
    return (*shape[:-1], channels), (*shape[:-1], shape[-1] - channels)


def _standardize(z, loc, log_scale, inverse=False):
    """(z - mu) / sigma with log-det -sum log sigma (sigma = exp(log_scale),
    broadcast to z), or with `inverse` mu + sigma z with log-det +sum log sigma."""
    log_det = sum_except_batch(ops.broadcast_to(log_scale, ops.shape(z)))
    if inverse:
        return loc + ops.exp(log_scale) * z, log_det
    return (z - loc) * ops.exp(-log_scale), -log_det


@keras.saving.register_keras_serializable(package="keras_flows")
class SplitPrior(Bijector):
    """Glow's learned prior p(z | h) of a factored-out half, as a bijector.

    The input (B, H, W, C) is [z, h], z its first C // 2 channels. With
    [mu, a] = Conv3x3(h) (zero-initialised, so it starts at N(0, I)) and
    log sigma = a, or with `scale_bound` B, log sigma = B tanh(a / B):

    Forward:  [z, h] -> [(z - mu(h)) / sigma(h), h]
    Inverse:  [e, h] -> [mu(h) + sigma(h) e, h]
    Log-det:  forward -sum log sigma(h); inverse the negative.

    so that log N(e; 0, I) + log-det = log N(z; mu(h), sigma(h)^2): a
    standard normal on `e` is Glow's prior on `z`. A bounded B caps the
    spread at e^B, so that sampling from an `h` unlike the training data
    cannot overflow; where |a| << B the two agree (tanh(u) = u - u^3 / 3).

    Args:
        scale_bound: B > 0, or None for the unbounded log sigma = a.
    """

    def __init__(self, scale_bound=None, **kwargs):
        super().__init__(**kwargs)
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(f"`scale_bound` must be > 0 or None; got {scale_bound}.")
        self.scale_bound = None if scale_bound is None else float(scale_bound)

    def build(self, input_shape):
        channels = input_shape[-1]
        if len(input_shape) != 4 or channels is None or channels < 2:
            raise ValueError("SplitPrior takes images (batch, height, width, channels) with "
                             f"at least 2 channels; got shape {tuple(input_shape)}.")
        self.channels = int(channels) // 2
        self.conv = Conv2D(2 * self.channels, 3, padding="same", kernel_initializer="zeros",
                           dtype=self.dtype_policy, name="conv")
        self.conv.build((None, None, None, int(channels) - self.channels))
        self.built = True

    def _params(self, h):
        out = call_layer(self.conv, h)
        loc, log_scale = out[..., 0::2], out[..., 1::2]
        if self.scale_bound is not None:
            log_scale = self.scale_bound * tanh(log_scale / self.scale_bound)
        return loc, log_scale

    def _forward(self, x, context=None, training=False):
        z, h = x[..., :self.channels], x[..., self.channels:]
        e, log_det = _standardize(z, *self._params(h))
        return ops.concatenate([e, h], axis=-1), log_det

    def _inverse(self, y, context=None, training=False):
        e, h = y[..., :self.channels], y[..., self.channels:]
        z, log_det = _standardize(e, *self._params(h), inverse=True)
        return ops.concatenate([z, h], axis=-1), log_det

    def get_config(self):
        config = super().get_config()
        config.update(scale_bound=self.scale_bound)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class TopPrior(Bijector):
    """Glow's learned prior of the last latent, optionally class-conditional,
    as a bijector onto N(0, I).

    With per-position mu, s and, for `num_classes`, class maps A, B (all
    starting at zero): mu(y) = mu + A onehot(y), log sigma(y) = s + B onehot(y),

    Forward:  z -> (z - mu(y)) / sigma(y)
    Inverse:  e -> mu(y) + sigma(y) e
    Log-det:  forward -sum log sigma(y); inverse the negative.

    The context is the class label y, one per example (`context_shape=()`);
    a label that is not an integer in [0, num_classes) gives NaN, which
    traced steps show where nothing can raise.

    With `class_loss_weight = w > 0` (Glow's `weight_y`), a linear classifier
    on the spatial mean of z predicts y (`logits(z)`), and every training
    forward pass adds `w * mean(-log2 q(y | z))` with `add_loss`.

    Args:
        num_classes: number of classes, or None for an unconditional prior.
        class_loss_weight: w (needs `num_classes`); 0 for no classifier.
    """

    def __init__(self, num_classes=None, class_loss_weight=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.context_shape = None if num_classes is None else ()
        self.class_loss_weight = float(class_loss_weight)
        if self.class_loss_weight and num_classes is None:
            raise ValueError("`class_loss_weight` needs `num_classes`.")

    def build(self, input_shape):
        shape = tuple(int(d) for d in input_shape[1:])
        self.loc = self.add_weight(shape=shape, initializer="zeros", name="loc")
        self.log_scale = self.add_weight(shape=shape, initializer="zeros", name="log_scale")
        if self.num_classes is not None:
            self.class_map = Dense(2 * shape[-1], kernel_initializer="zeros",
                                   dtype=self.dtype_policy, name="class_map")
            self.class_map.build((None, self.num_classes))
        if self.class_loss_weight:
            self.classifier = Dense(self.num_classes, kernel_initializer="zeros",
                                    dtype=self.dtype_policy, name="classifier")
            self.classifier.build((None, shape[-1]))
        self.built = True

    def _params(self, y):
        loc, log_scale = self.loc, self.log_scale
        if self.num_classes is not None:
            labels = ops.cast(ops.clip(y, 0, self.num_classes - 1), "int32")
            valid = (y >= 0) & (y < self.num_classes) & (ops.floor(y) == y)
            out = self.class_map(ops.one_hot(labels, self.num_classes,
                                             dtype=self.compute_dtype))
            out = ops.where(valid[:, None], out, float("nan"))
            loc = loc + out[:, None, None, 0::2]
            log_scale = log_scale + out[:, None, None, 1::2]
        return loc, log_scale

    def logits(self, z):
        """Logits of q(y | z) from the classifier on the spatial mean of z."""
        if not self.class_loss_weight:
            raise ValueError("This prior has no classifier: build it with `num_classes` "
                             "and `class_loss_weight > 0`.")
        return self.classifier(ops.mean(z, axis=tuple(range(1, len(z.shape) - 1))))

    def _forward(self, x, context=None, training=False):
        if training and self.class_loss_weight:
            bits = keras.losses.sparse_categorical_crossentropy(
                ops.cast(context, "int32"), upcast(self.logits(x)),
                from_logits=True) / math.log(2.0)
            self.add_loss(self.class_loss_weight * ops.mean(bits))
        return _standardize(x, *self._params(context))

    def _inverse(self, y, context=None, training=False):
        return _standardize(y, *self._params(context), inverse=True)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, class_loss_weight=self.class_loss_weight)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class MultiScale(Bijector):
    """The multi-scale architecture with factor-out (Dinh et al. 2017, Glow).

    h_0 = x;  h_l' = level_l(h_(l-1));  [e_l, h_l] = split_l(h_l')  (l < L);
    e_L = top(level_L(h_(L-1)));  z = [flat(e_1), ..., flat(e_L)],

    where split_l maps the level's output to itself (a `SplitPrior`, or the
    identity when `split_priors` is None) and its first C // 2 channels e_l
    leave the flow; top is a `TopPrior` (or the identity). The latent is one
    vector of the input's size D, so that `Flow(MultiScale(...), base)` with
    a standard normal base gives Glow's log p(x) = sum_l log p(z_l | h_l) +
    log p(z_L) + sum log|det J|; `unflatten(z)` gives the list [e_1, ..., e_L].

    Log-det: the sum of the levels', the split priors' and the top prior's;
    the inverse runs the same steps backwards (the negative).

    `remat` trades compute for memory in training passes (`training=True`)
    by gradient checkpointing (`keras.remat`): only the input of each
    checkpointed block is kept for the backward pass, and the block's
    forward runs again there.
    - `remat=None`: every activation is kept (fastest, most memory);
    - `remat="step"`: each member of a level's `Chain` is a block (give a
      level as a `Chain` of steps, e.g. Glow's ActNorm, 1x1 conv, coupling);
    - `remat="level"`: each level is a block: only the level inputs are kept,
      but the backward pass of a level holds all of its activations at once.
    Each block runs statelessly (`keras.StatelessScope`) and its updates of
    non-trainable state (ActNorm's data-dependent start, BatchNorm's moving
    statistics) are applied once, outside the checkpoint, so remat does not
    change the result.

    Args:
        levels: L bijectors on images, in forward order.
        split_priors: L - 1 `SplitPrior`s (or other bijectors keeping the
            shape), or None for N(0, I) priors on the factored-out halves.
        top_prior: a `TopPrior` (its context is the flow's), or None.
        remat: None, "step" or "level".
    """

    REMAT_MODES = (None, "step", "level")

    def __init__(self, levels, split_priors=None, top_prior=None, remat=None, **kwargs):
        super().__init__(**kwargs)
        build = keras.saving.deserialize_keras_object
        self.levels = [b if isinstance(b, Bijector) else build(b) for b in levels]
        if not self.levels:
            raise ValueError("`levels` must hold at least one bijector.")
        self.split_priors = None if split_priors is None else [
            b if isinstance(b, Bijector) else build(b) for b in split_priors]
        if self.split_priors is not None and len(self.split_priors) != len(self.levels) - 1:
            raise ValueError(f"`split_priors` must hold one bijector per level but the last "
                             f"({len(self.levels) - 1}); got {len(self.split_priors)}.")
        self.top_prior = (top_prior if top_prior is None or isinstance(top_prior, Bijector)
                          else build(top_prior))
        if remat not in self.REMAT_MODES:
            raise ValueError(f"`remat` must be None, 'step' or 'level'; got {remat!r}.")
        self.remat = remat
        self.context_shape = getattr(self.top_prior, "context_shape", None)
        self.exact_inverse = all(b.exact_inverse for b in self.levels)

    def part_shapes(self, input_shape):
        """The shapes (without batch) of e_1, ..., e_L for inputs of `input_shape`."""
        shape, parts = tuple(input_shape), []
        for index, level in enumerate(self.levels):
            shape = tuple(level.compute_output_shape(shape))
            if index < len(self.levels) - 1:
                if len(shape) != 4 or shape[-1] % 2:
                    raise ValueError(f"Level {index} outputs shape {shape[1:]}: factoring "
                                     "out half the channels needs an even number of them.")
                part, shape = split_shape(shape)
                parts.append(part[1:])
        return parts + [shape[1:]]

    def build(self, input_shape):
        self.input_event_shape = tuple(input_shape[1:])
        self.latent_shapes = self.part_shapes(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return (input_shape[0], sum(math.prod(s) for s in self.part_shapes(input_shape)))

    def inverse_output_shape(self, z_shape):
        if not self.built:
            raise ValueError("MultiScale cannot infer the image shape from a latent: "
                             "call `forward` or `build` with the image shape first.")
        return (z_shape[0], *self.input_event_shape)

    def flatten(self, parts):
        """[e_1, ..., e_L] -> z, one vector per example."""
        return ops.concatenate([ops.reshape(e, (ops.shape(e)[0], -1)) for e in parts], -1)

    def unflatten(self, z):
        """z -> [e_1, ..., e_L], the factored-out parts and the top latent."""
        parts, start = [], 0
        for shape in self.latent_shapes:
            size = math.prod(shape)
            parts.append(ops.reshape(z[:, start:start + size], (-1, *shape)))
            start += size
        return parts

    def factor_out(self, x, training=False):
        """`(parts, h, log_det)`: e_1, ..., e_(L-1), the top latent h before
        the top prior, and the log-det so far."""
        h, total, parts = x, 0.0, []
        for index, level in enumerate(self.levels):
            h, log_det = self._level_forward(level, h, training)
            total = total + log_det
            if index < len(self.levels) - 1:
                if self.split_priors is not None:
                    h, log_det = self.split_priors[index].forward(h, training=training)
                    total = total + upcast(log_det)
                c = h.shape[-1] // 2
                parts.append(h[..., :c])
                h = h[..., c:]
        return parts, h, total

    def _forward(self, x, context=None, training=False):
        parts, h, total = self.factor_out(x, training)
        if self.top_prior is not None:
            h, log_det = self.top_prior.forward(h, **self._context(context), training=training)
            total = total + upcast(log_det)
        return self.flatten(parts + [h]), total

    def _inverse(self, z, context=None, training=False):
        *parts, h = self.unflatten(z)
        total = 0.0
        if self.top_prior is not None:
            h, log_det = self.top_prior.inverse(h, **self._context(context))
            total = total + upcast(log_det)
        for index in reversed(range(len(self.levels))):
            if index < len(self.levels) - 1:
                h = ops.concatenate([parts[index], h], axis=-1)
                if self.split_priors is not None:
                    h, log_det = self.split_priors[index].inverse(h)
                    total = total + upcast(log_det)
            h, log_det = self.levels[index].inverse(h)
            total = total + upcast(log_det)
        return h, total

    def _context(self, context):
        return {} if self.context_shape is None else {"context": context}

    def _level_forward(self, level, h, training):
        if not level.built:   # its members are called one by one below
            level.build(h.shape)
        members = list(getattr(level, "bijectors", [level]))
        if not (training and self.remat):
            return forward_through(members, h, training)
        blocks = [members] if self.remat == "level" else [[b] for b in members]
        total = 0.0
        for block in blocks:
            h, log_det = rematerialized_forward(block, h, training)
            total = total + log_det
        return h, total

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            levels=[serialize(b) for b in self.levels],
            split_priors=None if self.split_priors is None else [
                serialize(b) for b in self.split_priors],
            top_prior=None if self.top_prior is None else serialize(self.top_prior),
            remat=self.remat)
        return config


def _unique(variables):
    seen, unique = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            unique.append(v)
    return unique


def forward_through(bijectors, x, training=False):
    """`forward` through `bijectors` in order: `(z, sum of log-dets)`, each
    log-det in float32 under mixed precision (a `Chain` would add a bfloat16
    zero of `Squeeze` to float32 log-dets, which TensorFlow refuses)."""
    total = 0.0
    for b in bijectors:
        x, log_det = b.forward(x, training=training)
        total = total + upcast(log_det)
    return x, total


def rematerialized_forward(bijectors, x, training):
    """`forward` through `bijectors` in order, checkpointed with `keras.remat`:
    `(z, log_det)` as without it, but the backward pass recomputes the
    intermediate activations instead of keeping them.

    The block runs statelessly: the variables go in as explicit inputs (so
    every backend differentiates through them) and the non-trainable values
    the block assigns come out as outputs, assigned here once; the recomputed
    forward of the backward pass then has no side effects.
    """
    trainable = _unique(v for b in bijectors for v in b.trainable_variables)
    state = _unique(v for b in bijectors for v in b.non_trainable_variables)
    variables = trainable + state

    def block(x, *values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            x, log_det = forward_through(bijectors, x, training)
            return (x, log_det, *[scope.get_current_value(v) for v in state])

    # The state goes in as copies: the assignments below must not modify a
    # tensor that the checkpoint saved (PyTorch checks their versions).
    values = ([ops.convert_to_tensor(v.value) for v in trainable]
              + [ops.copy(v.value) for v in state])
    x, log_det, *updates = keras.remat(block)(x, *values)
    for v, value in zip(state, updates):
        v.assign(value)
    return x, log_det
