"""Presets: the built-in ones load and score what they record; save and load round trips."""

import importlib.util
import json
import pathlib
import re
import shutil

import numpy as np
import keras
import pytest
from keras import ops

import keras_flows as kf
from keras_flows import presets
from keras_flows.presets import PresetError
from keras_flows.presets.download import sha256_of
from keras_flows.train import check_subset
from real_data import dataset_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAMILY_CLASS = {"glow": kf.Glow, "realnvp": kf.RealNVP, "maf": kf.MAF, "nsf": kf.NSF,
                "ffjord": kf.FFJORD, "residual_flow": kf.ResidualFlow}
IMAGE_PRESETS = [n for n, e in presets.MANIFEST.items() if "test_bits_per_dim" in e]


def _short(name):
    return name[len(presets.MANIFEST[name]["family"]) + 1:]


def test_manifest_lists_every_preset_in_pretrained_with_its_files_hashes():
    on_disk = sorted(p.name for p in (ROOT / "keras_flows" / "pretrained").iterdir()
                     if (p / "metadata.json").exists())
    packaged = {n: e for n, e in presets.MANIFEST.items() if "url" not in e}
    assert sorted(packaged) == on_disk
    for name, entry in packaged.items():
        for file, record in entry["files"].items():
            path = ROOT / "keras_flows" / "pretrained" / name / file
            assert sha256_of(path) == record["sha256"], f"{name}/{file}: run scripts/update_manifest.py"
            assert path.stat().st_size == record["bytes"] < 50_000_000
        metadata = json.loads((ROOT / "keras_flows" / "pretrained" / name / "metadata.json").read_text())
        assert metadata["weights_sha256"] == entry["files"]["model.weights.h5"]["sha256"]
        assert metadata["command"] and metadata["parameters"] == entry["parameters"]


def test_the_required_presets_exist():
    assert {"glow_mnist", "glow_cifar10", "realnvp_mnist", "realnvp_cifar10"} <= set(IMAGE_PRESETS)
    for density in ("moons", "8gaussians", "checkerboard", "pinwheel", "rings", "2spirals"):
        assert f"realnvp_{density}" in presets.MANIFEST


def test_presets_property_lists_each_family():
    assert set(kf.Glow.presets) == {n for n in presets.MANIFEST if n.startswith("glow_")}
    assert set(kf.RealNVP.presets) == {n for n in presets.MANIFEST if n.startswith("realnvp_")}
    assert set(kf.Flow.presets) == set(presets.MANIFEST)


@pytest.mark.parametrize("name", IMAGE_PRESETS)
def test_image_preset_loads_offline_and_scores_its_recorded_check_figure(name, monkeypatch,
                                                                         tmp_path):
    # From a source checkout, presets come from keras_flows/pretrained/ with no network.
    monkeypatch.setenv("KERAS_FLOWS_OFFLINE", "1")
    monkeypatch.setenv("KERAS_FLOWS_CACHE", str(tmp_path))
    entry = presets.MANIFEST[name]
    flow = FAMILY_CLASS[entry["family"]].from_preset(_short(name))
    assert type(flow).__name__ == entry["class_name"]
    assert flow.count_params() == entry["parameters"]
    metadata = json.loads((ROOT / "keras_flows" / "pretrained" / name / "metadata.json").read_text())
    with np.load(dataset_file(metadata["dataset"])) as data:
        x_test = data["x_test"]
    images = x_test[check_subset(len(x_test))].reshape(-1, *flow.image_shape)
    bpd = kf.metrics.mean_bits_per_dim(flow, images)
    assert abs(bpd - metadata["check"]["bits_per_dim_midpoint"]) < 2e-3, bpd
    samples = ops.convert_to_numpy(flow.sample(2, temperature=0.7, seed=0))
    assert samples.shape == (2, *flow.image_shape)
    assert samples.min() >= 0 and samples.max() <= 255
    assert not list(tmp_path.iterdir()), "loading from the checkout must not download"


def test_fine_tuning_continues_from_the_published_weights():
    flow = kf.Glow.from_preset("mnist")
    recorded = presets.MANIFEST["glow_mnist"]["test_bits_per_dim"]
    with np.load(dataset_file("mnist")) as data:
        x = data["x_train"][:64, :, :, None].astype("float32")
    before = [w.copy() for w in flow.get_weights()]
    # A fresh Adamax's first step moves every weight by the full learning rate
    # (1e-4 costs ~1 bit/dim here): warm up, as when training from scratch.
    flow.compile(optimizer=keras.optimizers.Adamax(kf.callbacks.Warmup(1e-4, 100)))
    history = flow.fit(x, batch_size=32, epochs=1, verbose=0)
    # A model trained from scratch starts near 8 bits/dim, far above this.
    assert abs(history.history["loss"][0] - recorded) < 0.5, history.history
    assert any(not np.array_equal(a, b) for a, b in zip(before, flow.get_weights()))


def test_unknown_names_and_wrong_classes_raise_clear_errors():
    with pytest.raises(ValueError, match="Unknown preset 'imagenet' for Glow.*glow_cifar10"):
        kf.Glow.from_preset("imagenet")
    with pytest.raises(ValueError, match="holds a RealNVP, which is not a Glow"):
        kf.Glow.from_preset("realnvp_moons")
    with pytest.raises(ValueError, match="Unknown preset './nowhere'"):
        kf.Flow.from_preset("./nowhere")


def _moons_flow():
    flow = kf.RealNVP(event_shape=(2,), num_layers=2, hidden_units=[8])
    rng = np.random.default_rng(0)
    flow.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in flow.get_weights()])
    return flow


def test_save_to_preset_round_trips_with_metadata_and_overrides(tmp_path):
    flow = _moons_flow()
    x = kf.datasets.toy("moons", 64, seed=0)
    flow.save_to_preset(tmp_path / "p", dataset="moons", test_nll_nats=1.0)
    metadata = json.loads((tmp_path / "p" / "metadata.json").read_text())
    assert metadata["class_name"] == "RealNVP" and metadata["dataset"] == "moons"
    assert metadata["parameters"] == flow.count_params()
    assert metadata["weights_sha256"] == sha256_of(tmp_path / "p" / "model.weights.h5")
    loaded = kf.RealNVP.from_preset(str(tmp_path / "p"), name="renamed")
    assert loaded.name == "renamed"
    np.testing.assert_allclose(ops.convert_to_numpy(loaded.log_prob(x)),
                               ops.convert_to_numpy(flow.log_prob(x)), rtol=1e-5, atol=1e-5)
    fresh = kf.Flow.from_preset(str(tmp_path / "p"), load_weights=False)
    assert not np.allclose(ops.convert_to_numpy(fresh.log_prob(x)),
                           ops.convert_to_numpy(flow.log_prob(x)))
    archive = shutil.make_archive(str(tmp_path / "archive"), "gztar", tmp_path / "p")
    from_archive = kf.Flow.from_preset(archive)
    np.testing.assert_allclose(ops.convert_to_numpy(from_archive.log_prob(x)),
                               ops.convert_to_numpy(flow.log_prob(x)), rtol=1e-5, atol=1e-5)


def test_corrupted_or_incomplete_preset_directories_are_refused(tmp_path):
    _moons_flow().save_to_preset(tmp_path / "p")
    weights = tmp_path / "p" / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(PresetError, match=f"{re.escape(str(weights))} is corrupted"):
        kf.Flow.from_preset(str(tmp_path / "p"))
    weights.unlink()
    with pytest.raises(PresetError, match=f"{tmp_path / 'p'} lacks model.weights.h5"):
        kf.Flow.from_preset(str(tmp_path / "p"))


def _one_line_error(preset, match, **kwargs):
    """The PresetError from_preset raises: one line, matching `match`."""
    with pytest.raises(PresetError, match=match) as info:
        kf.Flow.from_preset(str(preset), **kwargs)
    assert "\n" not in str(info.value), str(info.value)
    return info.value


@pytest.mark.parametrize("override", [{"num_layers": 4}, {"hidden_units": [64]}, {"seed": 1},
                                      {"steps_per_level": 4}, {"name": "ok", "activation": "tanh"}])
def test_overrides_that_touch_the_weights_are_refused(override):
    refused = sorted(set(override) - {"name"})
    with pytest.raises(PresetError, match=f"cannot override {', '.join(refused)}: only "
                                          "name, trainable, dtype may change"):
        kf.RealNVP.from_preset("moons", **override)
    with pytest.raises(PresetError, match=f"cannot override {', '.join(refused)}"):
        kf.Glow.from_preset("mnist", **override)


def test_overrides_that_do_not_touch_the_weights_apply(tmp_path):
    flow = _moons_flow()
    flow.save_to_preset(tmp_path / "p")
    loaded = kf.Flow.from_preset(str(tmp_path / "p"), name="renamed", trainable=False,
                                 dtype="float64")
    assert (loaded.name, loaded.trainable, loaded.dtype_policy.name) == ("renamed", False,
                                                                         "float64")
    for a, b in zip(flow.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a.astype("float64"), b)
    x = kf.datasets.toy("moons", 16, seed=0)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded.log_prob(x.astype("float64"))),
                               ops.convert_to_numpy(flow.log_prob(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights_from, problem", [
    ({"num_layers": 3}, "extra variables"), ({"num_layers": 1}, "variables missing"),
    ({"hidden_units": [16]}, "variables of another shape")])
def test_weights_that_do_not_match_the_config_exactly_are_refused(tmp_path, weights_from,
                                                                  problem):
    _moons_flow().save_to_preset(tmp_path / "p")
    other = kf.RealNVP(**{"event_shape": (2,), "num_layers": 2, "hidden_units": [8],
                          **weights_from})
    weights = tmp_path / "p" / "model.weights.h5"
    other.save_weights(str(weights))
    metadata = json.loads((tmp_path / "p" / "metadata.json").read_text())
    metadata["weights_sha256"] = sha256_of(weights)  # past the checksum, to the layout
    (tmp_path / "p" / "metadata.json").write_text(json.dumps(metadata))
    _one_line_error(tmp_path / "p", f"{re.escape(str(weights))} does not match its "
                                    f"config.json: [0-9]+ {problem} \\(")


def test_truncated_weights_and_malformed_json_are_one_line_errors_naming_the_file(tmp_path):
    folder = tmp_path / "p"
    _moons_flow().save_to_preset(folder)
    config, weights, metadata = (folder / f for f in presets.FILES)
    weights.write_bytes(weights.read_bytes()[:5000])
    record = json.loads(metadata.read_text())
    del record["weights_sha256"]  # else the checksum names the truncation
    metadata.write_text(json.dumps(record))
    error = _one_line_error(folder, f"{re.escape(str(weights))} is not a readable HDF5 weights")
    assert isinstance(error.__cause__, OSError)  # the h5py error, chained
    for file, text, match in [(metadata, "{oops", "is not valid JSON"),
                              (config, '{"class_name": "RealNVP"', "is not valid JSON"),
                              (config, "[1, 2]", "holds a JSON list; a preset's config.json "
                                                 "holds a JSON object"),
                              (config, '{"class_name": "RealNVP"}', "has no 'config' object"),
                              (config, '{"class_name": "Nope", "config": {}}',
                               "does not describe a model keras_flows can build")]:
        saved = file.read_text()
        file.write_text(text)
        _one_line_error(folder, f"{re.escape(str(file))} {match}", load_weights=False)
        file.write_text(saved)


def test_preset_files_names_a_builtin_preset_and_its_local_files():
    label, paths = presets.preset_files("moons", kf.RealNVP, load_weights=False)
    assert label == "realnvp_moons"
    assert paths["config.json"] == str(ROOT / "keras_flows" / "pretrained" / "realnvp_moons" / "config.json")


# -- downloads, from a local server (tests/conftest.py) -------------------

MOONS = ("config.json", "metadata.json", "model.weights.h5")


def _reference_moons():
    points = kf.datasets.toy("moons", 32, seed=5)
    return points, ops.convert_to_numpy(kf.RealNVP.from_preset("moons").log_prob(points))


def test_builtin_preset_downloads_once_then_loads_from_the_cache(server, cache, monkeypatch):
    points, expected = _reference_moons()
    server.root = ROOT / "keras_flows" / "pretrained"
    monkeypatch.setenv("KERAS_FLOWS_PRESETS_URL", server.url)
    for _ in range(2):
        flow = kf.RealNVP.from_preset("moons")
        np.testing.assert_allclose(ops.convert_to_numpy(flow.log_prob(points)), expected,
                                   rtol=1e-6)
        assert [server.requests[f"/realnvp_moons/{f}"] for f in MOONS] == [1, 1, 1]
    # Offline, the cache serves it; a preset never fetched is an error that
    # names the file and its URL.
    monkeypatch.setenv("KERAS_FLOWS_OFFLINE", "1")
    kf.RealNVP.from_preset("moons")
    with pytest.raises(OSError, match=f"config.json.*{server.url}/glow_mnist/config.json"):
        kf.Glow.from_preset("mnist")


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_a_bad_download_leaves_no_file_and_a_later_one_succeeds(server, cache, monkeypatch,
                                                                fault):
    server.root = ROOT / "keras_flows" / "pretrained"
    monkeypatch.setenv("KERAS_FLOWS_PRESETS_URL", server.url)
    server.faults["/realnvp_moons/model.weights.h5"] = fault
    with pytest.raises((ValueError, OSError),
                       match="not kept" if fault == "corrupt" else "connection ended"):
        kf.RealNVP.from_preset("moons")
    assert not [p for p in cache.rglob("*") if "weights" in p.name]
    del server.faults["/realnvp_moons/model.weights.h5"]
    kf.RealNVP.from_preset("moons")
    assert server.requests["/realnvp_moons/model.weights.h5"] == 2


def test_hf_and_https_presets_directories_and_archives(server, cache, monkeypatch, tmp_path):
    points, expected = _reference_moons()
    served = tmp_path / "served"
    for file in MOONS:
        for target in (served / "org" / "repo" / "resolve" / "main", served / "plain"):
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "keras_flows" / "pretrained" / "realnvp_moons" / file, target / file)
    shutil.make_archive(str(served / "moons"), "zip", served / "plain")
    server.root = served
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    for preset in ("hf://org/repo", f"{server.url}/plain/", f"{server.url}/moons.zip"):
        flow = kf.RealNVP.from_preset(preset)
        np.testing.assert_allclose(ops.convert_to_numpy(flow.log_prob(points)), expected,
                                   rtol=1e-6)


@pytest.mark.parametrize("file, fault, expected", [
    ("config.json", "html", "is an HTML page, not JSON"),
    ("metadata.json", "cut", "is not JSON"),
    ("model.weights.h5", "html", "is an HTML page, not an HDF5 file")])
def test_a_bad_file_from_a_preset_url_is_refused_and_not_cached(server, cache, tmp_path, file,
                                                                fault, expected):
    served = tmp_path / "served" / "plain"
    shutil.copytree(ROOT / "keras_flows" / "pretrained" / "realnvp_moons", served)
    server.root = tmp_path / "served"
    if file == "model.weights.h5":  # no sha256 to check it against: by its content, then
        metadata = json.loads((served / "metadata.json").read_text())
        del metadata["weights_sha256"]
        (served / "metadata.json").write_text(json.dumps(metadata))
    data = (served / file).read_bytes()
    if fault == "html":
        (served / file).write_text("<!doctype html>\n<html><body>Service unavailable</body></html>")
    else:
        (served / file).write_bytes(data[:len(data) // 2])
        server.faults[f"/plain/{file}"] = "nolength"
    with pytest.raises(OSError, match=f"{server.url}/plain/{file} {expected}"):
        kf.RealNVP.from_preset(f"{server.url}/plain/")
    assert not [p for p in cache.rglob("*") if p.name.startswith(file)]


@pytest.mark.parametrize("name", [n for n in presets.MANIFEST if n not in IMAGE_PRESETS])
def test_every_vector_preset_loads_its_weights_exactly(name):
    flow = kf.Flow.from_preset(name)
    assert flow.count_params() == presets.MANIFEST[name]["parameters"]


def test_readme_table_shows_every_preset_as_measured():
    spec = importlib.util.spec_from_file_location("update_manifest",
                                                  ROOT / "scripts" / "update_manifest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    for row in module.table(presets.MANIFEST).splitlines()[2:]:
        assert row in readme, f"README.md lacks (run scripts/update_manifest.py): {row}"
