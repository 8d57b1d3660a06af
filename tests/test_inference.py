"""Inference methods: no gradient graph, batches, and refusal of careless input."""

import numpy as np
import keras
import pytest
from keras import ops

import keras_flows as kf
from keras_flows.bijectors import TopPrior


def numpy(x):
    return ops.convert_to_numpy(x)


def input_gradient(fn, x):
    """d sum(fn(x)) / dx with this backend's autodiff; None where no gradient flows."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda x: fn(x).sum())(x))
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(fn(x))
        grad = tape.gradient(out, x)
        return None if grad is None else grad.numpy()
    import torch

    x = torch.tensor(x, requires_grad=True)
    out = fn(x).sum()
    if not out.requires_grad:
        return None
    out.backward()
    return x.grad.numpy()


def no_gradient(grad):
    return grad is None or not np.any(grad)


def trained_vector_flow():
    x = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    flow = kf.RealNVP(event_shape=(2,), num_layers=2, hidden_units=(8,))
    flow.compile(optimizer=keras.optimizers.Adam(1e-2))
    flow.fit(x, batch_size=32, epochs=2, verbose=0)
    return flow, x


def tiny_glow(**kwargs):
    return kf.Glow(image_shape=(8, 8, 1), levels=2, steps_per_level=1, hidden_channels=4,
                   seed=0, **kwargs)


def images(n=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1)).astype("float32")


def test_inference_methods_carry_no_gradient_but_calling_the_model_does():
    flow, x = trained_vector_flow()
    assert not no_gradient(input_gradient(lambda x: flow(x), x))
    for method in (flow.log_prob, flow.encode, flow.decode):
        assert no_gradient(input_gradient(method, x)), method.__name__
    if keras.backend.backend() == "torch":
        # no graph kept: nothing in the outputs refers back to the weights
        for out in (flow.log_prob(x), flow.encode(x), flow.sample(4, seed=0)):
            assert not out.requires_grad and out.grad_fn is None
        glow = tiny_glow()
        assert not glow.bits_per_dim(images()).requires_grad
        assert not any(z.requires_grad for z in glow.encode(images()))


def test_batched_inference_equals_one_pass():
    flow, x = trained_vector_flow()
    np.testing.assert_allclose(numpy(flow.log_prob(x, batch_size=7)), numpy(flow(x)),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(numpy(flow.decode(flow.encode(x, batch_size=5), batch_size=9)),
                               x, atol=1e-5)
    glow, pixels = tiny_glow(), images(11)
    one_pass = glow.encode(pixels)
    for a, b in zip(glow.encode(pixels, batch_size=4), one_pass):
        np.testing.assert_allclose(numpy(a), numpy(b), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(numpy(glow.bits_per_dim(pixels, batch_size=3)),
                               numpy(glow.bits_per_dim(pixels)), rtol=1e-6)
    np.testing.assert_array_equal(numpy(glow.decode(one_pass, batch_size=2)),
                                  np.floor(pixels))
    assert numpy(glow.sample(7, seed=0, batch_size=3)).shape == (7, 8, 8, 1)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        flow.log_prob(x, batch_size=0)


@pytest.mark.parametrize("n", [0, -1, 2.5, "3", True, None])
def test_sample_needs_a_positive_integer_count(n):
    for flow in (trained_vector_flow()[0], tiny_glow()):
        with pytest.raises(ValueError, match="`n` must be a positive integer"):
            flow.sample(n)


@pytest.mark.parametrize("temperature", [-1.0, float("nan"), float("inf"), "hot"])
def test_sample_needs_a_finite_nonnegative_temperature(temperature):
    for flow in (trained_vector_flow()[0], tiny_glow()):
        with pytest.raises(ValueError, match="`temperature` must be a finite number >= 0"):
            flow.sample(3, temperature=temperature)


def test_images_scaled_to_the_unit_interval_are_refused_everywhere():
    glow = tiny_glow()
    glow.compile(optimizer="adam")
    scaled = images() / 255.0
    message = r"look scaled to \[0, 1\].*\[0, 256\)"
    for call in (lambda: glow.bits_per_dim(scaled), lambda: glow.log_prob(scaled),
                 lambda: glow.encode(scaled), lambda: glow.fit(scaled, epochs=1, verbose=0),
                 lambda: glow.evaluate(scaled, verbose=0),
                 lambda: glow.predict(scaled, verbose=0)):
        with pytest.raises(ValueError, match=message):
            call()
    # nearly black images are pixel values too: integers are never rescaled ones
    dark = (images() > 128).astype("float32")
    assert np.isfinite(numpy(glow.bits_per_dim(dark))).all()


def test_class_labels_must_be_integers_in_range_in_every_path():
    import tensorflow as tf

    glow = tiny_glow(num_classes=3)
    glow.compile(optimizer="adam")
    pixels = images(6)
    # a dataset is checked on its first batch: the bad label is in it
    for labels, message in [(np.array([0, 1, 2.5, 0, 1, 2]), "integer class labels"),
                            (np.array([0, 1, 3, 0, 1, 2]), r"in \[0, 3\); got labels in \[0, 3\]"),
                            (np.array([0, -1, 2, 0, 1, 2]), r"in \[0, 3\)")]:
        data = {"x": pixels, "context": labels}
        dataset = tf.data.Dataset.from_tensor_slices(data).batch(3)
        for call in (lambda: glow.bits_per_dim(pixels, labels),
                     lambda: glow.fit(data, epochs=1, verbose=0),
                     lambda: glow.fit(dataset, epochs=1, verbose=0),
                     lambda: glow.evaluate(data, verbose=0),
                     lambda: glow.sample(6, context=labels)):
            with pytest.raises(ValueError, match=message):
                call()


def test_a_label_out_of_range_inside_a_traced_step_gives_nan_not_a_density():
    prior = TopPrior(num_classes=3)
    e, log_det = prior.forward(ops.zeros((4, 2, 2, 2), "float32"),
                               context=ops.convert_to_tensor([0, 2, 3, -1], "int32"))
    e = numpy(e).reshape(4, -1)
    log_p = np.sum(-0.5 * e**2 - 0.5 * np.log(2 * np.pi), axis=1) + numpy(log_det)
    expected = 8 * -0.5 * np.log(2 * np.pi)  # N(0, I) at 0: the zero-initialised prior
    np.testing.assert_allclose(log_p[:2], expected, rtol=1e-6)
    assert np.isnan(log_p[2:]).all()


def test_bad_labels_that_reach_a_traced_step_give_nan():
    glow = tiny_glow(num_classes=3)
    pixels = images(4)
    good = numpy(glow.bits_per_dim(pixels, np.array([0, 1, 2, 1])))
    # what a traced training step sees of labels in a later batch
    log_p = numpy(glow({"x": pixels, "context": np.array([0.0, 1.0, 1.5, 7.0], "float32")}))
    np.testing.assert_allclose(-log_p[:2] / (64 * np.log(2)), good[:2], rtol=1e-5)
    assert np.isnan(log_p[2:]).all()


def test_large_inputs_are_processed_batch_size_rows_at_a_time(monkeypatch):
    # what bounds memory: no pass through the network sees more rows than batch_size
    glow, pixels = tiny_glow(), images(23)
    rows, forward = [], glow._log_prob

    def spy(x, *args, **kwargs):
        rows.append(int(x.shape[0]))
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(glow, "_log_prob", spy)
    glow.bits_per_dim(pixels, batch_size=5)
    assert rows == [5, 5, 5, 5, 3]
