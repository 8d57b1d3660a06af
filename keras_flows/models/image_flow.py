"""`ImageFlow`: the multi-scale image flow that Glow, RealNVP, FFJORD and
Residual Flows configure: `Flow(Chain([Dequantize, preprocess, MultiScale]),
StandardNormal)`."""

import math

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors import (ActNorm, Chain, Dequantize, LogitTransform, MultiScale,
                                   Rescale, SplitPrior, Squeeze, TopPrior)
from keras_flows.bijectors.multiscale import split_shape
from keras_flows.distributions import StandardNormal
from keras_flows import metrics
from keras_flows.models.flow import Flow
from keras_flows.utils.backend import is_concrete
from keras_flows.utils.checks import check_labels, check_pixels, to_numpy
from keras_flows.utils.inference import BATCH_SIZE, batched
from keras_flows.utils.random import seed_generator


@keras.saving.register_keras_serializable(package="keras_flows")
class ImageFlow(Flow):
    """A multi-scale flow on images with pixel values in [0, 256).

    x -> Dequantize -> preprocess -> MultiScale(level_1, ..., level_L) -> z,
    z ~ N(0, I) of the image's size D,

    a `Flow` whose bijector is that `Chain` (`flow.bijector`) and whose base
    is the standard normal (`flow.base`). Each level is a bijector
    (`_make_level`); after every level but the last, half the channels `z_l`
    are factored out with a learned prior p(z_l | h_l) (`SplitPrior`), and
    the rest `h_l` goes on. The last latent has a learned, optionally
    class-conditional prior (`TopPrior`). With `prior_scale_bound=B` each
    split prior's log-scale is B tanh(a / B) (see `SplitPrior`), so that
    sampling cannot overflow there. The priors are bijectors onto N(0, I), so

    log p(x) = log p_top(z_L | y) + sum_l log p(z_l | h_l) + sum log|det J|

    on the dequantized [0, 2^n_bits) scale, and
    `bits_per_dim = -log p(x) / (D log 2)` is the papers' discrete figure.
    `fit` minimises and reports bits/dim. `encode` returns the latent, one
    vector of D values per image (`flow.multiscale.unflatten(z)` splits it
    into the whitened parts [e_1, ..., e_L]); `decode` inverts it exactly
    to pixels. For a class-conditional flow (`num_classes`), the context is
    the integer label, one per image.

    With `class_loss_weight = w > 0` (Glow's `weight_y`), a linear classifier
    on the spatial mean of the top latent predicts the label, and training
    minimises `bits/dim + w * (-log2 q(y | x))`; `class_logits(images)` gives
    its logits.

    Memory: `remat` (None, "step" or "level") checkpoints the levels' steps
    or the levels in training passes: see `MultiScale`. Glow's steps are
    ActNorm, 1x1 convolution and coupling; in the other models each member
    of a level is a step.

    Mixed precision: build with `dtype="mixed_bfloat16"` (or under
    `keras.mixed_precision.set_dtype_policy`): variables stay float32, the
    layers compute in bfloat16, and every log-det, log-density and the loss
    are summed in float32 (`sum_except_batch`, `upcast`).
    """

    context_dtype = "int32"

    def __init__(self, image_shape, levels, n_bits=8, preprocessing="scale", alpha=0.05,
                 num_classes=None, class_loss_weight=0.0, seed=None, prior_scale_bound=None,
                 remat=None, **kwargs):
        self.remat = remat
        self.prior_scale_bound = (None if prior_scale_bound is None
                                  else float(prior_scale_bound))
        self.image_shape = tuple(int(d) for d in image_shape)
        if len(self.image_shape) != 3 or self.image_shape[-1] not in (1, 3):
            raise ValueError("`image_shape` must be (height, width, 1 or 3); got "
                             f"{image_shape}.")
        self.num_levels = int(levels)
        self.n_bits = int(n_bits)
        self.preprocessing = preprocessing
        self.alpha = float(alpha)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_loss_weight = float(class_loss_weight)
        # The random rotations and shuffles are drawn from `seed`, which the
        # config keeps, so that a reloaded model rebuilds the same ones.
        self.seed = int(np.random.randint(2**31) if seed is None else seed)
        dtype = kwargs.get("dtype")
        if preprocessing == "scale":
            preprocess = Rescale(n_bits, dtype=dtype, name="rescale")
        elif preprocessing == "logit":
            preprocess = LogitTransform(alpha, n_bits, dtype=dtype, name="logit")
        else:
            raise ValueError(f"`preprocessing` must be 'scale' or 'logit'; got "
                             f"{preprocessing!r}.")
        shape, levels = (None, *self.image_shape), []
        for index in range(self.num_levels):
            levels.append(self._make_level(index, shape[1:], index == self.num_levels - 1,
                                           dtype))
            shape = split_shape(tuple(levels[-1].compute_output_shape(shape)))[1]
        multiscale = MultiScale(
            levels,
            [SplitPrior(self.prior_scale_bound, dtype=dtype, name=f"split_prior_{index}")
             for index in range(self.num_levels - 1)],
            TopPrior(num_classes, class_loss_weight, dtype=dtype, name="top_prior"),
            remat=remat, dtype=dtype, name="multiscale")
        bijector = Chain([Dequantize(n_bits, seed=seed, dtype=dtype, name="dequantize"),
                          preprocess, multiscale], dtype=dtype, name="chain")
        size = math.prod(self.image_shape)
        super().__init__(bijector, self.image_shape,
                         base=StandardNormal((size,), dtype=dtype, name="base"),
                         context_shape=None if num_classes is None else (), **kwargs)

    def _make_level(self, index, input_shape, last, dtype):
        """The bijector of level `index` (input shape without batch)."""
        raise NotImplementedError

    def _normalized_blocks(self, index, input_shape, last, make_block, num_blocks, dtype):
        """`Chain([ActNorm, make_block(k)] for k < num_blocks, then a squeeze
        unless `last`)`: a level of the image FFJORD and Residual Flow."""
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

    # -- the parts of the bijector ----------------------------------------
    @property
    def dequantize(self):
        """The `Dequantize` step: pixels to [0, 2^n_bits)."""
        return self.bijector.bijectors[0]

    @property
    def multiscale(self):
        """The `MultiScale` bijector: levels, split priors and top prior."""
        return self.bijector.bijectors[-1]

    def continuous_log_prob(self, y, context=None, training=False):
        """log p(y) of continuous values y on the dequantized scale [0, 2^n_bits)
        (a tensor, differentiable in y): `log_prob` without its dequantization,
        which maps pixels to bins and so has no gradient."""
        preprocess, multiscale = self.bijector.bijectors[1:]
        h, total = preprocess.forward(y)
        given = {} if self.num_classes is None else {"context": context}
        z, log_det = multiscale.forward(h, training=training, **given)
        return self.base.log_prob(z) + total + log_det

    def class_logits(self, images):
        """Logits of q(y | x) from the classifier on the top latent."""
        x, _ = self._validate(images, None)
        dequantize, preprocess, multiscale = self.bijector.bijectors
        h, _ = preprocess.forward(dequantize.forward(x)[0])
        return multiscale.top_prior.logits(multiscale.factor_out(h)[1])

    # -- the public API ---------------------------------------------------
    def _validate(self, x, context, name="x", shape=None, finite=True):
        if finite and shape is None and is_concrete(x):
            check_pixels(to_numpy(x))
        if finite and context is not None and self.num_classes and is_concrete(context):
            check_labels(to_numpy(context), self.num_classes)
        x, context = super()._validate(x, context, name, shape, finite)
        if context is not None and tuple(context.shape) != (x.shape[0],):
            raise ValueError(f"`context` must hold one class label per image, shape "
                             f"({x.shape[0]},); got {tuple(context.shape)}.")
        return x, context

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
        if num_samples is None:
            return super().bits_per_dim(images, context, batch_size=batch_size)
        x, context = self._validate(images, context)
        if isinstance(num_samples, bool) or not isinstance(
                num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"`num_samples` must be None or a positive integer; got "
                             f"{num_samples!r}.")
        generator = seed_generator(seed)

        def log_prob(x, context):
            q = self.dequantize.discretize(x)
            draws = ops.stack([
                self.continuous_log_prob(q + keras.random.uniform(
                    ops.shape(q), seed=generator, dtype=q.dtype), context)
                for _ in range(int(num_samples))])
            return ops.logsumexp(draws, axis=0) - math.log(int(num_samples))

        log_p = batched(log_prob, [x, context], batch_size)
        return metrics.bits_per_dim(log_p, math.prod(self.image_shape))

    def sample(self, n, context=None, temperature=1.0, seed=None, batch_size=BATCH_SIZE):
        """`n` images in [0, 255]; every latent drawn at `temperature`.

        For a class-conditional flow `context` is one label per sample, or
        one label for all of them.
        """
        if context is not None and is_concrete(context):
            context = to_numpy(context)
            if context.ndim == 0:
                context = np.broadcast_to(context, (n,))
            if self.num_classes is not None:
                check_labels(context, self.num_classes)
        if self.num_classes is not None and context is None:
            self._context(None)
        return super().sample(n, context, temperature, seed, batch_size)

    def sample_and_log_prob(self, n, context=None, temperature=1.0, seed=None,
                            batch_size=BATCH_SIZE):
        """`n` images and their `log_prob`: the density of the integer pixels
        (bin midpoints), scored by a forward pass, since rounding to pixels
        leaves no change of variables to invert."""
        images = self.sample(n, context, temperature, seed, batch_size)
        if context is not None and is_concrete(context) and np.ndim(to_numpy(context)) == 0:
            context = np.broadcast_to(to_numpy(context), (n,))
        return images, self.log_prob(images, context, batch_size=batch_size)

    def get_config(self):
        config = super().get_config()
        for key in ("bijector", "base", "event_shape", "context_shape"):
            del config[key]
        config.update(image_shape=list(self.image_shape), levels=self.num_levels,
                      n_bits=self.n_bits, preprocessing=self.preprocessing,
                      alpha=self.alpha, num_classes=self.num_classes,
                      class_loss_weight=self.class_loss_weight, seed=self.seed,
                      prior_scale_bound=self.prior_scale_bound, remat=self.remat)
        return config
