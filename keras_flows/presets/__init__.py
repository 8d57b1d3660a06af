"""Presets: a model's config, weights and measured figures, by name or location.

A preset is a directory (or a `.zip` / `.tar.gz` archive of one) holding

    config.json         the serialized model (`keras.saving.serialize_keras_object`)
    model.weights.h5    its weights
    metadata.json       class, parameter count, dataset, training, the test
                        figures measured and the command that measured them,
                        versions, and the sha256 of the weights

`from_preset(preset)` accepts:
- a built-in name from `keras_flows/presets/manifest.json` (`glow_cifar10`),
  or its short form within a family (`Glow.from_preset("cifar10")`);
- a local directory or archive;
- `hf://ORG/REPO` (a Hugging Face repository holding the three files) or an
  `http(s)://` URL of a directory or an archive.

Built-in presets resolve, in order, to: `$KERAS_FLOWS_PRESETS_URL/<name>/`
when that variable is set (a mirror, or a local server in tests); the
`pretrained/` directory of a source checkout, with no network at all; the
published location `hf://keras-flows/pretrained/<name>/`. Downloads are
verified against the manifest's sha256 and cached (see `download.fetch`).
"""

import json
import os
import pathlib
import shutil
import time

import keras

from keras_flows.presets.download import fetch, sha256_of

__all__ = ["from_preset", "save_to_preset", "list_presets", "MANIFEST", "ALIASES"]

FILES = ("config.json", "model.weights.h5", "metadata.json")
PUBLISHED_URL = "hf://keras-flows/pretrained"
CHECKOUT = pathlib.Path(__file__).resolve().parents[2] / "pretrained"
with open(pathlib.Path(__file__).with_name("manifest.json")) as _f:
    MANIFEST = json.load(_f)
# Bare dataset names, for `Flow.from_preset` and the command line.
ALIASES = {"mnist": "glow_mnist", "cifar10": "glow_cifar10"}


def _family(cls):
    return getattr(cls, "preset_family", None)


def list_presets(cls=None):
    """The built-in presets `cls` can load (all of them for `None` or `Flow`)."""
    family = _family(cls)
    return {name: entry for name, entry in MANIFEST.items()
            if family is None or entry["family"] == family}


def _builtin_name(preset, cls):
    if preset in MANIFEST:
        return preset
    family = _family(cls)
    if family and f"{family}_{preset}" in MANIFEST:
        return f"{family}_{preset}"
    if family is None and preset in ALIASES:
        return ALIASES[preset]
    return None


def _is_remote(preset):
    return preset.startswith(("hf://", "http://", "https://"))


def _is_archive(path):
    return str(path).endswith((".zip", ".tar.gz", ".tgz"))


def _unpack(archive):
    """Extracts an archive beside itself, once; returns the preset directory."""
    target = pathlib.Path(str(archive) + ".unpacked")
    if not target.exists():
        staging = pathlib.Path(f"{target}.part-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.unpack_archive(str(archive), str(staging))
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    found = [p.parent for p in target.rglob("config.json")]
    if len(found) != 1:
        raise ValueError(f"The archive {archive} must hold exactly one preset directory "
                         f"with a config.json; found {len(found)}.")
    return found[0]


def _builtin_files(name, load_weights):
    """Local paths of a built-in preset's files."""
    entry = MANIFEST[name]
    base = os.environ.get("KERAS_FLOWS_PRESETS_URL")
    if base is None and (CHECKOUT / name / "config.json").exists():
        directory = CHECKOUT / name
        paths = {f: str(directory / f) for f in FILES}
        if load_weights:
            _verify(paths["model.weights.h5"], entry["files"]["model.weights.h5"]["sha256"],
                    f"pretrained/{name}/model.weights.h5")
        return paths
    base = (base or PUBLISHED_URL).rstrip("/")
    wanted = FILES if load_weights else ("config.json", "metadata.json")
    return {f: fetch(f"{base}/{name}/{f}", entry["files"][f]["sha256"]) for f in wanted}


def _remote_files(url, load_weights):
    if _is_archive(url):
        return _directory_files(_unpack(fetch(url)), load_weights)
    url = url.rstrip("/")
    paths = {f: fetch(f"{url}/{f}") for f in ("config.json", "metadata.json")}
    if load_weights:
        with open(paths["metadata.json"]) as f:
            expected = json.load(f).get("weights_sha256")
        paths["model.weights.h5"] = fetch(f"{url}/model.weights.h5", expected)
    return paths


def _directory_files(directory, load_weights):
    directory = pathlib.Path(directory)
    paths = {f: str(directory / f) for f in FILES}
    needed = FILES if load_weights else ("config.json",)
    missing = [f for f in needed if not os.path.exists(paths[f])]
    if missing:
        raise FileNotFoundError(f"The preset directory {directory} lacks {', '.join(missing)}; "
                                f"a preset holds {', '.join(FILES)}.")
    if load_weights:
        with open(paths["metadata.json"]) as f:
            expected = json.load(f).get("weights_sha256")
        _verify(paths["model.weights.h5"], expected, paths["model.weights.h5"])
    return paths


def _verify(path, expected, label):
    if expected is not None and sha256_of(path) != expected:
        raise ValueError(f"{label} is corrupted: its sha256 is {sha256_of(path)}, the preset "
                         f"records {expected}. Restore the file or fetch the preset again.")


def _files(preset, cls, load_weights):
    name = _builtin_name(str(preset), cls)
    if name is not None:
        if load_weights and not MANIFEST[name].get("weights", True):
            raise ValueError(f"The preset {name!r} has no pretrained weights "
                             f"({MANIFEST[name].get('description', '')}); pass "
                             "load_weights=False to build its architecture.")
        return name, _builtin_files(name, load_weights)
    preset = str(preset)
    if _is_remote(preset):
        return preset, _remote_files(preset, load_weights)
    if os.path.isdir(preset):
        return preset, _directory_files(preset, load_weights)
    if os.path.isfile(preset) and _is_archive(preset):
        return preset, _directory_files(_unpack(preset), load_weights)
    names = ", ".join(list_presets(cls)) or "none"
    owner = getattr(cls, "__name__", "Flow")
    raise ValueError(
        f"Unknown preset {preset!r} for {owner}. Built-in presets: {names}. Or give a "
        "preset directory, a .zip/.tar.gz archive, an hf://ORG/REPO URI or an https:// URL.")


def from_preset(preset, cls=None, load_weights=True, **overrides):
    """Builds the model a preset describes and loads its weights.

    Args:
        preset: a built-in name, a directory, an archive, `hf://` or a URL.
        cls: the class asked for (e.g. `Glow`); the preset's model must be one
            (a subclass, or a model of the same family: `RealNVP` loads the
            `ImageRealNVP` it builds for images). `None` accepts any flow.
        load_weights: load the pretrained weights (else the initial ones).
        **overrides: replace entries of the model's config (e.g. `dtype`).
    """
    label, paths = _files(preset, cls, load_weights)
    with open(paths["config.json"]) as f:
        config = json.load(f)
    saved = keras.saving.get_registered_object(config.get("registered_name", ""))
    if cls is not None and saved is not None and not (
            issubclass(saved, cls) or (_family(cls) and _family(saved) == _family(cls))):
        raise ValueError(f"The preset {label!r} holds a {saved.__name__}, which is not a "
                         f"{cls.__name__}: load it with keras_flows.{saved.__name__}"
                         ".from_preset or keras_flows.Flow.from_preset.")
    config["config"].update(overrides)
    model = keras.saving.deserialize_keras_object(config)
    if load_weights:
        model.load_weights(paths["model.weights.h5"])
    return model


def save_to_preset(model, directory, /, **metadata):
    """Writes `model` as a preset: config.json, model.weights.h5, metadata.json.

    `metadata` adds entries (dataset, training, measured figures, command)
    to those recorded here: class, parameter count, the weights' sha256,
    backend and versions.
    """
    from keras_flows.version import __version__

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "config.json", "w") as f:
        json.dump(keras.saving.serialize_keras_object(model), f, indent=2)
    weights = directory / "model.weights.h5"
    model.save_weights(str(weights))
    record = {
        "class_name": type(model).__name__,
        "parameters": int(model.count_params()),
        **metadata,
        "weights_sha256": sha256_of(weights),
        "backend": metadata.get("backend", keras.backend.backend()),
        "keras_version": keras.__version__,
        "keras_flows_version": __version__,
        "date": metadata.get("date", time.strftime("%Y-%m-%d")),
    }
    with open(directory / "metadata.json", "w") as f:
        json.dump(record, f, indent=2)
    return str(directory)


def manifest_entry(directory, family):
    """The manifest record of a preset directory (for scripts/update_manifest.py)."""
    directory = pathlib.Path(directory)
    with open(directory / "metadata.json") as f:
        metadata = json.load(f)
    summary = {k: metadata[k] for k in (
        "class_name", "description", "parameters", "dataset", "test_bits_per_dim",
        "test_nll_nats", "entropy_nats", "hardware", "date") if k in metadata}
    files = {f: {"sha256": sha256_of(directory / f), "bytes": (directory / f).stat().st_size}
             for f in FILES}
    return {"family": family, **summary, "files": files}

