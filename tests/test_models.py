"""Named models trained on real densities, and weights shared across backends."""

import numpy as np
import keras
from keras import ops

import keras_flows as kf
from cross_backend import on_another_backend
from test_bijectors import CASES, make


def test_realnvp_fits_moons_within_0_15_nats_of_its_entropy():
    # Moons' differential entropy is 2.39 nats (FFJORD's generator;
    # tests/test_toy.py measures it independently by numerical integration).
    keras.utils.set_random_seed(0)
    x = kf.datasets.toy("moons", 20_000, seed=0)
    held_out = kf.datasets.toy("moons", 5_000, seed=1)
    epochs, batch_size = 40, 256
    steps = epochs * -(-18_000 // batch_size)
    flow = kf.RealNVP(event_shape=(2,), num_layers=8, hidden_units=(64, 64), batch_norm=True)
    flow.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(2e-3, steps)))
    flow.fit(x, batch_size=batch_size, epochs=epochs, validation_split=0.1, verbose=0)
    nll = -float(np.mean(ops.convert_to_numpy(flow.log_prob(held_out))))
    assert nll < 2.39 + 0.15, nll


def test_the_same_weights_give_the_same_log_prob_on_every_backend(tmp_path):
    # A chain of every vector bijector, conditioned, with randomised weights
    # and batch-norm statistics moved by a training step.
    names = sorted((n for n, case in CASES.items() if case[1] == (3,)),
                   key=lambda n: n != "Invert")
    flow = kf.Flow(kf.Chain([make(n, seed=i) for i, n in enumerate(names)]),
                   event_shape=(3,), context_shape=(2,))
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 0.95, size=(32, 3)).astype("float32")
    c = rng.normal(size=(32, 2)).astype("float32")
    flow.compile(optimizer=keras.optimizers.Adam(1e-3))
    flow.fit({"x": x, "context": c}, batch_size=32, epochs=1, verbose=0)
    expected = ops.convert_to_numpy(flow.log_prob(x, c))
    for backend, result in on_another_backend(flow, "log_prob", tmp_path, x=x,
                                             context=c).items():
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{backend} disagrees")


def _trace_breaks(fn, x):
    """Why tracing `fn(x)` into one graph failed: on PyTorch, the reasons of
    Dynamo's graph breaks (each splits a `jit_compile=True` step, and the
    pieces between run eagerly); on JAX and TensorFlow, tracing raises."""
    x = ops.convert_to_tensor(x)
    if keras.backend.backend() == "torch":
        import torch

        torch._dynamo.reset()
        reasons = [str(b.reason).splitlines() for b in torch._dynamo.explain(fn)(x).break_reasons]
        return [next((line.strip() for line in lines if "Explanation" in line), lines[0])
                for lines in reasons]
    if keras.backend.backend() == "jax":
        import jax

        jax.jit(fn).lower(x)
    else:
        import tensorflow as tf

        tf.function(fn, jit_compile=True).get_concrete_function(x)
    return []


def test_an_image_flows_training_pass_traces_into_one_graph():
    # Its dequantization noise is drawn inside the graph: Keras 3.15 keeps its
    # PyTorch random draws out of torch.compile, splitting the step at each.
    flow = kf.Glow(image_shape=(8, 8, 3), levels=2, steps_per_level=2, hidden_channels=8,
                   seed=0)
    x = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3)).astype("float32")
    with keras.StatelessScope():
        assert _trace_breaks(lambda x: flow(x, training=True), x) == []


def test_the_vector_flows_trace_into_one_graph():
    # Fixed arrays (permutations, masks, signs) are tensors made at build:
    # a NumPy array converted inside the step broke PyTorch's compiled MAF
    # step in two, at half the eager speed.
    flows = {"RealNVP": kf.RealNVP(event_shape=(4,), num_layers=2, hidden_units=(8,)),
             "MAF": kf.MAF(event_shape=(4,), num_layers=2, hidden_units=(8,)),
             "NSF": kf.NSF(event_shape=(4,), num_layers=2, hidden_units=(8,), bins=4),
             "LULinear": kf.Flow(kf.bijectors.LULinear(seed=0), event_shape=(4,))}
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    for name, flow in flows.items():
        assert _trace_breaks(lambda x: flow(x, training=True), x) == [], name
        assert _trace_breaks(lambda z: flow.bijector.inverse(z)[0], x) == [], name
