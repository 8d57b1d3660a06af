"""Rewrites keras_flows/presets/manifest.json from the presets in keras_flows/pretrained/
and prints the README's table of presets.

    python scripts/update_manifest.py

Run it after adding or retraining a preset, and paste the table into
README.md; tests/test_presets.py checks that the manifest matches the files
and that the README shows every preset's figure.
"""

import json
import pathlib

import keras

import keras_flows  # noqa: F401  (registers the model classes)
from keras_flows.presets import manifest_entry

ROOT = pathlib.Path(__file__).resolve().parents[1]


def figure(entry):
    """The measured test figure of a manifest entry, as the README shows it."""
    if "test_bits_per_dim" in entry:
        return f"{entry['test_bits_per_dim']:.3f} bits/dim"
    text = f"{entry['test_nll_nats']:.3f} nats"
    if "entropy_nats" in entry:
        text += f" (entropy {entry['entropy_nats']:.3f})"
    return text


def table(manifest):
    rows = ["| preset | class | data | parameters | test figure | trained |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, entry in manifest.items():
        if "url" in entry:  # released: its figures are the manifest's
            data = entry["dataset"]
            data = data["name"] if isinstance(data, dict) else data
            rows.append(f"| `{name}` | {entry['class_name']} | {data} | {entry['parameters']:,}"
                        f" | {figure(entry)} | {entry['hardware']}, {entry['date']};"
                        f" downloaded from `{entry['url']}` |")
            continue
        metadata = json.loads((ROOT / "keras_flows" / "pretrained" / name / "metadata.json").read_text())
        data = metadata["dataset"]
        data = data["name"] if isinstance(data, dict) else data
        if "optimizer_steps" in metadata:
            how = (f"{metadata['optimizer_steps']:,} steps, "
                   f"{metadata.get('train_seconds_total', metadata['train_seconds_now']) / 60:.0f} min")
        else:
            how = f"{metadata['training']['epochs']} epochs, {metadata['train_seconds']:.0f} s"
        how += f", {metadata['hardware']} ({metadata['backend']}), {metadata['date']}"
        rows.append(f"| `{name}` | {entry['class_name']} | {data} | "
                    f"{entry['parameters']:,} | {figure(entry)} | {how} |")
    return "\n".join(rows)


def main():
    path = ROOT / "keras_flows" / "presets" / "manifest.json"
    # Released presets (scripts/release_presets.py) live at their `url`, not here.
    manifest = {name: entry for name, entry in json.loads(path.read_text()).items()
                if "url" in entry}
    for directory in sorted((ROOT / "keras_flows" / "pretrained").iterdir()):
        if not (directory / "metadata.json").exists():
            continue
        config = json.loads((directory / "config.json").read_text())
        cls = keras.saving.get_registered_object(config["registered_name"])
        manifest[directory.name] = manifest_entry(directory, cls.preset_family)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {path} with {len(manifest)} presets; the README's table:\n")
    print(table(manifest))


if __name__ == "__main__":
    main()
