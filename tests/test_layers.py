"""Dense, MaskedDense, MLP/ConvNet/ResNet sizing and MADE, on whichever backend
the suite runs on."""

import numpy as np
import pytest
import keras
from keras import ops

import keras_flows as kf
from keras_flows.layers import MADE, MLP, ConvNet, Dense, MaskedDense, ResNet


def _np(x):
    return ops.convert_to_numpy(x)


def _t(a):
    return ops.convert_to_tensor(np.asarray(a), "float64")


def _randomize(layer, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        v.assign(rng.normal(scale=scale, size=v.shape).astype(v.dtype))


def _compile(fn):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    import torch

    return torch.compile(fn, backend="eager", fullgraph=True)


# -- Dense -------------------------------------------------------------------

@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_dense_float64_matches_numpy(activation):
    # keras.layers.Dense fails this on PyTorch (its product is float32), and
    # with tanh on JAX.
    x = np.random.default_rng(1).normal(size=(7, 4))
    layer = Dense(5, activation=activation, bias_initializer="random_normal",
                  dtype="float64")
    y = layer(_t(x))
    assert keras.backend.standardize_dtype(y.dtype) == "float64"
    h = x @ _np(layer.kernel) + _np(layer.bias)
    expected = {None: h, "relu": np.maximum(h, 0.0), "tanh": np.tanh(h)}[activation]
    np.testing.assert_allclose(_np(y), expected, rtol=1e-12, atol=1e-14)


def test_dense_variables_match_keras_dense():
    ours, theirs = Dense(3, name="d"), keras.layers.Dense(3, name="d")
    ours.build((None, 4))
    theirs.build((None, 4))
    assert [(v.name, tuple(v.shape)) for v in ours.weights] == \
        [(v.name, tuple(v.shape)) for v in theirs.weights] == [("kernel", (4, 3)),
                                                               ("bias", (3,))]
    clone = Dense.from_config(Dense(3, activation="tanh", name="d").get_config())
    assert clone.get_config()["activation"] == "tanh"


def test_dense_leading_axes_and_jit():
    layer = Dense(3, dtype="float64")
    x = np.random.default_rng(2).normal(size=(2, 5, 4))
    eager = _np(layer(_t(x)))
    np.testing.assert_allclose(eager, x @ _np(layer.kernel) + _np(layer.bias), rtol=1e-12)
    np.testing.assert_allclose(_np(_compile(layer)(_t(x))), eager, rtol=1e-12)


def test_masked_dense_uses_only_unmasked_weights():
    mask = np.array([[1, 0, 1], [0, 1, 1]])
    layer = MaskedDense(3, mask, bias_initializer="random_normal", dtype="float64")
    x = np.random.default_rng(3).normal(size=(4, 2))
    y = layer(_t(x))
    assert [v.name for v in layer.weights] == ["kernel", "bias"]
    expected = x @ (_np(layer.kernel) * mask) + _np(layer.bias)
    np.testing.assert_allclose(_np(y), expected, rtol=1e-12, atol=1e-14)
    clone = MaskedDense.from_config(layer.get_config())
    np.testing.assert_array_equal(clone.kernel_mask, mask.astype(bool))
    with pytest.raises(ValueError, match="mask"):
        MaskedDense(3, np.ones((2, 4)))
    with pytest.raises(ValueError, match="rows"):
        MaskedDense(3, mask)(np.ones((1, 5)))


# -- MLP, ConvNet, ResNet sized later -----------------------------------------

class _Holder(keras.Model):
    def __init__(self, network, **kwargs):
        super().__init__(**kwargs)
        self.network = network

    def call(self, x):
        return self.network(x)


class _KerasDenseMLP(keras.layers.Layer):
    """The MLP as it was before keras_flows.layers.Dense: keras.layers.Dense."""

    def __init__(self, output_dim, hidden_units, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [keras.layers.Dense(u, activation="relu", name=f"dense_{i}")
                       for i, u in enumerate(hidden_units)]
        self.out = keras.layers.Dense(output_dim, name="out")

    def call(self, x):
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)


def test_mlp_loads_weights_written_with_keras_dense(tmp_path):
    x = np.random.default_rng(4).normal(size=(5, 3)).astype("float32")
    # The class name keys the Model's `layers` list in the file: keep "MLP".
    old = _Holder(type("MLP", (_KerasDenseMLP,), {})(4, (8, 6)))
    old(x)
    _randomize(old)
    old.save_weights(tmp_path / "old.weights.h5")
    new = _Holder(MLP(4, (8, 6)))
    new(x)
    new.load_weights(tmp_path / "old.weights.h5")
    assert [v.path.split("/", 2)[2] for v in new.weights] == \
        [v.path.split("/", 2)[2] for v in old.weights]
    np.testing.assert_allclose(_np(new(x)), _np(old(x)), rtol=1e-6)


def test_mlp_output_dim_set_before_build():
    mlp = MLP(hidden_units=(8,), dtype="float64")
    assert mlp.get_config()["output_dim"] is None
    mlp.output_dim = 6
    y = mlp(_t(np.ones((2, 3))))
    assert tuple(y.shape) == (2, 6)
    assert [v.path.split("/", 1)[1] for v in mlp.weights] == [
        "dense_0/kernel", "dense_0/bias", "out/kernel", "out/bias"]
    np.testing.assert_array_equal(_np(y), 0.0)  # the zero last layer
    assert MLP.from_config(mlp.get_config()).output_dim == 6
    with pytest.raises(ValueError, match="output_dim is None"):
        MLP(hidden_units=(8,)).build((None, 3))


@pytest.mark.parametrize("cls", [ConvNet, ResNet])
def test_image_networks_output_channels_set_before_build(cls):
    kwargs = {"num_blocks": 1} if cls is ResNet else {}
    net = cls(hidden_channels=4, **kwargs)
    with pytest.raises(ValueError, match="output_channels is None"):
        net.build((None, 4, 4, 2))
    net = cls(hidden_channels=4, **kwargs)
    net.output_channels = 3
    y = net(np.ones((1, 4, 4, 2), "float32"))
    assert tuple(y.shape) == (1, 4, 4, 3)
    assert net.out.name == "out"
    assert cls.from_config(net.get_config()).output_channels == 3


# -- MADE ----------------------------------------------------------------------

_D, _P, _K = 4, 2, 3


def _order(order, d=_D, seed=None):
    if order == "natural":
        return np.arange(d)
    if order == "reversed":
        return np.arange(d)[::-1]
    if order == "random":
        return np.random.default_rng(seed).permutation(d)
    return np.asarray(order)


def _jacobian(fn, x, eps=1e-6):
    """d fn / d x by central differences, (batch, out, in), in float64."""
    d = x.shape[-1]
    shifts = eps * np.eye(d)
    plus = _np(fn(_t((x[:, None, :] + shifts).reshape(-1, d)))).reshape(len(x), d, -1)
    minus = _np(fn(_t((x[:, None, :] - shifts).reshape(-1, d)))).reshape(len(x), d, -1)
    return np.swapaxes((plus - minus) / (2 * eps), 1, 2)


@pytest.mark.parametrize("context", [False, True], ids=["", "context"])
@pytest.mark.parametrize("residual_blocks", [0, 1])
@pytest.mark.parametrize("order", ["natural", "reversed", "random", [2, 0, 3, 1]],
                         ids=["natural", "reversed", "random", "explicit"])
def test_made_is_autoregressive(order, residual_blocks, context):
    made = MADE(_D * _P, hidden_units=(12, 12), activation="tanh", order=order,
                residual_blocks=residual_blocks, context_dim=_K if context else None,
                seed=3, dtype="float64")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, _D))
    c = rng.normal(size=(3, _K))
    made.build((None, _D))
    _randomize(made)
    position = _order(order, seed=3)
    # allowed[o, j]: output o (feature o // P) may depend on x_j.
    allowed = position[np.arange(_D * _P) // _P][:, None] > position[None, :]

    jac = _jacobian(lambda v: made(v, _t(np.repeat(c, _D, 0)) if context else None), x)
    assert np.all(jac[:, ~allowed] == 0.0)  # exactly: those weights are masked
    assert np.all(np.abs(jac[:, allowed]) > 1e-8)
    first = np.argmin(position)
    assert not allowed[first * _P:(first + 1) * _P].any()  # bias (and context) only
    if context:
        jac_c = _jacobian(lambda v: made(_t(np.repeat(x, _K, 0)), v), c)
        assert np.all(np.abs(jac_c) > 1e-8)  # every output sees the context


def test_made_single_feature_is_constant():
    made = MADE(3, hidden_units=(4,), dtype="float64")
    made.build((None, 1))
    _randomize(made)
    y = _np(made(_t([[0.3], [-2.0], [5.0]])))
    np.testing.assert_array_equal(y, np.broadcast_to(y[:1], y.shape))
    np.testing.assert_allclose(y[0], _np(made.out.bias), rtol=1e-12)
    # With a context, a function of the context alone.
    made = MADE(3, hidden_units=(4,), context_dim=2, dtype="float64")
    made.build((None, 1))
    _randomize(made)
    c = np.array([[0.5, -1.0]])
    x = np.array([[0.3], [-2.0]])
    y = _np(made(_t(x), _t(np.repeat(c, 2, 0))))
    np.testing.assert_array_equal(y[0], y[1])
    assert np.all(np.abs(_jacobian(lambda v: made(_t([[0.3]]), v), c)) > 1e-8)


def test_made_without_hidden_layers():
    made = MADE(_D, hidden_units=(), order="reversed", context_dim=_K, dtype="float64")
    made.build((None, _D))
    _randomize(made)
    x, c = np.random.default_rng(9).normal(size=(1, _D)), np.ones((_D, _K))
    jac = _jacobian(lambda v: made(v, _t(c)), x)[0]
    allowed = np.arange(_D)[::-1][:, None] > np.arange(_D)[::-1][None, :]
    assert np.all(jac[~allowed] == 0.0) and np.all(np.abs(jac[allowed]) > 1e-8)


def _made_numpy(made, x, c, order, hidden_units, params, blocks, act):
    """MADE's forward pass from its weights with masks built here from the
    degree formulas of Germain et al. (the context, if any, of degree 0)."""
    d = x.shape[-1]
    w = {v.path.split("/", 1)[1]: _np(v) for v in made.weights}
    m_in = order + 1
    low = 0 if c is not None else 1  # hidden degrees in low..D-1
    degrees = [np.arange(u) % (d - low) + low for u in hidden_units]
    h = x
    previous = m_in
    for i, degree in enumerate(degrees):
        mask = previous[:, None] <= degree[None, :]
        h = h @ (w[f"dense_{i}/kernel"] * mask) + w[f"dense_{i}/bias"]
        if i == 0:
            if c is not None:
                h = h + c @ w["context/kernel"]
            h = act(h)
            same = degree[:, None] <= degree[None, :]
            for k in range(blocks):
                r = act(h @ (w[f"block_{k}_dense_0/kernel"] * same)
                        + w[f"block_{k}_dense_0/bias"])
                h = h + r @ (w[f"block_{k}_dense_1/kernel"] * same) \
                    + w[f"block_{k}_dense_1/bias"]
        else:
            h = act(h)
        previous = degree
    mask = previous[:, None] < np.repeat(m_in, params)[None, :]
    return h @ (w["out/kernel"] * mask) + w["out/bias"]


@pytest.mark.parametrize("context", [False, True], ids=["", "context"])
@pytest.mark.parametrize("blocks", [0, 2])
def test_made_float64_matches_numpy(blocks, context):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, _D))
    c = rng.normal(size=(5, _K)) if context else None
    made = MADE(_D * _P, hidden_units=(6, 6, 6), activation="tanh", order="reversed",
                residual_blocks=blocks, context_dim=_K if context else None,
                dtype="float64")
    made.build((None, _D))
    _randomize(made)
    y = made(_t(x), None if c is None else _t(c))
    assert keras.backend.standardize_dtype(y.dtype) == "float64"
    expected = _made_numpy(made, x, c, _order("reversed"), (6, 6, 6), _P, blocks, np.tanh)
    np.testing.assert_allclose(_np(y), expected, rtol=1e-12, atol=1e-13)


def test_made_starts_at_zero():
    rng = np.random.default_rng(7)
    made = MADE(_D * _P, hidden_units=(8,), residual_blocks=1, context_dim=_K)
    y = made(rng.normal(size=(4, _D)).astype("float32"),
             rng.normal(size=(4, _K)).astype("float32"))
    np.testing.assert_array_equal(_np(y), 0.0)
    assert not np.any(_np(made.out.kernel)) and not np.any(_np(made.out.bias))


def test_made_config_round_trip_and_jit():
    rng = np.random.default_rng(8)
    x, c = rng.normal(size=(4, _D)), rng.normal(size=(4, _K))
    made = MADE(hidden_units=(8, 8), order="random", residual_blocks=1,
                activation="tanh", dtype="float64")  # seed drawn, kept in config
    made.output_dim = _D * _P
    made.build((None, _D), (None, _K))  # the context size inferred at build
    _randomize(made)
    config = made.get_config()
    assert config["context_dim"] == _K and config["seed"] is not None
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(made))
    assert isinstance(clone, MADE) and clone.get_config() == config
    clone(_t(x), _t(c))
    clone.set_weights(made.get_weights())
    np.testing.assert_array_equal(_np(clone(_t(x), _t(c))), _np(made(_t(x), _t(c))))
    compiled = _compile(lambda a, b: made(a, b))
    np.testing.assert_allclose(_np(compiled(_t(x), _t(c))), _np(made(_t(x), _t(c))),
                               rtol=1e-12)


def test_made_errors():
    with pytest.raises(ValueError, match="output_dim is None"):
        MADE().build((None, 3))
    with pytest.raises(ValueError, match="multiple"):
        MADE(7).build((None, 3))
    with pytest.raises(ValueError, match="order"):
        MADE(6, order="sideways")
    with pytest.raises(ValueError, match="permutation"):
        MADE(6, order=[0, 0, 1])
    with pytest.raises(ValueError, match="entries"):
        MADE(6, order=[1, 0]).build((None, 3))
    with pytest.raises(ValueError, match="one size"):
        MADE(6, hidden_units=(8, 4), residual_blocks=1)
    with pytest.raises(ValueError, match="context"):
        MADE(6, context_dim=2).build((None, 3), (None, 5))
    made = MADE(6)
    made.build((None, 3))
    with pytest.raises(ValueError, match="without a context"):
        made(np.ones((2, 3), "float32"), np.ones((2, 2), "float32"))
    made = MADE(6, context_dim=2)
    made.build((None, 3))
    with pytest.raises(ValueError, match="takes a context"):
        made(np.ones((2, 3), "float32"))


def test_layers_are_exported():
    for name in ("MADE", "Dense", "MaskedDense", "MLP", "ConvNet", "ResNet"):
        assert name in kf.layers.__all__ and hasattr(kf.layers, name)
