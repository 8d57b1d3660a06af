"""Tests of ActNorm, BatchNorm and LULinear against independent numpy answers."""

import numpy as np
import pytest
import keras

from keras_flows.bijectors.linear import LULinear
from keras_flows.bijectors.normalization import ActNorm, BatchNorm
from keras_flows.models.flow import Flow


def np_(x):
    return keras.ops.convert_to_numpy(x)


def gaussian_data(shape, mean, std, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * std + mean).astype(dtype)


def standard_normal_log_prob(z):
    z = z.reshape(len(z), -1)
    return np.sum(-0.5 * z ** 2 - 0.5 * np.log(2 * np.pi), axis=1)


def fit_one_step(flow, x):
    flow.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    flow.fit(x, batch_size=len(x), epochs=1, shuffle=False, verbose=0)


def numeric_log_det(fn, x, h=1e-6):
    """log|det J| of `fn` at each row of `x` (float64) by central differences."""
    event = x.shape[1:]
    dim = int(np.prod(event))
    basis = np.eye(dim).reshape((dim, *event))
    out = []
    for x0 in x:
        plus = np_(fn(x0[None] + h * basis)).reshape(dim, dim)
        minus = np_(fn(x0[None] - h * basis)).reshape(dim, dim)
        jac = ((plus - minus) / (2 * h)).T  # jac[i, j] = dz_i / dx_j
        sign, logabs = np.linalg.slogdet(jac)
        assert sign != 0
        out.append(logabs)
    return np.array(out)


# ---------------------------------------------------------------- ActNorm
def test_actnorm_data_dependent_init_inside_fit_and_save(tmp_path):
    mean = np.array([2.0, -1.0, 5.0])
    std = np.array([0.5, 3.0, 2.0])
    x = gaussian_data((256, 3), mean, std)
    flow = Flow(ActNorm(), event_shape=(3,))
    bijector = flow.bijector
    # Before any training step the layer is the identity.
    np.testing.assert_allclose(np_(flow.encode(x)), x, rtol=0, atol=0)
    assert float(np_(bijector.initialized)) == 0.0

    fit_one_step(flow, x)

    x64 = x.astype("float64")
    np.testing.assert_allclose(np_(bijector.initial_bias), -x64.mean(0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(bijector.initial_log_scale), -np.log(x64.std(0)),
                               rtol=1e-5, atol=1e-5)
    assert float(np_(bijector.initialized)) == 1.0
    # The trainable offsets moved by at most one Adam step of size 1e-3.
    for offset in (bijector.bias, bijector.log_scale):
        assert np.max(np.abs(np_(offset))) <= 1.01e-3
    # So the latent is standardised per feature (up to that one step).
    z = np_(flow.encode(x))
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-2)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-2)

    # log p(x) from the variables, computed in numpy: init + offset.
    b = np_(bijector.initial_bias) + np_(bijector.bias)
    s = np_(bijector.initial_log_scale) + np_(bijector.log_scale)
    z_np = (x64 + b) * np.exp(s)
    expected = standard_normal_log_prob(z_np) + s.sum()
    log_prob = np_(flow.log_prob(x))
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-4)

    path = str(tmp_path / "actnorm_flow.keras")
    flow.save(path)
    loaded = keras.saving.load_model(path)
    assert float(np_(loaded.bijector.initialized)) == 1.0
    np.testing.assert_allclose(np_(loaded.log_prob(x)), log_prob, rtol=1e-6, atol=1e-6)


def test_actnorm_initialises_once_over_many_fit_steps():
    x = gaussian_data((256, 2), np.array([-3.0, 6.0]), np.array([0.2, 4.0]), seed=5)
    flow = Flow(ActNorm(), event_shape=(2,))
    flow.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    flow.fit(x, batch_size=64, epochs=2, shuffle=False, verbose=0)
    # Only the first batch (rows 0..63) set the start; later batches did not.
    first = x[:64].astype("float64")
    np.testing.assert_allclose(np_(flow.bijector.initial_bias), -first.mean(0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(flow.bijector.initial_log_scale),
                               -np.log(first.std(0)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(-first.mean(0), -x.astype("float64").mean(0), atol=1e-3)


def test_actnorm_image_init_in_direct_call():
    mean = np.array([1.0, -3.0, 0.5])
    std = np.array([2.0, 0.3, 1.5])
    x = gaussian_data((32, 4, 4, 3), mean, std, seed=1)
    layer = ActNorm()
    z, log_det = layer.forward(x, training=True)
    z, log_det = np_(z), np_(log_det)

    x64 = x.astype("float64")
    axes = (0, 1, 2)
    np.testing.assert_allclose(np_(layer.initial_bias), -x64.mean(axes), atol=1e-5)
    np.testing.assert_allclose(np_(layer.initial_log_scale), -np.log(x64.std(axes)),
                               atol=1e-5)
    np.testing.assert_allclose(z.mean(axes), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axes), 1.0, atol=1e-4)
    # 4 * 4 positions share each channel's scale.
    assert log_det.shape == (32,)
    # (ActNorm's default epsilon 1e-6 is added to the std before the log.)
    np.testing.assert_allclose(log_det, 16 * np.sum(-np.log(x64.std(axes) + 1e-6)),
                               rtol=1e-5, atol=1e-5)

    # A later training batch leaves the stored initialisation alone.
    before = np_(layer.initial_bias).copy(), np_(layer.initial_log_scale).copy()
    layer.forward(x * 10.0 + 3.0, training=True)
    np.testing.assert_array_equal(np_(layer.initial_bias), before[0])
    np.testing.assert_array_equal(np_(layer.initial_log_scale), before[1])

    # The inverse undoes the forward, with the opposite log-det.
    x_back, inv_log_det = layer.inverse(z)
    np.testing.assert_allclose(np_(x_back), x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np_(inv_log_det), -log_det, rtol=1e-6)


def test_actnorm_initialises_again_after_its_flag_is_reset():
    # Eager PyTorch skips the batch statistics once it has read `initialized`
    # as 1 (utils.backend.known_true); a flag reset by `assign`, as loading
    # an uninitialised state does, is read again.
    x = gaussian_data((64, 3), np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 1.0]), seed=3)
    y = gaussian_data((64, 3), np.array([-4.0, 3.0, 0.0]), np.array([0.1, 3.0, 2.0]), seed=4)
    layer = ActNorm()
    for _ in range(2):
        layer.forward(x, training=True)
    z, _ = layer.forward(y, training=True)  # still x's start
    x64 = x.astype("float64")
    np.testing.assert_allclose(np_(z), (y - x64.mean(0)) / (x64.std(0) + 1e-6),
                               rtol=1e-4, atol=1e-4)
    layer.initialized.assign(0.0)
    z, _ = layer.forward(y, training=True)
    np.testing.assert_allclose(np_(layer.initial_bias), -y.astype("float64").mean(0),
                               atol=1e-5)
    np.testing.assert_allclose(np_(z).mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np_(z).std(0), 1.0, atol=1e-4)


def test_actnorm_inference_before_init_is_identity():
    x = gaussian_data((8, 2, 2, 3), 4.0, 2.0)
    layer = ActNorm()
    z, log_det = layer.forward(x, training=False)
    np.testing.assert_array_equal(np_(z), x)
    np.testing.assert_array_equal(np_(log_det), np.zeros(8))
    assert float(np_(layer.initialized)) == 0.0


def test_actnorm_log_det_matches_finite_differences():
    rng = np.random.default_rng(2)
    layer = ActNorm(dtype="float64")
    layer.build((None, 2, 2, 3))
    layer.initial_bias.assign(rng.normal(size=3))
    layer.initial_log_scale.assign(rng.normal(size=3) * 0.5)
    layer.bias.assign(rng.normal(size=3) * 0.1)
    layer.log_scale.assign(rng.normal(size=3) * 0.1)
    layer.initialized.assign(1.0)
    x = rng.normal(size=(3, 2, 2, 3))
    _, log_det = layer.forward(x)
    expected = numeric_log_det(lambda v: layer.forward(v)[0], x)
    np.testing.assert_allclose(np_(log_det), expected, atol=1e-6)


# ---------------------------------------------------------------- BatchNorm
def test_batchnorm_training_statistics_and_momentum():
    mean = np.array([3.0, -2.0, 0.0, 10.0])
    std = np.array([0.5, 2.0, 1.0, 4.0])
    momentum = 0.9
    layer = BatchNorm(momentum=momentum, epsilon=1e-5)
    moving_mean, moving_var = np.zeros(4), np.ones(4)
    for step in range(2):
        x = gaussian_data((512, 4), mean * (step + 1), std, seed=step)
        z, log_det = layer.forward(x, training=True)
        z, log_det = np_(z), np_(log_det)
        x64 = x.astype("float64")
        np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
        np.testing.assert_allclose(
            log_det, np.sum(-0.5 * np.log(x64.var(0) + 1e-5)), rtol=1e-5)
        moving_mean = momentum * moving_mean + (1 - momentum) * x64.mean(0)
        moving_var = momentum * moving_var + (1 - momentum) * x64.var(0)
        np.testing.assert_allclose(np_(layer.moving_mean), moving_mean, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(np_(layer.moving_variance), moving_var, rtol=1e-5)


def test_batchnorm_moving_statistics_update_inside_fit():
    x = gaussian_data((128, 2), np.array([1.0, -4.0]), np.array([2.0, 0.5]))
    flow = Flow(BatchNorm(momentum=0.8), event_shape=(2,))
    fit_one_step(flow, x)
    x64 = x.astype("float64")
    np.testing.assert_allclose(np_(flow.bijector.moving_mean), 0.2 * x64.mean(0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(flow.bijector.moving_variance),
                               0.8 + 0.2 * x64.var(0), rtol=1e-5)


@pytest.mark.parametrize("shape", [(5,), (2, 2, 3)])
def test_batchnorm_inference_matches_numpy(shape):
    rng = np.random.default_rng(3)
    channels = shape[-1]
    layer = BatchNorm(epsilon=1e-3)
    layer.build((None, *shape))
    params = {
        "moving_mean": rng.normal(size=channels),
        "moving_variance": rng.uniform(0.5, 3.0, size=channels),
        "log_gamma": rng.normal(size=channels) * 0.3,
        "beta": rng.normal(size=channels),
    }
    for name, value in params.items():
        getattr(layer, name).assign(value.astype("float32"))
    x = rng.normal(size=(6, *shape)).astype("float32")
    z, log_det = layer.forward(x, training=False)

    mean, var = params["moving_mean"], params["moving_variance"]
    gamma, beta = np.exp(params["log_gamma"]), params["beta"]
    expected_z = (x - mean) / np.sqrt(var + 1e-3) * gamma + beta
    positions = int(np.prod(shape[:-1]))
    expected_log_det = positions * np.sum(params["log_gamma"] - 0.5 * np.log(var + 1e-3))
    np.testing.assert_allclose(np_(z), expected_z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(log_det), np.full(6, expected_log_det), rtol=1e-5)

    x_back, inv_log_det = layer.inverse(z)
    np.testing.assert_allclose(np_(x_back), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(inv_log_det), -np_(log_det), rtol=1e-6)


def test_batchnorm_log_det_matches_finite_differences():
    rng = np.random.default_rng(4)
    layer = BatchNorm(dtype="float64")
    layer.build((None, 4))
    layer.moving_mean.assign(rng.normal(size=4))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=4))
    layer.log_gamma.assign(rng.normal(size=4) * 0.3)
    layer.beta.assign(rng.normal(size=4))
    x = rng.normal(size=(3, 4))
    _, log_det = layer.forward(x, training=False)
    expected = numeric_log_det(lambda v: layer.forward(v, training=False)[0], x)
    np.testing.assert_allclose(np_(log_det), expected, atol=1e-6)


# ---------------------------------------------------------------- LULinear
def random_lu_layer(dim, seed, dtype="float32"):
    rng = np.random.default_rng(seed + 100)
    layer = LULinear(seed=seed, dtype=dtype)
    layer.build((None, dim))
    # Fill whole matrices: the layer must itself ignore the masked parts.
    layer.lower.assign(rng.normal(size=(dim, dim)) * 0.3)
    layer.upper.assign(rng.normal(size=(dim, dim)) * 0.3)
    layer.log_abs_diag.assign(rng.normal(size=dim) * 0.3)
    layer.bias.assign(rng.normal(size=dim))
    return layer


def numpy_weight(layer):
    dim = layer.dim
    lower = np.tril(np_(layer.lower).astype("float64"), -1) + np.eye(dim)
    upper = (np.triu(np_(layer.upper).astype("float64"), 1)
             + np.diag(np.exp(np_(layer.log_abs_diag).astype("float64"))))
    perm_matrix = np.zeros((dim, dim))
    perm_matrix[np.arange(dim), layer.permutation] = 1.0
    return perm_matrix @ lower @ upper


def test_lulinear_matches_dense_matrix():
    dim = 5
    layer = random_lu_layer(dim, seed=7)
    w = numpy_weight(layer)
    b = np_(layer.bias).astype("float64")
    sign, logabs = np.linalg.slogdet(w)
    assert sign != 0

    x = np.random.default_rng(8).normal(size=(10, dim)).astype("float32")
    z, log_det = layer.forward(x)
    np.testing.assert_allclose(np_(z), x.astype("float64") @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(log_det), np.full(10, logabs), rtol=1e-5, atol=1e-6)

    x_back, inv_log_det = layer.inverse(z)
    np.testing.assert_allclose(np_(x_back), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(inv_log_det), -np_(log_det), rtol=1e-6)


def test_lulinear_init_is_permutation_and_config_round_trips():
    layer = LULinear(seed=3)
    x = np.random.default_rng(9).normal(size=(4, 6)).astype("float32")
    z, log_det = layer.forward(x)
    perm = layer.permutation
    assert sorted(perm) == list(range(6))
    np.testing.assert_allclose(np_(z), x[:, perm], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np_(log_det), np.zeros(4))
    # The same seed draws the same permutation; the config carries it.
    twin = LULinear(seed=3)
    twin.build((None, 6))
    assert twin.permutation == perm
    trained = random_lu_layer(6, seed=11)
    clone = LULinear.from_config(trained.get_config())
    clone.build((None, 6))
    clone.set_weights(trained.get_weights())
    assert clone.permutation == trained.permutation
    np.testing.assert_allclose(np_(clone.forward(x)[0]), np_(trained.forward(x)[0]),
                               rtol=1e-6)


def test_lulinear_log_det_matches_finite_differences():
    layer = random_lu_layer(4, seed=5, dtype="float64")
    x = np.random.default_rng(6).normal(size=(3, 4))
    _, log_det = layer.forward(x)
    expected = numeric_log_det(lambda v: layer.forward(v)[0], x)
    np.testing.assert_allclose(np_(log_det), expected, atol=1e-6)
    # And the inverse's log-det is the negative, at the image point.
    z = layer.forward(x)[0]
    np.testing.assert_allclose(np_(layer.inverse(z)[1]), -np_(log_det), atol=1e-10)
