"""The wheel and sdist hold the package, its manifest and every published
preset; the wheel, installed outside the checkout, loads a preset with no
network and scores what its metadata records."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "keras_flows" / "presets" / "manifest.json").read_text())
BUILD = ("import sys; from setuptools import build_meta as b; "
         "print(getattr(b, sys.argv[1])(sys.argv[2]))")


def build(kind, out):
    name = subprocess.run([sys.executable, "-c", BUILD, kind, str(out)], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return out / name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build("build_wheel", tmp_path_factory.mktemp("wheel"))


def expected_files():
    files = {"keras_flows/presets/manifest.json", "keras_flows/cli.py"}
    for name, entry in MANIFEST.items():
        files |= {f"keras_flows/pretrained/{name}/{f}" for f in entry["files"]}
    return files


def test_the_wheel_holds_the_package_and_every_preset(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        missing = expected_files() - names
        assert not missing, f"the wheel lacks {sorted(missing)}"
        for name, entry in MANIFEST.items():
            info = z.getinfo(f"keras_flows/pretrained/{name}/model.weights.h5")
            assert info.file_size == entry["files"]["model.weights.h5"]["bytes"]
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "keras-flows = keras_flows.cli:main" in z.read(entry_points).decode()
    assert not any(n.startswith(("tests/", "benchmarks/", "runs/")) for n in names)


def test_the_sdist_holds_the_sources_and_every_preset(tmp_path):
    sdist = build("build_sdist", tmp_path)
    with tarfile.open(sdist) as t:
        top = t.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    missing = (expected_files() | {"pyproject.toml", "README.md"}) - names
    assert not missing, f"the sdist ({top}) lacks {sorted(missing)}"


POINTS = [[0.0, 0.0], [1.0, 0.5], [-0.5, 1.0], [2.0, -0.3]]


def test_the_installed_wheel_loads_a_preset_offline(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(target), str(wheel)], check=True)
    # Keras and the backend come from this environment, keras_flows from the wheel alone,
    # run from a folder outside the checkout, offline, with an empty cache.
    script = (
        "import json, keras_flows as kf\n"
        "from keras import ops\n"
        "flow = kf.RealNVP.from_preset('realnvp_moons')\n"
        f"log_prob = ops.convert_to_numpy(flow.log_prob({POINTS!r})).tolist()\n"
        "print(json.dumps({'file': kf.__file__, 'log_prob': log_prob}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_FLOWS_PRESETS_URL",
                                                           "PYTHONPATH")}
    env.update(PYTHONPATH=str(target), KERAS_FLOWS_CACHE=str(tmp_path / "cache"),
               KERAS_FLOWS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert pathlib.Path(result["file"]).is_relative_to(target), result["file"]

    import numpy as np
    from keras import ops

    import keras_flows as kf

    assert pathlib.Path(kf.__file__).is_relative_to(ROOT)
    expected = ops.convert_to_numpy(kf.RealNVP.from_preset("realnvp_moons").log_prob(
        np.array(POINTS, dtype="float32")))
    np.testing.assert_allclose(result["log_prob"], expected, rtol=1e-5, atol=1e-5)
    assert not list((tmp_path / "cache").rglob("*.h5"))  # nothing was downloaded
