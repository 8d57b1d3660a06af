"""Inpainting: the missing values of an input completed under a flow's density.

    filled = keras_flows.inpaint(flow, images, mask, steps=300, seed=0)
    keras_flows.inpainting.save_inpainting_grid(images, mask, filled, "inpaint.png")
"""

import math

import numpy as np
import keras
from keras import ops

from keras_flows.utils.checks import check_pixels, to_numpy
from keras_flows.utils.images import save_image_grid

__all__ = ["inpaint", "save_inpainting_grid", "METHODS"]

METHODS = ("map", "langevin")


class _Bounds(keras.constraints.Constraint):
    def __init__(self, low, high):
        self.low, self.high = low, high

    def __call__(self, w):
        return ops.clip(w, self.low, self.high)


class _Completion(keras.Model):
    """A model whose only weights are the values being completed.

    Calling it on `(observed, mask)` gives log p(where(mask, values,
    observed)) per row; `train_on_batch` takes one optimizer step on the
    loss -sum log p (each row's gradient is its own), minus
    (2 / sqrt(eps)) sum(xi * values) for Langevin, so that an SGD step of
    rate eps / 2 is values + (eps / 2) grad log p + sqrt(eps) xi. Not saved:
    it lives for one `inpaint` call.
    """

    def __init__(self, log_prob, init, bounds, noise, seed, **kwargs):
        super().__init__(**kwargs)
        if isinstance(log_prob, keras.layers.Layer):
            raise TypeError("Pass a function, not a layer: a layer's weights would be trained.")
        self.log_prob_fn = log_prob  # a function: the flow's weights stay untracked
        self.noise = noise
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.values = self.add_weight(
            shape=init.shape, initializer=keras.initializers.Constant(init), name="values",
            constraint=None if bounds is None else _Bounds(*bounds))

    def call(self, inputs):
        observed, mask = inputs
        values = ops.cast(self.values, observed.dtype)
        return self.log_prob_fn(ops.where(mask > 0, values, observed))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = -ops.sum(y_pred)
        if self.noise:
            xi = keras.random.normal(ops.shape(self.values), seed=self.seed_generator,
                                     dtype=self.values.dtype)
            loss = loss - self.noise * ops.sum(ops.stop_gradient(xi) * self.values)
        return loss


def inpaint(flow, images, mask, steps=300, seed=0, method="map", step_size=None):
    """Completes the missing values (mask = 1) of each input under the flow.

    The observed values are kept exactly; the missing ones, x_m, are moved
    towards high density of the completed input x = (x_o, x_m):

    - "map": gradient ascent on log p(x_o, x_m) over x_m with Adam, learning
      rate `step_size` cosine-decayed to 1% of it over `steps`: a mode of the
      conditional p(x_m | x_o) (for a Gaussian, its mean).
    - "langevin": `steps` of unadjusted Langevin dynamics
      x_m <- x_m + (eps / 2) d log p / dx_m + sqrt(eps) xi, xi ~ N(0, I),
      eps = `step_size`: an approximate sample from p(x_m | x_o)
      (Roberts & Tweedie 1996), biased by O(eps).

    For an `ImageFlow`, the density is the flow's continuous density on the
    dequantized scale y in [0, 2^n_bits) (its `log_prob` at bin midpoints
    floors the pixels and has no gradient); the missing y stay in that
    interval, and the returned pixels are the bins they end in,
    floor(y) * 2^(8 - n_bits), as `decode` gives them. Missing values start
    at the mean of the image's observed values in each channel (the middle
    of the range if none is observed) plus Gaussian noise of standard
    deviation 2^n_bits / 64 (vectors: 0.1 times the observed values'
    standard deviation, or 0.1), drawn from `seed`, which also seeds the
    Langevin noise.

    The steps are optimizer steps of a small `keras.Model` whose weights are
    the missing values (`train_on_batch`, compiled as Keras compiles
    training), so they run on every backend.

    Args:
        flow: a `Flow` or `ImageFlow`, not conditional.
        images: inputs `(N, *event_shape)`; for image flows pixel values in
            [0, 256).
        mask: 1 (or True) where a value is missing, 0 where observed; the
            inputs' shape, or broadcastable to it (e.g. `(N, H, W, 1)` or
            `(H, W)` for every image).
        steps: number of steps, a positive integer.
        seed: integer seed of the initial noise and the Langevin noise.
        method: "map" or "langevin".
        step_size: Adam's learning rate ("map"; default 2^n_bits / 64 for
            image flows, 0.1 for vectors) or eps ("langevin"; default
            (2^n_bits / 256)^2 / 4 for image flows, 1e-3 for vectors).

    Returns:
        The completed inputs as a numpy array of the inputs' shape (float).

    References: Kingma & Dhariwal 2018, "Glow", arXiv:1807.03039 (inpainting
    by likelihood); Welling & Teh 2011, "Bayesian Learning via Stochastic
    Gradient Langevin Dynamics".
    """
    from keras_flows.models.image_flow import ImageFlow

    if method not in METHODS:
        raise ValueError(f"`method` must be 'map' or 'langevin'; got {method!r}.")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer; got {steps!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer; got {seed!r}.")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"`step_size` must be a positive number; got {step_size!r}.")
    if getattr(flow, "context_shape", None) is not None:
        raise ValueError("inpaint completes inputs of unconditional flows; this flow takes "
                         "a `context`.")
    image_flow = isinstance(flow, ImageFlow)
    x = np.asarray(to_numpy(images), dtype="float64")
    shape = tuple(flow.event_shape)
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape or len(x) == 0:
        raise ValueError(f"`images` must have shape (N, {', '.join(map(str, shape))}) with "
                         f"N >= 1; got {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("`images` holds non-finite values.")
    m = np.asarray(to_numpy(mask))
    if not np.all((m == 0) | (m == 1)):
        raise ValueError("`mask` must hold only 0 (observed) and 1 (missing).")
    try:
        m = np.broadcast_to(m, x.shape).astype(bool)
    except ValueError:
        raise ValueError(f"`mask` of shape {m.shape} does not broadcast to the inputs' "
                         f"shape {x.shape}.") from None

    if image_flow:
        check_pixels(x)
        bins = 2.0 ** flow.n_bits
        observed = flow.dequantize.discretize(x) + 0.5  # numpy in, numpy out
        observed = np.asarray(to_numpy(observed), dtype="float64")
        bounds, jitter = (1e-3, bins - 1e-3), bins / 64.0
        middle = bins / 2.0
        default_step = bins / 64.0 if method == "map" else (bins / 256.0) ** 2 / 4.0
        log_prob = flow.continuous_log_prob
    else:
        observed, bounds = x, None
        middle = 0.0
        std = float(np.std(x[~m])) if np.sum(~m) > 1 else 0.0
        jitter = 0.1 * std if std > 0 else 0.1
        default_step = 0.1 if method == "map" else 1e-3
        log_prob = lambda x: flow(x)  # noqa: E731  (calling the flow: log p, differentiable)
    step_size = float(default_step if step_size is None else step_size)

    # Start: each channel's observed mean (the last axis holds channels or,
    # for vectors, the features, which share one mean per row).
    axes = tuple(range(1, x.ndim - 1)) if image_flow else tuple(range(1, x.ndim))
    counts = np.sum(~m, axis=axes, keepdims=True)
    sums = np.sum(np.where(m, 0.0, observed), axis=axes, keepdims=True)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), middle)
    rng = np.random.default_rng(seed)
    init = np.broadcast_to(means, x.shape) + jitter * rng.standard_normal(x.shape)
    if bounds is not None:
        init = np.clip(init, *bounds)
    init = np.where(m, init, observed)

    dtype = flow.compute_dtype
    if method == "map":
        schedule = keras.optimizers.schedules.CosineDecay(step_size, int(steps), alpha=0.01)
        optimizer, noise = keras.optimizers.Adam(schedule), 0.0
    else:
        optimizer, noise = keras.optimizers.SGD(step_size / 2.0), 2.0 / math.sqrt(step_size)
    model = _Completion(log_prob, init.astype(dtype), bounds, noise, int(seed),
                        dtype=flow.dtype_policy, name="inpainting")
    model.compile(optimizer=optimizer)
    inputs = (observed.astype(dtype), m.astype(dtype))
    for _ in range(int(steps)):
        model.train_on_batch(inputs)
    values = np.asarray(ops.convert_to_numpy(model.values), dtype="float64")
    if image_flow:
        values = np.asarray(to_numpy(flow.dequantize.to_pixels(values)), dtype="float64")
    return np.where(m, values, x)


def save_inpainting_grid(images, mask, completed, path, missing_value=128):
    """Writes a PNG of three rows: the originals, the masked inputs (missing
    pixels shown as `missing_value`) and the completions, one column per
    image. `images` and `completed` are (N, H, W, C) pixels in [0, 256);
    `mask` broadcasts to them (1 = missing). Returns the grid (uint8), as
    `save_image_grid` does."""
    x = np.asarray(to_numpy(images), dtype="float64")
    filled = np.asarray(to_numpy(completed), dtype="float64")
    if x.ndim != 4 or filled.shape != x.shape:
        raise ValueError("`images` and `completed` must both have shape (N, H, W, C); got "
                         f"{x.shape} and {filled.shape}.")
    try:
        m = np.broadcast_to(np.asarray(to_numpy(mask)), x.shape).astype(bool)
    except ValueError:
        raise ValueError(f"`mask` of shape {np.shape(mask)} does not broadcast to the "
                         f"images' shape {x.shape}.") from None
    masked = np.where(m, float(missing_value), x)
    return save_image_grid(np.concatenate([x, masked, filled]), path, nrow=len(x))
