"""`keras-flows evaluate`: FID, Inception Score, precision/recall and bits/dim of
a real preset, checked against NumPy/SciPy computations made here from the
same test images, the same samples and a small seeded feature network whose
forward pass is rewritten in NumPy."""

import json

import keras
import numpy as np
import pytest
import scipy.linalg
import scipy.special
from keras import ops
from numpy.lib.stride_tricks import sliding_window_view

import keras_flows as kf
from keras_flows import cli, presets
from real_data import dataset_file

MNIST = dataset_file("mnist")
NUM, BATCH, SEED, TEMPERATURE, K = 64, 32, 3, 0.8, 3


def feature_model():
    """Images scaled to [-1, 1], (B, 28, 28, 1) -> [features (B, 6), logits (B, 5)],
    float64 so that the NumPy rewrite agrees to round-off."""
    init = lambda seed: keras.initializers.GlorotNormal(seed=seed)  # noqa: E731
    inputs = keras.Input((28, 28, 1), dtype="float64")
    h = keras.layers.Conv2D(8, 3, strides=2, activation="tanh", kernel_initializer=init(0),
                            bias_initializer=keras.initializers.RandomNormal(seed=1),
                            dtype="float64", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D(dtype="float64")(h)
    features = keras.layers.Dense(6, kernel_initializer=init(2), dtype="float64",
                                  name="features")(h)
    logits = keras.layers.Dense(5, kernel_initializer=init(3), dtype="float64",
                                name="logits")(features)
    return keras.Model(inputs, [features, logits])


def numpy_features(model, images):
    """The model's forward pass in NumPy on [0, 256) pixels: (features, logits)."""
    (kernel, bias), (w1, b1), (w2, b2) = (
        [np.asarray(ops.convert_to_numpy(v), np.float64) for v in model.get_layer(n).weights]
        for n in ("conv", "features", "logits"))
    x = np.asarray(images, np.float64) / 127.5 - 1.0
    windows = sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2]  # (N, 13, 13, 1, 3, 3)
    h = np.tanh(np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias).mean(axis=(1, 2))
    features = h @ w1 + b1
    return features, features @ w2 + b2


def fid(a, b):
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)), scipy's sqrtm."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sa @ sb).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * root))


def knn_coverage(queries, points, k):
    """Fraction of queries within distance of some point's k-th nearest other point."""
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    radii = np.array([np.sort(np.delete(row, i))[k - 1] for i, row in enumerate(dist)])
    to_points = np.sqrt(((queries[:, None] - points[None]) ** 2).sum(-1))
    return float(np.mean([(row <= radii).any() for row in to_points]))


def inception_score(logits, splits):
    scores = []
    for part in np.array_split(scipy.special.softmax(logits, axis=1), splits):
        marginal = part.mean(axis=0)
        scores.append(np.exp(np.mean(np.sum(part * np.log(part / marginal), axis=1))))
    return np.mean(scores), np.std(scores)


@pytest.fixture(scope="module")
def saved_features(tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "features.keras"
    model = feature_model()
    model.save(path)
    return model, str(path)


def test_evaluate_glow_mnist_against_independent_figures(saved_features, tmp_path, capsys):
    model, path = saved_features
    out = tmp_path / "figures.json"
    cli.main(["evaluate", "glow_mnist", "--fid", "--is", "--pr", "--bpd", "--num", str(NUM),
              "--batch-size", str(BATCH), "--k", str(K), "--temperature", str(TEMPERATURE),
              "--seed", str(SEED), "--data", str(MNIST), "--features", path,
              "--json", str(out)])
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())

    # The same samples: `keras-flows sample`'s draws with this seed and batch size.
    flow = kf.Glow.from_preset("glow_mnist")
    seed = keras.random.SeedGenerator(SEED)
    samples = np.concatenate([ops.convert_to_numpy(flow.sample(
        BATCH, temperature=TEMPERATURE, seed=seed)) for _ in range(NUM // BATCH)])
    with np.load(MNIST) as data:
        real = data["x_test"][:NUM, :, :, None]
    real_features, _ = numpy_features(model, real)
    fake_features, fake_logits = numpy_features(model, samples)

    assert figures["num"] == NUM
    # FID is traces that nearly cancel (1.9e-4 of their 2.0e-2 here): its round-off
    # scales with the traces, not with FID.
    traces = sum(np.trace(np.cov(f, rowvar=False)) for f in (real_features, fake_features))
    assert figures["fid"] == pytest.approx(fid(real_features, fake_features), rel=1e-6,
                                           abs=1e-7 * traces)
    assert figures["fid"] > 0
    mean, std = inception_score(fake_logits, 10)
    assert figures["inception_score"] == {"mean": pytest.approx(mean, rel=1e-6),
                                          "std": pytest.approx(std, rel=1e-5, abs=1e-9),
                                          "splits": 10}
    precision = knn_coverage(fake_features, real_features, K)
    recall = knn_coverage(real_features, fake_features, K)
    assert 0 <= figures["precision"] <= 1 and 0 <= figures["recall"] <= 1
    assert (figures["precision"], figures["recall"]) == (precision, recall)
    assert 0 < precision < 1 or 0 < recall < 1   # a set of points, not all or nothing
    # 64 test images, one dequantization each, against the preset's figure on all
    # 10000: per-image bits/dim on MNIST spread by about 0.3, a standard error of 0.04.
    assert figures["bits_per_dim"] == pytest.approx(
        presets.MANIFEST["glow_mnist"]["test_bits_per_dim"], abs=0.15)

    assert f"FID: {figures['fid']:.4f} ({NUM} samples against {NUM} mnist test images)" \
        in printed
    assert f"Inception Score: {mean:.4f} +- " in printed and f"({NUM} samples, 10 splits)" \
        in printed
    assert f"precision: {precision:.4f}, recall: {recall:.4f} (k={K}; {NUM} samples" in printed
    assert f"bits/dim: {figures['bits_per_dim']:.4f} ({NUM} mnist test images" in printed
    assert f"{NUM}/{NUM}" in printed   # the progress bars


def test_evaluate_a_vector_preset_gives_its_test_nll(capsys):
    cli.main(["evaluate", "realnvp_moons", "--bpd", "--num", "20000", "--batch-size", "5000"])
    line = capsys.readouterr().out.splitlines()[-1]
    # The preset's own figure, measured on the same 20000 test points.
    assert line == (f"NLL: {presets.MANIFEST['realnvp_moons']['test_nll_nats']:.4f} nats "
                    "(20000 test points of moons)")


def one_line_error(argv, pattern):
    with pytest.raises(SystemExit, match=pattern) as exit:
        cli.main(argv)
    assert isinstance(exit.value.code, str) and "\n" not in exit.value.code
    assert exit.value.code.startswith("error: ")


def test_evaluate_errors_are_one_clear_line(saved_features, tmp_path, capsys, monkeypatch):
    _, path = saved_features
    one_line_error(["evaluate", "nope", "--fid"], "Unknown preset 'nope'.*glow_mnist")
    one_line_error(["evaluate", "realnvp_moons", "--fid", "--pr"],
                   r"--fid, --pr compare images; this preset models vectors of shape \(2,\)")
    one_line_error(["evaluate", "glow_mnist"], "name the figures to compute")
    one_line_error(["evaluate", "glow_mnist", "--fid", "--features",
                    str(tmp_path / "absent.keras")], "absent.keras: no such file")
    one_line_error(["evaluate", "glow_mnist", "--bpd", "--temperature", "0.5"],
                   "--temperature is used by --fid, --is and --pr only")
    one_line_error(["evaluate", "glow_mnist", "--pr", "--num", "3"],
                   "--pr with --k 3 needs --num above 3")
    one_line_error(["evaluate", "glow_mnist", "--bpd", "--num", "10001", "--data", str(MNIST)],
                   "--num 10001 exceeds the 10000 test images of mnist")
    features_only = keras.Model(*(lambda x: (x, keras.layers.Flatten()(x)))(
        keras.Input((28, 28, 1))))
    features_only.save(tmp_path / "features_only.keras")
    one_line_error(["evaluate", "glow_mnist", "--is", "--features",
                    str(tmp_path / "features_only.keras")], "--is needs a feature model "
                                                            "giving \\[features, logits\\]")

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "InceptionV3", offline)
    one_line_error(["evaluate", "glow_mnist", "--fid", "--num", "8"],
                   r"InceptionV3 could not be downloaded \(OSError: URL fetch failure: "
                   r"\[Errno -2\] Name or service not known\); put .*pass --features "
                   r"PATH\.keras")
    for argument in (["--num", "0"], ["--k", "0"], ["--temperature", "-1"]):
        with pytest.raises(SystemExit) as exit:
            cli.main(["evaluate", "glow_mnist", "--fid", *argument])
        assert exit.value.code == 2
        assert "expected a" in capsys.readouterr().err
