"""`ImageFlow`: the multi-scale image flow that Glow and RealNVP configure."""

import math
import warnings

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors import ActNorm, Chain, LogitTransform, Rescale, Squeeze
from keras_flows.distributions.conditional import SplitPrior, TopPrior
from keras_flows.layers.dense import Dense
from keras_flows.layers.preprocessing import Dequantize
from keras_flows import metrics
from keras_flows.models.flow import Flow
from keras_flows.utils.backend import is_concrete
from keras_flows.utils.checks import (check_event, check_labels, check_pixels,
                                      check_sample_args, to_numpy)
from keras_flows.utils.inference import BATCH_SIZE, batched
from keras_flows.utils.math import upcast
from keras_flows.utils.random import seed_generator


class ImageFlow(Flow):
    """A multi-scale flow on images with pixel values in [0, 256).

    x -> dequantize -> preprocess -> level_1 -> split -> level_2 -> ... -> level_L

    Each level is a bijector (`_make_level`); after every level but the last,
    half the channels `z_l` are factored out with a learned prior
    p(z_l | h_l) (`SplitPrior`), and the rest `h_l` goes on. The last latent
    has a learned, optionally class-conditional prior (`TopPrior`). With
    `prior_scale_bound=B` each split prior's log-scale is B tanh(a / B) (see
    `SplitPrior`), so that sampling cannot overflow there.

    log p(x) = log p_top(z_L | y) + sum_l log p(z_l | h_l) + sum log|det J|

    on the dequantized [0, 2^n_bits) scale, so that
    `bits_per_dim = -log p(x) / (D log 2)` is the papers' discrete figure.
    `fit` minimises and reports bits/dim. `encode` returns the list
    `[z_1, ..., z_L]`; `decode` inverts it exactly. For a class-conditional
    flow (`num_classes`), the context is the integer label, one per image.

    With `class_loss_weight = w > 0` (Glow's `weight_y`), a linear classifier
    on the spatial mean of the top latent predicts the label, and training
    minimises `bits/dim + w * (-log2 q(y | x))`; `class_logits(images)` gives
    its logits.

    Memory: `remat` trades compute for memory in
    training passes (`fit`, or calling the model with `training=True`) by
    gradient checkpointing (`keras.remat`: `jax.checkpoint`,
    `tf.recompute_grad`, `torch.utils.checkpoint`): only the input of each
    checkpointed block is kept for the backward pass, and the block's
    forward is run again there.

    - `remat=None`: every activation is kept (fastest, most memory).
    - `remat="step"`: each flow step (`_steps`; in Glow ActNorm, 1x1
      convolution and coupling) is a block: the coupling networks' hidden
      activations (`hidden_channels` wide, the bulk of the memory) live
      for one step at a time; about one more forward pass of compute.
    - `remat="level"`: each level is a block: only the level inputs are
      kept, but the backward pass of a level holds all of its activations
      at once, so the peak is that of the largest level (in Glow the first,
      whose images are the largest): it saves less than `"step"`.

    Remat does not change the result: each block is run statelessly
    (`keras.StatelessScope`) and its updates of non-trainable state
    (ActNorm's data-dependent start, BatchNorm's moving statistics) are
    applied once, outside the checkpoint, so the recomputation has no side
    effects. Inference (`log_prob`, `sample`, ...) never rematerialises.

    Mixed precision: build with `dtype="mixed_bfloat16"` (or under
    `keras.mixed_precision.set_dtype_policy`): variables stay float32, the
    layers compute in bfloat16, and every log-det, log-density and the loss
    are summed in float32 (`sum_except_batch`, `upcast`).
    """

    REMAT_MODES = (None, "step", "level")

    def __init__(self, image_shape, levels, n_bits=8, preprocessing="scale", alpha=0.05,
                 num_classes=None, class_loss_weight=0.0, seed=None, prior_scale_bound=None,
                 remat=None, **kwargs):
        keras.Model.__init__(self, **kwargs)
        if remat not in self.REMAT_MODES:
            raise ValueError(f"`remat` must be None, 'step' or 'level'; got {remat!r}.")
        self.remat = remat
        self.prior_scale_bound = (None if prior_scale_bound is None
                                  else float(prior_scale_bound))
        self.image_shape = self.event_shape = tuple(int(d) for d in image_shape)
        if len(self.image_shape) != 3 or self.image_shape[-1] not in (1, 3):
            raise ValueError("`image_shape` must be (height, width, 1 or 3); got "
                             f"{image_shape}.")
        self.num_levels = int(levels)
        self.n_bits = int(n_bits)
        self.preprocessing = preprocessing
        self.alpha = float(alpha)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.context_shape = None if num_classes is None else ()
        # The random rotations and shuffles are drawn from `seed`, which the
        # config keeps, so that a reloaded model rebuilds the same ones.
        self.seed = int(np.random.randint(2**31) if seed is None else seed)
        dtype = self.dtype_policy
        self.dequantize = Dequantize(n_bits, seed=seed, dtype=dtype, name="dequantize")
        if preprocessing == "scale":
            self.preprocess = Rescale(n_bits, dtype=dtype, name="rescale")
        elif preprocessing == "logit":
            self.preprocess = LogitTransform(alpha, n_bits, dtype=dtype, name="logit")
        else:
            raise ValueError(f"`preprocessing` must be 'scale' or 'logit'; got "
                             f"{preprocessing!r}.")
        shape = (None, *self.image_shape)
        self.levels, self.split_priors = [], []
        for index in range(self.num_levels):
            level = self._make_level(index, shape[1:], index == self.num_levels - 1)
            self.levels.append(level)
            shape = tuple(level.compute_output_shape(shape))
            if index < self.num_levels - 1:
                if shape[-1] % 2:
                    raise ValueError(f"Level {index} ends with {shape[-1]} channels, "
                                     "which cannot be split in half.")
                self.split_priors.append(
                    SplitPrior(shape[-1] // 2, self.prior_scale_bound, dtype=dtype,
                               name=f"split_prior_{index}"))
                shape = (*shape[:-1], shape[-1] - shape[-1] // 2)
        self.top_prior = TopPrior(shape[1:], num_classes, dtype=dtype, name="top_prior")
        self.class_loss_weight = float(class_loss_weight)
        self.classifier = None
        if self.class_loss_weight:
            if num_classes is None:
                raise ValueError("`class_loss_weight` needs `num_classes`.")
            self.classifier = Dense(num_classes, kernel_initializer="zeros",
                                                 dtype=dtype, name="classifier")
            self.classifier.build((None, shape[-1]))
        self.build((None, *self.image_shape))

    def _make_level(self, index, input_shape, last):
        """The bijector of level `index` (input shape without batch)."""
        raise NotImplementedError

    def _normalized_blocks(self, index, input_shape, last, make_block, num_blocks):
        """`Chain([ActNorm, make_block(k)] for k < num_blocks, then a squeeze
        unless `last`)`: a level of the image FFJORD and Residual Flow."""
        dtype = self.dtype_policy
        layers = []
        for k in range(num_blocks):
            layers += [ActNorm(dtype=dtype, name=f"actnorm_{index}_{k}"), make_block(k)]
        if not last:
            if input_shape[0] % 2 or input_shape[1] % 2:
                raise ValueError(f"Level {index} gets {input_shape[0]}x{input_shape[1]} "
                                 "images, which cannot be squeezed: height and width must "
                                 "be divisible by 2^(levels - 1).")
            layers.append(Squeeze(dtype=dtype, name=f"squeeze_{index}"))
        return Chain(layers, dtype=dtype, name=f"level_{index}")

    def _members(self, index):
        """The bijectors of level `index` in forward order (its `Chain`'s)."""
        level = self.levels[index]
        return list(getattr(level, "bijectors", [level]))

    def _steps(self, index):
        """The bijectors of level `index` grouped into the steps that
        `remat="step"` checkpoints one at a time (each member of the level
        alone, unless a subclass groups them)."""
        return [[b] for b in self._members(index)]

    def _level_forward(self, index, h, training=False):
        """`(h, log_det)` through level `index`, checkpointed per `remat` in
        training passes."""
        if not (training and self.remat):
            return forward_through(self._members(index), h, training)
        blocks = ([self._members(index)] if self.remat == "level"
                  else self._steps(index))
        total = 0.0
        for block in blocks:
            h, log_det = rematerialized_forward(block, h, training)
            total = total + log_det
        return h, total

    def _level_inverse(self, index, z):
        for b in reversed(self._members(index)):
            z, _ = b.inverse(z)
        return z

    def build(self, input_shape):
        x = ops.zeros((2, *self.image_shape), dtype=self.compute_dtype)
        y = None if self.num_classes is None else ops.zeros((2,), dtype="int32")
        self._log_prob(x, y)
        self.built = True

    # -- the math ---------------------------------------------------------
    def _split(self, h):
        c = h.shape[-1] // 2
        return h[..., :c], h[..., c:]

    def _log_prob(self, x, context=None, training=False, noise=None):
        y = self.dequantize(x, training=training, noise=noise)
        return self.continuous_log_prob(y, context, training=training)

    def continuous_log_prob(self, y, context=None, training=False):
        """log p(y) of continuous values y on the dequantized scale [0, 2^n_bits)
        (a tensor, differentiable in y): `log_prob` without its dequantization,
        which maps pixels to bins and so has no gradient."""
        h, total = self.preprocess.forward(y)
        for index in range(self.num_levels):
            h, log_det = self._level_forward(index, h, training)
            total = total + log_det
            if index < len(self.split_priors):
                z, h = self._split(h)
                total = total + self.split_priors[index].log_prob(z, h)
        if training and self.classifier is not None:
            logits = upcast(self.classifier(ops.mean(h, axis=(1, 2))))
            bits = keras.losses.sparse_categorical_crossentropy(
                context, logits, from_logits=True) / math.log(2.0)
            self.add_loss(self.class_loss_weight * ops.mean(bits))
        return total + self.top_prior.log_prob(h, context)

    def class_logits(self, images):
        """Logits of q(y | x) from the classifier on the top latent."""
        if self.classifier is None:
            raise ValueError("This flow has no classifier: build it with `num_classes` "
                             "and `class_loss_weight > 0`.")
        x, _ = self._validate(images, ops.zeros((ops.shape(images)[0],), "int32"))
        return self.classifier(ops.mean(self._encode(x)[-1], axis=(1, 2)))

    def _encode(self, x, context=None):
        h, _ = self.preprocess.forward(self.dequantize(x))
        latents = []
        for index in range(self.num_levels):
            h, _ = self._level_forward(index, h)
            if index < len(self.split_priors):
                z, h = self._split(h)
                latents.append(z)
        return latents + [h]

    def _decode(self, latents, temperature=1.0, seed=None, raw=False):
        """Images from latents; a `None` latent is drawn from its prior.

        `raw=True` returns the dequantized-scale values before any
        non-finite pixel is replaced (benchmarks/sample_overflow.py)."""
        h = latents[-1]
        for index in reversed(range(self.num_levels)):
            if index < len(self.split_priors):
                z = latents[index]
                if z is None:
                    z = self.split_priors[index].sample(
                        ops.shape(h), h, temperature=temperature, seed=seed)
                h = ops.concatenate([z, h], axis=-1)
            h = self._level_inverse(index, h)
        y, _ = self.preprocess.inverse(h)
        if raw:
            return y
        # Each inverse affine coupling divides by its scale, so a latent far in
        # the tails can grow past float32's range on the way back.
        finite = ops.isfinite(y)
        if is_concrete(y):
            bad = int(np.sum(~ops.convert_to_numpy(ops.all(finite, axis=(1, 2, 3)))))
            if bad:
                warnings.warn(f"{bad} of {y.shape[0]} images overflowed float32 while "
                              "inverting the flow; their non-finite pixels are set to 0. "
                              "A lower temperature or a better-trained model avoids it.",
                              stacklevel=3)
        return self.dequantize.to_pixels(ops.where(finite, y, ops.zeros_like(y)))

    # -- the public API ---------------------------------------------------
    def _validate(self, x, context, name="x", shape=None, finite=True):
        if finite and is_concrete(x):
            check_pixels(to_numpy(x))
        x = ops.convert_to_tensor(x, dtype=self.compute_dtype)
        check_event(x, self.image_shape, "images", finite=finite)
        if self.num_classes is None:
            self._context(context)
            return x, None
        if context is None:
            self._context(None)
        if finite and is_concrete(context):
            check_labels(to_numpy(context), self.num_classes)
        context = ops.convert_to_tensor(context)
        if "int" not in keras.backend.standardize_dtype(context.dtype):
            # Inside traced steps, where nothing can raise, a fractional label
            # becomes -1, to which the top prior gives NaN.
            labels = ops.cast(context, "int32")
            context = ops.where(ops.cast(labels, context.dtype) == context, labels, -1)
        context = ops.cast(context, "int32")
        if tuple(context.shape) != (x.shape[0],):
            raise ValueError(f"`context` must hold one class label per image, shape "
                             f"({x.shape[0]},); got {tuple(context.shape)}.")
        return x, context

    def _context(self, context):
        if self.num_classes is not None and context is None:
            raise ValueError("This flow is class-conditional: pass `context` with one "
                             "integer label per image.")
        if self.num_classes is None and context is not None:
            raise ValueError("This flow is not class-conditional: build it with "
                             "`num_classes=` to pass a `context`.")
        return {}

    def _data_loss(self, nll, sample_weight):
        nll = super()._data_loss(nll, sample_weight)
        return metrics.bits_per_dim(-nll, math.prod(self.image_shape))

    def bits_per_dim(self, images, context=None, num_samples=None, seed=None,
                     batch_size=BATCH_SIZE):
        """Bits per dimension of each image: -log p(x) / (D log 2).

        With `num_samples=None` the bin midpoints are scored (deterministic);
        with `num_samples=K`, the importance-sampled bound
        -log(1/K sum_k p(x + u_k)) over K uniform dequantizations, which
        tightens towards the discrete likelihood as K grows. Computed
        `batch_size` images at a time with no gradient graph, as `log_prob`.
        """
        x, context = self._validate(images, context)
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(
                num_samples, (int, np.integer)) or num_samples < 1):
            raise ValueError(f"`num_samples` must be None or a positive integer; got "
                             f"{num_samples!r}.")
        generator = None if num_samples is None else seed_generator(seed)

        def log_prob(x, context):
            if num_samples is None:
                return self._log_prob(x, context)
            draws = ops.stack([
                self._log_prob(x, context, noise=keras.random.uniform(
                    ops.shape(x), seed=generator, dtype=x.dtype))
                for _ in range(int(num_samples))])
            return ops.logsumexp(draws, axis=0) - math.log(int(num_samples))

        log_p = batched(log_prob, [x, context], batch_size)
        return metrics.bits_per_dim(log_p, math.prod(self.image_shape))

    def encode(self, x, context=None, batch_size=BATCH_SIZE):
        """The latents `[z_1, ..., z_L]` of each image (bin midpoints)."""
        x, context = self._validate(x, context)
        return batched(self._encode, [x, context], batch_size)

    def decode(self, latents, context=None, batch_size=BATCH_SIZE):
        """Images in [0, 255] from the full list of latents."""
        latents = [ops.convert_to_tensor(z, dtype=self.compute_dtype) for z in latents]
        if len(latents) != self.num_levels:
            raise ValueError(f"`decode` needs {self.num_levels} latents, one per level; "
                             f"got {len(latents)}.")
        return batched(self._decode, [latents], batch_size)

    def sample(self, n, context=None, temperature=1.0, seed=None, batch_size=BATCH_SIZE):
        """`n` images in [0, 255]; every latent drawn at `temperature`.

        `n` is a positive integer and `temperature` a finite number >= 0.
        """
        check_sample_args(n, temperature)
        if self.num_classes is not None:
            if context is None:
                self._context(None)
            if is_concrete(context):
                context = to_numpy(context)
                if context.ndim == 0:
                    context = np.broadcast_to(context, (n,))
                check_labels(context, self.num_classes)
            context = ops.convert_to_tensor(context, dtype="int32")
            if tuple(context.shape) != (n,):
                raise ValueError(f"`context` has {context.shape[0]} labels; sampling {n} "
                                 "needs one per sample.")
        else:
            self._context(context)
        seed = seed_generator(seed)
        top = self.top_prior.sample((n, *self.top_prior.shape), context,
                                    temperature=temperature, seed=seed)
        splits = [None] * len(self.split_priors)
        return batched(lambda top: self._decode(splits + [top], temperature, seed), [top],
                       batch_size)

    def get_config(self):
        config = keras.Model.get_config(self)
        config.update(image_shape=list(self.image_shape), levels=self.num_levels,
                      n_bits=self.n_bits, preprocessing=self.preprocessing,
                      alpha=self.alpha, num_classes=self.num_classes,
                      class_loss_weight=self.class_loss_weight, seed=self.seed,
                      prior_scale_bound=self.prior_scale_bound, remat=self.remat)
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
