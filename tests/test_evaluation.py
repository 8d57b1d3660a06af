"""FID, Inception Score and precision/recall against independent answers: scipy's
`sqrtm`, closed forms for Gaussians and known class distributions, point sets
whose precision and recall are known by construction."""

import math

import numpy as np
import keras
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

import keras_flows as kf
from keras_flows import evaluation


def random_spd(dim, rng):
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """The pytorch-fid / TTUR formula with scipy's matrix square root."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def feature_model(size=16, dim=6, classes=5, seed=0):
    """A small seeded network with InceptionFeatures' interface: (features, logits)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="tanh")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    features = keras.layers.Dense(dim, activation="tanh")(x)
    logits = keras.layers.Dense(classes)(features)
    return keras.Model(inputs, [features, logits])


def images(n, size=16, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, size=(n, size, size, 3)).astype("uint8")


def test_public_names_and_existing_metrics():
    for name in ("FID", "InceptionFeatures", "frechet_distance", "inception_score",
                 "precision_recall", "bits_per_dim", "mean_bits_per_dim"):
        assert hasattr(kf.metrics, name)
    assert kf.metrics.FID is evaluation.FID
    assert float(kf.metrics.bits_per_dim(-math.log(2.0) * 8, 8)) == pytest.approx(1.0)


# frechet_distance

@pytest.mark.parametrize("dim", [1, 3, 10])
def test_frechet_distance_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    s1, s2 = random_spd(dim, rng), random_spd(dim, rng)
    expected = scipy_frechet(mu1, s1, mu2, s2)
    assert kf.metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        expected, rel=1e-8, abs=1e-8)


def test_frechet_distance_singular_covariance_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 3))
    s1, s2 = a @ a.T, random_spd(5, rng)  # s1 has rank 3
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    assert kf.metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        scipy_frechet(mu1, s1, mu2, s2), rel=1e-6, abs=1e-6)


def test_frechet_distance_equal_covariances_is_mean_distance():
    rng = np.random.default_rng(2)
    mu1, mu2, s = rng.normal(size=4), rng.normal(size=4), random_spd(4, rng)
    assert kf.metrics.frechet_distance(mu1, s, mu2, s) == pytest.approx(
        np.sum((mu1 - mu2) ** 2), rel=1e-8, abs=1e-8)
    assert kf.metrics.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_one_dimensional_gaussians():
    m1, s1, m2, s2 = 0.3, 1.7, -1.2, 0.4
    expected = (m1 - m2) ** 2 + (s1 - s2) ** 2
    assert kf.metrics.frechet_distance(m1, s1 ** 2, m2, s2 ** 2) == pytest.approx(expected, rel=1e-12)
    assert kf.metrics.frechet_distance([m1], [[s1 ** 2]], [m2], [[s2 ** 2]]) == pytest.approx(
        expected, rel=1e-12)


def test_frechet_distance_shape_mismatch():
    with pytest.raises(ValueError, match="covariances"):
        kf.metrics.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


# InceptionFeatures and FID

def reference_features(model, x):
    """Features computed by hand: scale to [-1, 1] and call the network."""
    return np.asarray(keras.ops.convert_to_numpy(
        model(x.astype("float32") / 127.5 - 1.0)[0]), np.float64)


def test_fid_streaming_equals_full_arrays():
    model = feature_model()
    real, fake = images(40, seed=1), images(30, seed=2, high=128)
    expected = scipy_frechet(*_stats(reference_features(model, real)),
                             *_stats(reference_features(model, fake)))
    results = []
    for real_splits, fake_splits in [([40], [30]), ([7, 13, 20], [1, 29]), ([3] * 13 + [1], [30])]:
        fid = kf.metrics.FID(features=kf.metrics.InceptionFeatures(model, batch_size=8))
        for part in np.split(real, np.cumsum(real_splits)[:-1]):
            fid.update(part)
        for part in np.split(fake, np.cumsum(fake_splits)[:-1]):
            fid.update_fake(part)
        assert (fid.num_real, fid.num_fake) == (40, 30)
        results.append(fid.result())
    assert expected > 1e-3
    np.testing.assert_allclose(results, expected, rtol=1e-5)
    np.testing.assert_allclose(results, results[0], rtol=1e-6)


def _stats(features):
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1)


def test_fid_accumulation_is_exact_for_any_split():
    rng = np.random.default_rng(3)
    real = rng.normal(5.0, 2.0, size=(101, 7))  # far-off mean: tests the shifted sums
    fake = rng.normal(5.5, 1.0, size=(57, 7)) @ rng.normal(size=(7, 7))
    expected = scipy_frechet(*_stats(real), *_stats(fake))
    for splits in ([101], [2, 50, 49], [1] * 101):
        fid = kf.metrics.FID(features=feature_model())
        for part in np.split(real, np.cumsum(splits)[:-1]):
            fid.update_features(part)
        fid.update_features(fake, fake=True)
        assert fid.result() == pytest.approx(expected, rel=1e-9)


def test_fid_num_samples_caps_and_requires():
    model = feature_model()
    fid = kf.metrics.FID(num_samples=10, features=model)
    fid.update(images(6, seed=1))
    fid.update_fake(images(15, seed=2))
    assert (fid.num_real, fid.num_fake) == (6, 10)
    with pytest.raises(ValueError, match="at least 10 real samples, got 6"):
        fid.result()
    fid.update(images(6, seed=3))
    assert fid.num_real == 10
    full = kf.metrics.FID(features=model)
    full.update(np.concatenate([images(6, seed=1), images(4, seed=3)]))
    full.update_fake(images(10, seed=2))
    assert fid.result() == pytest.approx(full.result(), rel=1e-6)


def test_fid_too_few_samples():
    fid = kf.metrics.FID(features=feature_model())
    with pytest.raises(ValueError, match="at least 2 real samples, got 0"):
        fid.result()
    fid.update(images(1))
    fid.update_fake(images(5))
    with pytest.raises(ValueError, match="at least 2 real samples, got 1"):
        fid.result()
    with pytest.raises(ValueError, match="num_samples"):
        kf.metrics.FID(num_samples=1, features=feature_model())


def test_fid_feature_dimension_mismatch():
    fid = kf.metrics.FID(features=feature_model())
    fid.update_features(np.ones((3, 4)) * np.arange(3)[:, None])
    with pytest.raises(ValueError, match="dimension"):
        fid.update_features(np.ones((3, 5)))


@pytest.mark.parametrize("shape", [(4, 16, 16), (4, 16, 16, 4), (16, 16, 3)])
def test_wrong_image_shapes(shape):
    features = kf.metrics.InceptionFeatures(feature_model())
    with pytest.raises(ValueError, match="channels last"):
        features(np.zeros(shape, "uint8"))
    with pytest.raises(ValueError, match="channels last"):
        kf.metrics.FID(features=features).update(np.zeros(shape, "uint8"))


def test_images_out_of_pixel_range():
    features = kf.metrics.InceptionFeatures(feature_model())
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        features(np.full((2, 16, 16, 3), -1.0))


def test_preprocess_resizes_bilinear_half_pixel_and_scales():
    """A 2x upsampling of [a, b] is [a, .75a + .25b, .25a + .75b, b] (half-pixel
    centres, no antialiasing, as the standard FID resize), then x / 127.5 - 1."""
    model = feature_model(size=4)
    a, b = 0.0, 200.0
    image = np.zeros((1, 2, 2, 3), "float32")
    image[0, :, 0], image[0, :, 1] = a, b
    out = kf.metrics.InceptionFeatures(model).preprocess(image)
    row = np.array([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]) / 127.5 - 1.0
    assert out.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(out[0, :, :, 1], np.tile(row, (4, 1)), atol=1e-5)


def test_grey_images_are_repeated_to_three_channels():
    features = kf.metrics.InceptionFeatures(feature_model())
    grey = images(3)[..., :1]
    np.testing.assert_allclose(features(grey), features(np.repeat(grey, 3, axis=-1)), rtol=1e-6)


def test_progress_bar(capsys):
    features = kf.metrics.InceptionFeatures(feature_model(), batch_size=4, verbose=True)
    features(images(10))
    assert "10/10" in capsys.readouterr().out
    quiet = kf.metrics.InceptionFeatures(feature_model(), batch_size=4)
    quiet(images(10))
    assert "10/10" not in capsys.readouterr().out


def test_weights_download_failure_is_explained(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...")

    monkeypatch.setattr(keras.applications, "InceptionV3", offline)
    with pytest.raises(RuntimeError, match="could not be downloaded.*InceptionFeatures\\(model="):
        kf.metrics.InceptionFeatures()


# inception_score

def test_inception_score_uniform_is_one():
    probs = np.full((20, 7), 1 / 7)
    mean, std = kf.metrics.inception_score(probs=probs, splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_one_hot_even_classes_is_num_classes():
    classes, splits = 6, 3
    probs = np.tile(np.eye(classes), (2 * splits, 1))  # each split holds every class twice
    mean, std = kf.metrics.inception_score(probs=probs, splits=splits)
    assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_mixed_case_by_hand():
    # Split 1: p(y|x) = (.75, .25), (.25, .75); p(y) = (.5, .5);
    #   KL = .75 log 1.5 + .25 log .5 for both.  Split 2: one-hot on classes 0, 1: KL = log 2.
    probs = np.array([[0.75, 0.25], [0.25, 0.75], [1.0, 0.0], [0.0, 1.0]])
    first = math.exp(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    mean, std = kf.metrics.inception_score(probs=probs, splits=2)
    assert mean == pytest.approx((first + 2.0) / 2, rel=1e-12)
    assert std == pytest.approx(abs(2.0 - first) / 2, rel=1e-12)
    mean1, _ = kf.metrics.inception_score(probs=probs, splits=1)
    marginal = probs.mean(axis=0)
    expected = math.exp(np.mean([scipy.stats.entropy(p, marginal) for p in probs]))
    assert mean1 == pytest.approx(expected, rel=1e-12)


def test_inception_score_logits_and_images():
    model = feature_model()
    x = images(12)
    logits = np.asarray(keras.ops.convert_to_numpy(
        model(x.astype("float32") / 127.5 - 1.0)[1]), np.float64)
    probs = scipy.special.softmax(logits, axis=1)
    expected = [math.exp(np.mean([scipy.stats.entropy(p, part.mean(axis=0)) for p in part]))
                for part in np.split(probs, 3)]
    assert kf.metrics.inception_score(logits=logits, splits=3) == pytest.approx(
        (np.mean(expected), np.std(expected)), rel=1e-10)
    assert kf.metrics.inception_score(x, model=model, splits=3) == pytest.approx(
        (np.mean(expected), np.std(expected)), rel=1e-5)


def test_inception_score_errors():
    with pytest.raises(ValueError, match="exactly one"):
        kf.metrics.inception_score()
    with pytest.raises(ValueError, match="exactly one"):
        kf.metrics.inception_score(probs=np.eye(3), logits=np.eye(3))
    with pytest.raises(ValueError, match="splits"):
        kf.metrics.inception_score(probs=np.eye(3), splits=4)
    with pytest.raises(ValueError, match="probabilities"):
        kf.metrics.inception_score(probs=np.full((3, 3), 0.5))
    features_only = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten()])
    with pytest.raises(ValueError, match="features only"):
        kf.metrics.inception_score(images(4), model=features_only, splits=1)


# precision_recall

def test_precision_recall_identical_sets():
    x = np.random.default_rng(4).normal(size=(50, 5))
    assert kf.metrics.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_disjoint_sets():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(40, 4)), rng.normal(size=(30, 4)) + 100.0
    assert kf.metrics.precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_known_fractions():
    """Real: clusters A (near 0) and B (near 50). Fake: copies of A and a cluster C
    (near -50). Half the fakes lie on the real manifold, and only A of the reals
    on the fake one: precision = recall = 1/2 exactly."""
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 3)) + 50.0
    c = rng.normal(size=(20, 3)) - 50.0
    real, fake = np.concatenate([a, b]), np.concatenate([a, c])
    for batch_size in (1000, 7):
        assert kf.metrics.precision_recall(real, fake, k=3, batch_size=batch_size) == (0.5, 0.5)
    # A quarter of the fakes copied: precision 1/4.
    fake = np.concatenate([a[:10], c + rng.normal(size=c.shape), c[:10]])
    precision, _ = kf.metrics.precision_recall(real, fake, k=3)
    assert precision == 0.25


def test_precision_recall_radius_is_kth_neighbour_excluding_self():
    # Reals on a line at 0, 1, 3, 7: k=1 radii are 1, 1, 2, 4.
    real = np.array([[0.0], [1.0], [3.0], [7.0]])
    fake = np.array([[-0.9], [4.9], [11.5], [-1.5]])  # inside: -0.9 (ball of 0), 4.9 (of 3)
    precision, _ = kf.metrics.precision_recall(real, fake, k=1)
    assert precision == 0.5


def test_precision_recall_errors():
    with pytest.raises(ValueError, match="more than 3 real samples, got 3"):
        kf.metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(ValueError, match="one D"):
        kf.metrics.precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
