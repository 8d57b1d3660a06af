"""Releases presets too large for the wheel: records them in the manifest with
their published location and sha256s, packs them, says how to upload them,
and checks the upload.

    python scripts/release_presets.py pack runs/glow_cifar10_paper --name glow_cifar10_paper \\
        --url kaggle://keras-flows/glow/keras/cifar10_paper/1
    # ... upload (the command prints how: Hugging Face Hub and Kaggle Models) ...
    python scripts/release_presets.py verify glow_cifar10_paper

The wheel ships every preset in `keras_flows/pretrained/` (each file under
`PACKAGED_LIMIT` bytes, checked by tests/test_presets.py) and loads them with
no network. A larger preset stays out of the package: `pack`

1. loads the preset directory with `from_preset` (config, weights, sha256 of
   the weights against its metadata), so that nothing broken is published;
2. writes `release/NAME/` (the three files) and `release/NAME.tar.gz` (one
   archive of them, for an http(s) mirror or a GitHub release) and prints the
   archive's sha256;
3. adds `NAME` to `keras_flows/presets/manifest.json`: its figures, each
   file's sha256 and size, and `url`, where `from_preset("NAME")` fetches
   the files (`URL/config.json`, ...), each checked against its sha256;
4. prints the upload commands for the Hugging Face Hub (`hf://ORG/REPO/NAME`)
   and Kaggle Models (`kaggle://OWNER/MODEL/FRAMEWORK/VARIATION/VERSION`,
   keras-hub's handle form; a new variation version gets the next number).

`verify NAME` downloads every file of a released preset from its `url` into
a fresh cache (sha256-checked by `download.fetch`), loads the model from it,
and prints its recorded figure: run it after uploading, before committing the
manifest.
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "keras_flows" / "presets" / "manifest.json"
PACKAGED_LIMIT = 50_000_000  # bytes per file a preset in the wheel may have


def upload_instructions(name, folder, url):
    """The shell commands that publish `folder` at `url`."""
    if url.startswith("hf://"):
        org, repo, *path = url[len("hf://"):].split("/")
        repo, _, revision = repo.partition("@")
        where = f" --revision {revision}" if revision else ""
        return [f"huggingface-cli upload {org}/{repo} {folder} {'/'.join(path) or '.'}"
                f" --repo-type model{where}"]
    if url.startswith("kaggle://"):
        owner, model, framework, variation, version = url[len("kaggle://"):].split("/")[:5]
        return [
            f"# Kaggle Models: {owner}/{model}, framework {framework}, variation {variation}",
            f"kaggle models instances versions create {owner}/{model}/{framework}/{variation} "
            f"-p {folder} -n 'keras_flows preset {name}'",
            f"# (a new variation: `kaggle models instances init -p {folder}`, edit its "
            f"model-instance-metadata.json, then `kaggle models instances create -p {folder}`;"
            f" the first version is 1, the URL above names version {version})",
        ]
    return [f"# copy the files of {folder} to {url}/ (any static file server)"]


def pack(directory, name, url, manifest_path=MANIFEST, out=ROOT / "release"):
    import keras_flows as kf
    from keras_flows.presets import manifest_entry
    from keras_flows.presets.download import sha256_of

    if not url.startswith(("hf://", "kaggle://", "https://", "http://")):
        raise SystemExit(f"--url must be an hf://, kaggle:// or http(s):// location; got {url!r}.")
    flow = kf.Flow.from_preset(str(directory))           # refuses a broken preset
    manifest = json.loads(pathlib.Path(manifest_path).read_text())
    if name in manifest and "url" not in manifest[name]:
        raise SystemExit(f"{name!r} is a packaged preset; choose another name.")
    folder = pathlib.Path(out) / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for file in ("config.json", "model.weights.h5", "metadata.json"):
        shutil.copyfile(pathlib.Path(directory) / file, folder / file)
    archive = pathlib.Path(out) / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=name)
    entry = manifest_entry(folder, type(flow).preset_family)
    manifest[name] = {**entry, "url": url.rstrip("/")}
    pathlib.Path(manifest_path).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"packed {folder} and {archive} (sha256 {sha256_of(archive)})")
    print(f"recorded {name!r} in {manifest_path}, fetched from {url}/")
    print("upload with:\n  " + "\n  ".join(upload_instructions(name, folder, url)))
    print(f"then check: python scripts/release_presets.py verify {name}")
    return manifest[name]


def verify(name, manifest_path=MANIFEST):
    from keras_flows.presets.download import fetch

    entry = json.loads(pathlib.Path(manifest_path).read_text()).get(name)
    if entry is None or "url" not in entry:
        raise SystemExit(f"{name!r} is not a released preset in {manifest_path}.")
    with tempfile.TemporaryDirectory() as cache:
        folder = pathlib.Path(cache) / name
        folder.mkdir()
        for file, record in entry["files"].items():
            path = fetch(f"{entry['url']}/{file}", record["sha256"], cache_dir=cache)
            shutil.copyfile(path, folder / file)
        import keras_flows as kf

        kf.Flow.from_preset(str(folder))
    figure = {k: entry[k] for k in ("test_bits_per_dim", "test_nll_nats") if k in entry}
    print(f"{name}: every file at {entry['url']} matches its sha256 and the model loads; "
          f"recorded {figure}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="record, pack and print upload commands")
    p.add_argument("directory")
    p.add_argument("--name", required=True)
    p.add_argument("--url", required=True, help="hf://ORG/REPO/NAME, "
                   "kaggle://OWNER/MODEL/FRAMEWORK/VARIATION/VERSION or https://...")
    p.add_argument("--manifest", default=str(MANIFEST))
    p.add_argument("--out", default=str(ROOT / "release"))
    v = sub.add_parser("verify", help="download a released preset and load it")
    v.add_argument("name")
    v.add_argument("--manifest", default=str(MANIFEST))
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.directory, args.name, args.url, args.manifest, args.out)
    else:
        verify(args.name, args.manifest)


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.exit(main())
