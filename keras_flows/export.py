"""Exports a flow as a TensorFlow SavedModel with serving signatures.

`export_saved_model(flow, filepath)` (or `flow.export(filepath)`) works from
the TensorFlow, JAX and PyTorch backends alike: on TensorFlow it traces the
flow's own methods in-process; on the others it writes the flow's config and
weights to a temporary directory and rebuilds and exports the model in a
subprocess running `python -m keras_flows.export CONFIG WEIGHTS OUT` with
`KERAS_BACKEND=tensorflow`. The SavedModel needs only TensorFlow to load:

    model = tf.saved_model.load(path)
    model.log_prob(x=x)["log_prob"]          # or model.signatures["log_prob"](x=x)

Every signature has a batch dimension of None, takes float32 data and returns
a dict. `given` below is nothing for an unconditional flow, `context`
(float32, `(batch, *context_shape)`) for a conditional vector flow, and
`labels` (int32, `(batch,)`) for a class-conditional image flow.

- `log_prob(x, *given)` -> `{"log_prob": (batch,)}`: log p(x | given) in
  nats, as `flow.log_prob`; for an image flow, of the pixel values in
  [0, 256) at their bin midpoints.
- `bits_per_dim(images, *given)` -> `{"bits_per_dim": (batch,)}` (image flows
  only): -log p(x) / (D log 2) at the bin midpoints, as `flow.bits_per_dim`.
- `encode(x, *given)`: the latent `f(x)`, as `flow.encode`; `{"z": ...}` for a
  vector flow, `{"z_0": ..., ..., "z_{L-1}": ...}` for an image flow, one
  latent per level, `z_0` the first factored out (an image flow takes no
  labels here: its latents do not depend on them).
- `decode(z, *given)` (vector flows) or `decode(z_0, ..., z_{L-1})` (image
  flows) -> `{"x": ...}`: the inverse `f^-1(z)`, as `flow.decode`; images come
  back as pixel values in [0, 255].
- `sample(n, temperature, seed, *given)` -> `{"x": (n, *event_shape)}`: `n`
  draws of `flow.sample` (int32 `n`, float32 `temperature`, int64 `seed`; the
  conditioning inputs hold one row per sample, so `n` must equal their
  length). The same seed gives the same samples.

Seeds: `keras.random` takes only ints or `SeedGenerator`s, so `sample` hands
`flow.sample` a `SeedGenerator` whose k-th draw is `[seed, k]` computed from
the `seed` tensor (no variable, so concurrent calls do not share state). That
is the sequence of `keras.random.SeedGenerator(seed)`, so on TensorFlow the
exported sampler returns exactly `flow.sample(n, seed=seed)` whenever
`flow.sample` traces with a tensor `n` (unconditional image flows). Where it
does not (the base distributions need a Python int `n`), each sample is drawn
as `flow.sample(1, ...)` inside a `tf.map_fn`, with the seed of row i folded
from `(seed, i)`.
"""

import inspect
import json
import os
import subprocess
import sys
import tempfile

import keras


def export_saved_model(flow, filepath, verbose=True):
    """Writes `flow` to `filepath` as a TensorFlow SavedModel (see the module
    docstring for its signatures), from any backend. Prints the signatures
    when `verbose`."""
    from keras_flows.models.flow import Flow

    if not isinstance(flow, Flow):
        raise TypeError(f"`export_saved_model` exports a keras_flows `Flow`; got "
                        f"{type(flow).__name__}.")
    filepath = os.fspath(filepath)
    if keras.backend.backend() == "tensorflow":
        _write(flow, filepath, verbose)
        return
    with tempfile.TemporaryDirectory() as tmp:
        config, weights = os.path.join(tmp, "config.json"), os.path.join(tmp, "model.weights.h5")
        with open(config, "w") as file:
            json.dump(keras.saving.serialize_keras_object(flow), file)
        flow.save_weights(weights)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, KERAS_BACKEND="tensorflow",
                   PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, "-m", "keras_flows.export", config, weights,
                   os.path.abspath(filepath)] + ([] if verbose else ["--quiet"])
        run = subprocess.run(command, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(
            f"Exporting from the {keras.backend.backend()} backend rebuilds the model on "
            f"TensorFlow in a subprocess, which failed (exit code {run.returncode}). "
            "Custom layers or distributions must be registered in a module that the "
            f"subprocess imports. Its error output:\n{run.stderr[-5000:]}")
    if verbose:
        print(run.stdout, end="")


def _write(flow, filepath, verbose):
    import tensorflow as tf

    functions, row_by_row = _signatures(flow)
    module = tf.Module()
    module.flow_variables = list(flow.variables)   # the weights the SavedModel holds
    for name, function in functions.items():
        setattr(module, name, function)
    concrete = {name: f.get_concrete_function() for name, f in functions.items()}
    tf.saved_model.save(module, filepath, signatures=concrete)
    if verbose:
        print(f"Saved {type(flow).__name__} to {filepath} with signatures:")
        for name, function in concrete.items():
            inputs = ", ".join(f"{s.name}: {_describe(s)}"
                               for s in function.structured_input_signature[0])
            outputs = ", ".join(f"{k}: {_describe(v)}"
                                for k, v in function.structured_outputs.items())
            print(f"  {name}({inputs}) -> {{{outputs}}}")
        if row_by_row:
            print("  (sample draws one row at a time: flow.sample needs a Python int n)")


def _describe(spec):
    dims = ", ".join("None" if d is None else str(d) for d in spec.shape)
    return f"{spec.dtype.name}[{dims}]"


def _signatures(flow):
    """({name: tf.function} of the signatures, whether `sample` goes row by row)."""
    import tensorflow as tf
    from keras_flows.models.image_flow import ImageFlow

    image = isinstance(flow, ImageFlow)
    float32 = tf.float32
    data = tf.TensorSpec((None, *flow.event_shape), float32, name="x")
    if image:
        given = [] if flow.num_classes is None else [tf.TensorSpec((None,), tf.int32, "labels")]
    else:
        given = [] if flow.context_shape is None else [
            tf.TensorSpec((None, *flow.context_shape), float32, "context")]

    def out(value):
        return tf.cast(value, float32)

    def log_prob(x, *given):
        return {"log_prob": out(flow.log_prob(x, *given))}

    functions = {"log_prob": _function(log_prob, [data, *given])}
    scalars = [tf.TensorSpec((), tf.int32, "n"), tf.TensorSpec((), float32, "temperature"),
               tf.TensorSpec((), tf.int64, "seed")]
    if image:
        def bits_per_dim(images, *given):
            return {"bits_per_dim": out(flow.bits_per_dim(images, *given))}

        def encode(x):
            # The latents do not depend on the label; `encode` asks for one.
            labels = [] if not given else [tf.zeros(tf.shape(x)[:1], tf.int32)]
            return {f"z_{i}": out(z) for i, z in enumerate(flow.encode(x, *labels))}

        def decode(*latents):
            return {"x": out(flow.decode(list(latents)))}

        probe = keras.ops.zeros((1, *flow.event_shape))
        labels = [] if not given else [keras.ops.zeros((1,), "int32")]
        latents = [tf.TensorSpec((None, *z.shape[1:]), float32, f"z_{i}")
                   for i, z in enumerate(flow.encode(probe, *labels))]
        functions.update(
            bits_per_dim=_function(bits_per_dim, [tf.TensorSpec.from_spec(data, "images"),
                                                  *given]),
            encode=_function(encode, [data]),
            decode=_function(decode, latents))
    else:
        def encode(x, *given):
            return {"z": out(flow.encode(x, *given))}

        def decode(z, *given):
            return {"x": out(flow.decode(z, *given))}

        latent = tf.TensorSpec((None, *flow.base.event_shape), float32, "z")
        functions.update(encode=_function(encode, [data, *given]),
                         decode=_function(decode, [latent, *given]))
    functions["sample"], row_by_row = _sampler(flow, scalars + given)
    return functions, row_by_row


def _function(fn, specs):
    """`tf.function(fn)` over `specs`, its parameters named after them."""
    import tensorflow as tf

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    fn.__signature__ = inspect.Signature([inspect.Parameter(s.name, kind) for s in specs])
    return tf.function(fn, input_signature=specs, autograph=False)


class _TensorSeed(keras.random.SeedGenerator):
    """A `SeedGenerator` whose k-th draw is `key + [0, k]` for an int64 tensor
    `key` of shape (2,): `keras.random.SeedGenerator(s)`'s sequence for
    `key = [s, 0]`, with no variable. Only `next` is implemented: it is all
    that `keras.random` calls."""

    def __init__(self, key):   # no super().__init__: that makes a state variable
        self.key, self.count = key, 0

    def next(self, ordered=True):
        import tensorflow as tf

        self.count += 1
        return self.key + tf.constant([0, self.count - 1], self.key.dtype)


def _sampler(flow, specs):
    import tensorflow as tf

    def sample(n, temperature, seed, *given):
        checks = [tf.debugging.assert_non_negative(n, message="`n` must be >= 0.")]
        checks += [tf.debugging.assert_equal(
            n, tf.shape(c)[0], message=f"`n` must equal the number of rows of "
                                       f"`{specs[3].name}`: one per sample.") for c in given]
        with tf.control_dependencies(checks):
            n = tf.identity(n)
        temperature = tf.cast(temperature, flow.compute_dtype)
        key = tf.stack([seed, tf.zeros((), tf.int64)])
        draw = batched if batch_ok else one_by_one
        return {"x": tf.cast(draw(n, temperature, key, given), tf.float32)}

    def batched(n, temperature, key, given):
        return flow.sample(n, *given, temperature=temperature, seed=_TensorSeed(key))

    def one_by_one(n, temperature, key, given):
        def row(i):
            context = [c[i][None] for c in given]
            seed = _TensorSeed(tf.random.experimental.stateless_fold_in(key, i))
            return flow.sample(1, *context, temperature=temperature, seed=seed)[0]

        return tf.map_fn(row, tf.range(n), fn_output_signature=tf.TensorSpec(
            flow.event_shape, flow.compute_dtype))

    # `flow.sample` may need a Python int `n` (the base distributions do):
    # then trace the row-by-row sampler instead.
    batch_ok = True
    function = _function(sample, specs)
    try:
        function.get_concrete_function()
    except (TypeError, ValueError):
        batch_ok = False
        function = _function(sample, specs)
        function.get_concrete_function()
    return function, not batch_ok


def _main(argv):
    """`python -m keras_flows.export CONFIG WEIGHTS OUT [--quiet]`."""
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("Run this with KERAS_BACKEND=tensorflow; the backend is "
                         f"{keras.backend.backend()!r}.")
    if len(argv) not in (3, 4) or argv[3:] not in ([], ["--quiet"]):
        raise SystemExit("usage: python -m keras_flows.export CONFIG.json WEIGHTS.weights.h5 "
                         "OUT [--quiet]")
    import keras_flows  # noqa: F401  (registers the classes the config names)

    with open(argv[0]) as file:
        flow = keras.saving.deserialize_keras_object(json.load(file))
    flow.load_weights(argv[1])
    export_saved_model(flow, argv[2], verbose=argv[3:] != ["--quiet"])


if __name__ == "__main__":
    _main(sys.argv[1:])
