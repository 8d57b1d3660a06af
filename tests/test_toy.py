import functools
import importlib.util
import pathlib

import numpy as np
import pytest

from keras_flows.datasets.toy import TOY_DENSITIES, toy

NAMES = ("moons", "8gaussians", "checkerboard", "pinwheel", "rings", "circles",
         "2spirals", "swissroll")


def test_names():
    assert TOY_DENSITIES == NAMES


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_shape_dtype_finite(name, n):
    x = toy(name, n, seed=0)
    assert isinstance(x, np.ndarray)
    assert x.shape == (n, 2)
    assert x.dtype == np.float32
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("name", NAMES)
def test_determinism(name):
    np.testing.assert_array_equal(toy(name, 500, seed=3), toy(name, 500, seed=3))
    np.testing.assert_array_equal(toy(name, 500, seed=np.int64(3)), toy(name, 500, seed=3))
    assert not np.array_equal(toy(name, 500, seed=3), toy(name, 500, seed=4))
    assert not np.array_equal(toy(name, 500), toy(name, 500))


def test_bad_name():
    with pytest.raises(ValueError, match="checkerboard"):
        toy("banana", 10)


@pytest.mark.parametrize("n", [0, -1, 2.0, 2.5, "10", None, True])
def test_bad_n(n):
    with pytest.raises(ValueError):
        toy("moons", n)


def test_numpy_int_n():
    assert toy("rings", np.int64(5), seed=0).shape == (5, 2)


def test_checkerboard_squares():
    x = toy("checkerboard", 20000, seed=0).astype(np.float64)
    assert np.all(np.abs(x) <= 4.0)
    col = np.floor(x[:, 0] / 2).astype(int) + 2  # 0..3
    row = np.floor(x[:, 1] / 2).astype(int) + 2
    # FFJORD's pattern: the 2x2 squares with an even column + row sum.
    assert np.all((col + row) % 2 == 0)
    counts = np.bincount(col * 4 + row, minlength=16).reshape(4, 4)
    occupied = counts[(np.add.outer(np.arange(4), np.arange(4)) % 2) == 0]
    assert occupied.size == 8
    np.testing.assert_allclose(occupied / len(x), 1 / 8, atol=0.01)


def _radii_modes(x, centers, width):
    r = np.linalg.norm(x.astype(np.float64), axis=1)
    for c in centers:
        near = np.abs(r - c) < width
        yield r[near], near.mean()


def test_rings_radii():
    x = toy("rings", 20000, seed=0)
    for (r, frac), c in zip(_radii_modes(x, [3.0, 2.25, 1.5, 0.75], 0.3), [3.0, 2.25, 1.5, 0.75]):
        assert abs(frac - 0.25) < 0.02
        assert abs(np.median(r) - c) < 0.02
    # Noise std 0.08 per coordinate: the radial spread of the outer ring.
    r = np.linalg.norm(x, axis=1)
    assert abs(np.std(r[r > 2.7] - 3.0) - 0.08) < 0.01


def test_circles_radii():
    x = toy("circles", 20000, seed=0)
    for (r, frac), c in zip(_radii_modes(x, [3.0, 1.5], 0.7), [3.0, 1.5]):
        assert abs(frac - 0.5) < 0.03
        assert abs(np.median(r) - c) < 0.05
    # Noise std 0.08 before the *3 scaling: 0.24 radially on the outer circle.
    r = np.linalg.norm(x, axis=1)
    assert abs(np.std(r[r > 2.25] - 3.0) - 0.24) < 0.02


def test_8gaussians_centres():
    x = toy("8gaussians", 16000, seed=0).astype(np.float64)
    angles = np.arange(8) * np.pi / 4
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1) / 1.414
    k = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(k, minlength=8) / len(x), 1 / 8, atol=0.01)
    np.testing.assert_allclose((x - centres[k]).std(0), 0.5 / 1.414, rtol=0.05)


def _moons_log_density(x, n_t=2000, std=0.2):
    """log p(x) for FFJORD's moons, written independently of the generator.

    p(x) = 1/2 E_t N(x; a(t), std^2 I) + 1/2 E_t N(x; b(t), std^2 I), t ~ U[0, pi],
    with the arcs after the map y -> 2 y + (-1, -0.2):
    a(t) = (2 cos t - 1, 2 sin t - 0.2), b(t) = (1 - 2 cos t, 0.8 - 2 sin t).
    E_t is a trapezoid rule with n_t nodes on each arc.
    """
    t = np.linspace(0.0, np.pi, n_t)
    w = np.full(n_t, 1.0 / (n_t - 1))
    w[[0, -1]] *= 0.5
    arcs = np.concatenate([np.stack([2 * np.cos(t) - 1, 2 * np.sin(t) - 0.2], 1),
                           np.stack([1 - 2 * np.cos(t), 0.8 - 2 * np.sin(t)], 1)])
    log_w = np.log(0.5 * np.concatenate([w, w]))
    out = []
    for xb in np.array_split(np.asarray(x, np.float64), max(1, len(x) // 1000)):
        a = log_w - ((xb[:, None, :] - arcs[None]) ** 2).sum(-1) / (2 * std ** 2)
        m = a.max(1, keepdims=True)
        out.append(m[:, 0] + np.log(np.exp(a - m).sum(1)))
    return np.concatenate(out) - np.log(2 * np.pi * std ** 2)


def test_moons_log_density_normalised():
    g = np.linspace(-4.0, 4.0, 321)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    mass = np.exp(_moons_log_density(grid, n_t=500)).sum() * (g[1] - g[0]) ** 2
    assert abs(mass - 1.0) < 1e-3


def test_moons_entropy():
    # Monte Carlo cross-entropy of the samples under the reference density: it
    # equals the entropy only if the generator draws from that density.
    x = toy("moons", 20000, seed=0)
    entropy = -_moons_log_density(x).mean()
    assert abs(entropy - 2.39) < 0.03, entropy


# -- entropies: the Kozachenko-Leonenko estimator of guides/train_2d_density.py,
#    checked against closed forms (it gives the floor the pretrained NLLs sit on)

@functools.cache
def _guide():
    path = pathlib.Path(__file__).resolve().parents[1] / "guides" / "train_2d_density.py"
    spec = importlib.util.spec_from_file_location("train_2d_density", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _knn_entropy(name, draws=2, n=200_000):
    return np.mean([_guide().knn_entropy(toy(name, n, seed=50 + i)) for i in range(draws)])


def test_knn_entropy_of_a_gaussian():
    x = np.random.default_rng(0).normal(0.0, 0.5, (200_000, 2))
    exact = np.log(2 * np.pi * np.e * 0.25)  # (d / 2) log(2 pi e sigma^2), d = 2
    assert abs(_guide().knn_entropy(x) - exact) < 0.01
    # The estimator shifts by log(scale) per dimension, exactly.
    np.testing.assert_allclose(_guide().knn_entropy(3 * x[:20000]),
                               _guide().knn_entropy(x[:20000]) + 2 * np.log(3), rtol=1e-12)


def test_knn_entropy_of_checkerboard():
    # Uniform on 8 of the 16 2x2 squares of [-4, 4]^2 (test_checkerboard_squares):
    # area 8 * 4 = 32, entropy log 32 = 3.466 (not log 8: the unit squares are scaled by 2).
    assert abs(_knn_entropy("checkerboard") - np.log(32.0)) < 0.012


def _8gaussians_log_density(x, radius=4.0 / 1.414, std=0.5 / 1.414):
    angles = np.arange(8) * np.pi / 4
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    q = -((np.asarray(x, np.float64)[:, None] - centres[None]) ** 2).sum(-1) / (2 * std ** 2)
    m = q.max(1, keepdims=True)
    return m[:, 0] + np.log(np.exp(q - m).mean(1)) - np.log(2 * np.pi * std ** 2)


def test_knn_entropy_of_8gaussians():
    # Exact mixture log-density (centres and std from test_8gaussians_centres),
    # Monte Carlo over 400k fresh samples: standard error 0.0015 nats.
    exact = -_8gaussians_log_density(toy("8gaussians", 400_000, seed=9)).mean()
    # Well separated: just under log 8 + the entropy of one component.
    separated = np.log(8) + np.log(2 * np.pi * np.e * (0.5 / 1.414) ** 2)
    assert separated - 0.015 < exact < separated
    assert abs(_knn_entropy("8gaussians") - exact) < 0.012


def test_knn_entropy_of_moons():
    # 2.39 nats by the reference density of test_moons_entropy (2.393 +- 0.001
    # over 500k samples).
    assert abs(_knn_entropy("moons") - 2.39) < 0.015
