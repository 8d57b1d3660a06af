"""Every guide in guides/ runs in its fast mode on its backend (`backend_of`), writes
its pictures (valid PNGs) and prints figures that say it worked.

Each guide runs in a subprocess (`KERAS_BACKEND` passed through, cwd a fresh
temporary folder); the guides written for this suite print a JSON object on
their last line, the two older ones a line or a table that is parsed here.
A figure is checked against an answer the guide does not compute itself
where one exists (the standard normal's NLL on the held-out points, chance
level, the mean-fill baseline), else against its own contrast (a wrong
class, the untrained model).
"""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import keras
import pytest
from PIL import Image

import keras_flows as kf
from keras_flows.anomaly import METHODS
from cross_backend import BACKENDS

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDES = ROOT / "guides"

# guides/train_2d_density.py reads a zoo/ config: a small one keeps it quick.
TINY_2D_CONFIG = {
    "model": "RealNVP",
    "model_config": {"event_shape": [2], "num_layers": 4, "hidden_units": [32, 32]},
    "dataset": {"name": "moons", "train_size": 4000, "train_seed": 0, "test_size": 2000,
                "test_seed": 1},
    "training": {"epochs": 3, "batch_size": 256, "learning_rate": 0.003,
                 "validation_split": 0.1, "seed": 0},
}


def backend_of(script):
    """The backend this suite runs `script` on: the guides, in name order, take
    TensorFlow, JAX and PyTorch in turn (a guide is library calls that the
    other tests check on every backend; running each on all three cost ten
    minutes of CI)."""
    names = sorted(p.name for p in GUIDES.glob("*.py") if p.name != "variational_inference.py")
    return BACKENDS[names.index(script) % len(BACKENDS)]


def run_guide(script, args, cwd):
    if backend_of(script) != keras.backend.backend():
        pytest.skip(f"{script} runs on the {backend_of(script)} backend in this suite")
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, str(GUIDES / script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (f"{script} exited with {result.returncode}:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result.stdout


def last_json(stdout):
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    return json.loads(lines[-1])


def assert_png(path):
    path = pathlib.Path(path)
    assert path.is_file(), f"{path} was not written"
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        image.load()
        assert image.size[0] >= 28 and image.size[1] >= 28
        assert np.asarray(image).std() > 0, f"{path} is blank"


def standard_normal_nll(x):
    x = np.asarray(x, dtype="float64")
    return float(np.mean(0.5 * np.sum(x ** 2, axis=1) + math.log(2 * math.pi)))


# ------------------------------------------------------------ figure checks


def check_getting_started(figures, stdout):
    held_out = kf.datasets.toy("moons", 2_000, seed=1)
    assert figures["heldout_nll"] < standard_normal_nll(held_out) - 0.2
    assert figures["round_trip_error"] < 1e-4
    assert figures["reload_error"] < 1e-5


def check_glow_on_your_images(figures, stdout):
    assert math.isfinite(figures["test_bits_per_dim"])
    assert figures["test_bits_per_dim"] < figures["test_bits_per_dim_before"] - 0.2


def check_custom_bijector(figures, stdout):
    assert figures["log_det_check_passes"] is True
    assert figures["forward_log_det_error"] < 1e-6 and figures["inverse_log_det_error"] < 1e-6
    assert figures["round_trip_error"] < 1e-9
    # Student-t data: the heavy-tailed layer must beat an affine-only flow.
    assert figures["nll_sinh_arcsinh"] < figures["nll_affine"] - 0.05
    assert figures["reload_error"] < 1e-5


def check_conditional_generation(figures, stdout):
    assert figures["heldout_nll_true_class"] < figures["heldout_nll_wrong_class"] - 1.0
    assert figures["sample_class_accuracy"] > 0.5  # chance: 1/8


def check_anomaly_detection(figures, stdout):
    table = figures["auroc"]
    methods = {label.split(" ")[0] for label in table}
    assert methods == set(METHODS)
    for label, row in table.items():
        for value in row.values():
            assert 0.0 <= value <= 1.0, (label, row)
    # An MNIST Glow gives uniform noise a far lower likelihood than digits.
    assert table["likelihood"]["noise"] > 0.95
    assert table["typicality"]["cifar10 grey"] > 0.8
    assert "| likelihood_ratio |" in stdout


def check_inpainting(figures, stdout):
    assert figures["observed_kept"] is True
    assert figures["bits_per_dim"] < figures["bits_per_dim_mean_fill"]
    assert math.isfinite(figures["mse"])


def check_export_and_serve(figures, stdout):
    assert {"log_prob", "sample", "encode", "decode"} <= set(figures["signatures"])
    assert figures["log_prob_max_error"] < 1e-4
    assert figures["sample_seeded"] is True
    assert math.isfinite(figures["nll_of_served_samples"])


def check_train_2d_density(stdout):
    nll = float(re.search(r"held-out NLL (-?[\d.]+) nats", stdout).group(1))
    held_out = kf.datasets.toy("moons", 2_000, seed=1)
    assert nll < standard_normal_nll(held_out) - 0.2


def check_calibrate_classifier(stdout):
    rows = dict(re.findall(r"^\| (uncalibrated|temperature|scalar|generalized) \| ([\d.]+) \|",
                           stdout, flags=re.M))
    assert set(rows) == {"uncalibrated", "temperature", "scalar", "generalized"}, stdout
    # Temperature scaling refits one scalar by held-out likelihood: it must
    # not make the test NLL materially worse.
    assert float(rows["temperature"]) < float(rows["uncalibrated"]) + 0.02


def check_sphere_density(figures, stdout):
    # The fast fit is rough (3 maps, 10 epochs): a KL above zero; temperature
    # scaling of outputs made 2.5x overconfident recovers T and lowers the ECE.
    assert figures["kl"] > 0 and np.isfinite(figures["kl"])
    assert abs(figures["temperature"] - figures["true_temperature"]) < 0.25
    assert figures["ece_after"] < figures["ece_before"] / 2


# script, extra arguments, the PNGs it writes (relative to --out), check
JSON_GUIDES = [
    ("getting_started.py", [], ["moons_realnvp_density.png"], check_getting_started),
    ("glow_on_your_images.py", [], ["glow_samples.png"], check_glow_on_your_images),
    ("custom_bijector.py", [], ["sinh_arcsinh_tails.png"], check_custom_bijector),
    ("conditional_generation.py", [], ["conditional_8gaussians.png"],
     check_conditional_generation),
    ("anomaly_detection.py", [], ["anomaly_ranking.png"], check_anomaly_detection),
    ("inpainting.py", [], ["inpainting_center.png"], check_inpainting),
    ("export_and_serve.py", [], ["served_samples.png"], check_export_and_serve),
    ("sphere_density.py", [], ["sphere_density.png", "reliability.png"], check_sphere_density),
]


@pytest.mark.parametrize("script,args,pictures,check", JSON_GUIDES,
                         ids=[g[0][:-3] for g in JSON_GUIDES])
def test_guide_fast_mode(tmp_path, script, args, pictures, check):
    stdout = run_guide(script, ["--fast", "--out", "out", *args], tmp_path)
    figures = last_json(stdout)
    assert figures["backend"] == keras.backend.backend()
    for name in pictures:
        assert_png(tmp_path / "out" / name)
    for name in figures["pictures"]:
        assert_png(tmp_path / name)
    check(figures, stdout)


def test_train_2d_density_guide(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_2D_CONFIG))
    stdout = run_guide("train_2d_density.py", [str(config), "--out", "out.png"], tmp_path)
    assert_png(tmp_path / "out.png")
    check_train_2d_density(stdout)


def test_calibrate_classifier_guide(tmp_path):
    stdout = run_guide("calibrate_classifier.py", ["--fast", "--figures", "figures"], tmp_path)
    pngs = list((tmp_path / "figures").glob("*.png"))
    assert pngs, "calibrate_classifier.py wrote no figure"
    for png in pngs:
        assert_png(png)
    check_calibrate_classifier(stdout)


def test_every_guide_is_run_here():
    """A guide no test runs goes stale: each is run here or named in another
    tests/ file (guides/variational_inference.py: tests/test_vae_guide.py)."""
    here = {g[0] for g in JSON_GUIDES} | {"train_2d_density.py", "calibrate_classifier.py"}
    elsewhere = " ".join(p.read_text() for p in ROOT.glob("tests/test_*.py")
                         if p.name != pathlib.Path(__file__).name)
    missing = {p.name for p in GUIDES.glob("*.py")
               if p.name not in here and p.name not in elsewhere}
    assert not missing, f"guides that no test runs: {sorted(missing)}"
