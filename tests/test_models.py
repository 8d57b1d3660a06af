"""Named models trained on real densities, and weights shared across backends."""

import numpy as np
import keras
from keras import ops

import keras_flows as kf
from cross_backend import on_other_backends
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
    for backend, result in on_other_backends(flow, "log_prob", tmp_path, x=x,
                                             context=c).items():
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{backend} disagrees")
