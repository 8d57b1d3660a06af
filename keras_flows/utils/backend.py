"""The little per-backend code keras_flows needs, one branch per backend."""

import contextlib
import functools
import inspect
import weakref

import numpy as np
import keras
from keras import ops


def is_concrete(x):
    """True when `x` holds values now (eager), False while it is being traced.

    `keras.ops` has no form of this: JAX traces with `Tracer`s, TensorFlow
    with graph tensors inside `tf.function`, PyTorch runs eagerly except
    under `torch.compile`.
    """
    if keras.backend.is_keras_tensor(x):
        return False
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.is_tensor(x) or tf.executing_eagerly()
    if backend == "torch":
        import torch

        return not torch.compiler.is_compiling()
    return True


def _torch_compiling():
    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.compiler.is_compiling()


def uniform_like(x, seed):
    """U[0, 1) noise of `x`'s shape and dtype: `keras.random.uniform` with
    the `SeedGenerator` `seed`, except inside `torch.compile`.

    Keras 3.15 draws on PyTorch from a new `torch.Generator` made from the
    seed at every call, and keeps that function out of compilation
    (`torch.compiler.disable`), so every draw splits a `jit_compile=True`
    step in two. Inside `torch.compile` the noise is `torch.rand` on
    PyTorch's global generator instead, which compiles into the graph: such
    steps follow `keras.utils.set_random_seed` (which seeds PyTorch), not
    `seed`.
    """
    if _torch_compiling():
        import torch

        return torch.rand(x.shape, dtype=x.dtype, device=x.device)
    return keras.random.uniform(ops.shape(x), seed=seed, dtype=x.dtype)


def no_grad():
    """A context in which PyTorch's autograd records nothing.

    JAX and TensorFlow record gradients only inside `jax.grad` or a
    `GradientTape`, so there it is a no-op; on PyTorch every op on a tensor
    that requires grad keeps its graph (and its activations) until freed.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def known_true(flag):
    """True when the scalar variable `flag` is known to hold a value > 0.5
    without tracing; False when it holds less, and wherever the value is not
    read.

    Only eager PyTorch reads it, once per write: the read is kept with the
    variable's tensor and its version counter, which every in-place write
    (`assign`) advances, so a loaded or reset flag is read again, and a GPU
    waits for the value only after a write. Elsewhere the answer is False and
    callers keep their traced path, which must not branch on the value."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    value = flag.value
    if torch.compiler.is_compiling() or value.is_meta:
        return False
    seen = _FLAG_READS.get(value)
    if seen is None or seen[0] != value._version:
        seen = (value._version, bool(value.item() > 0.5))
        _FLAG_READS[value] = seen
    return seen[1]


_FLAG_READS = weakref.WeakKeyDictionary()   # tensor -> (version, value > 0.5)


def call_layer(layer, *inputs, training=None):
    """`layer(*inputs, training=training)`, through `layer.call` where that
    computes the same.

    `Layer.__call__` converts the inputs to the layer's input dtype, builds
    the layer, resolves `training`, enters the autocast scope of a
    mixed-precision layer, rematerialises a layer made in a
    `keras.RematScope` and relayouts outputs under a distribution. In
    eager PyTorch that bookkeeping costs about 0.1 ms a call, as much as the
    arithmetic of a small MLP (benchmarks/README.md, "The conditioner's
    call"). When the layer is built, every input already has the layer's
    input dtype, its variables already read in its compute dtype (no scope
    to enter or leave), it was not made in a `RematScope`, no distribution
    is set and there is no activity regularizer, none of it changes the
    result, and `layer.call` runs directly; `training` is passed when
    `call` takes it. Otherwise, and on symbolic inputs, `layer(...)` runs.
    """
    if not (layer.built and layer.activity_regularizer is None
            and keras.distribution.distribution() is None
            and getattr(layer, "_remat_mode", None) is None   # set in a keras.RematScope
            and all(x is None or (not keras.backend.is_keras_tensor(x)
                                  and keras.backend.standardize_dtype(x.dtype)
                                  == layer.input_dtype) for x in inputs)
            and _reads_in_compute_dtype(layer)):
        return layer(*inputs, training=training)
    if _takes_training(type(layer)):
        return layer.call(*inputs, training=training)
    return layer.call(*inputs)


def _reads_in_compute_dtype(layer):
    """Whether the layer's float variables read as its compute dtype now,
    i.e. whether its `__call__` would leave the autocast scope as it is."""
    # No cache inside torch.compile: Dynamo would guard on the cache's keys,
    # which garbage collection can change before the guards are built.
    cached = not _torch_compiling()
    probe = _FLOAT_VARIABLE.get(layer, _UNSEEN) if cached else _UNSEEN
    if probe is _UNSEEN:
        probe = next((v for v in layer.weights
                      if keras.backend.is_float_dtype(v.dtype)), None)
        if cached:
            _FLOAT_VARIABLE[layer] = probe
    if probe is None:
        return True
    return (keras.backend.standardize_dtype(ops.convert_to_tensor(probe).dtype)
            == layer.compute_dtype)


_FLOAT_VARIABLE = weakref.WeakKeyDictionary()   # layer -> its first float variable
_UNSEEN = object()


@functools.cache
def _takes_training(layer_class):
    return "training" in inspect.signature(layer_class.call).parameters


def matmul(a, b):
    """`a @ b` in the inputs' own dtype, float64 included, on every backend.

    With Keras 3.15, `keras.backend.result_type` maps float64 to float32 on
    JAX and PyTorch; PyTorch's `ops.matmul` (and `ops.dot`, `ops.tensordot`)
    casts its operands to that type, so two float64 tensors are multiplied
    in float32. There `torch.matmul` is called directly (after promoting the
    operands to a common dtype, as NumPy would). `ops.einsum` keeps float64
    too, but is measurably slower on PyTorch: about 140 us against 130 us
    for a float64 (512, 64) x (64, 64) product on CPU, 63 us against 47 us in
    float32. JAX's and TensorFlow's `ops.matmul` keep float64.
    """
    if keras.backend.is_keras_tensor(a) or keras.backend.is_keras_tensor(b):
        # Symbolic: Keras' own spec reports float32 for float64 on JAX too.
        return keras.KerasTensor(ops.matmul(a, b).shape, dtype=_promote(a.dtype, b.dtype))
    if keras.backend.backend() != "torch":
        return ops.matmul(a, b)
    import torch

    return torch.matmul(*_torch_operands(a, b))


def linear(x, kernel, bias=None):
    """`x @ kernel + bias` on the last axis, in the operands' own dtype (see
    `matmul`); `kernel` and `bias` may be variables.

    On PyTorch, for a 2-D `x` whose operands share one dtype, this is one
    `torch.addmm` on the variables' tensors. Through `keras.ops` the product
    and the sum are two operations, each with Keras's Python dispatch: with
    `relu` below, an eager MLP conditioner's call takes 120 us against 166
    (benchmarks/README.md, "One addmm a layer").
    """
    if bias is not None and keras.backend.backend() == "torch":
        import torch

        if isinstance(x, torch.Tensor) and x.ndim == 2:
            k = kernel.value if isinstance(kernel, keras.Variable) else kernel
            b = bias.value if isinstance(bias, keras.Variable) else bias
            if x.dtype == k.dtype == b.dtype:
                return torch.addmm(b, x, k)
    y = matmul(x, kernel)
    return y if bias is None else y + ops.convert_to_tensor(bias)


def relu(x):
    """max(x, 0): `keras.activations.relu`, as `torch.relu` on a PyTorch
    tensor (Keras's converts its input twice first: 8 us a call against 4
    for a (512, 64) tensor on one CPU thread)."""
    if keras.backend.backend() == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            return torch.relu(x)
    return keras.activations.relu(x)


def _torch_operands(a, b):
    """`a` and `b` as torch tensors of their common dtype (float64 stays)."""
    import torch

    a, b = ops.convert_to_tensor(a), ops.convert_to_tensor(b)
    if a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    return a, b


def compiled_on_jax(layer, key, fn, *args):
    """`fn(*args)`, for inference with `layer`'s variables; on JAX, with
    concrete arguments, compiled once per `key` and argument shapes.

    JAX runs a `scan` or `while_loop` called eagerly by compiling its body,
    and a body that is a fresh closure at each call (an ODE solve's
    dynamics, say) misses every cache: each call compiles again. Here `fn`
    runs under one `jax.jit` kept per layer and `key`, the layer's variables
    passed in through a `keras.StatelessScope` and the non-trainable values
    it assigns written back afterwards. `key` must name everything `fn`
    depends on other than `args` and the variables: the first `fn` given a
    key is the one compiled. Elsewhere, and while traced (under `jax.grad`
    or `jax.jit`), `fn(*args)` runs as it is.
    """
    leaves = [a for a in keras.tree.flatten(args) if a is not None]
    if keras.backend.backend() != "jax" or not all(is_concrete(a) for a in leaves):
        return fn(*args)
    import jax

    variables = list(layer.variables)
    # Kept on the layer (beside Keras's attribute tracking), so it goes with it.
    cache = layer.__dict__.setdefault("_compiled_on_jax", {})
    if key not in cache:
        def run(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                out = fn(*args)
                return out, [scope.get_current_value(v) for v in variables]

        cache[key] = jax.jit(run)
    out, values = cache[key]([v.value for v in variables], *args)
    for variable, value in zip(variables, values):
        if not variable.trainable:
            variable.assign(value)
    return out


def conv2d(x, kernel, padding="same"):
    """`ops.conv(x, kernel, padding=padding)` for channels-last images
    `(B, H, W, C_in)` and a kernel `(h, w, C_in, C_out)`, stride 1.

    On PyTorch, Keras 3.15's `ops.conv` copies its input twice per call (to
    contiguous NCHW, then back to channels-last memory for oneDNN), and its
    gradient copies twice more: about a tenth of a small Glow's training step
    on CPU. Here the channels-last tensor is viewed as NCHW by a permutation,
    which PyTorch's convolutions take in channels-last memory format as it
    is, and the operands are promoted to a common dtype (float64 stays).
    """
    if keras.backend.backend() != "torch" or keras.backend.is_keras_tensor(x):
        return ops.conv(x, kernel, padding=padding)
    import torch

    x, kernel = _torch_operands(x, kernel)
    y = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), kernel.permute(3, 2, 0, 1),
                                   padding=padding)
    return y.permute(0, 2, 3, 1)


def _promote(*dtypes):
    """The common dtype of `dtypes` as NumPy promotes them (float64 stays)."""
    dtypes = [keras.backend.standardize_dtype(d) for d in dtypes]
    if len(set(dtypes)) == 1:
        return dtypes[0]
    try:
        return np.promote_types(*dtypes).name
    except TypeError:  # bfloat16, which NumPy does not know
        return keras.backend.result_type(*dtypes)


def constant(value, dtype=None):
    """`value` (a NumPy array) as a fixed array that a traced step can use,
    made once (in `build`) even while a function is being traced.

    A layer that keeps a fixed array (a mask, a permutation) makes it once
    and uses it in `call`:
    - PyTorch: a tensor. Converting the NumPy array in `call` breaks the
      graph of `torch.compile` (Dynamo does not trace `ndarray.dtype`).
    - JAX: a concrete array, even inside a trace.
    - TensorFlow: the NumPy array itself, in `dtype`, which each graph that
      uses it embeds as a constant. A tensor made while a graph is traced
      would belong to that graph, and an eager tensor captured by a graph
      becomes an extra input of the ONNX models tf2onnx converts.
    """
    if keras.backend.backend() == "tensorflow":
        dtype = keras.backend.standardize_dtype(dtype or np.asarray(value).dtype)
        if dtype == "bfloat16":
            import ml_dtypes

            dtype = ml_dtypes.bfloat16
        return np.asarray(value).astype(dtype)
    return ops.convert_to_tensor(value, dtype=dtype)


def vjp(f, x, v):
    """`(f(x), v^T df/dx)`: a vector-Jacobian product inside a forward pass.

    `keras.ops` has no autodiff. `x` is one tensor; `v` has the shape of
    `f(x)`, or is a list or tuple of such cotangents, in which case one
    evaluation of `f` serves them all and a list of products comes back (the
    exact trace of a Jacobian needs one per dimension). The graph is kept, so
    the results can themselves be differentiated by an outer gradient (the
    training step's): with respect to `x`, `v`, and whatever `f` closes over
    (a layer's weights).

    - JAX: `jax.vjp`; nested differentiation is native. Several cotangents
      go through one `jax.vmap` of the pullback.
    - TensorFlow: a `tf.GradientTape` watching `x` (eager or inside
      `tf.function`); an enclosing tape records the inner gradient.
    - PyTorch: `torch.autograd.grad(..., create_graph=True)`, under
      `torch.enable_grad()` so that it also works inside `torch.no_grad()`.
      An `x` that already requires grad (it depends on parameters of the
      outer graph) is used as it is, so the outer graph runs through it; one
      that does not (data, a constant) is replaced by a detached leaf copy
      with `requires_grad_()`, so the caller's tensor is never modified. If
      gradients were disabled on entry, the results are detached: nothing is
      kept that no one will differentiate. Under `torch.compile` (a
      `jit_compile=True` step) it runs outside the compiled graph, since
      aot_autograd has no double backward.

    Where `f(x)` does not depend on `x`, the product is zeros.
    """
    many = isinstance(v, (list, tuple))
    vs = list(v) if many else [v]
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        y, pullback = jax.vjp(f, x)
        if len(vs) == 1:
            out = [pullback(ops.cast(vs[0], y.dtype))[0]]
        else:  # one vectorized pullback instead of len(vs) op-by-op ones
            stacked = ops.cast(ops.stack(vs), y.dtype)
            products = jax.vmap(lambda vi: pullback(vi)[0])(stacked)
            out = [products[i] for i in range(len(vs))]
    elif backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape(persistent=many) as tape:
            tape.watch(x)
            y = f(x)
        out = [tape.gradient(y, x, output_gradients=tf.cast(vi, y.dtype),
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
               for vi in vs]
        del tape
    elif backend == "torch":
        y, out = _torch_vjp(f, x, vs)
    else:
        raise NotImplementedError(f"`vjp` has no form for the {backend!r} backend.")
    return y, (out if many else out[0])


def _torch_vjp(f, x, vs):
    import torch

    @torch.compiler.disable
    def products(x, vs):
        keep = torch.is_grad_enabled()
        x = ops.convert_to_tensor(x)
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_()
            y = f(x)
            vs = [ops.cast(ops.convert_to_tensor(vi), y.dtype) for vi in vs]
            if y.requires_grad:
                out = [torch.autograd.grad(y, x, vi, create_graph=keep, retain_graph=True,
                                           allow_unused=True)[0] for vi in vs]
            else:
                out = [None] * len(vs)
        out = [torch.zeros_like(x) if g is None else g for g in out]
        if not keep:
            y, out = y.detach(), [g.detach() for g in out]
        return y, out

    return products(x, vs)


def pullback(f, x):
    """`(f(x), u -> u^T df/dx)`: f evaluated once at `x`, then as many
    vector-Jacobian products there as asked, as values with no gradient graph
    (a power series of products, say, under `no_grad`). `vjp` differentiates
    through its products; this does not, and spares an evaluation of f per
    product. The pullback may be called inside `ops.while_loop` and a
    `jit_compile=True` step on every backend.

    - JAX: `jax.vjp`.
    - TensorFlow: a persistent `tf.GradientTape`, asked once per product.
    - PyTorch: `torch.autograd.grad(..., retain_graph=True)` on a detached
      leaf copy of `x`, outside any compiled graph.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        x = ops.stop_gradient(x)
        y, pull = jax.vjp(f, x)
        return y, lambda u: ops.stop_gradient(pull(ops.cast(u, y.dtype))[0])
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.stop_gradient(tf.convert_to_tensor(x))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = f(x)
        return tf.stop_gradient(y), lambda u: tf.stop_gradient(tape.gradient(
            y, x, output_gradients=tf.cast(u, y.dtype),
            unconnected_gradients=tf.UnconnectedGradients.ZERO))
    if backend == "torch":
        import torch

        @torch.compiler.disable
        def evaluate(x):
            with torch.enable_grad():
                x = ops.convert_to_tensor(x).detach().requires_grad_()
                return x, f(x)

        x, y = evaluate(x)

        @torch.compiler.disable
        def pull(u):
            if not y.requires_grad:
                return torch.zeros_like(x)
            u = ops.cast(ops.convert_to_tensor(u), y.dtype)
            (g,) = torch.autograd.grad(y, x, u, retain_graph=True, allow_unused=True)
            return torch.zeros_like(x) if g is None else g.detach()

        return y.detach(), pull
    raise NotImplementedError(f"`pullback` has no form for the {backend!r} backend.")


def fori_loop(lower, upper, body, init):
    """`keras.ops.fori_loop` with static integer bounds, differentiable under
    `jit_compile=True` on every backend.

    Keras 3.15's TensorFlow `fori_loop` is a `tf.while_loop` without
    `maximum_iterations`, whose gradient XLA cannot compile ("XLA
    compilation requires a fixed tensor list size"); here TensorFlow gets the
    bound. JAX's `fori_loop` with static bounds is a differentiable `scan`;
    PyTorch runs a Python loop.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.while_loop(lambda i, state: i < upper,
                             lambda i, state: (i + 1, body(i, state)),
                             (lower, init), maximum_iterations=upper - lower)[1]
    return keras.ops.fori_loop(lower, upper, body, init)


def device_description():
    """The accelerator the backend computes on (e.g. "NVIDIA H200"), else
    "<machine>, <N> CPU cores"."""
    import os
    import platform

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return device.device_kind
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return f"{platform.machine()}, {os.cpu_count()} CPU cores"
