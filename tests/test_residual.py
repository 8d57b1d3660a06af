"""Residual flows: spectral normalisation, LipSwish, the power-series log-det
and its Neumann gradient, the fixed-point inverse, ResidualFlow.

The generic bijector checks (dense Jacobian, round trip, save/load, jit) run
on `ResidualBlock` in test_bijectors.py.
"""

import numpy as np
import keras
import pytest
from keras import ops

from keras_flows import ResidualFlow
from keras_flows.bijectors import ResidualBlock
from keras_flows.layers import LipSwish, SpectralConv2D, SpectralDense
from keras_flows.utils.backend import vjp
from fits import assert_image_flow_learns_mnist, correlated_gaussian


def numpy(x):
    return ops.convert_to_numpy(x)


def randomize(layer, scale, seed=0):
    rng = np.random.default_rng(seed)
    for w in layer.trainable_weights:
        w.assign(rng.normal(scale=scale, size=w.shape).astype(w.dtype))


def spectral_norm(layer):
    return np.linalg.svd(numpy(layer._kernel()).astype(np.float64), compute_uv=False)[0]


def test_spectral_dense_bounds_the_spectral_norm():
    layer = SpectralDense(7, coefficient=0.9, dtype="float64")
    layer.build((None, 5))
    assert spectral_norm(layer) <= 0.9 + 1e-12
    randomize(layer, 2.0)
    layer.converge(iterations=1000)                  # power iteration, not the SVD
    # sigma is estimated from below, so ||W'|| >= c, equal at convergence.
    assert 0.9 - 1e-9 <= spectral_norm(layer) < 0.9 * (1 + 1e-5)
    # A kernel already inside the bound is left as it is.
    layer.kernel.assign(numpy(layer.kernel) * 1e-3)
    layer.converge()
    np.testing.assert_allclose(numpy(layer._kernel()), numpy(layer.kernel), rtol=1e-12)
    x = np.random.default_rng(1).normal(size=(4, 5))
    np.testing.assert_allclose(numpy(layer(x)), x @ numpy(layer.kernel) + numpy(layer.bias),
                               rtol=1e-12)


def test_training_calls_warm_start_the_power_iteration():
    block = ResidualBlock(hidden_units=(6,), lipschitz=0.8, seed=0, dtype="float64")
    x = np.random.default_rng(0).normal(size=(8, 3))
    block.forward(x)
    for layer in block.linear_layers:
        randomize(layer, 1.5, seed=3)
    for _ in range(60):                               # one stored update per training call
        block.forward(x, training=True)
    for layer in block.linear_layers:
        assert spectral_norm(layer) <= 0.8 * (1 + 1e-6)


def test_lipswish_formula_and_lipschitz_bound():
    layer = LipSwish(dtype="float64")
    x = np.linspace(-20, 20, 400001)
    for w in (-3.0, 0.5, 4.0):
        if not layer.built:
            layer.build(x.shape)
        layer.beta_weight.assign(w)
        beta = np.log1p(np.exp(w))
        y = numpy(layer(x))
        np.testing.assert_allclose(y, x / (1 + np.exp(-beta * x)) / 1.1, rtol=1e-12)
        slopes = np.diff(y) / np.diff(x)
        assert slopes.max() <= 1.0 and slopes.min() >= -0.1


def _block(dim, seed, **kwargs):
    block = ResidualBlock(hidden_units=(16,), lipschitz=0.9, seed=seed, dtype="float64",
                          **kwargs)
    block.forward(np.zeros((1, dim)))
    return block


def _series(block, x, seeds):
    block.eval_log_det = "series"
    try:
        estimates = []
        for s in seeds:
            block.eval_seed = int(s)
            estimates.append(numpy(block.forward(x)[1]).mean())
        return np.array(estimates)
    finally:
        block.eval_log_det = "exact"


@pytest.mark.parametrize("dim", [2, 4])
def test_power_series_estimate_is_unbiased(dim):
    block = _block(dim, seed=dim)
    x0 = np.random.default_rng(dim).normal(size=(1, dim))
    exact = numpy(block.forward(x0)[1])[0]
    # Each call: one roulette draw N shared by 256 probes of the same point.
    estimates = _series(block, np.repeat(x0, 256, axis=0), range(60))
    error = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 3 * error + 1e-3, (estimates.mean(), exact, error)


def test_truncated_series_converges_to_the_exact_log_det():
    # Without the roulette, 40 terms: the truncation error is below
    # 0.9^41 / 41 * D; what remains is the Hutchinson error of 512 probes.
    block = _block(2, seed=5, geometric_p=None, series_terms=40, max_terms=40)
    x0 = np.random.default_rng(5).normal(size=(1, 2))
    exact = numpy(block.forward(x0)[1])[0]
    estimates = _series(block, np.repeat(x0, 512, axis=0), [0])
    assert abs(estimates[0] - exact) < 0.05


def test_neumann_gradient_is_unbiased():
    # d/dx of the series estimate (the Neumann-series gradient, averaged over
    # draws) against d/dx of the exact log-det.
    dim = 3
    block = _block(dim, seed=7)
    x0 = np.random.default_rng(7).normal(size=(1, dim))

    def exact(x):
        return block.forward(x)[1]

    _, grad = vjp(exact, ops.convert_to_tensor(x0), ops.ones((1,), dtype="float64"))
    target = numpy(grad)[0]
    block.eval_log_det = "series"
    grads = []
    x = ops.convert_to_tensor(np.repeat(x0, 128, axis=0))
    for s in range(60):
        block.eval_seed = s
        _, g = vjp(lambda v: block.forward(v)[1], x, ops.ones((128,), dtype="float64") / 128)
        grads.append(numpy(g).sum(axis=0))
    block.eval_log_det = "exact"
    grads = np.array(grads)
    error = grads.std(axis=0, ddof=1) / np.sqrt(len(grads))
    assert np.all(np.abs(grads.mean(axis=0) - target) < 3 * error + 1e-3), (
        grads.mean(axis=0), target, error)


def test_fixed_point_inverse_within_its_tolerance():
    block = _block(4, seed=1, inverse_atol=1e-9)
    x = np.random.default_rng(2).normal(size=(16, 4))
    z, log_det = block.forward(x)
    x2, inv_log_det = block.inverse(z)
    # Stopping at a step below atol leaves at most Lip / (1 - Lip) * atol.
    assert np.abs(numpy(x2) - x).max() < 0.9 / 0.1 * 1e-9
    np.testing.assert_allclose(numpy(inv_log_det), -numpy(log_det), atol=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="lipschitz"):
        ResidualBlock(lipschitz=1.0)
    with pytest.raises(ValueError, match="log_det"):
        ResidualBlock(log_det="hutchinson")
    with pytest.raises(ValueError, match="geometric_p"):
        ResidualBlock(geometric_p=1.5)
    with pytest.raises(ValueError, match="max_terms"):
        ResidualBlock(series_terms=8, max_terms=4)
    with pytest.raises(ValueError, match="coefficient"):
        SpectralDense(4, coefficient=0)
    with pytest.raises(ValueError, match="vectors"):
        ResidualFlow(event_shape=(4, 4, 1))
    with pytest.raises(ValueError, match="vectors"):
        ResidualBlock().forward(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="squeezed"):
        ResidualFlow(image_shape=(6, 6, 1), levels=3, blocks_per_level=1, hidden_channels=4)


def test_residual_flow_fits_a_gaussian(tmp_path):
    train, test, cov, entropy = correlated_gaussian()
    flow = ResidualFlow(event_shape=(2,), num_blocks=2, hidden_units=(16,), seed=0)
    flow.compile(optimizer=keras.optimizers.Adam(1e-2))
    flow.fit(train, batch_size=256, epochs=25, verbose=0)
    nll = -float(np.mean(numpy(flow.log_prob(test))))
    # Monte Carlo error of the held-out mean: about 0.02 nats.
    assert nll < entropy + 0.1, (nll, entropy)

    samples = numpy(flow.sample(4096, seed=0))
    np.testing.assert_allclose(np.cov(samples.T), cov, atol=0.4)
    path = str(tmp_path / "residual.keras")
    flow.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(numpy(loaded.log_prob(test[:64])),
                               numpy(flow.log_prob(test[:64])), rtol=1e-6, atol=1e-6)


def test_iresnet_truncated_series_trains_under_jit():
    flow = ResidualFlow(event_shape=(3,), num_blocks=1, hidden_units=(8,), geometric_p=None,
                        series_terms=3, seed=0)
    # torch.compile of ResidualBlock is covered by test_bijectors.py's one chain.
    flow.compile(optimizer=keras.optimizers.Adam(1e-3),
                 jit_compile=keras.backend.backend() != "torch")
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    before = [numpy(w).copy() for w in flow.trainable_weights]
    history = flow.fit(x, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(numpy(w), b) for w, b in zip(flow.trainable_weights, before))


def test_spectral_conv_bounds_the_operator_norm():
    # The operator x -> conv(x, W') on 4x4x2 images as a dense 32x32 matrix.
    layer = SpectralConv2D(3, 3, coefficient=0.9, seed=0, dtype="float64")
    layer.build((None, 4, 4, 2))
    randomize(layer, 2.0)
    layer.converge(1000)
    basis = np.eye(32).reshape(32, 4, 4, 2)
    columns = numpy(layer(basis)) - numpy(layer.bias)
    norm = np.linalg.svd(columns.reshape(32, -1), compute_uv=False)[0]
    assert 0.9 - 1e-9 <= norm < 0.9 * (1 + 1e-5), norm
    assert SpectralConv2D.from_config(layer.get_config()).coefficient == 0.9
    with pytest.raises(ValueError, match="kernel_size"):
        SpectralConv2D(3, 2)


def test_image_residual_flow_learns_real_mnist(tmp_path):
    flow = ResidualFlow(image_shape=(28, 28, 1), levels=3, blocks_per_level=1,
                        hidden_channels=16, seed=0)
    assert type(flow).__name__ == "ImageResidualFlow"
    assert_image_flow_learns_mnist(flow, tmp_path)
