"""The `keras-flows` command, run in-process through `keras_flows.cli.main`."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from keras import ops
from PIL import Image

import keras_flows as kf
from keras_flows import cli, presets
from real_data import dataset_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST = dataset_file("mnist")


def test_list_shows_every_preset_with_its_measured_figure(capsys):
    cli.main(["list"])
    out = capsys.readouterr().out
    for name, entry in presets.MANIFEST.items():
        line = next(l for l in out.splitlines() if l.startswith(name))
        figure = entry.get("test_bits_per_dim", entry.get("test_nll_nats"))
        assert f"{figure:.3f}" in line and entry["class_name"] in line


def test_info_prints_the_metadata(capsys):
    cli.main(["info", "mnist"])
    out = capsys.readouterr().out
    metadata = json.loads(out[out.index("{"):])
    assert metadata["class_name"] == "Glow" and metadata["dataset"] == "mnist"


def test_sample_writes_a_png_grid(tmp_path):
    out = tmp_path / "samples.png"
    cli.main(["sample", "mnist", "--num", "4", "--temperature", "0.7", "--out", str(out)])
    grid = np.asarray(Image.open(out))
    # 2x2 tiles of 28x28 with 2-pixel borders.
    assert grid.shape == (2 * 30 + 2, 2 * 30 + 2)


def test_score_reports_the_models_bits_per_dim_of_png_files(tmp_path, capsys):
    with np.load(MNIST) as data:
        images = data["x_test"][:3]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    cli.main(["score", "mnist", *paths, "--progress", "0"])
    lines = capsys.readouterr().out.splitlines()
    printed = np.array([float(lines[i].split()[0]) for i in range(3)])
    expected = ops.convert_to_numpy(kf.Glow.from_preset("mnist").bits_per_dim(
        images[..., None].astype("float32")))
    np.testing.assert_allclose(printed, expected, atol=1e-4)


def test_score_and_sample_of_a_vector_preset_use_arrays(tmp_path, capsys):
    points = kf.datasets.toy("moons", 5, seed=3)
    np.save(tmp_path / "points.npy", points)
    cli.main(["score", "realnvp_moons", str(tmp_path / "points.npy"), "--progress", "0"])
    printed = [float(l.split()[0]) for l in capsys.readouterr().out.splitlines()[:5]]
    expected = ops.convert_to_numpy(kf.RealNVP.from_preset("moons").log_prob(points))
    np.testing.assert_allclose(printed, expected, atol=1e-4)
    cli.main(["sample", "realnvp_moons", "--num", "10", "--out", str(tmp_path / "s.npy")])
    assert np.load(tmp_path / "s.npy").shape == (10, 2)


def test_errors_are_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="Unknown preset 'nope'.*glow_mnist"):
        cli.main(["sample", "nope"])
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(SystemExit, match=r"shape \(32, 32, 1\) each; this preset models "
                                         r"\(28, 28, 1\)"):
        cli.main(["score", "mnist", str(tmp_path / "big.png")])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="junk.png is not an image"):
        cli.main(["score", "mnist", str(tmp_path / "junk.png")])


def test_careless_input_gets_one_line_and_a_nonzero_exit(tmp_path, capsys):
    families = ", ".join(sorted({e["family"] for e in presets.MANIFEST.values()}))
    assert {"ffjord", "glow", "maf", "nsf", "realnvp", "residual_flow"} <= set(families.split(", "))
    with pytest.raises(SystemExit, match=f"unknown family 'bogus'; the presets' families are "
                                         f"{families}"):
        cli.main(["list", "--family", "bogus"])
    for argument in (["--num", "0"], ["--num", "-1"], ["--temperature", "nan"],
                     ["--temperature", "-1"]):
        with pytest.raises(SystemExit) as exit:
            cli.main(["sample", "mnist", *argument])
        assert exit.value.code == 2
        assert "expected a" in capsys.readouterr().err
    with np.load(MNIST) as data:
        np.save(tmp_path / "scaled.npy", data["x_test"][:2, :, :, None] / 255.0)
    with pytest.raises(SystemExit, match=r"^error: `images` look scaled to \[0, 1\].*--verbose"):
        cli.main(["score", "mnist", str(tmp_path / "scaled.npy")])
    with pytest.raises(ValueError, match="look scaled"):   # --verbose: the exception itself
        cli.main(["score", "mnist", str(tmp_path / "scaled.npy"), "--verbose"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no inputs"):
        cli.main(["score", "mnist", str(tmp_path / "empty")])
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"^error: Cannot export to .*file.*: is a file"):
        cli.main(["export", "realnvp_moons", str(tmp_path / "file")])


def test_score_reads_a_directory_of_images(tmp_path, capsys):
    with np.load(MNIST) as data:
        images = data["x_test"][:2]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.md").write_text("not an input")
    cli.main(["score", "mnist", str(tmp_path), "--progress", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert [l.split()[1] for l in lines[:2]] == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    expected = ops.convert_to_numpy(kf.Glow.from_preset("mnist").bits_per_dim(images[..., None]))
    np.testing.assert_allclose([float(l.split()[0]) for l in lines[:2]], expected, atol=1e-4)


def test_train_runs_a_config_with_overrides(tmp_path):
    out = tmp_path / "run"
    results = cli.main(["train", str(ROOT / "zoo" / "glow_mnist_small.json"), "--out", str(out),
                        "--data", str(MNIST), "--epochs", "1", "--steps-per-epoch", "2",
                        "--eval-images", "16", "--set", "model_config.steps_per_level=1",
                        "--set", "model_config.hidden_channels=8", "--preset",
                        str(tmp_path / "preset")])
    assert results["optimizer_steps"] == 2
    flow = kf.Glow.from_preset(str(tmp_path / "preset"))
    assert flow.steps_per_level == 1 and flow.hidden_channels == 8
    metadata = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert metadata["test_bits_per_dim"] == results["test_bits_per_dim"]
    assert "--set model_config.steps_per_level=1" in metadata["command"]

    # --init continues from the preset: at learning rate 0 the weights stay
    # the preset's (ActNorm not started again), so the figure is the same.
    again = cli.main(["train", str(ROOT / "zoo" / "glow_mnist_small.json"), "--out",
                      str(tmp_path / "again"), "--data", str(MNIST), "--epochs", "1",
                      "--steps-per-epoch", "3", "--eval-images", "16",
                      "--set", "model_config.steps_per_level=1",
                      "--set", "model_config.hidden_channels=8",
                      "--set", "training.learning_rate=0", "--init", str(tmp_path / "preset")])
    assert again["test_bits_per_dim_midpoint"] == pytest.approx(
        results["test_bits_per_dim_midpoint"], abs=1e-4)
    assert again["optimizer_steps"] == 5
    assert again["initialized_from"]["optimizer_steps"] == 2
    with pytest.raises(SystemExit, match="do not fit the config's model"):
        cli.main(["train", str(ROOT / "zoo" / "glow_mnist_small.json"), "--out",
                  str(tmp_path / "bad"), "--data", str(MNIST), "--epochs", "1",
                  "--init", str(tmp_path / "preset")])


def test_export_writes_a_saved_model_that_plain_tensorflow_scores(tmp_path, capsys):
    out = tmp_path / "saved"
    cli.main(["export", "realnvp_moons", str(out)])
    assert "log_prob(x: float32[None, 2])" in capsys.readouterr().out
    points = kf.datasets.toy("moons", 4, seed=9)
    np.save(tmp_path / "points.npy", points)
    script = ("import sys, numpy as np, tensorflow as tf; "
              "m = tf.saved_model.load(sys.argv[1]); "
              "x = tf.constant(np.load(sys.argv[2])); "
              "np.save(sys.argv[3], m.log_prob(x=x)['log_prob'].numpy()); "
              "assert 'keras_flows' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    run = subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "points.npy"),
                          str(tmp_path / "scores.npy")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = ops.convert_to_numpy(kf.RealNVP.from_preset("moons").log_prob(points))
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, rtol=1e-5, atol=1e-5)


def test_export_onnx_writes_models_that_onnxruntime_scores(tmp_path, capsys):
    import onnxruntime

    out = tmp_path / "onnx"
    cli.main(["export", "realnvp_moons", str(out), "--format", "onnx"])
    assert f"wrote {out / 'log_prob.onnx'}" in capsys.readouterr().out
    points = kf.datasets.toy("moons", 4, seed=9)
    session = onnxruntime.InferenceSession(str(out / "log_prob.onnx"))
    expected = ops.convert_to_numpy(kf.RealNVP.from_preset("moons").log_prob(points))
    np.testing.assert_allclose(session.run(None, {"x": points})[0], expected,
                               rtol=1e-5, atol=1e-5)


def test_inpaint_writes_originals_masked_and_completed_rows(tmp_path, capsys):
    out = tmp_path / "inpaint.png"
    cli.main(["inpaint", "mnist", "--images", "2", "--mask", "left", "--steps", "3",
              "--data", str(MNIST), "--seed", "1", "--out", str(out)])
    assert "RMS error" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    assert grid.shape == (3 * 30 + 2, 2 * 30 + 2)  # 3 rows x 2 images, 28x28 tiles
    with np.load(MNIST) as data:
        test = data["x_test"]
    chosen = np.sort(np.random.default_rng(1).choice(len(test), 2, replace=False))
    for column, image in enumerate(test[chosen]):
        left = 2 + column * 30
        np.testing.assert_array_equal(grid[2:30, left:left + 28], image)  # original
        np.testing.assert_array_equal(grid[32:60, left:left + 14], 128)   # masked: grey
        np.testing.assert_array_equal(grid[32:60, left + 14:left + 28], image[:, 14:])
        np.testing.assert_array_equal(grid[62:90, left + 14:left + 28], image[:, 14:])


def test_inpaint_masks_and_errors():
    center = cli.inpainting_mask("center", (1, 8, 8, 3))
    assert center.shape == (1, 8, 8, 1) and center.sum() == 16 and center[0, 2:6, 2:6].all()
    assert cli.inpainting_mask("left", (1, 4, 6, 1))[0, :, :3].all()
    assert cli.inpainting_mask("left", (1, 4, 6, 1)).sum() == 12
    random = cli.inpainting_mask("random", (50, 28, 28, 1), seed=0)
    assert abs(random.mean() - 0.5) < 0.01
    with pytest.raises(SystemExit, match="inpaint completes images"):
        cli.main(["inpaint", "realnvp_moons"])
    with pytest.raises(SystemExit) as exit:
        cli.main(["inpaint", "mnist", "--mask", "top"])
    assert exit.value.code == 2
