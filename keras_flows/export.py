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
a dict. `given` below is nothing for an unconditional flow and `context` for
a conditional one: float32 `(batch, *context_shape)`, or int32 `(batch,)` for
a class-conditional image flow (`flow.context_dtype`). Every flow, vectors
and images alike, has the same signatures:

- `log_prob(x, *given)` -> `{"log_prob": (batch,)}`: log p(x | given) in
  nats, as `flow.log_prob`; for an image flow, of the pixel values in
  [0, 256) at their bin midpoints.
- `bits_per_dim(x, *given)` -> `{"bits_per_dim": (batch,)}`:
  -log p(x) / (D log 2), as `flow.bits_per_dim` (for images, at the bin
  midpoints).
- `encode(x, *given)` -> `{"z": (batch, *latent_shape)}`: the latent `f(x)`,
  as `flow.encode` (for a multi-scale image flow, one vector of the image's
  size: `flow.multiscale.unflatten` splits it per level).
- `decode(z, *given)` -> `{"x": ...}`: the inverse `f^-1(z)`, as
  `flow.decode`; images come back as pixel values in [0, 255].
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

`export_onnx(flow, directory)` (or `flow.export(directory, format="onnx")`)
converts the deterministic signatures with tf2onnx into one ONNX model each,
`DIRECTORY/<signature>.onnx`, with the same input and output names:
`log_prob`, `bits_per_dim`, `encode` and `decode`. `sample` is
left out: tf2onnx cannot convert TensorFlow's counter-based random ops. Draw
from the SavedModel, or for a flow whose base is a standard normal, decode
`temperature * z` with z ~ N(0, I).

    session = onnxruntime.InferenceSession("exported/log_prob.onnx")
    session.run(None, {"x": x})[0]
"""

import inspect
import json
import os
import subprocess
import sys
import tempfile

import keras

ONNX_OPSET = 17
FORMATS = ("tf_saved_model", "onnx")   # what `Flow.export` and the command take


def export_saved_model(flow, filepath, verbose=True):
    """Writes `flow` to `filepath` as a TensorFlow SavedModel (see the module
    docstring for its signatures), from any backend. Prints the signatures
    when `verbose`."""
    _export(flow, filepath, "tf_saved_model", verbose)


def export_onnx(flow, directory, verbose=True):
    """Writes `flow`'s deterministic signatures to `directory` as ONNX models,
    one `<signature>.onnx` each (see the module docstring), from any backend.
    Needs `tf2onnx`; running the models needs `onnxruntime`."""
    try:
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise ImportError("ONNX export converts the TensorFlow graph with tf2onnx: "
                          "`pip install tf2onnx` (and onnxruntime to run the models)."
                          ) from error
    _export(flow, directory, "onnx", verbose)


def _export(flow, filepath, format, verbose):
    if not (isinstance(flow, keras.Model) and hasattr(flow, "bijector")
            and hasattr(flow, "base")):
        raise TypeError(f"Export takes a keras_flows `Flow`; got {type(flow).__name__}.")
    filepath = os.fspath(filepath)
    if keras.backend.backend() == "tensorflow":
        (_write if format == "tf_saved_model" else _write_onnx)(flow, filepath, verbose)
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
                   os.path.abspath(filepath), "--format", format]
        run = subprocess.run(command + ([] if verbose else ["--quiet"]), env=env,
                             capture_output=True, text=True)
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


def _write_onnx(flow, directory, verbose):
    import logging

    import onnx
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)   # it logs recoverable failures
    functions, _ = _signatures(flow)
    handlers = _onnx_handlers()
    os.makedirs(directory, exist_ok=True)
    for name in ("log_prob", "bits_per_dim", "encode", "decode"):
        if name not in functions:
            continue
        path = os.path.join(directory, f"{name}.onnx")
        model, _ = tf2onnx.convert.from_function(
            functions[name], functions[name].input_signature, opset=ONNX_OPSET,
            custom_op_handlers=handlers)
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as error:
            raise ValueError(f"tf2onnx could not convert `{name}` of this "
                             f"{type(flow).__name__} to ONNX: {error}") from None
        onnx.save(model, path)
        if verbose:
            print(f"wrote {path}")


def _onnx_handlers():
    """Conversions of the TensorFlow ops that tf2onnx lacks: Log1p as log(1 + x)
    and Expm1 as exp(x) - 1 (ONNX has neither; less exact near x = 0)."""
    import numpy as np
    from tf2onnx import utils

    def one(ctx, node):
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        return ctx.make_const(utils.make_name("one"), np.array(1, dtype)).output[0]

    def log1p(ctx, node, name, args):
        shifted = ctx.make_node("Add", [node.input[0], one(ctx, node)]).output[0]
        ctx.replace_inputs(node, [shifted])
        node.type = "Log"

    def expm1(ctx, node, name, args):
        node.type = "Exp"
        ctx.insert_new_node_on_output("Sub", node.output[0],
                                      inputs=[node.output[0], one(ctx, node)])

    return {"Log1p": (log1p, []), "Expm1": (expm1, [])}


def _describe(spec):
    dims = ", ".join("None" if d is None else str(d) for d in spec.shape)
    return f"{spec.dtype.name}[{dims}]"


def _signatures(flow):
    """({name: tf.function} of the signatures, whether `sample` goes row by row)."""
    import tensorflow as tf

    float32 = tf.float32
    data = tf.TensorSpec((None, *flow.event_shape), float32, name="x")
    given = [] if flow.context_shape is None else [
        tf.TensorSpec((None, *flow.context_shape), flow.context_dtype, "context")]

    def out(value):
        return tf.cast(value, float32)

    def log_prob(x, *given):
        return {"log_prob": out(flow.log_prob(x, *given))}

    def bits_per_dim(x, *given):
        return {"bits_per_dim": out(flow.bits_per_dim(x, *given))}

    def encode(x, *given):
        return {"z": out(flow.encode(x, *given))}

    def decode(z, *given):
        return {"x": out(flow.decode(z, *given))}

    latent = tf.TensorSpec((None, *flow.base.event_shape), float32, "z")
    scalars = [tf.TensorSpec((), tf.int32, "n"), tf.TensorSpec((), float32, "temperature"),
               tf.TensorSpec((), tf.int64, "seed")]
    functions = {"log_prob": _function(log_prob, [data, *given]),
                 "bits_per_dim": _function(bits_per_dim, [data, *given]),
                 "encode": _function(encode, [data, *given]),
                 "decode": _function(decode, [latent, *given])}
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
    """`python -m keras_flows.export CONFIG WEIGHTS OUT [--format F] [--quiet]`."""
    import argparse

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("Run this with KERAS_BACKEND=tensorflow; the backend is "
                         f"{keras.backend.backend()!r}.")
    parser = argparse.ArgumentParser(prog="python -m keras_flows.export")
    parser.add_argument("config")
    parser.add_argument("weights")
    parser.add_argument("out")
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    import keras_flows  # noqa: F401  (registers the classes the config names)

    with open(args.config) as file:
        flow = keras.saving.deserialize_keras_object(json.load(file))
    flow.load_weights(args.weights)
    _export(flow, args.out, args.format, verbose=not args.quiet)


if __name__ == "__main__":
    _main(sys.argv[1:])
