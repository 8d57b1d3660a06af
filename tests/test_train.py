"""The training script and its callbacks, on real MNIST."""

import json
import math
import pathlib

import numpy as np
import pytest
from keras import ops

import keras_flows as kf
from keras_flows import train

MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist.npz"
CONFIG = {
    "model": "Glow",
    "model_config": {"image_shape": [28, 28, 1], "levels": 2, "steps_per_level": 1,
                     "hidden_channels": 8, "seed": 0},
    "dataset": {"name": "mnist", "batch_size": 32},
    "training": {"epochs": 1, "learning_rate": 1e-3, "warmup_steps": 2, "clipnorm": 50.0,
                 "checkpoint_every": 2, "seed": 0},
}


def test_train_writes_results_and_resumes(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "run"
    args = [str(config), "--out", str(out), "--data", str(MNIST), "--steps-per-epoch", "3",
            "--eval-images", "64"]
    first = train.main(args + ["--epochs", "1"])
    assert first["optimizer_steps"] == 3
    assert (out / "samples_epoch_1.png").exists() and (out / "model.keras").exists()
    assert 0 < first["test_bits_per_dim"] < 8.5 and first["test_images"] == 10_000
    log = (out / "log.csv").read_text().splitlines()
    assert "test_bits_per_dim" in log[0] and len(log) == 2
    # Running again with more epochs resumes from the backup: the optimizer
    # continues from step 3 and only the second epoch runs.
    second = train.main(args + ["--epochs", "2"])
    assert second["optimizer_steps"] == 6 and second["epochs_run_now"] == 1
    assert len((out / "log.csv").read_text().splitlines()) == 3


def test_warmup_is_linear_then_flat():
    schedule = kf.callbacks.Warmup(1e-3, 10)
    values = [float(ops.convert_to_numpy(schedule(step))) for step in (0, 4, 9, 50)]
    np.testing.assert_allclose(values, [1e-4, 5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_nan_guard_stops_with_a_clear_message():
    guard = kf.callbacks.NaNGuard()
    guard.on_train_batch_end(0, {"loss": 1.0})
    with pytest.raises(FloatingPointError, match="loss became nan at batch 3"):
        guard.on_train_batch_end(3, {"loss": math.nan})
