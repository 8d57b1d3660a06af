"""Memory for large image flows: gradient checkpointing (`remat`) and mixed
precision (`dtype="mixed_bfloat16"`)."""

import numpy as np
import pytest
import keras
from keras import ops

import keras_flows as kf

IMAGES = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype("uint8")


def small_glow(**kwargs):
    keras.utils.set_random_seed(0)  # the same dequantization noise in every model
    return kf.Glow(image_shape=(8, 8, 3), levels=2, steps_per_level=2, hidden_channels=8,
                   seed=3, **kwargs)


def one_sgd_step(flow, jit_compile="auto"):
    """The change of every weight in one `fit` step of SGD with rate 1 on
    `IMAGES` (minus the loss gradient, or the new non-trainable state)."""
    before = [ops.convert_to_numpy(w).copy() for w in flow.weights]
    flow.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=jit_compile)
    flow.fit(IMAGES, batch_size=len(IMAGES), epochs=1, verbose=0, shuffle=False)
    return [ops.convert_to_numpy(w) - b for w, b in zip(flow.weights, before)]


def perturbed(flow, scale=0.05):
    """Random weights (the same for every model of this config): the zero-started
    coupling networks would otherwise get no gradient in their hidden layers."""
    rng = np.random.default_rng(1)
    flow.set_weights([w + scale * rng.standard_normal(w.shape).astype(w.dtype)
                      if v.trainable else w for w, v in zip(flow.get_weights(), flow.weights)])
    return flow


@pytest.mark.parametrize("remat,dtype,jit_compile", [
    ("level", "float32", "auto"), ("step", "float32", False), ("step", "float64", "auto")])
def test_a_training_step_with_remat_equals_the_one_without(remat, dtype, jit_compile):
    plain = one_sgd_step(perturbed(small_glow(dtype=dtype)), jit_compile)
    checkpointed = one_sgd_step(perturbed(small_glow(dtype=dtype, remat=remat)),
                                jit_compile)
    paths = [v.path for v in small_glow().weights]
    hidden = [d for d, p in zip(plain, paths) if "conditioner/conv_0/kernel" in p]
    assert hidden and all(np.abs(d).max() > 1e-3 for d in hidden)  # gradients reach them
    scale = max(np.abs(d).max() for d in plain)
    tolerance = 1e-5 if dtype == "float32" else 1e-11
    for a, b, path in zip(plain, checkpointed, paths):
        np.testing.assert_allclose(b, a, atol=tolerance * scale, err_msg=path)


def test_remat_is_in_the_config_and_bad_values_are_refused():
    flow = small_glow(remat="step")
    config = flow.get_config()
    assert config["remat"] == "step"
    assert kf.Glow.from_config(config).remat == "step"
    assert small_glow().get_config()["remat"] is None
    for bad in ("steps", True, "full"):
        with pytest.raises(ValueError, match="`remat` must be None, 'step' or 'level'"):
            small_glow(remat=bad)


@pytest.mark.parametrize("remat", [None, "step"])
def test_glow_trains_in_mixed_bfloat16_and_scores_like_float32(remat):
    flow = small_glow(dtype="mixed_bfloat16", remat=remat)
    coupling = flow.multiscale.levels[0].bijectors[1].bijectors[2]
    assert coupling.conditioner.hidden[0].compute_dtype == "bfloat16"
    assert {keras.backend.standardize_dtype(w.dtype) for w in flow.weights} == {"float32"}
    flow.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = flow.fit(IMAGES, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    log_p = flow(IMAGES, training=True)
    loss = flow.compute_loss(y_pred=log_p)
    for value in (log_p, loss, flow.log_prob(IMAGES)):
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
    # ActNorm's data-dependent start was stored (on PyTorch an autocast
    # variable's assignment used to be lost).
    actnorm = flow.multiscale.levels[0].bijectors[1].bijectors[0]
    assert float(ops.convert_to_numpy(actnorm.initialized)) == 1.0
    assert np.abs(ops.convert_to_numpy(actnorm.initial_log_scale)).max() > 0.1

    config = flow.get_config()
    config["dtype"] = "float32"
    reference = kf.Glow.from_config(config)
    reference.set_weights(flow.get_weights())
    # bfloat16 keeps 8 bits of mantissa: each activation is rounded by ~0.4%,
    # which moves bits/dim by a few hundredths; float32 sums keep the
    # log-dets themselves exact to ~1e-6.
    np.testing.assert_allclose(ops.convert_to_numpy(flow.bits_per_dim(IMAGES)),
                               ops.convert_to_numpy(reference.bits_per_dim(IMAGES)),
                               atol=0.05)
