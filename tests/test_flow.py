"""The `Flow` model: its API, its loss, conditioning, dtypes and bad input."""

import numpy as np
import keras
import pytest
from keras import ops

import keras_flows as kf


def numpy(x):
    return ops.convert_to_numpy(x)


def data(n=64, d=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype("float32")


def trained(flow, x, epochs=2):
    flow.compile(optimizer=keras.optimizers.Adam(1e-2))
    flow.fit(x, batch_size=32, epochs=epochs, verbose=0)
    return flow


def test_log_prob_is_base_plus_log_det():
    x = data()
    flow = trained(kf.RealNVP(event_shape=(2,), num_layers=2, hidden_units=(8,),
                              base=kf.DiagonalNormal((2,))), x)
    z, log_det = flow.bijector.forward(x)
    expected = numpy(flow.base.log_prob(z)) + numpy(log_det)
    np.testing.assert_allclose(numpy(flow.log_prob(x)), expected, rtol=1e-6)
    np.testing.assert_allclose(flow.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_fit_and_evaluate_report_the_mean_nll():
    x = data()
    flow = trained(kf.NICE(event_shape=(2,), num_layers=2, hidden_units=(8,)), x)
    nll = -np.mean(numpy(flow.log_prob(x)))
    np.testing.assert_allclose(flow.evaluate(x, batch_size=64, verbose=0), nll, rtol=1e-5)
    weights = np.linspace(0.0, 1.0, 64).astype("float32")
    log_prob = flow.log_prob(x)
    weighted = -np.sum(weights * numpy(log_prob)) / weights.sum()
    loss = flow.compute_loss(x, None, log_prob, sample_weight=weights)
    np.testing.assert_allclose(numpy(loss), weighted, rtol=1e-5)


def test_a_new_flow_is_its_base():
    x = data()
    flow = kf.RealNVP(event_shape=(2,), num_layers=3, hidden_units=(8,))
    np.testing.assert_allclose(numpy(flow.log_prob(x)),
                               numpy(kf.StandardNormal((2,)).log_prob(x)), rtol=1e-6)


def test_encode_decode_and_sample():
    x = data()
    flow = trained(kf.RealNVP(event_shape=(2,), num_layers=4, hidden_units=(8,)), x)
    z = flow.encode(x)
    np.testing.assert_allclose(numpy(flow.decode(z)), x, atol=1e-5)
    samples = numpy(flow.sample(10, seed=0))
    assert samples.shape == (10, 2) and np.isfinite(samples).all()
    np.testing.assert_array_equal(samples, numpy(flow.sample(10, seed=0)))
    cold = numpy(flow.sample(3, temperature=0.0, seed=0))
    np.testing.assert_allclose(cold, np.repeat(numpy(flow.decode(np.zeros((1, 2)))), 3, 0),
                               atol=1e-6)


@pytest.mark.parametrize("name", ["RealNVP", "MAF", "NSF", "conditional"])
def test_sample_and_log_prob_matches_sample_then_log_prob(name):
    """One inverse pass gives the samples of `sample` and the densities a
    forward pass (`log_prob`) assigns them; MAF's and NSF's inverses are
    other computations than their forwards."""
    x = data(d=3)
    context = None
    if name == "conditional":
        flow = kf.RealNVP(event_shape=(3,), num_layers=3, hidden_units=(8,), context_shape=(2,))
        context = data(n=40, d=2, seed=1)
        flow.compile(optimizer=keras.optimizers.Adam(1e-2))
        flow.fit({"x": x, "context": data(d=2, seed=2)}, batch_size=32, epochs=2, verbose=0)
    else:
        flow = trained(getattr(kf, name)(event_shape=(3,), num_layers=3, hidden_units=(8,)), x)
    samples, log_p = flow.sample_and_log_prob(40, context, temperature=0.7, seed=3,
                                              batch_size=16)
    assert samples.shape == (40, 3) and log_p.shape == (40,)
    np.testing.assert_array_equal(numpy(samples), numpy(flow.sample(
        40, context, temperature=0.7, seed=3, batch_size=16)))
    np.testing.assert_allclose(numpy(log_p), numpy(flow.log_prob(samples, context)),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="`context` has 40 rows; sampling 5 needs one row"):
        flow.sample_and_log_prob(5, context if context is not None else data(40, 2))


def test_conditional_flow_trains_samples_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2, size=(256, 1)).astype("float32")
    x = rng.normal(size=(256, 2)).astype("float32") * 0.3 + 3.0 * c
    flow = kf.RealNVP(event_shape=(2,), num_layers=4, hidden_units=(16,), context_shape=(1,))
    flow.compile(optimizer=keras.optimizers.Adam(1e-2))
    flow.fit({"x": x, "context": c}, batch_size=64, epochs=30, verbose=0)
    samples = numpy(flow.sample(200, context=np.ones((200, 1)), seed=0))
    assert abs(samples.mean() - 3.0) < 0.5          # the c = 1 cluster, not c = 0
    path = str(tmp_path / "cond.keras")
    flow.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(numpy(loaded.log_prob(x, c)), numpy(flow.log_prob(x, c)))


def test_float64_flow_computes_in_float64():
    x = data().astype("float64")
    flow = kf.RealNVP(event_shape=(2,), num_layers=2, hidden_units=(8,), dtype="float64")
    trained(flow, x, epochs=1)
    assert all(keras.backend.standardize_dtype(w.dtype) == "float64" for w in flow.weights)
    lp = flow.log_prob(x)
    assert keras.backend.standardize_dtype(lp.dtype) == "float64"
    np.testing.assert_allclose(numpy(flow.decode(flow.encode(x))), x, atol=1e-12)


def test_nice_and_realnvp_round_trip_through_keras_files(tmp_path):
    x = data()
    for flow in (kf.NICE(event_shape=(2,), num_layers=2, hidden_units=(8,)),
                 kf.RealNVP(event_shape=(2,), num_layers=2, batch_norm=True,
                            hidden_units=(8,))):
        trained(flow, x, epochs=1)
        path = str(tmp_path / f"{flow.name}.keras")
        flow.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded) is type(flow)
        np.testing.assert_array_equal(numpy(loaded.log_prob(x)), numpy(flow.log_prob(x)))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 3), "float32"), r"shape \(batch, 2\); got \(4, 3\)"),
    (np.zeros((4,), "float32"), r"shape \(batch, 2\)"),
    (np.array([[0.0, np.nan]], "float32"), "NaN or inf"),
    (np.array([[np.inf, 0.0]], "float32"), "NaN or inf"),
])
def test_bad_inputs_are_refused_clearly(bad, message):
    flow = kf.RealNVP(event_shape=(2,), num_layers=2, hidden_units=(8,))
    flow.compile(optimizer="adam")
    for call in (flow.log_prob, flow.encode, flow.fit):
        with pytest.raises(ValueError, match=message):
            call(bad)


def test_context_errors():
    x = data(4)
    cond = kf.RealNVP(event_shape=(2,), num_layers=2, hidden_units=(8,), context_shape=(3,))
    with pytest.raises(ValueError, match="conditional: pass `context`"):
        cond.log_prob(x)
    with pytest.raises(ValueError, match="one context row per example"):
        cond.log_prob(x, np.zeros((3, 3), "float32"))
    with pytest.raises(ValueError, match=r"`context` must have shape \(batch, 3\)"):
        cond.log_prob(x, np.zeros((4, 2), "float32"))
    with pytest.raises(ValueError, match="one row per sample"):
        cond.sample(5, context=np.zeros((4, 3), "float32"))
    plain = kf.RealNVP(event_shape=(2,), num_layers=2, hidden_units=(8,))
    with pytest.raises(ValueError, match="not conditional"):
        plain.log_prob(x, np.zeros((4, 3), "float32"))
    coupling = kf.AffineCoupling(context_shape=(3,))
    with pytest.raises(ValueError, match="is conditional"):
        coupling.forward(x)
