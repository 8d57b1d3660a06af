"""Standard 2-D toy densities of the normalizing-flow literature (numpy only).

The scales and noise levels follow FFJORD's ``lib/toy_data.py``
(Grathwohl et al., 2019), so that figures quoted on those densities apply:

- ``moons``: two interleaved half circles (sklearn ``make_moons``, noise 0.1), then ``x * 2 + [-1, -0.2]``.
- ``8gaussians``: 8 Gaussians (std 0.5) on a circle of radius 4, all divided by 1.414.
- ``checkerboard``: uniform on the 8 alternating 2x2 squares of a checkerboard on ``[-4, 4]^2``.
- ``pinwheel``: 5 Gaussian arms (radial std 0.3, tangential std 0.1) bent by ``0.25 * exp(r)``, times 2.
- ``rings``: 4 concentric rings of radii 3, 2.25, 1.5, 0.75 with Gaussian noise of std 0.08.
- ``circles``: sklearn ``make_circles`` (factor 0.5, noise 0.08) times 3: radii 3 and 1.5, noise std 0.24.
- ``2spirals``: two interleaved spirals of 1.5 turns, uniform jitter, scaled by 1/3, Gaussian noise 0.1.
- ``swissroll``: sklearn ``make_swiss_roll`` (noise 1.0) projected on ``(x, z)`` and divided by 5.

Where FFJORD or sklearn place points on a curve with ``linspace`` (moons,
circles, rings), positions are drawn uniformly at random instead, so that
every sample is i.i.d. from a well-defined density; components are balanced
(counts differ by at most one) and shuffled, as sklearn does.
"""

import numpy as np

__all__ = ["toy", "TOY_DENSITIES"]


def _labels(rng, n, k):
    """Balanced, shuffled component labels in ``0..k-1``."""
    return rng.permutation(np.arange(n) % k)


def _moons(rng, n):
    t = rng.uniform(0.0, np.pi, n)
    inner = _labels(rng, n, 2) == 1
    x = np.where(inner, 1.0 - np.cos(t), np.cos(t))
    y = np.where(inner, 0.5 - np.sin(t), np.sin(t))
    data = np.stack([x, y], 1) + rng.normal(0.0, 0.1, (n, 2))
    return data * 2.0 + np.array([-1.0, -0.2])


def _8gaussians(rng, n):
    angles = _labels(rng, n, 8) * (np.pi / 4)
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return (centers + rng.normal(0.0, 0.5, (n, 2))) / 1.414


def _checkerboard(rng, n):
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return np.stack([x1, x2], 1) * 2.0


def _pinwheel(rng, n):
    features = rng.normal(0.0, 1.0, (n, 2)) * np.array([0.3, 0.1])
    features[:, 0] += 1.0
    angles = _labels(rng, n, 5) * (2 * np.pi / 5) + 0.25 * np.exp(features[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    # Same orientation as FFJORD: row vector times [[c, -s], [s, c]].
    return 2.0 * np.stack([features[:, 0] * c + features[:, 1] * s,
                           -features[:, 0] * s + features[:, 1] * c], 1)


def _rings(rng, n):
    radius = 3.0 * (1.0 - 0.25 * _labels(rng, n, 4))
    t = rng.uniform(0.0, 2 * np.pi, n)
    data = radius[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
    return data + rng.normal(0.0, 0.08, (n, 2))


def _circles(rng, n):
    radius = np.where(_labels(rng, n, 2) == 1, 0.5, 1.0)
    t = rng.uniform(0.0, 2 * np.pi, n)
    data = radius[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
    return 3.0 * (data + rng.normal(0.0, 0.08, (n, 2)))


def _2spirals(rng, n):
    t = np.sqrt(rng.uniform(0.0, 1.0, n)) * 3 * np.pi  # 540 degrees
    d = np.stack([-np.cos(t) * t, np.sin(t) * t], 1) + rng.uniform(0.0, 0.5, (n, 2))
    sign = np.where(_labels(rng, n, 2) == 1, -1.0, 1.0)
    return sign[:, None] * d / 3.0 + rng.normal(0.0, 0.1, (n, 2))


def _swissroll(rng, n):
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(0.0, 1.0, n))
    data = t[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
    return (data + rng.normal(0.0, 1.0, (n, 2))) / 5.0


_GENERATORS = {
    "moons": _moons,
    "8gaussians": _8gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "rings": _rings,
    "circles": _circles,
    "2spirals": _2spirals,
    "swissroll": _swissroll,
}

TOY_DENSITIES = tuple(_GENERATORS)


def toy(name, n, seed=None):
    """Draw ``n`` i.i.d. samples from the 2-D toy density ``name``.

    Args:
        name: one of ``TOY_DENSITIES``.
        n: positive int, the number of samples.
        seed: seed for ``np.random.default_rng``; an int gives reproducible
            samples, ``None`` fresh ones.

    Returns:
        ``np.ndarray`` of shape ``(n, 2)`` and dtype ``float32``.

    ``moons`` follows sklearn's ``make_moons(noise=0.1)`` then FFJORD's
    ``x * 2 + [-1, -0.2]``, except that the arc parameter ``t`` is drawn
    uniformly in ``[0, pi]`` (sklearn uses ``linspace``) so that the density is
    well-defined: half the points on the outer arc ``(cos t, sin t)``, half on
    the inner arc ``(1 - cos t, 0.5 - sin t)``, plus Gaussian noise of std 0.1
    per coordinate (0.2 after scaling).
    """
    if name not in _GENERATORS:
        raise ValueError(f"Unknown toy density {name!r}; valid choices: {', '.join(TOY_DENSITIES)}.")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    rng = np.random.default_rng(seed)
    return np.asarray(_GENERATORS[name](rng, int(n)), dtype=np.float32)
