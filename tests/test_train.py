"""The training script and its callbacks, on real MNIST (128 images), and its
one-line errors."""

import itertools
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from keras import ops

import keras_flows as kf
from keras_flows import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = pathlib.Path(__file__).with_name("train_tiny.json")   # 4 steps per epoch


def test_train_writes_results_and_resumes(tmp_path, data):
    out = tmp_path / "run"
    args = [str(CONFIG), "--out", str(out), "--data", str(data), "--eval-images", "8"]
    first = train.main(args + ["--epochs", "1"])
    assert first["optimizer_steps"] == 4 and first["epochs"] == 1
    assert (out / "samples_epoch_1.png").exists() and (out / "model.keras").exists()
    assert 0 < first["test_bits_per_dim"] < 8.5 and first["test_images"] == 16
    log = (out / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,loss,test_bits_per_dim,wall_clock_seconds" and len(log) == 2
    # Running again with more epochs resumes from the checkpoint: the optimizer
    # continues from step 4, only the second epoch runs, and the totals add up
    # (each rounded to 0.1 s) with the time the checkpoint carries.
    with np.load(sorted((out / "backup").glob("checkpoint-*.npz"))[-1]) as f:
        carried = json.loads(f["state"].item())["seconds"]
    assert carried > 0
    second = train.main(args + ["--epochs", "2"])
    assert second["optimizer_steps"] == 8 and second["epochs_run_now"] == 1
    assert second["epochs"] == 2
    assert abs(second["train_seconds_total"] - second["train_seconds_now"] - carried) <= 0.1001
    assert (out / "log.csv").read_text().splitlines()[:2] == log
    assert len((out / "log.csv").read_text().splitlines()) == 3
    assert json.loads((out / "results.json").read_text())["optimizer_steps"] == 8


def test_ffjord_logs_function_evaluations_per_step(tmp_path, data):
    # Two levels of one continuous flow each, RK4 in 2 steps: four evaluations
    # of the dynamics a step, so 2 x 2 x 4 = 16 a training step.
    config = json.loads(CONFIG.read_text())
    config.update(model="ImageFFJORD", model_config={
        "image_shape": [28, 28, 1], "levels": 2, "blocks_per_level": 1, "hidden_channels": 4,
        "num_layers": 1, "solver": "rk4", "steps": 2, "seed": 0})
    config["dataset"]["batch_size"] = 8
    config["training"].update(epochs=1, steps_per_epoch=2, checkpoint_every=1)
    path = tmp_path / "ffjord.json"
    path.write_text(json.dumps(config))
    args = [str(path), "--out", str(tmp_path / "run"), "--data", str(data), "--eval-images", "4"]
    # Stopped after the first step and resumed in the middle of the epoch.
    assert train.main(args + ["--max-minutes", "1e-9"])["epochs"] == 0
    train.main(args)
    header, row = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert dict(zip(header.split(","), row.split(",")))["nfe_per_step"] == "16.0"


def test_the_data_order_is_a_function_of_the_seed_and_the_position():
    x = np.arange(10 * 2 * 3, dtype="uint8").reshape(10, 2, 3, 1)
    y = np.arange(10)
    # 3 batches of 3 per pass (one image left out), 3 passes.
    batches = list(itertools.islice(train._batches(x, y, 3, 7, True, 0), 9))
    later = list(itertools.islice(train._batches(x, y, 3, 7, True, 4), 5))
    for a, b in zip(batches[4:], later):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["context"], b["context"])
    passes = [np.concatenate([b["context"] for b in batches[i:i + 3]]) for i in (0, 3, 6)]
    assert all(len(set(p)) == 9 for p in passes)
    assert not np.array_equal(passes[0], passes[1])
    mirrored = [bool(np.array_equal(image, x[label][:, ::-1])) for batch in batches
                for image, label in zip(batch["x"], batch["context"])]
    kept = [bool(np.array_equal(image, x[label])) for batch in batches
            for image, label in zip(batch["x"], batch["context"])]
    assert all(m != k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 27


def _config(path, **changes):
    config = json.loads(CONFIG.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("case, expected", [
    ("folder", "The training config {config} is a folder; expected a JSON training config"),
    ("missing", "The training config {config} does not exist; expected a JSON"),
    ("malformed", "The training config {config} is not valid JSON (Expecting value: line 1 "
                  "column 11 (char 10)); expected"),
    ("no learning rate", "The training config {config} has no 'training.learning_rate'"),
    ("toy", "{config}: dataset.name 'moons' is not an image dataset; expected one of mnist, "),
    ("unknown model", "{config}: unknown model 'Flowy'; expected an image flow: Glow, "
                      "ImageFFJORD, ImageRealNVP, ImageResidualFlow."),
    ("bad argument", "{config}: model_config does not fit Glow: "),
    ("two clips", "{config}: training sets both clipnorm and global_clipnorm; set one"),
    ("no data file", "--data {data}: No such file or folder for dataset 'mnist': {data}"),
])
def test_bad_arguments_give_one_line_errors(tmp_path, data, case, expected):
    config = {
        "folder": tmp_path,
        "missing": tmp_path / "missing.json",
        "malformed": tmp_path / "malformed.json",
        "no learning rate": _config(tmp_path / "no_rate.json", training={"epochs": 1}),
        "toy": ROOT / "zoo" / "realnvp_moons.json",
        "unknown model": _config(tmp_path / "flowy.json", model="Flowy"),
        "bad argument": _config(tmp_path / "bogus.json",
                                model_config={"image_shape": [28, 28, 1], "bogus": 1}),
        "two clips": _config(tmp_path / "clips.json", training={
            "epochs": 1, "learning_rate": 1e-3, "clipnorm": 1.0, "global_clipnorm": 1.0}),
    }.get(case, CONFIG)
    (tmp_path / "malformed.json").write_text('{"model": }')
    if case == "no data file":
        data = tmp_path / "none.npz"
    args = [str(config), "--out", str(tmp_path / "run"), "--data", str(data)]
    with pytest.raises(SystemExit) as error:
        train.main(args)
    message = str(error.value)
    assert message.startswith("error: " + expected.format(config=config, data=data)), message
    assert "\n" not in message
    with pytest.raises((ValueError, OSError)):  # --verbose: the exception itself
        train.main(args + ["--verbose"])


def test_the_command_exits_with_one_line_and_no_traceback(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "keras_flows", "train", str(tmp_path), "--out", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert process.returncode == 1
    assert process.stderr.strip().splitlines()[-1] == (
        f"error: The training config {tmp_path} is a folder; expected a JSON training config "
        "such as zoo/glow_mnist_small.json.")
    assert "Traceback" not in process.stderr


def test_the_optimizer_clips_as_the_config_says():
    base = {"learning_rate": 1e-3, "warmup_steps": 1}
    clipped = train.optimizer({**base, "global_clipnorm": 200.0})
    assert clipped.global_clipnorm == 200.0 and clipped.clipnorm is None
    clipped = train.optimizer({**base, "clipnorm": 50.0})
    assert clipped.clipnorm == 50.0 and clipped.global_clipnorm is None


def test_warmup_is_linear_then_flat():
    schedule = kf.callbacks.Warmup(1e-3, 10)
    values = [float(ops.convert_to_numpy(schedule(step))) for step in (0, 4, 9, 50)]
    np.testing.assert_allclose(values, [1e-4, 5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_nan_guard_stops_with_a_clear_message():
    guard = kf.callbacks.NaNGuard()
    guard.on_train_batch_end(0, {"loss": 1.0})
    with pytest.raises(FloatingPointError, match="loss became nan at batch 3"):
        guard.on_train_batch_end(3, {"loss": math.nan})
