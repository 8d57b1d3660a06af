"""Rewrites keras_flows/presets/manifest.json from the presets in pretrained/.

    python scripts/update_manifest.py

Run it after adding or retraining a preset; tests/test_presets.py checks that
the manifest matches the files.
"""

import json
import pathlib

import keras

import keras_flows  # noqa: F401  (registers the model classes)
from keras_flows.presets import manifest_entry

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    manifest = {}
    for directory in sorted((ROOT / "pretrained").iterdir()):
        if not (directory / "metadata.json").exists():
            continue
        config = json.loads((directory / "config.json").read_text())
        cls = keras.saving.get_registered_object(config["registered_name"])
        manifest[directory.name] = manifest_entry(directory, cls.preset_family)
    path = ROOT / "keras_flows" / "presets" / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {path} with {len(manifest)} presets")


if __name__ == "__main__":
    main()
