"""Calibration of classifier probabilities: metrics, fits, persistence, diagrams.

Expected values are independent of the code under test: metrics computed by
hand on small cases, a statistical tolerance for the recovered temperature
from the Fisher information of the true model (numpy), and data drawn from
known calibration maps.
"""

import math

import numpy as np
import pytest
from keras import ops
from scipy.special import log_softmax, softmax

from keras_flows import calibration
from keras_flows.bijectors.simplex import helmert_basis
from keras_flows.calibration import (Calibrator, brier_score, expected_calibration_error,
                                     nll)


def _draw_labels(probs, rng):
    """One label per row, drawn from that row's probabilities (inverse CDF)."""
    u = rng.uniform(size=(len(probs), 1))
    return np.minimum((np.cumsum(probs, axis=1) < u).sum(axis=1), probs.shape[1] - 1)


def _tempered(num, num_classes, temperature, seed, scale=3.0):
    """softmax(logits) for random logits, labels drawn from softmax(logits / T)."""
    rng = np.random.default_rng(seed)
    logits = scale * rng.normal(size=(num, num_classes))
    return softmax(logits, axis=1), _draw_labels(softmax(logits / temperature, axis=1), rng)


# ---------------------------------------------------------------- metrics


P = np.array([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]])


def test_nll_by_hand():
    assert nll(P, [0, 2]) == pytest.approx(-(math.log(0.7) + math.log(0.25)) / 2, rel=1e-12)
    # p_y = 0 is floored at epsilon = 1e-12.
    assert nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-12), rel=1e-12)


def test_brier_by_hand():
    # (1 - 0.7)^2 + 0.2^2 + 0.1^2 = 0.14;  0.25^2 + 0.5^2 + 0.75^2 = 0.875
    assert brier_score(P, [0, 2]) == pytest.approx((0.14 + 0.875) / 2, rel=1e-12)
    onehot = np.eye(4)[[3, 0, 2, 1]]
    assert brier_score(onehot, [3, 0, 2, 1]) == 0.0
    assert brier_score(onehot, [0, 0, 2, 1]) == pytest.approx(2 / 4)


def test_ece_by_hand():
    # Four rows at confidence 0.95 with 3 correct, four at 0.55 with 2 correct:
    # ECE = 4/8 |0.75 - 0.95| + 4/8 |0.5 - 0.55| = 0.125.
    high = [[0.95, 0.05]] * 4
    low = [[0.55, 0.45]] * 4
    labels = [0, 0, 0, 1] + [0, 0, 1, 1]
    assert expected_calibration_error(high + low, labels) == pytest.approx(0.125, abs=1e-12)


def test_ece_zero_for_calibrated_bins():
    # In each bin the accuracy equals the confidence exactly: 0.8 with 4/5
    # correct, 0.6 with 3/5, 1.0 with 2/2.
    probs = [[0.8, 0.2]] * 5 + [[0.4, 0.6]] * 5 + [[1.0, 0.0]] * 2
    labels = [0, 0, 0, 0, 1] + [1, 1, 1, 0, 0] + [0, 0]
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_monte_carlo_calibrated():
    # Labels drawn from the predicted probabilities: calibrated by construction.
    # Each bin's accuracy then differs from its confidence by sampling noise,
    # sqrt(c (1 - c) / n_b) ~ 0.006 for n_b ~ 6,000: ECE below 0.01.
    probs, labels = _tempered(100_000, 5, 1.0, seed=3, scale=1.5)
    assert expected_calibration_error(probs, labels) < 0.01
    overconfident, labels = _tempered(100_000, 5, 3.0, seed=3, scale=1.5)
    assert expected_calibration_error(overconfident, labels) > 0.1


def test_ece_bins_are_right_closed():
    # With 4 bins, confidence 0.75 belongs to (0.5, 0.75], 0.76 to (0.75, 1]:
    # separately |1 - 0.75| and |0 - 0.76| (ECE 0.505); merged they would
    # give |0.5 - 0.755| = 0.255.
    probs = [[0.75, 0.25], [0.76, 0.24]]
    assert expected_calibration_error(probs, [0, 1], num_bins=4) == pytest.approx(0.505)


@pytest.mark.parametrize("probs, labels, message", [
    ([[0.5, 0.6]], [0], "sum to 1"),
    ([[2.0, -1.0]], [0], "non-negative"),
    ([[0.5, 0.5]], [2], r"lie in \[0, 2\)"),
    ([[0.5, 0.5]], [-1], r"lie in \[0, 2\)"),
    ([[0.5, 0.5], [0.1, 0.9]], [0], "shape"),
    ([0.5, 0.5], [0], "shape"),
    ([[0.5, 0.5]], [0.0], "integer"),
    ([[np.nan, 1.0]], [0], "NaN"),
])
def test_bad_input(probs, labels, message):
    for fn in (nll, brier_score, expected_calibration_error):
        with pytest.raises(ValueError, match=message):
            fn(probs, labels)
    with pytest.raises(ValueError, match=message):
        Calibrator("temperature", steps=1).fit(probs, labels)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        Calibrator("matrix")
    with pytest.raises(ValueError, match="classes"):
        Calibrator(num_classes=3)(np.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="fit"):
        Calibrator()(np.full((2, 4), 0.25))


# ---------------------------------------------------------------- fits


def test_identity_at_start_and_zeros_clipped():
    probs = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    q = Calibrator("generalized", num_classes=3, dtype="float64")(probs)
    expected = np.maximum(probs, 1e-12) / np.maximum(probs, 1e-12).sum(1, keepdims=True)
    np.testing.assert_allclose(q, expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("true_temperature", [2.5, 0.6])
def test_temperature_recovered(true_temperature):
    num, k = 4000, 10
    probs, labels = _tempered(num, k, true_temperature, seed=1)
    cal = Calibrator("temperature").fit(probs, labels)
    fitted = math.exp(float(ops.convert_to_numpy(cal.bijector.log_a)))
    # Standard error of the MLE of beta = 1/T from the Fisher information
    # sum_n Var_{q_n}(log p_n) at the true beta; T's is T^2 times that.
    log_p = np.log(probs)
    q = softmax(log_p / true_temperature, axis=1)
    variance = np.sum(q * log_p ** 2, 1) - np.sum(q * log_p, 1) ** 2
    stderr = true_temperature ** 2 / math.sqrt(variance.sum())
    assert 0.002 < stderr / true_temperature < 0.05
    assert abs(fitted - true_temperature) < 4 * stderr
    # The fitted map is softmax(log p / T) with that T.
    np.testing.assert_allclose(cal(probs[:50]), softmax(log_p[:50] / fitted, axis=1),
                               atol=1e-5)


def test_fit_is_deterministic():
    probs, labels = _tempered(1000, 4, 2.0, seed=2)
    first = Calibrator("scalar", steps=60).fit(probs, labels)
    second = Calibrator("scalar", steps=60).fit(probs, labels)
    assert first.history == second.history
    np.testing.assert_array_equal(first(probs), second(probs))


def _generalized_data(num, matrix, shift, seed):
    """probs = softmax(3 N(0, I)); labels from softmax(H M H^T log p + c)."""
    rng = np.random.default_rng(seed)
    k = len(shift)
    basis = helmert_basis(k)
    a = basis @ matrix @ basis.T + np.ones((k, k)) / k
    probs = softmax(3.0 * rng.normal(size=(num, k)), axis=1)
    return probs, _draw_labels(softmax(np.log(probs) @ a.T + shift, axis=1), rng), a


@pytest.mark.parametrize("kind", ["scalar", "generalized"])
def test_held_out_nll_never_worse(kind):
    # Miscalibrated data: overconfident and biased towards class 0.
    probs, labels, _ = _generalized_data(
        6000, np.array([[0.5, 0.1], [0.0, 0.7]]), np.array([0.8, -0.3, 0.0]), seed=4)
    cal = Calibrator(kind).fit(probs[:3000], labels[:3000])
    before, after = nll(probs[3000:], labels[3000:]), nll(cal(probs[3000:]), labels[3000:])
    assert after < before - 0.05
    report = cal.report(probs[3000:], labels[3000:])
    assert report["before"]["nll"] == pytest.approx(before)
    assert report["after"]["nll"] == pytest.approx(after)
    assert report["after"]["ece"] < report["before"]["ece"]
    # Already calibrated data: the held-out NLL may only rise by the
    # overfitting of a few parameters, about (parameters) / (2 N) = 0.001 nats.
    probs, labels = _tempered(6000, 3, 1.0, seed=5)
    cal = Calibrator(kind).fit(probs[:3000], labels[:3000])
    assert nll(cal(probs[3000:]), labels[3000:]) < nll(probs[3000:], labels[3000:]) + 0.005


def test_generalized_recovers_matrix():
    k = 3
    matrix, shift = np.array([[0.6, 0.3], [-0.2, 1.4]]), np.array([0.4, -0.3, 0.1])
    probs, labels, a_true = _generalized_data(10_000, matrix, shift, seed=6)
    cal = Calibrator("generalized").fit(probs, labels)
    a_fit = np.asarray(ops.convert_to_numpy(cal.bijector.matrix()), dtype=np.float64)
    c_fit = np.asarray(ops.convert_to_numpy(cal.bijector.shift), dtype=np.float64)
    # Softmax ignores row-constant logits, so A is identified only on the
    # sum-zero subspace and modulo adding 1 v^T, c modulo adding t 1: compare
    # P A P and P c, P = I - 1 1^T / K. With 10,000 labels the largest errors
    # over five seeds were 0.04 (A) and 0.05 (c) (0.06 and 0.07 with 5,000):
    # the tolerance, 0.1, is about four standard errors.
    centre = np.eye(k) - np.ones((k, k)) / k
    np.testing.assert_allclose(centre @ a_fit @ centre, centre @ a_true @ centre, atol=0.1)
    np.testing.assert_allclose(centre @ c_fit, centre @ shift, atol=0.1)


# ---------------------------------------------------------------- persistence, figures


def test_save_and_load(tmp_path):
    probs, labels = _tempered(500, 4, 2.0, seed=7)
    cal = Calibrator("generalized", steps=30).fit(probs, labels)
    path = str(tmp_path / "cal.weights.h5")
    cal.save_weights(path)
    again = Calibrator.from_config(cal.get_config())
    again.load_weights(path)
    np.testing.assert_array_equal(again(probs), cal(probs))
    assert again.get_config() == cal.get_config()


def test_reliability_diagram_png(tmp_path):
    import matplotlib.image

    probs, labels = _tempered(500, 4, 2.0, seed=8)
    cal = Calibrator("temperature", steps=30).fit(probs, labels)
    path = tmp_path / "reliability.png"
    assert cal.reliability_diagram(probs, labels, path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # not blank


def test_float64_map_matches_numpy():
    probs = softmax(np.random.default_rng(9).normal(size=(20, 5)) * 4, axis=1)
    cal = Calibrator("temperature", num_classes=5, dtype="float64")
    cal.bijector.log_a.assign(math.log(1.7))
    np.testing.assert_allclose(cal(probs), np.exp(log_softmax(np.log(probs) / 1.7, axis=1)),
                               rtol=1e-12, atol=1e-300)
