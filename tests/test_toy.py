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
