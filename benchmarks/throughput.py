"""Training throughput of small density-estimation flows: optimizer steps per
second through each library's own training loop, keras_flows on every
backend against zuko, nflows, flowjax and TensorFlow Probability.

    python benchmarks/throughput.py [--steps N | --seconds 5] [--repeats 3]
        [--only keras_flows,zuko,nflows,flowjax,tfp] [--backends tensorflow,jax,torch]
        [--models realnvp,maf,nsf,nsf_coupling] [--jit [auto|true|both]] [--threads T]
        [--markdown]
    python benchmarks/throughput.py --profile [--backends jax] [--models realnvp]

`--threads 1` pins every library to one CPU thread (use it on a shared
machine: multi-threaded PyTorch on busy cores can run 100x slower).

Every entry is the same problem: D = 8 data dimensions, 5 transforms, each
conditioner an MLP with 2 hidden layers of 64 ReLU units, a standard normal
base, float32, Adam(1e-3), batches of 512. The data is a fixed synthetic set:
a seeded 4-component Gaussian mixture in 8 dimensions (random means and
random full covariances), standardised by the mixture's exact mean and
standard deviation (`make_data`).

Models (what each library calls them is in `--help` and in the table notes):
- `realnvp`: affine couplings, alternating halves;
- `maf`: masked affine autoregressive transforms (MADE), alternating orders;
- `nsf`: autoregressive rational-quadratic splines, 8 bins on [-4, 4];
- `nsf_coupling`: the same splines in couplings.

Each entry (library, backend, model) runs in a fresh process (Keras picks
its backend at import; TensorFlow, JAX and PyTorch in one process fight over
threads), each with its library's default threading. In it: build, one
warm-up epoch of a few steps (tracing and jit compilation), then, unless
`--steps` is given, a short calibration epoch that sets N so that one timed
epoch takes about `--seconds`; then R timed epochs of exactly N steps over
N * 512 rows. steps/s = N / wall time of the epoch; the table gives the
median of the R epochs (and min-max).

- keras_flows: the plain user path, `model.compile(optimizer=Adam(1e-3))`
  (`jit_compile="auto"`; True with `--jit`; each in turn with `--jit both`) and
  `model.fit(x, batch_size=512, epochs=1, verbose=0)` on a NumPy array; the
  timed wall time is the whole `fit` call (data checks, data adapter,
  shuffling, callbacks). The resolved `jit_compile` is printed.
- zuko, nflows (PyTorch): the loop of their docs, `loss = -flow.log_prob(x)
  .mean(); opt.zero_grad(); loss.backward(); opt.step()`, on batches sliced
  from a tensor shuffled once per epoch (no DataLoader).
- flowjax (JAX): flowjax's own jitted `flowjax.train.train_utils.step` with
  `MaximumLikelihoodLoss` and `optax.adam`, on batches from flowjax's
  `get_batches` of an array shuffled once per epoch: the inner loop of its
  `fit_to_data`, without the validation split, early stopping and progress
  bar.
- TensorFlow Probability: a `tf.function` train step (`tf.GradientTape`,
  tf-keras Adam) on `TransformedDistribution(MultivariateNormalDiag, Chain)`,
  batches sliced from a tensor shuffled once per epoch.

`--profile` takes one backend (the first of `--backends`) and one model (the
first of `--models`) of keras_flows and says where a step's time goes: `fit`
with steps_per_execution 1 and 10, a loop of `model.train_on_batch`, the
compiled train step called directly (JAX: `model.train_function` on the
model's state; TensorFlow: `model.train_step` in a `tf.function`; PyTorch:
`model.train_step`), and `Flow`'s data check that `fit` runs first. On
eager PyTorch it adds the step with no Trainer (the model's `call`, its
backward pass, then `optimizer.apply`) and, when installed, zuko's and
nflows' loops on the same model, so that Keras's per-step share is read
off beside theirs.
"""

import argparse
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time

D = 8
LAYERS = 5
HIDDEN = [64, 64]
BATCH = 512
LEARNING_RATE = 1e-3
BINS = 8
BOUND = 4.0
WARMUP_STEPS = 5
CALIBRATION_STEPS = 20
MAX_STEPS = 20000

LIBRARIES = {  # library -> its backends
    "keras_flows": ["tensorflow", "jax", "torch"],
    "zuko": ["torch"],
    "nflows": ["torch"],
    "flowjax": ["jax"],
    "tfp": ["tensorflow"],
}
MODELS = ["realnvp", "maf", "nsf", "nsf_coupling"]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_data(rows, seed=0):
    """`rows` points of the benchmark's 8-dimensional Gaussian mixture (float32).

    4 components, equal weights, means ~ N(0, 2^2 I), covariances L L^T with
    L lower triangular (off-diagonal ~ N(0, 0.5^2), diagonal ~ U[0.3, 1]);
    then standardised with the mixture's exact mean and standard deviation,
    so every dimension has mean 0 and variance 1. The mixture is fixed
    (seed 0); the draws depend on `seed` and `rows` only.
    """
    import numpy as np

    k = 4
    params = np.random.default_rng(0)
    means = params.normal(0.0, 2.0, size=(k, D))
    chol = np.tril(params.normal(0.0, 0.5, size=(k, D, D)), -1)
    chol[:, np.arange(D), np.arange(D)] = params.uniform(0.3, 1.0, size=(k, D))
    mean = means.mean(0)
    var = (np.einsum("kij,kij->ki", chol, chol) + means ** 2).mean(0) - mean ** 2
    draws = np.random.default_rng(seed + 1)
    component = draws.integers(k, size=rows)
    z = draws.standard_normal((rows, D))
    x = np.empty((rows, D))
    for c in range(k):
        rows_c = component == c
        x[rows_c] = means[c] + z[rows_c] @ chol[c].T
    return ((x - mean) / np.sqrt(var)).astype("float32")


# -- the entries, one per library ----------------------------------------
# Each builder returns a dict: params (trainable parameter count), prepare
# (NumPy rows -> the library's data, outside the timing), epoch (runs
# len(data) // BATCH optimizer steps, one shuffled pass, and returns once
# the last step has finished), note (how the model was built).


class NotAvailable(Exception):
    """The library is installed but has no such model."""


def keras_flows_entry(model, jit=False):
    import numpy as np
    import keras
    import keras_flows as kf

    constructors = {
        "realnvp": ("RealNVP", {}),
        "maf": ("MAF", {}),
        "nsf": ("NSF", {"bins": BINS, "bound": BOUND}),
        "nsf_coupling": ("NSF", {"bins": BINS, "bound": BOUND, "coupling": True}),
    }
    name, extra = constructors[model]
    if not hasattr(kf, name):
        raise NotAvailable(f"keras_flows {kf.__version__} has no `{name}`")
    keras.utils.set_random_seed(0)
    flow = getattr(kf, name)(event_shape=(D,), num_layers=LAYERS, hidden_units=HIDDEN,
                             **extra)
    flow.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                 jit_compile=True if jit else "auto")
    args = ", ".join(f"{k}={v!r}" for k, v in extra.items())
    return {
        "params": int(sum(np.prod(w.shape) for w in flow.trainable_weights)),
        "prepare": lambda x: x,
        "epoch": lambda x: flow.fit(x, batch_size=BATCH, epochs=1, verbose=0),
        "note": f"kf.{name}({args}); jit_compile={flow.jit_compile}",
        "version": kf.__version__,
        "flow": flow,
    }


def _torch_loop(module, nll):
    import torch

    optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)

    def epoch(x):
        steps = x.shape[0] // BATCH
        for batch in x[torch.randperm(x.shape[0])].view(steps, BATCH, D):
            loss = nll(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return {
        "params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "prepare": torch.from_numpy,
        "epoch": epoch,
    }


def zuko_entry(model, jit=False):
    import torch
    import zuko

    torch.manual_seed(0)
    common = dict(transforms=LAYERS, hidden_features=HIDDEN)
    flow, note = {
        "realnvp": lambda: (zuko.flows.RealNVP(D, **common),
                            "zuko.flows.RealNVP (alternating checkered masks)"),
        "maf": lambda: (zuko.flows.MAF(D, **common), "zuko.flows.MAF"),
        "nsf": lambda: (zuko.flows.NSF(D, bins=BINS, **common),
                        "zuko.flows.NSF (spline domain [-5, 5], fixed)"),
        "nsf_coupling": lambda: (zuko.flows.NSF(D, bins=BINS, passes=2, **common),
                                 "zuko.flows.NSF(passes=2): masked MLP, 2 passes"),
    }[model]()
    entry = _torch_loop(flow, lambda x: -flow().log_prob(x).mean())
    return dict(entry, note=note, version=zuko.__version__)


def nflows_entry(model, jit=False):
    import importlib.metadata

    import torch
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import (AffineCouplingTransform, CompositeTransform,
                                   MaskedAffineAutoregressiveTransform,
                                   MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
                                   PiecewiseRationalQuadraticCouplingTransform,
                                   ReversePermutation)

    torch.manual_seed(0)
    # MADE with 2 hidden layers of 64: the initial masked layer, one
    # feed-forward block, the output layer (nflows' default is residual blocks).
    made = dict(hidden_features=HIDDEN[0], num_blocks=len(HIDDEN) - 1,
                use_residual_blocks=False)
    spline = dict(num_bins=BINS, tails="linear", tail_bound=BOUND)

    class Net(torch.nn.Module):  # nets.MLP, taking the coupling's (x, context)
        def __init__(self, features_in, features_out):
            super().__init__()
            self.mlp = MLP([features_in], [features_out], hidden_sizes=HIDDEN)

        def forward(self, x, context=None):
            return self.mlp(x)

    net = Net

    def mask(i):  # alternating halves: > 0 is transformed
        half = torch.arange(D) < D // 2
        return (half if i % 2 else ~half).int()

    layers = []
    for i in range(LAYERS):
        if model == "realnvp":
            layers.append(AffineCouplingTransform(mask(i), net))
        elif model == "nsf_coupling":
            layers.append(PiecewiseRationalQuadraticCouplingTransform(mask(i), net, **spline))
        else:
            if i:
                layers.append(ReversePermutation(D))
            if model == "maf":
                layers.append(MaskedAffineAutoregressiveTransform(D, **made))
            else:
                layers.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    D, **made, **spline))
    flow = Flow(CompositeTransform(layers), StandardNormal([D]))
    note = {"realnvp": "AffineCouplingTransform + nets.MLP (sigmoid scale)",
            "maf": "MaskedAffineAutoregressiveTransform, feed-forward MADE",
            "nsf": "MaskedPiecewiseRationalQuadraticAutoregressiveTransform, linear tails",
            "nsf_coupling": "PiecewiseRationalQuadraticCouplingTransform, linear tails"}[model]
    entry = _torch_loop(flow, lambda x: -flow.log_prob(inputs=x).mean())
    return dict(entry, note=note, version=importlib.metadata.version("nflows"))


def flowjax_entry(model, jit=False):
    import importlib.metadata

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax
    import paramax
    from flowjax.bijections import Affine, RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow
    from flowjax.train.losses import MaximumLikelihoodLoss
    from flowjax.train.train_utils import get_batches, step

    # flowjax's `knots` are the inner knots: knots + 1 bins.
    transformer = (Affine() if model in ("realnvp", "maf")
                   else RationalQuadraticSpline(knots=BINS - 1, interval=BOUND))
    build = coupling_flow if model in ("realnvp", "nsf_coupling") else masked_autoregressive_flow
    flow = build(jr.key(0), base_dist=Normal(jnp.zeros(D)), transformer=transformer,
                 flow_layers=LAYERS, nn_width=HIDDEN[0], nn_depth=len(HIDDEN),
                 nn_activation=jax.nn.relu)
    # As fit_to_data does:
    params, static = eqx.partition(
        flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
    optimizer = optax.adam(LEARNING_RATE)
    loss_fn = MaximumLikelihoodLoss()
    state = {"params": params, "opt": optimizer.init(params), "key": jr.key(1)}

    def shuffle(x):
        state["key"], key = jr.split(state["key"])
        (batches,) = get_batches([jr.permutation(key, x)], BATCH)
        return batches

    def epoch(x):
        batches = shuffle(x)
        params, opt_state = state["params"], state["opt"]
        for batch in batches:
            params, opt_state, loss = step(params, static, batch, optimizer=optimizer,
                                           opt_state=opt_state, loss_fn=loss_fn)
        jax.block_until_ready((params, opt_state))
        state["params"], state["opt"] = params, opt_state

    name = build.__name__
    return {
        "params": int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))),
        "prepare": jnp.asarray,
        "epoch": epoch,
        # JAX compiles the shuffle and the slicing into batches per array
        # shape: once per data set, as in fit_to_data, every epoch one shape.
        "warm": lambda x: jax.block_until_ready(list(shuffle(x))),
        "note": f"{name}({type(transformer).__name__}), default permutations, own step loop",
        "version": importlib.metadata.version("flowjax"),
    }


def tfp_entry(model, jit=False):
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras

    tfd, tfb = tfp.distributions, tfp.bijectors
    tf.random.set_seed(0)
    networks = []

    def mlp(outputs):
        net = tf_keras.Sequential(
            [tf_keras.layers.Dense(u, activation="relu") for u in HIDDEN]
            + [tf_keras.layers.Dense(outputs)])
        networks.append(net)
        return net

    def spline(params):  # (..., 3 BINS - 1) -> a spline on [-BOUND, BOUND]
        widths, heights, slopes = tf.split(params, [BINS, BINS, BINS - 1], axis=-1)
        size = lambda h: (tf.math.softmax(h) * (1 - BINS * 1e-3) + 1e-3) * 2 * BOUND
        return tfb.RationalQuadraticSpline(size(widths), size(heights),
                                           tf.math.softplus(slopes) + 1e-3,
                                           range_min=-BOUND)

    def affine_coupling():
        net = mlp(2 * (D - D // 2))

        def shift_and_log_scale(x, units):
            shift, log_scale = tf.split(net(x), 2, axis=-1)
            return shift, 3.0 * tf.math.tanh(log_scale / 3.0)  # keras_flows' soft clamp

        return tfb.RealNVP(num_masked=D // 2, shift_and_log_scale_fn=shift_and_log_scale)

    def spline_coupling():
        net = mlp((D - D // 2) * (3 * BINS - 1))

        def bijector(x, units):
            return spline(tf.reshape(net(x), (-1, units, 3 * BINS - 1)))

        return tfb.RealNVP(num_masked=D // 2, bijector_fn=bijector)

    def made(params):
        net = tfb.AutoregressiveNetwork(params=params, event_shape=[D],
                                        hidden_units=HIDDEN, activation="relu")
        networks.append(net)
        return net

    def affine_maf():
        return tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=made(2))

    def spline_maf():
        net = made(3 * BINS - 1)
        return tfb.MaskedAutoregressiveFlow(bijector_fn=lambda x: spline(net(x)))

    layer = {"realnvp": affine_coupling, "maf": affine_maf, "nsf": spline_maf,
             "nsf_coupling": spline_coupling}[model]
    bijectors = []
    for i in range(LAYERS):
        if i:
            bijectors.append(tfb.Permute(list(reversed(range(D)))))
        bijectors.append(layer())
    dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(loc=tf.zeros(D)),
                                       tfb.Chain(bijectors))
    dist.log_prob(tf.zeros((2, D)))  # builds the networks
    variables = [v for net in networks for v in net.trainable_variables]
    optimizer = tf_keras.optimizers.Adam(LEARNING_RATE)

    @tf.function
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def epoch(x):
        steps = x.shape[0] // BATCH
        batches = tf.reshape(tf.gather(x, tf.random.shuffle(tf.range(x.shape[0]))),
                             (steps, BATCH, D))
        for batch in batches:
            loss = train_step(batch)
        loss.numpy()

    note = {"realnvp": "tfb.RealNVP(shift_and_log_scale_fn=tf-keras MLP, tanh clamp)",
            "maf": "tfb.MaskedAutoregressiveFlow(tfb.AutoregressiveNetwork)",
            "nsf": "tfb.MaskedAutoregressiveFlow(bijector_fn=RationalQuadraticSpline)",
            "nsf_coupling": "tfb.RealNVP(bijector_fn=RationalQuadraticSpline)"}[model]
    return {
        "params": int(sum(v.shape.num_elements() for v in variables)),
        "prepare": tf.constant,
        "epoch": epoch,
        "note": note + ", Permute(reverse) between layers",
        "version": tfp.__version__,
    }


ENTRIES = {"keras_flows": keras_flows_entry, "zuko": zuko_entry, "nflows": nflows_entry,
           "flowjax": flowjax_entry, "tfp": tfp_entry}
IMPORTS = {"keras_flows": "keras_flows", "zuko": "zuko", "nflows": "nflows",
           "flowjax": "flowjax", "tfp": "tensorflow_probability"}


# -- timing ----------------------------------------------------------------

def timed_epoch(epoch, data):
    start = time.perf_counter()
    epoch(data)
    return time.perf_counter() - start


def measure(entry, steps, seconds, repeats):
    """Warm-up, optional calibration, then `repeats` timed epochs: steps/s each."""
    epoch, warm = entry["epoch"], entry.get("warm", lambda data: None)

    def prepare(rows, seed=0):
        data = entry["prepare"](make_data(rows, seed))
        warm(data)
        return data

    epoch(prepare(WARMUP_STEPS * BATCH, seed=1))
    if steps is None:
        wall = timed_epoch(epoch, prepare(CALIBRATION_STEPS * BATCH, seed=2))
        steps = int(min(MAX_STEPS, max(CALIBRATION_STEPS, round(seconds * CALIBRATION_STEPS
                                                                  / wall))))
    data = prepare(steps * BATCH)
    return steps, [steps / timed_epoch(epoch, data) for _ in range(repeats)]


def cap_tensorflow_threads(args):
    """--threads for TensorFlow: set before its first op (keras_flows imports
    TensorFlow on every backend)."""
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)


def child(args):
    """One entry, in this process; prints one JSON line."""
    library, model = args.child
    result = {"library": library, "model": model,
              "backend": os.environ.get("KERAS_BACKEND") if library == "keras_flows"
              else LIBRARIES[library][0]}
    if library in ("keras_flows", "tfp"):
        cap_tensorflow_threads(args)
    try:
        __import__(IMPORTS[library])
    except ImportError as error:
        # A peer that is absent is "not installed"; keras_flows failing to
        # import is a broken checkout, not a missing peer.
        result.update(status="error" if library == "keras_flows" else "not installed",
                      note=f"{type(error).__name__}: {error}")
        print(json.dumps(result))
        return
    try:
        entry = ENTRIES[library](model, jit=args.jit == "true")
    except NotAvailable as error:
        result.update(status="not available", note=str(error))
        print(json.dumps(result))
        return
    steps, rates = measure(entry, args.steps, args.seconds, args.repeats)
    result.update(status="ok", params=entry["params"], steps=steps, rates=rates,
                  note=entry["note"], version=entry["version"])
    print(json.dumps(result))


def run_child(library, backend, model, args, jit="auto"):
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", library,
               model, "--repeats", str(args.repeats), "--seconds", str(args.seconds),
               "--jit", jit]
    if args.steps:
        command += ["--steps", str(args.steps)]
    run = subprocess.run(command + thread_args(args), env=child_env(backend, args),
                         capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode or not lines:
        error = (run.stderr.strip().splitlines() or ["no output"])[-1]
        return {"library": library, "backend": backend, "model": model,
                "status": "error", "note": error[:200]}
    return json.loads(lines[-1])


def thread_args(args):
    return ["--threads", str(args.threads)] if args.threads else []


def child_env(backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    if args.threads:
        n = str(args.threads)
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, TF_NUM_INTRAOP_THREADS=n,
                   TF_NUM_INTEROP_THREADS=n)
        if args.threads == 1:  # XLA:CPU has a switch for one thread only
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                                "false intra_op_parallelism_threads=1").strip()
    return env


def row(r):
    if r["status"] != "ok":
        return [r["library"], r["backend"], r["model"], "—", r["status"], "—", "—",
                r.get("note", "")]
    rates = r["rates"]
    return [f"{r['library']} {r['version']}", r["backend"], r["model"], f"{r['params']:,}",
            f"{statistics.median(rates):.1f}", f"{min(rates):.1f}–{max(rates):.1f}",
            f"{r['steps']} × {len(rates)}", r["note"]]


HEADER = ["library", "backend", "model", "parameters", "steps/s (median)", "min–max",
          "steps × repeats", "notes"]


WIDTHS = [22, 11, 13, 11, 17, 15, 16]


def print_header(markdown):
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("| " + " | ".join("---" for _ in HEADER) + " |")
    else:
        print("  ".join(h.ljust(w) for h, w in zip(HEADER, WIDTHS)) + "  " + HEADER[-1])


def print_row(cells, markdown):
    if markdown:
        print("| " + " | ".join(cells) + " |", flush=True)
    else:
        print("  ".join(c.ljust(w) for c, w in zip(cells, WIDTHS)) + "  " + cells[-1],
              flush=True)


def versions():
    import importlib.metadata

    found = []
    for package in ["keras", "tensorflow-cpu", "tensorflow", "jax", "torch", "zuko", "nflows",
                    "flowjax", "optax", "equinox", "tensorflow-probability", "tf-keras"]:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


# -- profile ---------------------------------------------------------------

def profile_child(args):
    """keras_flows on this process's backend: where a training step's time goes."""
    cap_tensorflow_threads(args)
    import keras

    backend = keras.backend.backend()
    model = args.models.split(",")[0]

    def fresh(steps_per_execution=1):
        entry = keras_flows_entry(model, jit=args.jit == "true")
        flow = entry["flow"]
        flow.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                     steps_per_execution=steps_per_execution,
                     jit_compile=True if args.jit == "true" else "auto")
        return entry, flow

    entry, flow = fresh()
    steps, rates = measure(entry, args.steps, args.seconds, args.repeats)
    x = make_data(steps * BATCH)
    results = [("fit, steps_per_execution=1 (the default)", rates)]

    if backend == "torch":
        results.append(("fit, steps_per_execution=10", None))
    else:
        entry10, _ = fresh(10)
        epoch10 = lambda data: entry10["epoch"](data)
        epoch10(make_data(10 * BATCH, seed=1))
        results.append(("fit, steps_per_execution=10",
                        [steps / timed_epoch(epoch10, x) for _ in range(args.repeats)]))

    batches = x.reshape(steps, BATCH, D)

    def train_on_batch(data):
        for batch in data:
            flow.train_on_batch(batch)

    train_on_batch(batches[:WARMUP_STEPS])
    results.append(("loop of model.train_on_batch(batch)",
                    [steps / timed_epoch(train_on_batch, batches)
                     for _ in range(args.repeats)]))

    if backend == "jax":
        import jax

        device_batches = [(jax.numpy.asarray(b), None, None) for b in batches]
        flow.make_train_function()

        def direct(data):
            state = flow._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                        optimizer_variables=True, metrics_variables=True)
            flow._jax_state_synced = False  # the step donates these buffers
            iterator = iter(data)
            for _ in range(len(data)):
                _, state = flow.train_function(state, iterator)
            jax.block_until_ready(state)
            trainable, non_trainable, optimizer_variables, metrics_variables = state
            flow._jax_state = {"trainable_variables": trainable,
                               "non_trainable_variables": non_trainable,
                               "optimizer_variables": optimizer_variables,
                               "metrics_variables": metrics_variables}
            flow.jax_state_sync()

        label = "model.train_function(state, batch): the jitted step, no fit"
    elif backend == "tensorflow":
        import tensorflow as tf

        device_batches = [(tf.constant(b),) for b in batches]
        step = tf.function(flow.train_step, reduce_retracing=True,
                           jit_compile=bool(flow.jit_compile))

        def direct(data):
            for batch in data:
                logs = step(batch)
            logs["loss"].numpy()

        label = "tf.function(model.train_step)(batch), no fit"
    else:
        import torch

        device_batches = [(torch.from_numpy(b),) for b in batches]

        def direct(data):
            for batch in data:
                flow.train_step(batch)

        label = "model.train_step(batch), eager, no fit"
    direct(device_batches[:WARMUP_STEPS])
    results.append((label, [steps / timed_epoch(direct, device_batches)
                            for _ in range(args.repeats)]))
    if backend == "torch" and args.jit != "true":
        results += torch_step_parts(flow, model, x, device_batches, args.repeats)

    check = [timed_epoch(flow._check_data, x) for _ in range(args.repeats)]
    results.append(("Flow._check_data(x) alone (fit's row check), per step",
                    [steps / c for c in check]))
    print(json.dumps({"backend": backend, "model": model, "steps": steps,
                      "jit_compile": str(flow.jit_compile),
                      "params": entry["params"],
                      "results": [(label, r) for label, r in results]}))


def torch_step_parts(flow, model, x, device_batches, repeats):
    """Eager PyTorch: the step without Keras's Trainer, beside the peers' loops.

    The math is `-flow.call(batch).mean()` and its backward pass (no
    `Layer.__call__`); the hand-written loop adds `optimizer.apply` (Keras's
    Adam) and clears the gradients, which is all a step needs, so what `fit`
    costs above it is Keras's per-step machinery. zuko's and nflows' loops
    (as in the table) follow when they are installed."""
    import torch

    weights = flow.trainable_weights

    def step(data, update):
        for (batch,) in data:
            (-flow.call(batch, training=True).mean()).backward()
            if update:
                with torch.no_grad():
                    flow.optimizer.apply([v.value.grad for v in weights], weights)
            for v in weights:
                v.value.grad = None

    steps = len(device_batches)
    results = []
    for label, update in [("flow.call(batch), mean, backward: the math alone", False),
                          ("the same + optimizer.apply: a loop with no Trainer", True)]:
        loop = lambda data, update=update: step(data, update)
        loop(device_batches[:WARMUP_STEPS])
        results.append((label, [steps / timed_epoch(loop, device_batches)
                                for _ in range(repeats)]))
    data = torch.from_numpy(x)
    for library in ("zuko", "nflows"):
        try:
            epoch = ENTRIES[library](model)["epoch"]
        except ImportError:
            continue
        epoch(data[:WARMUP_STEPS * BATCH])
        results.append((f"{library}: its loop (log_prob, backward, torch Adam)",
                        [steps / timed_epoch(epoch, data) for _ in range(repeats)]))
    return results


def profile(args):
    backend = args.backends.split(",")[0]
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--profile-child",
               "--models", args.models, "--repeats", str(args.repeats),
               "--seconds", str(args.seconds)] + (["--steps", str(args.steps)] if args.steps
                                                  else []) + ["--jit", args.jit]
    run = subprocess.run(command + thread_args(args), env=child_env(backend, args),
                         capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode or not lines:
        sys.exit(f"profile failed:\n{run.stderr[-3000:]}")
    r = json.loads(lines[-1])
    print(f"keras_flows {r['model']}, {r['params']:,} parameters, backend {r['backend']}, "
          f"jit_compile={r['jit_compile']}, {r['steps']} steps of {BATCH} × "
          f"{args.repeats}, median")
    print(f"{'':64}  {'steps/s':>9}  {'ms/step':>8}")
    for label, rates in r["results"]:
        if rates is None:
            print(f"{label:64}  n/a: the torch backend runs 1 step per execution")
            continue
        rate = statistics.median(rates)
        print(f"{label:64}  {rate:9.1f}  {1000 / rate:8.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per timed epoch (default: calibrated "
                             "to --seconds per epoch for each entry)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="target wall time of one timed epoch when --steps is not given")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(LIBRARIES),
                        help="libraries: " + ",".join(LIBRARIES))
    parser.add_argument("--backends", default="tensorflow,jax,torch",
                        help="keras_flows backends (with --profile: the first)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="models: " + ",".join(MODELS) + " (with --profile: the first)")
    parser.add_argument("--jit", nargs="?", const="true", default="auto",
                        choices=["auto", "true", "both"],
                        help="keras_flows: compile(jit_compile='auto') (default), True "
                             "(--jit), or each in turn (--jit both; not with --profile)")
    parser.add_argument("--threads", type=int, default=None,
                        help="cap every library's CPU threads (OMP/torch, TensorFlow; "
                             "JAX only for 1); default: each library's own default")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--profile-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.profile_child:
        return profile_child(args)
    if args.profile:
        if args.jit == "both":
            parser.error("--profile takes --jit or --jit true, not --jit both")
        return profile(args)

    unknown = (set(args.only.split(",")) - set(LIBRARIES)) | (
        set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"unknown libraries or models: {', '.join(sorted(unknown))}")
    command = "python benchmarks/throughput.py " + " ".join(map(shlex.quote, sys.argv[1:]))
    print(f"{time.strftime('%Y-%m-%d')}, {platform.platform()}, {platform.machine()}, "
          f"{os.cpu_count()} CPU cores, Python {platform.python_version()}")
    print(f"`{command.strip()}`")
    print(versions())
    print(f"D={D}, {LAYERS} transforms, MLP {HIDDEN} ReLU, batch {BATCH}, Adam({LEARNING_RATE}), "
          f"N(0, I) base, float32; data: standardised 4-component Gaussian mixture "
          f"(seeded); steps/s = steps / wall time of one epoch, median of "
          f"{args.repeats}; threads: {args.threads or 'library defaults'}\n", flush=True)
    print_header(args.markdown)
    for library in args.only.split(","):
        backends = [b for b in LIBRARIES[library]
                    if library != "keras_flows" or b in args.backends.split(",")]
        for backend in backends:
            for model in args.models.split(","):
                jits = ["auto", "true"] if args.jit == "both" else [args.jit]
                for jit in jits if library == "keras_flows" else ["auto"]:
                    print_row(row(run_child(library, backend, model, args, jit)),
                              args.markdown)

if __name__ == "__main__":
    main()
