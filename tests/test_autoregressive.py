"""MAF, IAF and NSF: exact against TensorFlow Probability and finite
differences, and fitted to densities whose entropy is known."""

import numpy as np
import keras
import pytest
from keras import ops

import keras_flows as kf
from test_bijectors import dense_log_det

BACKEND = keras.backend.backend()


def numpy(x):
    return ops.convert_to_numpy(x)


def randomise(flow, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for w in flow.trainable_weights:
        w.assign(rng.normal(scale=scale, size=w.shape).astype(w.dtype))
    return flow


VECTOR_MODELS = {
    "NICE": lambda **k: kf.NICE(num_layers=3, hidden_units=(8,), **k),
    "RealNVP": lambda **k: kf.RealNVP(num_layers=3, hidden_units=(8,), **k),
    "MAF": lambda **k: kf.MAF(num_layers=3, hidden_units=(8, 8), **k),
    "IAF": lambda **k: kf.IAF(num_layers=2, hidden_units=(8,), **k),
    "NSF": lambda **k: kf.NSF(num_layers=2, hidden_units=(8,), bins=4, bound=2.0, **k),
    "NSF[coupling]": lambda **k: kf.NSF(num_layers=3, hidden_units=(8,), bins=4,
                                        bound=2.0, coupling=True, **k),
    "MAF[actnorm,random]": lambda **k: kf.MAF(num_layers=2, hidden_units=(8,),
                                              normalization="actnorm",
                                              permutation="random", seed=3, **k),
}


@pytest.mark.parametrize("name", VECTOR_MODELS)
@pytest.mark.parametrize("conditional", [False, True])
def test_float64_log_prob_matches_finite_differences(name, conditional):
    # The dtype traps of Keras 3.15 (float64 matmuls computed in float32 on
    # PyTorch, tanh in float32 on JAX) show up here as errors of 1e-2 or more.
    context_shape = (2,) if conditional else None
    flow = randomise(VECTOR_MODELS[name](event_shape=(4,), context_shape=context_shape,
                                         dtype="float64"))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4))
    c = rng.normal(size=(3, 2)) if conditional else None

    def encode(v, rows):
        return flow.encode(v, None if c is None else c[rows])

    z = numpy(flow.encode(x, c))
    log_prob = numpy(flow.log_prob(x, c))
    assert log_prob.dtype == np.float64
    base = -0.5 * np.sum(z**2, axis=1) - 2 * np.log(2 * np.pi)
    np.testing.assert_allclose(log_prob, base + dense_log_det(encode, x), atol=1e-6)
    np.testing.assert_allclose(numpy(flow.decode(z, c)), x, atol=1e-9)


TFP_SCRIPT = """
import sys, numpy as np, keras, tensorflow as tf, tensorflow_probability as tfp
import keras_flows
flow = keras.saving.load_model(sys.argv[1])
layer = flow.bijector.bijectors[0]
tfb, tfd = tfp.bijectors, tfp.distributions

def shift_and_log_scale(x):
    # Ours: z = x e^s + t. TFP's MAF: x = z e^a + b, so z = (x - b) e^-a:
    # a = -s, b = -t e^-s.
    params = tf.reshape(layer.conditioner(x), (-1, x.shape[-1], 2))
    s = layer.transformer.log_scale(params[..., 0])
    return -params[..., 1] * tf.exp(-s), -s

reference = tfd.TransformedDistribution(
    tfd.MultivariateNormalDiag(loc=tf.zeros(5, tf.float64)),
    tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=shift_and_log_scale))
data = np.load(sys.argv[2])
# TFP's forward is the D-pass direction: latent to data.
np.savez(sys.argv[3], log_prob=reference.log_prob(data["x"]).numpy(),
         decoded=reference.bijector.forward(data["z"]).numpy())
"""


def test_maf_matches_tensorflow_probability_with_the_same_network(tmp_path):
    # TFP runs on TensorFlow: the flow built on this backend is saved and its
    # network drives tfp.bijectors.MaskedAutoregressiveFlow in a TensorFlow
    # process; the density and the D-pass inverse must agree in float64.
    import os
    import subprocess
    import sys

    flow = randomise(kf.MAF(event_shape=(5,), num_layers=1, hidden_units=(16, 16),
                            dtype="float64"), seed=4)
    rng = np.random.default_rng(2)
    x, z = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    flow.save(str(tmp_path / "maf.keras"))
    np.savez(tmp_path / "inputs.npz", x=x, z=z)
    run = subprocess.run(
        [sys.executable, "-c", TFP_SCRIPT, str(tmp_path / "maf.keras"),
         str(tmp_path / "inputs.npz"), str(tmp_path / "tfp.npz")],
        env=dict(os.environ, KERAS_BACKEND="tensorflow"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    reference = np.load(tmp_path / "tfp.npz")
    np.testing.assert_allclose(numpy(flow.log_prob(x)), reference["log_prob"], atol=1e-10)
    np.testing.assert_allclose(numpy(flow.decode(z)), reference["decoded"], atol=1e-10)


def test_inverse_loop_is_traced_once_whatever_the_dimension():
    # D passes in a keras.ops.fori_loop, not a Python loop unrolled at trace
    # time: the traced inverse has the same size for D = 4 and D = 64.
    def traced_size(dim):
        layer = kf.MaskedAutoregressive(kf.transformers.Affine(),
                                        kf.layers.MADE(hidden_units=(16,)))
        z = np.zeros((2, dim), "float32")
        layer.inverse(z)
        if BACKEND == "jax":
            import jax

            return len(jax.make_jaxpr(lambda v: layer.inverse(v)[0])(z).eqns)
        if BACKEND == "tensorflow":
            import tensorflow as tf

            graph = tf.function(lambda v: layer.inverse(v)[0]).get_concrete_function(
                tf.TensorSpec((2, dim), tf.float32)).graph
            return len(graph.get_operations())
        # PyTorch runs eagerly: count the conditioner calls instead.
        calls = []
        handle = layer.conditioner.call
        layer.conditioner.call = lambda *a, **k: calls.append(1) or handle(*a, **k)
        layer.inverse(z)
        return len(calls) - dim  # one call per pass: D calls, none extra

    if BACKEND == "torch":
        assert traced_size(4) == traced_size(64) == 0
    else:
        assert traced_size(4) == traced_size(64)


def _fit(flow, x, epochs, batch_size=512, lr=3e-3):
    steps = epochs * -(-len(x) // batch_size)
    flow.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(lr, steps)))
    flow.fit(x, batch_size=batch_size, epochs=epochs, verbose=0)
    return flow


# Entropies (nats) of the toy densities: Kozachenko-Leonenko estimates from
# 10 x 200,000 points, recorded in keras_flows/pretrained/realnvp_*/metadata.json.
ENTROPY = {"moons": 2.393, "8gaussians": 2.83}
# name: (model, epochs). The affine flows need depth and steps for the
# well-separated modes of 8gaussians; the splines get there in a few layers.
FITS = {
    "MAF": (lambda: kf.MAF(event_shape=(2,), num_layers=10, hidden_units=(64, 64)), 100),
    # IAF scores by its sequential inverse (D passes a layer): half MAF's depth and
    # fewer epochs reach 2.418 (JAX), 2.427 (TF), 2.428 (PyTorch) on moons.
    "IAF": (lambda: kf.IAF(event_shape=(2,), num_layers=5, hidden_units=(64, 64)), 60),
    "NSF": (lambda: kf.NSF(event_shape=(2,), num_layers=3, hidden_units=(64, 64), bins=8,
                           bound=4.0), 30),
    "NSF[coupling]": (lambda: kf.NSF(event_shape=(2,), num_layers=4, hidden_units=(64, 64),
                                     bins=8, bound=4.0, coupling=True), 30),
}


# Each model on one density (every density by two models): the pair is what a
# fit costs on CPU, and a flow that fits one of them is not broken for the other.
FIT_PAIRS = [("MAF", "8gaussians"), ("IAF", "moons"), ("NSF", "8gaussians"),
             ("NSF[coupling]", "moons")]


@pytest.mark.parametrize("name,density", FIT_PAIRS, ids=[f"{n}-{d}" for n, d in FIT_PAIRS])
def test_fits_a_toy_density_within_0_1_nats_of_its_entropy(name, density):
    keras.utils.set_random_seed(0)
    x = kf.datasets.toy(density, 20_000, seed=0)
    held_out = kf.datasets.toy(density, 10_000, seed=1)
    make, epochs = FITS[name]
    flow = _fit(make(), x, epochs)
    nll = -float(np.mean(numpy(flow.log_prob(held_out))))
    assert nll < ENTROPY[density] + 0.1, nll


def test_conditional_nsf_learns_a_gaussian_whose_mean_is_the_context():
    # x | c ~ N(A c, S): conditional entropy (1/2) log det(2 pi e S), whatever c.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    a = np.array([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]])
    chol = np.array([[0.5, 0.0], [0.3, 0.4]])
    entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * chol @ chol.T)[1]

    def draw(n, seed):
        r = np.random.default_rng(seed)
        c = r.normal(size=(n, 3))
        return (c @ a.T + r.normal(size=(n, 2)) @ chol.T).astype("float32"), \
            c.astype("float32")

    x, c = draw(20_000, 0)
    # The splines act on [-B, B] with identity tails: B must cover the data
    # (|x| reaches ~5 here), or no spline can move the tails to the centre.
    flow = kf.NSF(event_shape=(2,), context_shape=(3,), num_layers=2,
                  hidden_units=(64, 64), bins=8, bound=6.0)
    steps = 20 * -(-len(x) // 512)
    flow.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(5e-3, steps)))
    flow.fit({"x": x, "context": c}, batch_size=512, epochs=20, verbose=0)
    x_test, c_test = draw(10_000, 1)
    nll = -float(np.mean(numpy(flow.log_prob(x_test, c_test))))
    assert nll < entropy + 0.05, (nll, entropy)
    # Samples given one context follow N(A c, S).
    c0 = np.tile(np.array([[1.0, 0.0, -1.0]], "float32"), (4000, 1))
    samples = numpy(flow.sample(4000, context=c0, seed=0))
    np.testing.assert_allclose(samples.mean(0), a @ c0[0], atol=0.05)
    np.testing.assert_allclose(np.cov(samples.T), chol @ chol.T, atol=0.05)


@pytest.mark.parametrize("name", ["MAF", "IAF", "NSF", "NSF[coupling]"])
def test_save_load_and_same_log_prob_on_every_backend(name, tmp_path):
    from cross_backend import on_another_backend

    flow = randomise(VECTOR_MODELS[name](event_shape=(3,), context_shape=(2,)), scale=0.2)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 3)).astype("float32")
    c = rng.normal(size=(16, 2)).astype("float32")
    expected = numpy(flow.log_prob(x, c))
    path = str(tmp_path / "flow.keras")
    flow.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(numpy(loaded.log_prob(x, c)), expected)
    for backend, result in on_another_backend(flow, "log_prob", tmp_path, x=x,
                                             context=c).items():
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{backend} disagrees")


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="vectors"):
        kf.MAF(event_shape=(4, 4))
    with pytest.raises(ValueError, match="normalization"):
        kf.MAF(event_shape=(2,), normalization="layer")
    with pytest.raises(ValueError, match="permutation"):
        kf.NSF(event_shape=(2,), permutation="shuffle")
    with pytest.raises(TypeError, match="MADE"):
        kf.MaskedAutoregressive(kf.transformers.Affine(), kf.layers.MLP())
    with pytest.raises(ValueError, match="conditional"):
        kf.MAF(event_shape=(2,)).log_prob(np.zeros((1, 2)), context=np.zeros((1, 3)))
