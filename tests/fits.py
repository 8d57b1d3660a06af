"""Shared training checks with known answers, for the model tests."""

import numpy as np
import keras
from keras import ops

from cross_backend import on_another_backend
from real_data import dataset_file


def correlated_gaussian(seed=0):
    """(train, test, cov, entropy) for N(0, S), S = R diag(2.0^2, 0.5^2) R^T:
    2,048 training and 4,096 test points; entropy 0.5 log det(2 pi e S)."""
    rng = np.random.default_rng(seed)
    angle = 0.5
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    cov = rot @ np.diag([4.0, 0.25]) @ rot.T
    chol = np.linalg.cholesky(cov)
    train = (rng.normal(size=(2048, 2)) @ chol.T).astype("float32")
    test = (rng.normal(size=(4096, 2)) @ chol.T).astype("float32")
    return train, test, cov, 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * cov))


def assert_image_flow_learns_mnist(flow, tmp_path):
    """Two epochs on 512 real MNIST digits bring `flow` below 7 bits/dim on 128
    test digits (a uniform model is exactly 8, an untrained one above 10);
    samples are images in [0, 255]; a saved and loaded copy scores the same,
    here and on the next backend (`cross_backend`; the stochastic log-dets'
    fixed inference probes are the same on every backend)."""
    with np.load(dataset_file("mnist")) as data:
        train = data["x_train"][:512].reshape(-1, 28, 28, 1).astype("float32")
        test = data["x_test"][:128].reshape(-1, 28, 28, 1).astype("float32")
    flow.compile(optimizer=keras.optimizers.Adam(2e-3))
    flow.fit(train, batch_size=64, epochs=2, verbose=0)
    bits = float(np.mean(ops.convert_to_numpy(flow.bits_per_dim(test))))
    assert bits < 7.0, bits
    samples = ops.convert_to_numpy(flow.sample(2, seed=0))
    assert samples.shape == (2, 28, 28, 1) and samples.min() >= 0 and samples.max() <= 255
    path = str(tmp_path / "image_flow.keras")
    flow.save(path)
    loaded = keras.saving.load_model(path)
    expected = ops.convert_to_numpy(flow.bits_per_dim(test[:8]))
    np.testing.assert_allclose(ops.convert_to_numpy(loaded.bits_per_dim(test[:8])), expected,
                               rtol=1e-5)
    for backend, result in on_another_backend(flow, "bits_per_dim", tmp_path,
                                             images=test[:8]).items():
        np.testing.assert_allclose(result, expected, rtol=1e-4, err_msg=backend)
