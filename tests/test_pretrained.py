"""Every model in pretrained/ loads on each backend and scores what its metadata says."""

import json
import pathlib

import numpy as np
import keras
import pytest
from keras import ops

import keras_flows as kf

PRETRAINED = pathlib.Path(__file__).parent.parent / "pretrained"
MODELS = sorted(p.name for p in PRETRAINED.iterdir() if (p / "metadata.json").exists())


def test_pretrained_is_not_empty():
    assert MODELS


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_model_reproduces_its_recorded_test_nll(name):
    directory = PRETRAINED / name
    config = json.loads((directory / "config.json").read_text())
    metadata = json.loads((directory / "metadata.json").read_text())
    flow = keras.saving.deserialize_keras_object(config)
    flow.load_weights(str(directory / "model.weights.h5"))
    data = metadata["dataset"]
    held_out = kf.datasets.toy(data["name"], data["test_size"], seed=data["test_seed"])
    nll = -float(np.mean(ops.convert_to_numpy(flow.log_prob(held_out))))
    assert abs(nll - metadata["test_nll_nats"]) < 1e-3
