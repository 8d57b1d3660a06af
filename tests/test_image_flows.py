"""Glow and multi-scale RealNVP on real MNIST; bits/dim on known answers."""

import inspect
import math

import numpy as np
import keras
import pytest
from keras import ops

import keras_flows as kf
from cross_backend import on_another_backend
from real_data import dataset_file
from keras_flows.bijectors import Dequantize



def numpy(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def mnist():
    x_train, y_train, x_test, y_test = kf.datasets.load_arrays("mnist", path=dataset_file("mnist"))
    return x_train, y_train.astype("int32"), x_test, y_test.astype("int32")


def tiny_glow(**kwargs):
    return kf.Glow(image_shape=(28, 28, 1), levels=2, steps_per_level=2, hidden_channels=16,
                   seed=0, **kwargs)


def tiny_realnvp(**kwargs):
    return kf.RealNVP(image_shape=(28, 28, 1), levels=2, hidden_channels=8, num_blocks=1,
                      seed=0, **kwargs)


def tiny_realnvp_actnorm():
    return tiny_realnvp(normalization="actnorm")


@pytest.mark.parametrize("n_bits", [8, 5])
def test_a_uniform_density_is_exactly_n_bits_per_dim(n_bits):
    # logit(x / B) of x ~ U[0, B) is standard logistic: the flow below is the
    # uniform density on [0, B)^D, whose discrete figure is n_bits.
    shape = (4, 4, 1)
    flow = kf.Flow(kf.LogitTransform(alpha=0.0, n_bits=n_bits), event_shape=shape,
                   base=kf.StandardLogistic(shape))
    images = np.random.default_rng(0).integers(0, 256, size=(6, *shape)).astype("uint8")
    dequantize = Dequantize(n_bits)
    for training in (False, True):
        y, _ = dequantize.forward(images.astype("float32"), training=training)
        bpd = kf.metrics.bits_per_dim(flow.log_prob(y), math.prod(shape))
        np.testing.assert_allclose(numpy(bpd), n_bits, rtol=1e-5)


def test_bits_per_dim_is_nll_over_d_log_2_on_the_pixel_scale(mnist):
    flow = tiny_glow()
    images = mnist[2][:8]
    log_p = numpy(flow.log_prob(images))
    np.testing.assert_allclose(numpy(flow.bits_per_dim(images)),
                               -log_p / (784 * math.log(2.0)), rtol=1e-6)


def test_importance_sampled_bits_per_dim_tightens_with_more_samples(mnist):
    flow = tiny_glow()
    flow.compile(optimizer=keras.optimizers.Adamax(1e-3))
    flow.fit(mnist[0][:256], batch_size=64, epochs=1, verbose=0)
    images = mnist[2][:16]
    one = numpy(flow.bits_per_dim(images, num_samples=1, seed=0)).mean()
    many = numpy(flow.bits_per_dim(images, num_samples=8, seed=0)).mean()
    assert many <= one + 1e-3


@pytest.mark.parametrize("make", [tiny_glow, tiny_realnvp, tiny_realnvp_actnorm])
def test_decode_encode_is_exact_on_real_mnist(make, mnist):
    flow = make()
    flow.compile(optimizer=keras.optimizers.Adamax(1e-3))
    flow.fit(mnist[0][:128], batch_size=64, epochs=1, verbose=0)   # ActNorm initialised
    images = mnist[2][:16]
    latents = flow.encode(images)
    assert tuple(latents.shape) == (16, 784)
    assert [tuple(e.shape[1:]) for e in flow.multiscale.unflatten(latents)] == [
        (14, 14, 2), (7, 7, 8) if make is tiny_glow else (14, 14, 2)]
    np.testing.assert_array_equal(numpy(flow.decode(latents)), images.astype("float32"))


def test_a_tiny_glow_learns_real_mnist(mnist):
    keras.utils.set_random_seed(0)
    flow = tiny_glow()
    flow.compile(optimizer=keras.optimizers.Adamax(
        kf.callbacks.Warmup(2e-3, 20), global_clipnorm=200.0))
    history = flow.fit(mnist[0][:3000], batch_size=64, epochs=2, verbose=0)
    test_bpd = float(numpy(flow.bits_per_dim(mnist[2][:500])).mean())
    assert np.isfinite(history.history["loss"]).all()
    assert test_bpd < 6.0, test_bpd     # uniform is 8.0


def test_a_tiny_realnvp_learns_real_mnist(mnist):
    # The paper's layout (ResNet couplings, batch norm bijectors), tiny.
    keras.utils.set_random_seed(0)
    flow = tiny_realnvp()
    flow.compile(optimizer=keras.optimizers.Adamax(
        kf.callbacks.Warmup(2e-3, 20), global_clipnorm=200.0))
    history = flow.fit(mnist[0][:2048], batch_size=64, epochs=1, verbose=0)
    test_bpd = float(numpy(flow.bits_per_dim(mnist[2][:256])).mean())
    assert np.isfinite(history.history["loss"]).all()
    assert test_bpd < 6.0, test_bpd     # uniform is 8.0


@pytest.fixture(scope="module")
def trained_realnvp(mnist):
    """A tiny batch-norm RealNVP after a few steps: non-trivial moving statistics."""
    flow = tiny_realnvp()
    flow.compile(optimizer=keras.optimizers.Adamax(1e-3))
    flow.fit(mnist[0][:192], batch_size=64, epochs=1, verbose=0)
    return flow


def test_realnvp_defaults_are_the_papers_cifar10_model():
    defaults = inspect.signature(kf.ImageRealNVP).parameters
    flow_args = {k: defaults[k].default
                 for k in ("levels", "hidden_channels", "num_blocks", "normalization")}
    assert flow_args == {"levels": 2, "hidden_channels": 64, "num_blocks": 8,
                         "normalization": "batch"}
    flow = tiny_realnvp()
    assert isinstance(flow, kf.ImageRealNVP)
    levels = flow.multiscale.levels
    names = [type(b).__name__ for b in levels[0].bijectors]
    assert names == ["AffineCoupling", "BatchNorm"] * 3 + ["Squeeze"] + [
        "AffineCoupling", "BatchNorm"] * 3
    assert [type(b).__name__ for b in levels[1].bijectors] == [
        "AffineCoupling", "BatchNorm"] * 4
    widths = [b.hidden_channels for b in levels[0].bijectors + levels[1].bijectors
              if type(b).__name__ == "AffineCoupling"]
    assert widths == [8] * 3 + [16] * 3 + [16] * 4     # doubles after each squeeze
    with pytest.raises(ValueError, match="normalization"):
        tiny_realnvp(normalization="layer")


def test_realnvp_inference_log_prob_is_per_example(trained_realnvp, mnist):
    # Batch norm uses its moving statistics outside training: an image's
    # score does not depend on the other images of its batch.
    images = mnist[2][:8]
    alone = np.concatenate([numpy(trained_realnvp.bits_per_dim(images[i:i + 1]))
                            for i in range(4)])
    together = numpy(trained_realnvp.bits_per_dim(images))[:4]
    mixed = numpy(trained_realnvp.bits_per_dim(np.concatenate([images[:4],
                                                               mnist[0][:4]])))[:4]
    np.testing.assert_allclose(together, alone, rtol=1e-5)
    np.testing.assert_allclose(mixed, alone, rtol=1e-5)
    np.testing.assert_array_equal(numpy(trained_realnvp.bits_per_dim(images)),
                                  numpy(trained_realnvp.bits_per_dim(images)))


def test_realnvp_config_and_keras_file_round_trip(trained_realnvp, mnist, tmp_path):
    config = trained_realnvp.get_config()
    assert (config["num_blocks"], config["normalization"]) == (1, "batch")
    rebuilt = kf.RealNVP.from_config(config)
    assert type(rebuilt) is type(trained_realnvp)
    assert rebuilt.get_config() == config
    path = str(tmp_path / "realnvp.keras")
    trained_realnvp.save(path)
    loaded = keras.saving.load_model(path)
    images = mnist[2][:4]
    np.testing.assert_array_equal(numpy(loaded.bits_per_dim(images)),
                                  numpy(trained_realnvp.bits_per_dim(images)))
    np.testing.assert_array_equal(numpy(loaded.decode(trained_realnvp.encode(images))),
                                  images.astype("float32"))


def test_class_conditional_glow_samples_and_scores(mnist, tmp_path):
    flow = tiny_glow(num_classes=10)
    flow.compile(optimizer=keras.optimizers.Adamax(1e-3))
    flow.fit({"x": mnist[0][:128], "context": mnist[1][:128]}, batch_size=64, epochs=1,
             verbose=0)
    samples = numpy(flow.sample(10, context=np.arange(10), temperature=0.7, seed=0))
    assert samples.shape == (10, 28, 28, 1)
    assert samples.min() >= 0 and samples.max() <= 255
    assert np.all(samples == np.round(samples))
    # One label for all: the images of `sample`, scored as the pixels they are.
    images, log_p = flow.sample_and_log_prob(4, context=3, temperature=0.7, seed=1)
    np.testing.assert_array_equal(numpy(images), numpy(flow.sample(4, 3, 0.7, seed=1)))
    np.testing.assert_allclose(numpy(log_p), numpy(flow.log_prob(images, np.full(4, 3))),
                               rtol=1e-6)
    bpd = numpy(flow.bits_per_dim(mnist[2][:4], mnist[3][:4]))
    path = str(tmp_path / "cond.keras")
    flow.save(path)
    np.testing.assert_array_equal(
        numpy(keras.saving.load_model(path).bits_per_dim(mnist[2][:4], mnist[3][:4])), bpd)


def test_sampling_is_seeded_and_temperature_zero_is_deterministic():
    flow = kf.Glow(image_shape=(8, 8, 3), levels=2, steps_per_level=1, hidden_channels=8,
                   seed=0)
    np.testing.assert_array_equal(numpy(flow.sample(2, seed=1)), numpy(flow.sample(2, seed=1)))
    cold = numpy(flow.sample(2, temperature=0.0, seed=1))
    np.testing.assert_array_equal(cold[0], cold[1])


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32, 1)), r"shape \(batch, 28, 28, 1\)"),
    (np.zeros((2, 28, 28, 3)), r"shape \(batch, 28, 28, 1\)"),
    (np.full((2, 28, 28, 1), 256.0), r"\[0, 256\)"),
    (np.full((2, 28, 28, 1), -1.0), r"\[0, 256\)"),
    (np.full((2, 28, 28, 1), np.nan), "NaN"),
])
def test_bad_images_are_refused(images, message):
    flow = tiny_glow()
    with pytest.raises(ValueError, match=message):
        flow.bits_per_dim(images)
    with pytest.raises(ValueError, match=message):
        flow.log_prob(images)


def test_context_errors_for_class_conditional_glow():
    flow = tiny_glow(num_classes=10)
    images = np.zeros((2, 28, 28, 1))
    with pytest.raises(ValueError, match="one integer class label per example"):
        flow.bits_per_dim(images)
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        flow.bits_per_dim(images, np.array([0, 10]))
    with pytest.raises(ValueError, match="one row per sample"):
        flow.sample(3, context=np.arange(2))
    with pytest.raises(ValueError, match="not conditional"):
        tiny_glow().bits_per_dim(images, np.array([0, 1]))


def test_odd_sizes_are_refused():
    with pytest.raises(ValueError, match="divisible by 2"):
        kf.Glow(image_shape=(28, 28, 1), levels=3, steps_per_level=1, hidden_channels=8)


def test_the_same_glow_weights_give_the_same_bits_per_dim_on_every_backend(mnist, tmp_path):
    flow = tiny_glow()
    flow.compile(optimizer=keras.optimizers.Adamax(1e-3))
    flow.fit(mnist[0][:128], batch_size=64, epochs=1, verbose=0)
    expected = numpy(flow.bits_per_dim(mnist[2][:8]))
    for backend, result in on_another_backend(flow, "bits_per_dim", tmp_path,
                                             images=mnist[2][:8]).items():
        np.testing.assert_allclose(result, expected, rtol=1e-5, err_msg=backend)


@pytest.mark.parametrize("model", ["Glow", "RealNVP"])
def test_fit_on_real_cifar10_through_the_tf_data_pipeline(model):
    cifar10 = dataset_file("cifar10")
    train, test = kf.datasets.load("cifar10", batch_size=16, path=str(cifar10), seed=0,
                                   flip=True, drop_remainder=True)
    if model == "Glow":
        flow = kf.Glow(image_shape=(32, 32, 3), levels=2, steps_per_level=1,
                       hidden_channels=8, seed=0)
    else:
        flow = kf.RealNVP(image_shape=(32, 32, 3), levels=2, hidden_channels=8,
                          num_blocks=1, seed=0)
    flow.compile(optimizer=keras.optimizers.Adamax(1e-3, global_clipnorm=200.0))
    history = flow.fit(train, epochs=2, steps_per_epoch=3, validation_data=test.take(1),
                       verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(history.history["val_loss"]).all()
    images = next(iter(test))[:4].numpy()
    np.testing.assert_array_equal(numpy(flow.decode(flow.encode(images))),
                                  images.astype("float32"))


def test_mixed_precision_sums_log_densities_in_float32(mnist):
    images = mnist[2][:8]
    flow = kf.Glow(image_shape=(28, 28, 1), levels=2, steps_per_level=2, hidden_channels=8,
                   seed=0)
    flow(images[:4])  # ActNorm's data-dependent start
    reference = ops.convert_to_numpy(flow.bits_per_dim(images))
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = kf.Glow.from_config(flow.get_config())
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    mixed.set_weights(flow.get_weights())
    bpd = mixed.bits_per_dim(images)
    assert keras.backend.standardize_dtype(bpd.dtype) == "float32"
    # bfloat16 activations move each figure by a few thousandths; log-dets
    # summed in bfloat16 (8-bit mantissa, 784 terms) would be off by ~0.1.
    np.testing.assert_allclose(ops.convert_to_numpy(bpd), reference, atol=0.02)


def test_class_loss_trains_a_classifier_on_the_top_latent(mnist):
    x, y = mnist[0][:2048], mnist[1][:2048]     # ~430 zeros and ones: 7 steps an epoch
    keep = y < 2
    x, y = x[keep], y[keep]
    flow = kf.Glow(image_shape=(28, 28, 1), levels=2, steps_per_level=1, hidden_channels=8,
                   num_classes=2, class_loss_weight=1.0, seed=0)
    assert kf.Glow.from_config(flow.get_config()).class_loss_weight == 1.0
    flow.compile(optimizer=keras.optimizers.Adam(1e-2))
    flow.fit({"x": x, "context": y}, batch_size=64, epochs=3, verbose=0)
    predicted = np.argmax(ops.convert_to_numpy(flow.class_logits(x)), axis=1)
    # Zeros and ones are easy: the head must learn them from the top latent.
    assert np.mean(predicted == y) > 0.9
    with pytest.raises(ValueError, match="needs `num_classes`"):
        kf.Glow(image_shape=(8, 8, 1), levels=1, steps_per_level=1, hidden_channels=4,
                class_loss_weight=1.0)


def test_latents_that_overflow_float32_warn_and_still_give_pixels(mnist):
    flow = tiny_glow()
    z = flow.encode(mnist[2][:2])
    # The rescaling's inverse multiplies by 256: 3e38 * 256 is past float32.
    huge = ops.concatenate([ops.full_like(z[:1], 3e38), z[1:]], axis=0)
    with pytest.warns(UserWarning, match="1 of 2 images overflowed float32"):
        images = numpy(flow.decode(huge))
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 255
    np.testing.assert_array_equal(images[1], mnist[2][1].astype("float32"))


def test_float64_class_conditional_prior_computes_in_float64():
    # keras.layers.Dense computes float64 in float32 on PyTorch (Keras 3.15);
    # the class map of the top prior must not. The log-density difference
    # between two labels is the top prior's alone, checked in numpy float64.
    flow = kf.Glow(image_shape=(4, 4, 1), levels=1, steps_per_level=1, hidden_channels=4,
                   num_classes=3, seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    for w in flow.trainable_weights:
        w.assign(rng.normal(scale=0.3, size=w.shape))
    images = rng.uniform(0, 256, size=(5, 4, 4, 1))
    dequantize, preprocess, multiscale = flow.bijector.bijectors
    h, _ = preprocess.forward(dequantize.forward(images)[0])
    top = numpy(multiscale.factor_out(h)[1]).reshape(5, -1)     # before the top prior
    prior = multiscale.top_prior
    kernel, bias = (numpy(v) for v in (prior.class_map.kernel, prior.class_map.bias))

    def top_log_prob(label):
        out = kernel[label] + bias                       # (2C,): (loc, log_scale) pairs
        positions = top.shape[1] // (len(out) // 2)      # H * W, channels fastest
        loc = numpy(prior.loc).reshape(-1) + np.tile(out[0::2], positions)
        log_scale = numpy(prior.log_scale).reshape(-1) + np.tile(out[1::2], positions)
        return np.sum(-0.5 * ((top - loc) / np.exp(log_scale))**2 - log_scale
                      - 0.5 * np.log(2 * np.pi), axis=1)

    difference = (numpy(flow.log_prob(images, np.full(5, 2)))
                  - numpy(flow.log_prob(images, np.full(5, 0))))
    np.testing.assert_allclose(difference, top_log_prob(2) - top_log_prob(0), rtol=1e-11)
