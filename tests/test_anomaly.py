"""`keras_flows.anomaly`: detectors against closed forms on Gaussian flows."""

import io
import math
import zlib

import numpy as np
import pytest
from PIL import Image
from scipy import optimize, stats

import keras_flows as kf
from keras_flows import anomaly

D = 3


def standard_normal_flow(dim=D, dtype=None):
    """N(0, I): an identity ElementwiseAffine (shift 0, scale 1) on a standard normal."""
    return kf.Flow(kf.bijectors.ElementwiseAffine(dtype=dtype), event_shape=(dim,),
                   dtype=dtype)


def affine_flow(shift, scale):
    """x = (z - shift) / scale with z ~ N(0, I): x ~ N(-shift / scale, 1 / scale^2)."""
    return kf.Flow(kf.bijectors.ElementwiseAffine(shift=shift, scale=scale), event_shape=(D,))


def normal_log_prob(x, loc=0.0, std=1.0):
    return stats.norm.logpdf(x, loc, std).sum(axis=-1)


def test_likelihood_and_bits_per_dim_scores_are_the_closed_forms():
    x = np.random.default_rng(0).normal(size=(50, D)) * 2.0
    flow = standard_normal_flow(dtype="float64")
    nll = -normal_log_prob(x)
    np.testing.assert_allclose(anomaly.Detector(flow).score(x), nll, rtol=1e-10)
    np.testing.assert_allclose(anomaly.Detector(flow, method="bits_per_dim").score(x),
                               nll / (D * math.log(2.0)), rtol=1e-10)


def test_auroc_and_aupr_match_scipy_mann_whitney_and_the_step_sum():
    rng = np.random.default_rng(1)
    s_in = np.round(rng.normal(size=300), 1)  # rounding makes ties
    s_out = np.round(rng.normal(0.7, 1.0, size=200), 1)
    u = stats.mannwhitneyu(s_out, s_in).statistic
    assert anomaly.auroc(s_in, s_out) == pytest.approx(u / (300 * 200), abs=1e-12)
    # Average precision by its definition, one threshold per distinct score.
    scores = np.concatenate([s_in, s_out])
    positive = np.r_[np.zeros(300), np.ones(200)]
    ap, previous_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        chosen = scores >= t
        recall = positive[chosen].sum() / 200
        ap += (recall - previous_recall) * positive[chosen].mean()
        previous_recall = recall
    assert anomaly.aupr(s_in, s_out) == pytest.approx(ap, abs=1e-12)
    assert anomaly.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert anomaly.aupr([0.0, 1.0], [2.0, 3.0]) == 1.0


def test_likelihood_auroc_between_two_gaussians_matches_the_analytic_value():
    # In: N(0, I); out: N(0, 4 I). -log p under N(0, I) ranks by |x|^2, which
    # is chi^2_D in, and 4 chi^2_D out: AUROC = P(4 A > B), A, B ~ chi^2_D
    # independent, = P(F(D, D) > 1/4).
    rng = np.random.default_rng(2)
    x_in, x_out = rng.normal(size=(2000, D)), 2.0 * rng.normal(size=(2000, D))
    det = anomaly.Detector(standard_normal_flow())
    exact = stats.f.sf(0.25, D, D)
    assert det.auroc(x_in, x_out) == pytest.approx(exact, abs=0.02)  # ~4 standard errors


def test_threshold_flags_the_target_fraction_of_fresh_in_distribution_data():
    rng = np.random.default_rng(3)
    det = anomaly.Detector(standard_normal_flow(), fpr=0.1).fit(rng.normal(size=(4000, D)))
    # The threshold estimates the 0.9 quantile of -log p = chi^2_D / 2 + const.
    exact = stats.chi2.ppf(0.9, D) / 2 + D / 2 * math.log(2 * math.pi)
    assert det.threshold == pytest.approx(exact, abs=0.1)
    flagged = det.predict(rng.normal(size=(20000, D)))
    assert flagged.mean() == pytest.approx(0.1, abs=0.015)


def test_likelihood_ratio_is_the_log_density_ratio_and_reaches_the_optimal_auroc():
    # In: N(0, I); out: N(2, I); background N(2, I) gives the Neyman-Pearson
    # optimal statistic sum(x): AUROC = Phi(2 sqrt(D) / sqrt(2)).
    rng = np.random.default_rng(4)
    flow, bg = standard_normal_flow(), affine_flow(-2.0, 1.0)
    det = anomaly.Detector(flow, method="likelihood_ratio", background=bg)
    x = rng.normal(size=(10, D))
    np.testing.assert_allclose(det.score(x), normal_log_prob(x, 2.0) - normal_log_prob(x),
                               rtol=1e-4, atol=1e-4)
    x_in, x_out = rng.normal(size=(2000, D)), rng.normal(2.0, 1.0, size=(2000, D))
    optimum = stats.norm.cdf(2.0 * math.sqrt(D) / math.sqrt(2.0))
    assert det.auroc(x_in, x_out) == pytest.approx(optimum, abs=0.01)


def test_typicality_compares_with_the_entropy_and_catches_the_too_typical_mode():
    rng = np.random.default_rng(5)
    flow = standard_normal_flow()
    det = anomaly.Detector(flow, method="typicality").fit(rng.normal(size=(20000, D)))
    entropy = D / 2 * (1 + math.log(2 * math.pi))  # E[-log p] of N(0, I)
    assert det.typical_nll == pytest.approx(entropy, abs=0.03)
    x = rng.normal(size=(7, D))
    np.testing.assert_allclose(det.score(x), np.abs(-normal_log_prob(x) - det.typical_nll),
                               rtol=1e-5)
    # Points at the mode have the highest likelihood yet are atypical: out =
    # N(0, I / 16). With M = 10 the batch mean separates them almost surely.
    x_in, x_out = rng.normal(size=(2000, D)), 0.25 * rng.normal(size=(2000, D))
    assert anomaly.Detector(flow).auroc(x_in, x_out) < 0.05
    batched = anomaly.Detector(flow, method="typicality", batch_size_m=10).fit(x_in)
    assert batched.score(x_out).shape == (200,)
    assert batched.auroc(rng.normal(size=(2000, D)), x_out) > 0.99
    # Bootstrap threshold: t with P(|S - D / 2| > t) = 0.05, S the mean of 10
    # values chi^2_D / 2, i.e. S = chi^2_{10 D} / 20.
    exceed = lambda t: (stats.chi2.sf(20 * (D / 2 + t), 10 * D)  # noqa: E731
                        + stats.chi2.cdf(20 * (D / 2 - t), 10 * D) - 0.05)
    assert batched.threshold == pytest.approx(optimize.brentq(exceed, 0.01, D / 2), rel=0.1)
    with pytest.raises(ValueError, match="multiple of 10"):
        batched.score(x_in[:15])


def test_complexity_subtracts_the_compressors_bits_per_dim():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(4, 4, 4, 1)).astype("float32")
    images[0] = 7.0  # constant: compresses well
    flow = kf.Flow(kf.bijectors.Chain([]), event_shape=(4, 4, 1))
    for compressor in ("png", "zlib"):
        lengths = []
        for image in images.astype(np.uint8):
            if compressor == "zlib":
                lengths.append(len(zlib.compress(image.tobytes(), 9)))
            else:
                buffer = io.BytesIO()
                Image.fromarray(image[..., 0]).save(buffer, format="PNG", compress_level=9)
                lengths.append(len(buffer.getvalue()))
        expected = (-normal_log_prob(images.reshape(4, -1)) / (16 * math.log(2.0))
                    - 8.0 * np.array(lengths) / 16)
        det = anomaly.Detector(flow, method="complexity", compressor=compressor)
        np.testing.assert_allclose(det.score(images), expected, rtol=1e-4)


def test_bad_arguments_raise():
    flow = standard_normal_flow()
    with pytest.raises(ValueError, match="method"):
        anomaly.Detector(flow, method="entropy")
    with pytest.raises(ValueError, match="background"):
        anomaly.Detector(flow, method="likelihood_ratio")
    with pytest.raises(ValueError, match="background"):
        anomaly.Detector(flow, background=flow)
    with pytest.raises(ValueError, match="typicality' only"):
        anomaly.Detector(flow, bootstrap=100)
    with pytest.raises(ValueError, match="typicality' only"):
        anomaly.Detector(flow, method="bits_per_dim", batch_size_m=10)
    with pytest.raises(ValueError, match="complexity' only"):
        anomaly.Detector(flow, compressor="png")
    with pytest.raises(ValueError, match="fpr"):
        anomaly.Detector(flow, fpr=1.5)
    with pytest.raises(ValueError, match="fit"):
        anomaly.Detector(flow).predict(np.zeros((2, D)))
    with pytest.raises(ValueError, match="shape"):
        anomaly.Detector(flow).score(np.zeros((2, D + 1)))
    with pytest.raises(ValueError, match="non-finite"):
        anomaly.auroc([0.0, np.nan], [1.0])
