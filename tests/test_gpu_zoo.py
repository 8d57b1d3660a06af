"""scripts/gpu_zoo.py's data path: CIFAR-10 or MNIST in lossless parts, unpacked on
the device into the exact arrays (the training step itself is train.py's, tested in
test_train.py)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from real_data import dataset_file

ROOT = pathlib.Path(__file__).resolve().parents[1]


def gpu_zoo(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_zoo.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})}).stdout


@pytest.fixture(scope="module")
def cifar10():
    return dataset_file("cifar10")


def test_parts_unpack_to_the_exact_images(tmp_path, cifar10):
    out = gpu_zoo("--dir", str(tmp_path / "g"), "prepare", "--data", str(cifar10),
                  "--limit", "250", "--parts", "3", "--test-images", "40", "--no-wheels")
    assert out.count("call ") == 3 and "MiB" in out
    parts = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert parts == ["part0", "part1", "part2"]
    out = gpu_zoo("--dir", str(tmp_path / "g"), "device", env={"OUT": str(tmp_path / "out")})
    assert "unpacked 250 training and 40 test images" in out
    data = tmp_path / "g" / "data"
    x = np.concatenate([np.load(data / n) for n in
                        ("train_0_83.npy", "train_83_166.npy", "train_166_250.npy")])
    cifar10 = np.load(cifar10)
    np.testing.assert_array_equal(x, cifar10["x_train"][:250])
    np.testing.assert_array_equal(np.load(data / "train_83_166_labels.npy"),
                                  cifar10["y_train"][83:166])
    np.testing.assert_array_equal(np.load(data / "test_0_40.npy"), cifar10["x_test"][:40])


def test_mnist_preset_parts_are_grey_and_exact(tmp_path):
    mnist = dataset_file("mnist")
    out = gpu_zoo("--dir", str(tmp_path / "g"), "--preset", "residual_flow_mnist", "prepare",
                  "--data", str(mnist), "--limit", "150", "--parts", "2", "--test-images",
                  "30", "--no-wheels")
    assert out.count("call ") == 2
    out = gpu_zoo("--dir", str(tmp_path / "g"), "--preset", "residual_flow_mnist", "device",
                  env={"OUT": str(tmp_path / "out")})
    assert "unpacked 150 training and 30 test images" in out
    data = tmp_path / "g" / "data"
    mnist = np.load(mnist)
    x = np.concatenate([np.load(data / n) for n in ("train_0_75.npy", "train_75_150.npy")])
    np.testing.assert_array_equal(x, mnist["x_train"][:150])
    np.testing.assert_array_equal(np.load(data / "test_0_30.npy"), mnist["x_test"][:30])
    # Parts of one dataset are not trained on as another's.
    with pytest.raises(subprocess.CalledProcessError) as error:
        gpu_zoo("--dir", str(tmp_path / "g"), "--preset", "glow_cifar10", "device")
    assert "holds mnist images" in error.value.stderr


def test_unknown_or_non_image_preset_is_refused(tmp_path):
    for preset, message in (("glow_svhn", "no such published preset"),
                            ("realnvp_moons", "trained on")):
        with pytest.raises(subprocess.CalledProcessError) as error:
            gpu_zoo("--dir", str(tmp_path / "g"), "--preset", preset, "device")
        assert message in error.value.stderr
