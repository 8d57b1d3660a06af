"""Every 2-D density model in keras_flows/pretrained/ loads on each backend and scores what its
metadata says, and no better than the density's entropy allows."""

import importlib.util
import json
import pathlib

import numpy as np
import keras
import pytest
from keras import ops

import keras_flows as kf

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "keras_flows" / "pretrained"
DENSITIES = ("moons", "8gaussians", "checkerboard", "pinwheel", "rings", "2spirals")


def _metadata(directory):
    path = directory / "metadata.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _is_toy_preset(metadata):
    """Held-out NLL on a toy density (image presets, with bits/dim, are tested
    in test_presets.py)."""
    data = metadata.get("dataset")
    return ("test_nll_nats" in metadata and isinstance(data, dict)
            and data.get("name") in kf.datasets.TOY_DENSITIES)


MODELS = sorted(p.name for p in PRETRAINED.iterdir() if _is_toy_preset(_metadata(p)))


def test_every_toy_density_has_a_pretrained_realnvp():
    assert {f"realnvp_{d}" for d in DENSITIES} <= set(MODELS)


def _held_out_log_probs(name):
    directory = PRETRAINED / name
    config = json.loads((directory / "config.json").read_text())
    flow = keras.saving.deserialize_keras_object(config)
    flow.load_weights(str(directory / "model.weights.h5"))
    data = _metadata(directory)["dataset"]
    held_out = kf.datasets.toy(data["name"], data["test_size"], seed=data["test_seed"])
    # One batch: inference is eager, and for FFJORD (an ODE solve) and
    # ResidualFlow the cost of a call hardly depends on its size.
    log_probs = flow.log_prob(held_out, batch_size=len(held_out))
    return ops.convert_to_numpy(log_probs).astype(np.float64)


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_model_reproduces_its_recorded_test_nll(name):
    metadata = _metadata(PRETRAINED / name)
    log_probs = _held_out_log_probs(name)
    nll = -log_probs.mean()
    # The figure is recorded to 4 decimals; backends differ by ~1e-6 in float32.
    assert abs(nll - metadata["test_nll_nats"]) < 2e-4, nll
    if "entropy_nats" in metadata:
        # The NLL is a cross-entropy, >= the entropy up to the sampling error of
        # the held-out mean (4 standard errors) and of the entropy estimate.
        slack = 4 * log_probs.std() / np.sqrt(len(log_probs)) + 0.01
        assert nll >= metadata["entropy_nats"] - slack, (nll, metadata["entropy_nats"])


def _guide():
    path = ROOT / "guides" / "train_2d_density.py"
    spec = importlib.util.spec_from_file_location("train_2d_density", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_entropies_are_reproduced():
    # One fresh draw each (the metadata averages 10): the estimator's spread
    # over N = 200,000 points is ~0.003 nats.
    knn_entropy = _guide().knn_entropy
    for name in MODELS:
        metadata = _metadata(PRETRAINED / name)
        if "entropy_nats" not in metadata:
            continue
        x = kf.datasets.toy(metadata["dataset"]["name"], 200_000, seed=7)
        assert abs(knn_entropy(x) - metadata["entropy_nats"]) < 0.012, name
