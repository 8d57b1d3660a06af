"""Presets: a model's config, weights and measured figures, by name or location.

A preset is a directory (or a `.zip` / `.tar.gz` / `.tgz` archive of one)
holding three regular files (not links):

    config.json         the serialized model (`keras.saving.serialize_keras_object`)
    model.weights.h5    its weights
    metadata.json       class, parameter count, dataset, training, the test
                        figures measured and the command that measured them,
                        versions, and the sha256 of the weights

`from_preset(preset)` accepts:
- a built-in name from `keras_flows/presets/manifest.json` (`glow_cifar10`),
  or its short form within a family (`Glow.from_preset("cifar10")`);
- a local directory or archive;
- `hf://ORG/REPO` (a Hugging Face repository holding the three files),
  `kaggle://OWNER/MODEL/FRAMEWORK/VARIATION/VERSION` (a Kaggle Models
  variation version holding them, as keras-hub's handles name one), or an
  `http(s)://` URL of a directory or an archive.

Built-in presets resolve, in order, to: `$KERAS_FLOWS_PRESETS_URL/<name>/`
when that variable is set (a mirror, or a local server in tests); the
package's own `keras_flows/pretrained/` folder (in the wheel and in a source
checkout alike), with no network at all; the manifest entry's `url` (a preset
too large for the wheel, released with `scripts/release_presets.py`); the
published location `hf://keras-flows/pretrained/<name>/`. Downloads are
verified (against the manifest's sha256, or by length and content) and
cached (see `download.fetch`).

Archives are unpacked into the cache, never beside themselves, under the
sha256 of their content (`extract_archive`): only regular files and folders
that stay inside the target, within `MAX_ARCHIVE_FILES` entries and
`MAX_ARCHIVE_BYTES` unpacked bytes. The weights must match the config
exactly (same variables, same shapes), and overrides may change only
`OVERRIDABLE` entries of the config. Every refusal is a `PresetError` (a
`ValueError`) naming the file, the entry or the argument.
"""

import json
import os
import pathlib
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib

import keras

from keras_flows.presets.download import cache_root, fetch, remove_stale_parts, sha256_of

__all__ = ["from_preset", "save_to_preset", "list_presets", "preset_files", "extract_archive",
           "PresetError", "MANIFEST", "ALIASES", "OVERRIDABLE", "MAX_ARCHIVE_BYTES",
           "MAX_ARCHIVE_FILES"]

FILES = ("config.json", "model.weights.h5", "metadata.json")
# Config entries `from_preset(..., **overrides)` may replace: none of them
# changes which variables the model has or what their values mean.
OVERRIDABLE = ("name", "trainable", "dtype")
MAX_ARCHIVE_BYTES = 1 << 30  # unpacked bytes a preset archive may hold (1 GiB)
MAX_ARCHIVE_FILES = 1000  # entries (files and folders) a preset archive may hold
PUBLISHED_URL = "hf://keras-flows/pretrained"
PACKAGED = pathlib.Path(__file__).resolve().parents[1] / "pretrained"
with open(pathlib.Path(__file__).with_name("manifest.json")) as _f:
    MANIFEST = json.load(_f)
# Bare dataset names, for `Flow.from_preset` and the command line.
ALIASES = {"mnist": "glow_mnist", "cifar10": "glow_cifar10"}
_CHUNK = 1 << 20


class PresetError(ValueError):
    """A preset, its archive or one of its files is not what a preset must be,
    or an override is not allowed; the message names the file or argument."""


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
    return preset.startswith(("hf://", "kaggle://", "http://", "https://"))


def _is_archive(path):
    return str(path).endswith((".zip", ".tar.gz", ".tgz"))


# -- archives -------------------------------------------------------------

def extract_archive(archive, cache_dir=None):
    """Unpacks a preset archive into the cache, once per content; returns the folder.

    The folder is `<cache>/archives/<sha256 of the archive>`: the archive may
    sit on read-only media, and one replaced at the same path is unpacked
    afresh. Unpacking goes to a staging folder renamed into place when
    complete (one left by a killed process is removed by the next
    extraction, `download.remove_stale_parts`). Entry by entry (the checks of tarfile's "data" filter, on every
    Python version), only regular files and folders are unpacked, each inside
    the folder; an entry that is a symbolic or hard link, a device or a FIFO,
    or whose name is absolute or has a `..` component, is refused, as is an
    archive of more than `MAX_ARCHIVE_FILES` entries or `MAX_ARCHIVE_BYTES`
    unpacked bytes.

    Args:
      archive: path of a `.zip`, `.tar.gz` or `.tgz` file.
      cache_dir: the cache directory; default `download.cache_root()`.

    Raises:
      PresetError: the archive is refused or unreadable (naming it and the entry).
    """
    archive = str(archive)
    root = os.path.join(cache_root(cache_dir), "archives")
    target = os.path.join(root, sha256_of(archive))
    if os.path.isdir(target):
        return target
    os.makedirs(root, exist_ok=True)
    remove_stale_parts(root)
    staging = tempfile.mkdtemp(prefix=f"{os.path.basename(target)}.part-{os.getpid()}-",
                               dir=root)
    try:
        try:
            _unpack(archive, staging)
        except (OSError, EOFError, RuntimeError, zlib.error, tarfile.TarError,
                zipfile.BadZipFile) as e:  # RuntimeError: encrypted or unsupported zip entries
            raise PresetError(f"Cannot unpack the archive {archive}: {e}") from e
        try:
            os.rename(staging, target)
        except OSError:
            if not os.path.isdir(target):  # else another process unpacked it first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _entries(archive):
    """(name, kind, size, open) of each entry of a zip or tar archive, kind being
    "file", "folder", or what else it is (for the refusal)."""
    if archive.endswith(".zip"):
        kinds = {0: "file", stat.S_IFREG: "file", stat.S_IFDIR: "folder",
                 stat.S_IFLNK: "a symbolic link", stat.S_IFCHR: "a device",
                 stat.S_IFBLK: "a device", stat.S_IFIFO: "a FIFO"}
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                kind = kinds.get(stat.S_IFMT(info.external_attr >> 16), "a special file")
                kind = "folder" if info.is_dir() and kind == "file" else kind
                yield info.filename, kind, info.file_size, lambda info=info: z.open(info)
        return
    with tarfile.open(archive) as tar:
        for m in tar:
            kind = ("file" if m.isreg() else "folder" if m.isdir() else
                    "a symbolic link" if m.issym() else "a hard link" if m.islnk() else
                    "a device" if m.ischr() or m.isblk() else
                    "a FIFO" if m.isfifo() else "a special file")
            yield m.name, kind, m.size, lambda m=m: tar.extractfile(m)


def _unpack(archive, into):
    """Unpacks `archive` into the empty folder `into`; see `extract_archive`."""
    def refuse(entry, why):
        return PresetError(f"Refusing the archive {archive}: its entry {entry!r} {why}.")

    inside = os.path.realpath(into)
    files, left = MAX_ARCHIVE_FILES, MAX_ARCHIVE_BYTES
    too_big = (f"takes the unpacked size past MAX_ARCHIVE_BYTES ({MAX_ARCHIVE_BYTES:,} "
               "bytes), more than a preset needs")
    for name, kind, size, open_entry in _entries(archive):
        files -= 1
        if files < 0:
            raise refuse(name, f"is one more than MAX_ARCHIVE_FILES ({MAX_ARCHIVE_FILES}), "
                               "more than a preset needs")
        if kind not in ("file", "folder"):
            raise refuse(name, f"is {kind}; a preset archive holds only regular files and "
                               "folders")
        parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
        path = os.path.join(into, *parts)
        if (name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts
                or os.path.commonpath([os.path.realpath(path), inside]) != inside):
            raise refuse(name, "is an absolute path or goes up with '..': it would unpack "
                               "outside the preset folder")
        if kind == "folder":
            os.makedirs(path, exist_ok=True)
            continue
        if size > left:
            raise refuse(name, too_big)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open_entry() as source, open(path, "wb") as f:
            while chunk := source.read(_CHUNK):
                left -= len(chunk)
                if left < 0:
                    raise refuse(name, too_big)
                f.write(chunk)


def _preset_folder(folder, archive):
    found = [p.parent for p in pathlib.Path(folder).rglob("config.json")]
    if len(found) != 1:
        raise PresetError(f"The archive {archive} must hold exactly one preset directory "
                          f"with a config.json; found {len(found)}.")
    return found[0]


# -- locating and checking a preset's files -------------------------------

def _read_json(path):
    """The JSON object in the file at `path`; a PresetError naming it otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PresetError(f"{path} is not valid JSON ({e}); a preset's "
                          f"{os.path.basename(path)} holds a JSON object.") from e
    if not isinstance(value, dict):
        raise PresetError(f"{path} holds a JSON {type(value).__name__}; a preset's "
                          f"{os.path.basename(path)} holds a JSON object.")
    return value


def _verify(path, expected):
    if expected is not None and (actual := sha256_of(path)) != expected:
        raise PresetError(f"{path} is corrupted: its sha256 is {actual}, the preset "
                          f"records {expected}. Restore the file or fetch the preset again.")


def _directory_files(directory, load_weights, weights_sha256=None):
    """The files of a preset directory, each a regular file in it, the weights
    matching `weights_sha256` (default: the metadata's)."""
    directory = pathlib.Path(directory)
    paths = {f: str(directory / f) for f in FILES}
    needed = FILES if load_weights else ("config.json",)
    missing = [f for f in needed if not os.path.lexists(paths[f])]
    if missing:
        raise PresetError(f"The preset directory {directory} lacks {', '.join(missing)}; "
                          f"a preset holds {', '.join(FILES)}.")
    for path in paths.values():
        if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
            what = "a symbolic link" if os.path.islink(path) else "not a regular file"
            raise PresetError(f"{path} is {what}; a preset's files must be regular files "
                              "inside its directory.")
    if os.path.exists(paths["metadata.json"]):
        metadata = _read_json(paths["metadata.json"])
        weights_sha256 = weights_sha256 or metadata.get("weights_sha256")
    if load_weights:
        _verify(paths["model.weights.h5"], weights_sha256)
    return paths


def _builtin_files(name, load_weights):
    """Local paths of a built-in preset's files."""
    entry = MANIFEST[name]
    base = os.environ.get("KERAS_FLOWS_PRESETS_URL")
    if base is None and (PACKAGED / name / "config.json").exists():
        return _directory_files(PACKAGED / name, load_weights,
                                entry["files"]["model.weights.h5"]["sha256"])
    if base is not None:
        url = f"{base.rstrip('/')}/{name}"
    else:  # released presets (scripts/release_presets.py) name their own location
        url = entry.get("url", f"{PUBLISHED_URL}/{name}")
    wanted = FILES if load_weights else ("config.json", "metadata.json")
    return {f: fetch(f"{url}/{f}", entry["files"][f]["sha256"]) for f in wanted}


def _remote_files(url, load_weights):
    if _is_archive(url):
        return _directory_files(_preset_folder(extract_archive(fetch(url)), url), load_weights)
    url = url.rstrip("/")
    paths = {f: fetch(f"{url}/{f}") for f in ("config.json", "metadata.json")}
    if load_weights:
        expected = _read_json(paths["metadata.json"]).get("weights_sha256")
        paths["model.weights.h5"] = fetch(f"{url}/model.weights.h5", expected)
    return paths


def _find_files(preset, cls, load_weights):
    name = _builtin_name(str(preset), cls)
    if name is not None:
        if load_weights and not MANIFEST[name].get("weights", True):
            raise PresetError(f"The preset {name!r} has no pretrained weights "
                              f"({MANIFEST[name].get('description', '')}); pass "
                              "load_weights=False to build its architecture.")
        return name, _builtin_files(name, load_weights)
    preset = str(preset)
    if _is_remote(preset):
        return preset, _remote_files(preset, load_weights)
    if os.path.isdir(preset):
        return preset, _directory_files(preset, load_weights)
    if os.path.isfile(preset) and _is_archive(preset):
        return preset, _directory_files(_preset_folder(extract_archive(preset), preset),
                                        load_weights)
    names = ", ".join(list_presets(cls)) or "none"
    owner = getattr(cls, "__name__", "Flow")
    raise PresetError(
        f"Unknown preset {preset!r} for {owner}. Built-in presets: {names}. Or give a "
        "preset directory, a .zip/.tar.gz archive, an hf://ORG/REPO URI, a "
        "kaggle://OWNER/MODEL/FRAMEWORK/VARIATION/VERSION handle or an https:// URL.")


def preset_files(preset, cls=None, load_weights=True):
    """Finds (and fetches) a preset's files: `(label, {file name: local path})`.

    `config.json` and `metadata.json` are given, and `model.weights.h5` with
    `load_weights`; a local directory needs only `config.json` without it.
    Every file is a regular file, the JSON ones hold objects, and the weights
    match the sha256 the manifest or the metadata records. `cls` narrows
    built-in names to its family (see `from_preset`).

    Raises:
      PresetError: unknown preset, or a file missing or invalid (naming it).
      OSError: a download failed (`download.DownloadError`).
    """
    label, paths = _find_files(preset, cls, load_weights)
    for file in ("config.json", "metadata.json"):
        if os.path.exists(paths[file]):
            _read_json(paths[file])
    return label, paths


# -- building and loading -------------------------------------------------

def _weights_layout(path):
    """{h5 dataset path: shape} of a keras weights file, the optimizer's left out."""
    import h5py

    layout = {}

    def visit(key, item):
        if isinstance(item, h5py.Dataset) and not key.startswith("optimizer/"):
            layout[key] = item.shape

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return layout


def _load_weights(model, path):
    """Loads the weights file at `path` into `model` once it is known to hold exactly
    the variables (h5 paths and shapes) that `model.save_weights` would write."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_weights(os.path.join(tmp, "model.weights.h5"))
        expected = _weights_layout(os.path.join(tmp, "model.weights.h5"))
    try:
        found = _weights_layout(path)
    except OSError as e:
        raise PresetError(f"{path} is not a readable HDF5 weights file ({e}); expected the "
                          "weights keras writes with Model.save_weights.") from e
    if found != expected:
        differences = {
            "variables missing": expected.keys() - found.keys(),
            "extra variables": found.keys() - expected.keys(),
            "variables of another shape": {k for k in found.keys() & expected.keys()
                                           if found[k] != expected[k]}}
        listed = "; ".join(f"{len(keys)} {what} ({', '.join(sorted(keys)[:3])}"
                           f"{', ...' if len(keys) > 3 else ''})"
                           for what, keys in differences.items() if keys)
        raise PresetError(f"{path} does not match its config.json: {listed}.")
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as e:
        raise PresetError(f"{path} could not be loaded: {e}") from e


def _with_dtype(config, dtype):
    """`config` with every "dtype" entry, those of nested layers included, `dtype`."""
    if isinstance(config, dict):
        return {k: dtype if k == "dtype" else _with_dtype(v, dtype) for k, v in config.items()}
    if isinstance(config, list):
        return [_with_dtype(v, dtype) for v in config]
    return config


def from_preset(preset, cls=None, load_weights=True, **overrides):
    """Builds the model a preset describes and loads its weights.

    Args:
        preset: a built-in name, a directory, an archive, `hf://` or a URL.
        cls: the class asked for (e.g. `Glow`); the preset's model must be one
            (a subclass, or a model of the same family: `RealNVP` loads the
            `ImageRealNVP` it builds for images). `None` accepts any flow.
        load_weights: load the pretrained weights (else the initial ones).
        **overrides: replace entries of the saved config that do not touch the
            weights, those in `OVERRIDABLE`: `name`, `trainable`, and `dtype`
            (a dtype or policy name, e.g. "float64", for the model and every
            layer in it; the weights are cast on loading). Any other
            (`steps_per_level`, `hidden_units`, `seed`, ...) would change the
            variables or what their values mean, and is refused: build the
            model from its class to change the architecture.

    Raises:
        PresetError: an override not in `OVERRIDABLE`; a preset file missing,
            not a regular file or invalid JSON; a config that builds no model;
            a weights file unreadable or not matching the config exactly
            (variables missing, extra or of another shape). Each names the
            argument or the file.
        OSError: a download failed (`download.DownloadError`).
    """
    refused = sorted(set(overrides) - set(OVERRIDABLE))
    if refused:
        raise PresetError(f"from_preset cannot override {', '.join(refused)}: only "
                          f"{', '.join(OVERRIDABLE)} may change, since they do not touch the "
                          "weights. Build the model from its class to change the "
                          "architecture.")
    label, paths = preset_files(preset, cls, load_weights)
    config = _read_json(paths["config.json"])
    if not isinstance(config.get("config"), dict):
        raise PresetError(f"{paths['config.json']} has no 'config' object; expected a model "
                          "serialized by keras.saving.serialize_keras_object.")
    saved = keras.saving.get_registered_object(config.get("registered_name") or "")
    if cls is not None and saved is not None and not (
            issubclass(saved, cls) or (_family(cls) and _family(saved) == _family(cls))):
        raise PresetError(f"The preset {label!r} holds a {saved.__name__}, which is not a "
                          f"{cls.__name__}: load it with keras_flows.{saved.__name__}"
                          ".from_preset or keras_flows.Flow.from_preset.")
    if "dtype" in overrides:
        config["config"] = _with_dtype(config["config"], overrides["dtype"])
    config["config"].update(overrides)
    try:
        model = keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise PresetError(f"{paths['config.json']} does not describe a model keras_flows can "
                          f"build: {e}") from e
    if load_weights:
        _load_weights(model, paths["model.weights.h5"])
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

