"""`Flow`: a normalizing flow as a `keras.Model` trained by maximum likelihood."""

import math
import os

import numpy as np
import keras
from keras import ops

from keras_flows import metrics
from keras_flows.bijectors.base import Bijector
from keras_flows.distribute import average_gradients, loss_share
from keras_flows.distributions import Distribution, StandardNormal
from keras_flows.utils.checks import check_event, check_sample_args
from keras_flows.utils.inference import BATCH_SIZE, batched
from keras_flows.utils.math import upcast

VALIDATION_ROWS = 4096  # rows of a `fit`/`evaluate`/`predict` array checked at a time


class _classproperty:
    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


@keras.saving.register_keras_serializable(package="keras_flows")
class Flow(keras.Model):
    """A normalizing flow: a bijector from data to latent and a base density.

    log p(x | c) = log p_base(f(x; c)) + log|det df/dx|

    Calling the model, and `predict`, return `log p(x)` per example; `fit` and
    `evaluate` minimise and report the mean negative log-likelihood (nats),
    so `compile` needs no loss. Inputs are the data `x`, or for a conditional
    flow the dict `{"x": x, "context": c}` (a tuple `(x, c)` works too).

    Args:
        bijector: a `Bijector` mapping data to latent (a `Chain` for a stack).
        event_shape: shape of one data point, e.g. `(2,)`.
        base: base `Distribution` on the latent; `StandardNormal` by default.
        context_shape: shape of one context row for a conditional flow.

    Example:
        >>> flow = Flow(Chain([AffineCoupling(), Reverse(), AffineCoupling()]),
        ...             event_shape=(2,))
        >>> flow.compile(optimizer="adam"); flow.fit(x, epochs=10)
        >>> flow.sample(100, seed=0)
    """

    #: The dtype of `context` in exported signatures (class labels: "int32").
    context_dtype = "float32"

    def __init__(self, bijector, event_shape, base=None, context_shape=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(bijector, Bijector):
            bijector = keras.saving.deserialize_keras_object(bijector)
        self.bijector = bijector
        self.event_shape = tuple(int(d) for d in event_shape)
        self.context_shape = None if context_shape is None else tuple(context_shape)
        latent_shape = tuple(bijector.compute_output_shape((None, *self.event_shape))[1:])
        if base is None:
            base = StandardNormal(latent_shape, dtype=self.dtype_policy)
        elif not isinstance(base, Distribution):
            base = keras.saving.deserialize_keras_object(base)
        if tuple(base.event_shape) != latent_shape:
            raise ValueError(
                f"The base distribution's event shape {tuple(base.event_shape)} does "
                f"not match the bijector's latent shape {latent_shape}."
            )
        self.base = base
        self.build((None, *self.event_shape))

    def build(self, input_shape):
        # A concrete pass on two zero rows creates every weight, so that the
        # model can be saved, loaded and summarised before it sees data.
        x = ops.zeros((2, *self.event_shape), dtype=self.compute_dtype)
        context = None if self.context_shape is None else ops.zeros(
            (2, *self.context_shape), dtype=self.compute_dtype)
        self._log_prob(x, context)
        self.built = True

    # -- the math ---------------------------------------------------------
    def _log_prob(self, x, context=None, training=False):
        z, log_det = self.bijector.forward(x, **self._context(context), training=training)
        return self.base.log_prob(z) + log_det

    def _context(self, context):
        if self.context_shape is None:
            if context is not None:
                raise ValueError("This flow is not conditional: build it with "
                                 "`context_shape=` to pass a `context`.")
            return {}
        if context is None:
            expected = ("one integer class label per example" if "int" in self.context_dtype
                        else f"shape (batch, {', '.join(map(str, self.context_shape))})")
            raise ValueError(f"This flow is conditional: pass `context` with {expected}.")
        return {"context": context}

    def _unpack(self, inputs):
        if isinstance(inputs, dict):
            return inputs["x"], inputs.get("context")
        if isinstance(inputs, (tuple, list)):
            return inputs[0], inputs[1] if len(inputs) > 1 else None
        return inputs, None

    def call(self, inputs, training=False):
        x, context = self._unpack(inputs)
        x, context = self._validate(x, context, finite=False)
        return self._log_prob(x, context, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = self._data_loss(upcast(-y_pred), sample_weight)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        # Under tf.distribute each replica returns its share (see `loss_share`).
        return loss_share(loss)

    def train_step(self, *args):
        # PyTorch processes under distribute.scope("ddp"): gradients averaged over them.
        average_gradients(self)
        return super().train_step(*args)

    def _data_loss(self, nll, sample_weight):
        """The mean negative log-likelihood (nats), weighted if asked."""
        if sample_weight is None:
            return ops.mean(nll)
        w = ops.cast(ops.reshape(sample_weight, (-1,)), nll.dtype)
        return ops.sum(w * nll) / ops.maximum(ops.sum(w), 1e-12)

    # -- the public API ---------------------------------------------------
    def _validate(self, x, context, name="x", shape=None, finite=True):
        x = ops.convert_to_tensor(x, dtype=self.compute_dtype)
        check_event(x, shape or self.event_shape, name, finite=finite)
        if context is not None:
            if self.context_shape is None:
                self._context(context)
            context = ops.convert_to_tensor(context, dtype=self.compute_dtype)
            check_event(context, self.context_shape, "context", finite=finite)
            if x.shape[0] is not None and context.shape[0] not in (None, x.shape[0]):
                raise ValueError(
                    f"`context` has {context.shape[0]} rows but `{name}` has "
                    f"{x.shape[0]}: give one context row per example."
                )
        return x, context

    def log_prob(self, x, context=None, batch_size=BATCH_SIZE):
        """log p(x | context) per example, shape `(batch,)`.

        Like `encode`, `decode` and `sample`, it is inference: computed
        `batch_size` rows at a time, with no gradient graph (the outputs carry
        no gradient on any backend). Calling the model, `flow(x)`, gives the
        same values differentiably, as `fit` uses them.
        """
        x, context = self._validate(x, context)
        return batched(self._log_prob, [x, context], batch_size)

    def bits_per_dim(self, x, context=None, batch_size=BATCH_SIZE):
        """-log p(x | context) / (D log 2) per example, D = prod(event_shape):
        `log_prob` in bits per dimension."""
        return metrics.bits_per_dim(self.log_prob(x, context, batch_size=batch_size),
                                    math.prod(self.event_shape))

    def encode(self, x, context=None, batch_size=BATCH_SIZE):
        """The latent `z = f(x)` of each example."""
        x, context = self._validate(x, context)
        return batched(lambda x, c: self.bijector.forward(x, **self._context(c))[0],
                       [x, context], batch_size)

    def decode(self, z, context=None, batch_size=BATCH_SIZE):
        """The data point `x = f^-1(z)` of each latent."""
        z, context = self._validate(z, context, name="z", shape=self.base.event_shape)
        return batched(lambda z, c: self.bijector.inverse(z, **self._context(c))[0],
                       [z, context], batch_size)

    def sample(self, n, context=None, temperature=1.0, seed=None, batch_size=BATCH_SIZE):
        """Draws `n` samples: z ~ base at `temperature`, then x = f^-1(z).

        `n` is a positive integer and `temperature` a finite number >= 0. For a
        conditional flow `context` holds one row per sample.
        """
        z, context = self._draw(n, context, temperature, seed)
        return self.decode(z, context, batch_size=batch_size)

    def sample_and_log_prob(self, n, context=None, temperature=1.0, seed=None,
                            batch_size=BATCH_SIZE):
        """`n` samples and their log-densities, `(x, log p(x | context))`, in
        one inverse pass: z ~ base at `temperature`, (x, log|det dx/dz|) =
        f^-1(z), and

            log p(x) = log p_base(z) - log|det dx/dz|,

        the model's density (at temperature 1 whatever `temperature`), equal
        to `log_prob(x)` without running f on the samples again.
        """
        z, context = self._draw(n, context, temperature, seed)
        z, context = self._validate(z, context, name="z", shape=self.base.event_shape)

        def invert(z, context):
            x, log_det = self.bijector.inverse(z, **self._context(context))
            return [x, self.base.log_prob(z) - log_det]

        return tuple(batched(invert, [z, context], batch_size))

    def _draw(self, n, context, temperature, seed):
        check_sample_args(n, temperature)
        if context is not None:
            context = ops.convert_to_tensor(context, dtype=self.compute_dtype)
            if context.shape[0] != n:
                raise ValueError(f"`context` has {context.shape[0]} rows; sampling "
                                 f"{n} needs one row per sample.")
        return self.base.sample(n, seed=seed, temperature=temperature), context

    def fit(self, x=None, y=None, *args, **kwargs):
        self._check_data(x)
        validation = kwargs.get("validation_data")
        if validation is not None:
            self._check_data(validation[0] if isinstance(validation, tuple) else validation)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_data(x)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._check_data(x)
        return super().predict(x, *args, **kwargs)

    def _check_data(self, data):
        """Validates what `fit`, `evaluate` or `predict` receive before the
        traced steps, which cannot raise: every row of arrays, the first
        batch of a `tf.data.Dataset` or `keras.utils.PyDataset` (others, such
        as generators, cannot be read ahead and are not checked)."""
        batch = None
        if isinstance(data, keras.utils.PyDataset):
            batch = data[0]
        elif hasattr(data, "take") and hasattr(data, "element_spec"):  # tf.data
            batch = keras.tree.map_structure(np.asarray, next(iter(data.take(1))))
        if isinstance(batch, tuple):
            data = batch[0]  # (x, y) or (x, y, sample_weight), as Keras reads datasets
        elif batch is not None:
            data = batch
        x, context = self._unpack(data)
        if not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
            return
        for start in range(0, x.shape[0] or 0, VALIDATION_ROWS):
            stop = start + VALIDATION_ROWS
            self._validate(x[start:stop], None if context is None else context[start:stop])

    # -- presets and export ----------------------------------------------
    preset_family = None  # the registry names a family; None accepts every preset

    @_classproperty
    def presets(cls):
        """The built-in presets this class loads: name -> metadata."""
        from keras_flows.presets import list_presets

        return list_presets(cls)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **overrides):
        """A model from a built-in preset name, a directory, `hf://` or a URL.

        See `keras_flows.presets.from_preset`.
        """
        from keras_flows.presets import from_preset

        return from_preset(preset, cls=cls, load_weights=load_weights, **overrides)

    def save_to_preset(self, directory, /, **metadata):
        """Writes `config.json`, `model.weights.h5` and `metadata.json`."""
        from keras_flows.presets import save_to_preset

        return save_to_preset(self, directory, **metadata)

    def export(self, filepath, format="tf_saved_model", verbose=True):
        """Writes a TF SavedModel with serving signatures (`format="tf_saved_model"`)
        or a directory of ONNX models (`format="onnx"`), from any backend.

        See `keras_flows.export`.
        """
        from keras_flows.export import FORMATS, export_onnx, export_saved_model

        if format not in FORMATS:
            raise ValueError(f"`format` must be 'tf_saved_model' or 'onnx'; got {format!r}.")
        parent = os.path.dirname(os.path.abspath(filepath))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as err:
            raise OSError(f"Cannot export to {filepath}: cannot create {parent} "
                          f"({err.strerror}).") from err
        if not os.access(parent, os.W_OK) or os.path.isfile(filepath):
            problem = "is a file" if os.path.isfile(filepath) else f"{parent} is not writable"
            raise OSError(f"Cannot export to {filepath}: {problem}; give a directory path "
                          "that can be written.")
        writer = export_saved_model if format == "tf_saved_model" else export_onnx
        return writer(self, filepath, verbose=verbose)

    def get_config(self):
        config = super().get_config()
        config.update(
            bijector=keras.saving.serialize_keras_object(self.bijector),
            base=keras.saving.serialize_keras_object(self.base),
            event_shape=list(self.event_shape),
            context_shape=None if self.context_shape is None else list(self.context_shape),
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
