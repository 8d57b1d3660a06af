"""The checks every exported bijector gets (../shared/DESIGN.md).

`CASES` lists one or more configurations per bijector; a test fails when an
exported bijector has none, so a new one is checked without anyone
remembering to add it. Weights are randomised after building, so that no
check passes because a layer starts at the identity.
"""

import functools

import numpy as np
import keras
import pytest
from keras import ops

import keras_flows as kf
from keras_flows import bijectors as kb

BACKEND = keras.backend.backend()


def _uniform(low, high):
    return lambda rng, shape: rng.uniform(low, high, size=shape)


def _normal(rng, shape):
    return rng.normal(size=shape)


# name: (factory(dtype), event shape, context shape, data sampler, latent sampler)
CASES = {
    "Chain": (lambda d: kb.Chain([kb.AffineCoupling((8,), dtype=d), kb.Reverse(dtype=d),
                                  kb.ElementwiseAffine(dtype=d)], dtype=d),
              (3,), None, _normal, _normal),
    "Invert": (lambda d: kb.Invert(kb.Sigmoid(dtype=d), dtype=d),
               (3,), None, _uniform(0.05, 0.95), _normal),
    "AdditiveCoupling": (lambda d: kb.AdditiveCoupling((8,), dtype=d), (3,), None,
                         _normal, _normal),
    "AffineCoupling": (lambda d: kb.AffineCoupling((8,), reverse=True, dtype=d), (4,), None,
                       _normal, _normal),
    "AffineCoupling[context]": (
        lambda d: kb.AffineCoupling((8,), context_shape=(2,), dtype=d), (3,), (2,),
        _normal, _normal),
    "AffineCoupling[sigmoid]": (
        lambda d: kb.AffineCoupling((8,), scale="sigmoid", dtype=d), (4,), None,
        _normal, _normal),
    "AffineCoupling[bounded_sigmoid]": (
        lambda d: kb.AffineCoupling((8,), scale="bounded_sigmoid", scale_bound=2.0,
                                    dtype=d), (4,), None, _normal, _normal),
    # The general structures with every transformer (keras_flows.transformers).
    "Coupling[spline]": (
        lambda d: kb.Coupling(kf.transformers.RationalQuadraticSpline(bins=4, bound=2.0,
                                                                      dtype=d),
                              kf.layers.MLP(hidden_units=(8,), dtype=d), dtype=d),
        (3,), None, _normal, _normal),
    "Coupling[spline,checkerboard,context]": (
        lambda d: kb.Coupling(kf.transformers.RationalQuadraticSpline(bins=3, bound=1.5,
                                                                      dtype=d),
                              kf.layers.ConvNet(hidden_channels=4, dtype=d),
                              mask="checkerboard", context_shape=(2,), dtype=d),
        (2, 2, 2), (2,), _normal, _normal),
    "MaskedAutoregressive": (
        lambda d: kb.MaskedAutoregressive(kf.transformers.Affine(dtype=d),
                                          kf.layers.MADE(hidden_units=(8, 8), dtype=d),
                                          dtype=d),
        (4,), None, _normal, _normal),
    "MaskedAutoregressive[spline,context,random]": (
        lambda d: kb.MaskedAutoregressive(
            kf.transformers.RationalQuadraticSpline(bins=4, bound=2.0, dtype=d),
            kf.layers.MADE(hidden_units=(8,), order="random", seed=1, context_dim=2,
                           dtype=d),
            context_shape=(2,), dtype=d),
        (3,), (2,), _normal, _normal),
    "Invert[iaf]": (
        lambda d: kb.Invert(kb.MaskedAutoregressive(
            kf.transformers.Affine(dtype=d), kf.layers.MADE(hidden_units=(8,), dtype=d),
            dtype=d), dtype=d),
        (3,), None, _normal, _normal),
    "ElementwiseAffine": (lambda d: kb.ElementwiseAffine(dtype=d), (3,), None,
                          _normal, _normal),
    "Sigmoid": (lambda d: kb.Sigmoid(dtype=d), (3,), None, _normal, _uniform(0.05, 0.95)),
    "Tanh": (lambda d: kb.Tanh(dtype=d), (3,), None, _normal, _uniform(-0.9, 0.9)),
    "LULinear": (lambda d: kb.LULinear(seed=1, dtype=d), (4,), None, _normal, _normal),
    "ActNorm": (lambda d: kb.ActNorm(dtype=d), (3,), None, _normal, _normal),
    "ActNorm[image]": (lambda d: kb.ActNorm(dtype=d), (2, 2, 3), None, _normal, _normal),
    "BatchNorm": (lambda d: kb.BatchNorm(dtype=d), (3,), None, _normal, _normal),
    "Reverse": (lambda d: kb.Reverse(dtype=d), (3,), None, _normal, _normal),
    "RandomPermutation": (lambda d: kb.RandomPermutation(seed=3, dtype=d), (5,), None,
                          _normal, _normal),
    "Planar": (lambda d: kb.Planar(seed=2, dtype=d), (3,), None, _normal, _normal),
    "Radial": (lambda d: kb.Radial(seed=2, dtype=d), (3,), None, _normal, _normal),
    # float64: dopri5 tight enough for the 1e-6 Jacobian and 1e-9 cancellation checks;
    # float32: rk4. Event (2,) keeps it out of PyTorch's one compiled chain of every case.
    "ContinuousFlow": (
        lambda d: kb.ContinuousFlow(hidden_units=(8,), dtype=d, **(
            dict(solver="dopri5", rtol=1e-12, atol=1e-12) if d == "float64"
            else dict(solver="rk4", steps=8))),
        (2,), None, _normal, _normal),
    "ContinuousFlow[image]": (
        lambda d: kb.ContinuousFlow(hidden_units=(2,), dtype=d, **(
            dict(solver="dopri5", rtol=1e-12, atol=1e-12) if d == "float64"
            else dict(solver="rk4", steps=4))),
        (2, 1, 2), None, _normal, _normal),
    # Exact log-det at inference (the checks' training=False); 10 power
    # iterations per call keep Lip(g) < 1 after the weights are randomised.
    "ResidualBlock": (
        lambda d: kb.ResidualBlock(hidden_units=(8,), power_iterations=10, seed=0, dtype=d,
                                   inverse_atol=1e-10 if d == "float64" else 1e-6),
        (3,), None, _normal, _normal),
    "ResidualBlock[image]": (
        lambda d: kb.ResidualBlock(hidden_units=(4,), power_iterations=10, seed=0, dtype=d,
                                   inverse_atol=1e-10 if d == "float64" else 1e-6),
        (2, 2, 2), None, _normal, _normal),
    # Images (B, H, W, C): small enough for the dense Jacobian (<= 32 dims).
    "Squeeze": (lambda d: kb.Squeeze(dtype=d), (4, 4, 2), None, _normal, _normal),
    "Rescale": (lambda d: kb.Rescale(dtype=d), (2, 2, 1), None, _uniform(0.5, 255.5),
                _uniform(-0.49, 0.49)),
    "Rescale[5bit]": (lambda d: kb.Rescale(n_bits=5, dtype=d), (2, 2, 1), None,
                      _uniform(0.5, 31.5), _uniform(-0.49, 0.49)),
    "LogitTransform": (lambda d: kb.LogitTransform(dtype=d), (2, 2, 1), None,
                       _uniform(0.5, 255.5), _normal),
    "InvertibleConv1x1": (lambda d: kb.InvertibleConv1x1(seed=1, dtype=d), (2, 2, 3),
                          None, _normal, _normal),
    "InvertibleConv1x1[lu]": (lambda d: kb.InvertibleConv1x1(lu=True, seed=1, dtype=d),
                              (2, 2, 3), None, _normal, _normal),
    "AffineCoupling[image]": (
        lambda d: kb.AffineCoupling(hidden_channels=8, dtype=d), (4, 4, 2), None,
        _normal, _normal),
    "AffineCoupling[checkerboard]": (
        lambda d: kb.AffineCoupling(hidden_channels=8, mask="checkerboard", dtype=d),
        (4, 4, 2), None, _normal, _normal),
    "AdditiveCoupling[checkerboard]": (
        lambda d: kb.AdditiveCoupling(hidden_channels=8, mask="checkerboard", reverse=True,
                                      dtype=d),
        (4, 4, 2), None, _normal, _normal),
    "AffineCoupling[image,context]": (
        lambda d: kb.AffineCoupling(hidden_channels=8, reverse=True, context_shape=(2,),
                                    dtype=d),
        (4, 4, 2), (2,), _normal, _normal),
    "AffineCoupling[image,bounded_sigmoid]": (
        lambda d: kb.AffineCoupling(hidden_channels=8, scale="bounded_sigmoid", dtype=d),
        (4, 4, 2), None, _normal, _normal),
    # The multi-scale structure and Glow's priors as bijectors (bijectors/multiscale.py).
    "SplitPrior": (lambda d: kb.SplitPrior(dtype=d), (2, 2, 4), None, _normal, _normal),
    "SplitPrior[bounded]": (lambda d: kb.SplitPrior(scale_bound=0.5, dtype=d), (2, 2, 4),
                            None, _normal, _normal),
    "TopPrior": (lambda d: kb.TopPrior(dtype=d), (2, 2, 2), None, _normal, _normal),
    "MultiScale": (
        lambda d: kb.MultiScale(
            [kb.Chain([kb.Squeeze(dtype=d), kb.AffineCoupling(hidden_channels=4, dtype=d)],
                      dtype=d),
             kb.AffineCoupling(hidden_channels=4, dtype=d)],
            [kb.SplitPrior(dtype=d)], kb.TopPrior(dtype=d), dtype=d),
        (4, 4, 1), None, _normal, _normal),
    "MultiScale[no priors,remat]": (
        lambda d: kb.MultiScale(
            [kb.Chain([kb.Squeeze(dtype=d), kb.ActNorm(dtype=d)], dtype=d),
             kb.Chain([kb.Squeeze(dtype=d), kb.AdditiveCoupling(hidden_channels=4,
                                                                 dtype=d)], dtype=d)],
            remat="step", dtype=d),
        (4, 4, 1), None, _normal, _normal),
    # RealNVP's image couplings: ResNet conditioner, s = a * tanh(h).
    "AffineCoupling[resnet,checkerboard]": (
        lambda d: kb.AffineCoupling(hidden_channels=8, num_blocks=1, mask="checkerboard",
                                    scale="learned_tanh", dtype=d),
        (4, 4, 2), None, _normal, _normal),
    "AffineCoupling[resnet,channel]": (
        lambda d: kb.AffineCoupling(hidden_channels=8, num_blocks=1, reverse=True,
                                    scale="learned_tanh", dtype=d),
        (4, 4, 2), None, _normal, _normal),
}


@functools.lru_cache(maxsize=None)
def latent_shape(name):
    """The case's latent event shape (differs from the data's for Squeeze)."""
    factory, event_shape, _, _, _ = CASES[name]
    return tuple(factory("float32").compute_output_shape((None, *event_shape))[1:])


def make(name, dtype="float32", seed=0):
    """The case's bijector, built, with every trainable weight randomised."""
    factory, event_shape, context_shape, _, _ = CASES[name]
    bijector = factory(dtype)
    x, c = sample(name, "x", 2, seed=seed)
    bijector.forward(x, **({} if c is None else {"context": c}))
    rng = np.random.default_rng(seed)
    for w in bijector.trainable_weights:
        w.assign(rng.normal(scale=0.3, size=w.shape).astype(dtype))
    return bijector


def sample(name, which, n, seed=0, dtype="float32"):
    _, event_shape, context_shape, data, latent = CASES[name]
    rng = np.random.default_rng(seed + 100)
    draw, shape = (data, event_shape) if which == "x" else (latent, latent_shape(name))
    x = draw(rng, (n, *shape)).astype(dtype)
    c = None if context_shape is None else rng.normal(size=(n, *context_shape)).astype(dtype)
    return x, c


def ctx(c):
    return {} if c is None else {"context": c}


def numpy(x):
    return ops.convert_to_numpy(x)


def dense_log_det(fn, x, eps=1e-6):
    """log|det J| of `fn` at each row of `x` by float64 central differences,
    all in one call `fn(v, rows)`: row j of `v` perturbs row `rows[j]` of `x`
    (whose context it takes)."""
    n, shape = x.shape[0], x.shape[1:]
    d = int(np.prod(shape))
    eye = np.eye(d).reshape(d, *shape) * eps
    v = np.concatenate([x[i][None] + sign * eye for i in range(n) for sign in (1, -1)])
    out = numpy(fn(v, np.repeat(np.arange(n), 2 * d))).reshape(n, 2, d, -1)
    jac = (out[:, 0] - out[:, 1]) / (2 * eps)
    return np.array([np.linalg.slogdet(j)[1] for j in jac])


def test_every_exported_bijector_has_a_case():
    # Maps of a manifold (sphere, simplex) are checked in test_manifold_bijectors.py.
    manifold = {n for n in kb.__all__ if getattr(getattr(kb, n), "manifold", None)}
    # A surjection (Dequantize) has no dense Jacobian: its own test is below.
    surjective = {n for n in kb.__all__ if getattr(getattr(kb, n), "surjective", False)}
    exported = set(kb.__all__) - {"Bijector"} - manifold - surjective
    covered = {name.split("[")[0] for name in CASES}
    assert exported == covered, f"no checks for {exported - covered}"


@pytest.mark.parametrize("n_bits", [8, 5])
def test_dequantize_maps_pixels_into_their_bins_and_back(n_bits):
    bijector = kb.Dequantize(n_bits, seed=0)
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 2, 2, 1)).astype("float32")
    bins = np.floor(pixels / 2 ** (8 - n_bits))
    y, log_det = bijector.forward(pixels)
    np.testing.assert_array_equal(numpy(y), bins + 0.5)            # bin midpoints
    np.testing.assert_array_equal(numpy(log_det), np.zeros(64))
    noisy = numpy(bijector.forward(pixels, training=True)[0])
    assert np.all((noisy >= bins) & (noisy < bins + 1)) and len(np.unique(noisy)) > 200
    x, log_det = bijector.inverse(noisy)
    np.testing.assert_array_equal(numpy(x), bins * 2 ** (8 - n_bits))
    np.testing.assert_array_equal(numpy(log_det), np.zeros(64))
    outside = numpy(bijector.inverse(np.array([[[[-3.0]]], [[[2.0 ** n_bits + 7]]]]))[0])
    np.testing.assert_array_equal(outside.ravel(), [0.0, 255 - (2 ** (8 - n_bits) - 1)])


@pytest.mark.parametrize("name", CASES)
def test_round_trip(name):
    bijector = make(name)
    x, c = sample(name, "x", 16)
    z, fwd = bijector.forward(x, **ctx(c))
    x2, inv = bijector.inverse(z, **ctx(c))
    np.testing.assert_allclose(numpy(x2), x, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(numpy(fwd) + numpy(inv), 0.0, atol=1e-4)
    assert tuple(fwd.shape) == (16,) and tuple(inv.shape) == (16,)

    z, c = sample(name, "z", 16, seed=1)
    x, _ = bijector.inverse(z, **ctx(c))
    z2, _ = bijector.forward(x, **ctx(c))
    np.testing.assert_allclose(numpy(z2), z, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_log_det_matches_dense_jacobian_in_float64(name):
    bijector = make(name, dtype="float64")
    x, c = sample(name, "x", 3, dtype="float64")
    z, log_det = bijector.forward(x, **ctx(c))
    assert keras.backend.standardize_dtype(z.dtype) == "float64"
    assert keras.backend.standardize_dtype(log_det.dtype) == "float64"

    def forward(v, rows):
        return bijector.forward(v, **ctx(None if c is None else c[rows]))[0]

    def inverse(v, rows):
        return bijector.inverse(v, **ctx(None if c is None else c[rows]))[0]

    np.testing.assert_allclose(numpy(log_det), dense_log_det(forward, x), atol=1e-6)
    z = numpy(z)
    _, inv_log_det = bijector.inverse(z, **ctx(c))
    np.testing.assert_allclose(numpy(inv_log_det), dense_log_det(inverse, z), atol=1e-6)
    np.testing.assert_allclose(numpy(inv_log_det), -numpy(log_det), atol=1e-9)


def _flow(name):
    bijector = make(name)
    _, event_shape, context_shape, _, _ = CASES[name]
    return kf.Flow(bijector, event_shape=event_shape, context_shape=context_shape)


def _inputs(name, n=8):
    x, c = sample(name, "x", n)
    return x if c is None else {"x": x, "context": c}


@pytest.mark.parametrize("name", CASES)
def test_save_and_load_round_trip(name, tmp_path):
    flow = _flow(name)
    path = str(tmp_path / "flow.keras")
    flow.save(path)
    loaded = keras.saving.load_model(path)
    x, c = sample(name, "x", 8)
    np.testing.assert_array_equal(numpy(loaded.log_prob(x, c)), numpy(flow.log_prob(x, c)))
    z, _ = sample(name, "z", 8)
    np.testing.assert_array_equal(numpy(loaded.bijector.inverse(z, **ctx(c))[0]),
                                  numpy(flow.bijector.inverse(z, **ctx(c))[0]))


# torch.compile takes about a minute per model on CPU, so on PyTorch every
# bijector is compiled once, together, in one chain.
JIT_CASES = list(CASES) if BACKEND != "torch" else ["all"]


@pytest.mark.parametrize("name", JIT_CASES)
def test_fit_and_predict_under_jit(name):
    if name == "all":
        # Invert(Sigmoid) goes first: it alone needs its input in (0, 1).
        names = sorted((n for n, case in CASES.items() if case[1] == (3,)),
                       key=lambda n: n != "Invert")
        flow = kf.Flow(kb.Chain([make(n) for n in names]), event_shape=(3,),
                       context_shape=(2,))
        _, c = sample("AffineCoupling[context]", "x", 64)
        x, _ = sample("Invert", "x", 64)
        inputs = {"x": x, "context": c}
    else:
        flow = _flow(name)
        inputs = _inputs(name, 64)
    flow.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    history = flow.fit(inputs, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    predicted = flow.predict(inputs, batch_size=64, verbose=0)
    x, c = (inputs["x"], inputs["context"]) if isinstance(inputs, dict) else (inputs, None)
    np.testing.assert_allclose(predicted, numpy(flow.log_prob(x, c)), rtol=1e-4, atol=1e-4)


# -- RealNVP's ResNet conditioner -------------------------------------------

@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
def test_a_new_resnet_coupling_is_the_identity(mask):
    coupling = kb.AffineCoupling(hidden_channels=8, num_blocks=2, mask=mask,
                                 scale="learned_tanh")
    x = np.random.default_rng(0).normal(size=(4, 4, 4, 2)).astype("float32")
    for training in (False, True):
        z, log_det = coupling.forward(x, training=training)
        np.testing.assert_array_equal(numpy(z), x)
        np.testing.assert_array_equal(numpy(log_det), np.zeros(4))
    assert isinstance(coupling.conditioner, kf.layers.ResNet)
    assert len(coupling.conditioner.blocks) == 2


def test_resnet_config_round_trip_and_batch_statistics():
    net = kf.layers.ResNet(6, hidden_channels=8, num_blocks=2)
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype("float32")
    assert numpy(net(x)).shape == (3, 4, 4, 6)
    np.testing.assert_array_equal(numpy(net(x)), 0.0)          # zero-initialised output
    clone = kf.layers.ResNet.from_config(net.get_config())
    assert clone.get_config() == net.get_config()
    # BatchNormalization: training=True updates the moving statistics.
    before = [numpy(w) for w in net.non_trainable_weights]
    net(x + 3.0, training=True)
    after = [numpy(w) for w in net.non_trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_coupling_conditioner_choice_is_saved():
    glow = kb.AffineCoupling(hidden_channels=8, mask="channel")
    realnvp = kb.AffineCoupling(hidden_channels=8, num_blocks=3, scale="learned_tanh")
    assert glow.get_config()["num_blocks"] is None
    config = realnvp.get_config()
    assert config["num_blocks"] == 3 and config["scale"] == "learned_tanh"
    x = np.zeros((1, 4, 4, 2), "float32")
    glow.forward(x)
    kb.AffineCoupling.from_config(config).forward(x)
    assert isinstance(glow.conditioner, kf.layers.ConvNet)
    # Configs saved before `num_blocks` existed still load, with a ConvNet.
    old = dict(glow.get_config())
    del old["num_blocks"]
    assert kb.AffineCoupling.from_config(old).num_blocks is None
