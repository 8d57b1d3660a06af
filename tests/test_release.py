"""Presets too large for the wheel: `kaggle://` handles and scripts/release_presets.py,
against the local HTTP server of conftest.py."""

import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
from keras import ops

import keras_flows as kf
from keras_flows import presets
from keras_flows.presets.download import ChecksumError, fetch

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOONS = ROOT / "keras_flows" / "pretrained" / "realnvp_moons"
HANDLE = "kaggle://own/flows/keras/moons/3"
SERVED = "api/v1/models/own/flows/keras/moons/3/download"  # Kaggle's file-download route


def _script():
    spec = importlib.util.spec_from_file_location(
        "release_presets", ROOT / "scripts" / "release_presets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kaggle_handles_resolve_to_kaggle_models_downloads(server, cache, monkeypatch):
    data = os.urandom(1000)
    (server.root / SERVED / "dir").mkdir(parents=True)
    (server.root / SERVED / "dir" / "file.bin").write_bytes(data)
    monkeypatch.setenv("KAGGLE_API_ENDPOINT", server.url + "/")
    path = fetch(f"{HANDLE}/dir/file.bin", hashlib.sha256(data).hexdigest(), progress=False)
    assert server.requests[f"/{SERVED}/dir/file.bin"] == 1
    assert path == os.path.join(cache, "kaggle", "own", "flows", "keras", "moons", "3", "dir",
                                "file.bin")
    assert pathlib.Path(path).read_bytes() == data


@pytest.mark.parametrize("handle", ["kaggle://own/flows/keras/moons/file.bin",
                                    "kaggle://own/flows/keras/moons/v1/file.bin",
                                    "kaggle://own/flows/keras/moons/3"])
def test_a_kaggle_handle_without_a_version_or_file_is_refused(cache, handle):
    with pytest.raises(ValueError, match=re.escape(handle) + ".*VERSION a number"):
        fetch(handle)


def test_upload_instructions():
    script = _script()
    hf = script.upload_instructions("big", "release/big", "hf://org/repo@v2/big")
    assert hf == ["huggingface-cli upload org/repo release/big big --repo-type model "
                  "--revision v2"]
    kaggle = "\n".join(script.upload_instructions("big", "release/big", HANDLE))
    assert "kaggle models instances versions create own/flows/keras/moons -p release/big" in kaggle


def _reference():
    points = kf.datasets.toy("moons", 64, seed=5)
    flow = kf.RealNVP.from_preset(str(MOONS))
    return points, ops.convert_to_numpy(flow.log_prob(points))


def test_pack_upload_verify_and_load_a_released_preset(server, cache, tmp_path, monkeypatch,
                                                      capsys):
    script = _script()
    manifest = tmp_path / "manifest.json"
    shutil.copyfile(ROOT / "keras_flows" / "presets" / "manifest.json", manifest)
    entry = script.pack(MOONS, "realnvp_moons_big", HANDLE, manifest, tmp_path / "release")
    assert entry["url"] == HANDLE
    recorded = json.loads(manifest.read_text())["realnvp_moons_big"]
    for file, record in recorded["files"].items():
        assert record["sha256"] == hashlib.sha256((MOONS / file).read_bytes()).hexdigest()
    assert (tmp_path / "release" / "realnvp_moons_big.tar.gz").stat().st_size > 0
    assert "kaggle models instances versions create" in capsys.readouterr().out

    # "Upload": serve the packed folder where the handle points.
    shutil.copytree(tmp_path / "release" / "realnvp_moons_big", server.root / SERVED)
    monkeypatch.setenv("KAGGLE_API_ENDPOINT", server.url)
    script.verify("realnvp_moons_big", manifest)
    assert "matches its sha256" in capsys.readouterr().out

    points, expected = _reference()
    monkeypatch.setitem(presets.MANIFEST, "realnvp_moons_big", recorded)
    for preset in ("realnvp_moons_big", HANDLE):
        flow = kf.RealNVP.from_preset(preset)
        np.testing.assert_allclose(ops.convert_to_numpy(flow.log_prob(points)), expected,
                                   rtol=1e-6)

    # A file changed after packing is caught, by verify and by from_preset.
    weights = server.root / SERVED / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    shutil.rmtree(cache)
    with pytest.raises(ChecksumError):
        script.verify("realnvp_moons_big", manifest)
    with pytest.raises(ChecksumError):
        kf.RealNVP.from_preset("realnvp_moons_big")


def test_pack_refuses_a_packaged_name_and_a_bad_url(tmp_path):
    script = _script()
    manifest = tmp_path / "manifest.json"
    shutil.copyfile(ROOT / "keras_flows" / "presets" / "manifest.json", manifest)
    with pytest.raises(SystemExit, match="packaged preset"):
        script.pack(MOONS, "realnvp_moons", HANDLE, manifest, tmp_path / "release")
    with pytest.raises(SystemExit, match="--url"):
        script.pack(MOONS, "x", "ftp://host/x", manifest, tmp_path / "release")
