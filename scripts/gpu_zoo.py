"""Continue training an image preset (by default the CIFAR-10 Glow) on a lent
GPU machine.

The GPU machine has JAX and PyTorch but no Keras and no network, and each call
to it carries at most 64 MiB (the checkout included); ignored paths it leaves
in the checkout stay there while the machine is warm. So the work is three
steps:

`--preset NAME` (before the step, the same in all three) picks any published
MNIST or CIFAR-10 preset, `glow_cifar10` by default; its metadata names the
zoo config and the dataset it was trained with.

1. Here: `python scripts/gpu_zoo.py prepare [--parts 3]` writes .gpu/ (ignored):
   .gpu/wheels (Keras and the two dependencies the GPU image lacks, for
   CPython 3.12), .gpu/part{k}/ (the k-th slice of the dataset's training
   images as a lossless WebP grid with its labels; part0 also holds the first
   `--test-images` test images) and prints the `carry` list of each call.
2. On the device, one call per part, back to back (the machine stays warm
   30 s): call k carries its paths and runs
       python3 scripts/gpu_zoo.py device [--bench jax,torch] [--minutes M]
   which installs the wheels (once), unpacks the parts carried so far,
   optionally times a Glow step on each backend (benchmarks/glow_throughput.py,
   to $OUT/bench.jsonl), and with --minutes trains the preset's zoo config
   on every unpacked image, starting from the published preset (`--init`:
   fresh optimizer with its warmup), for M minutes, then writes the
   weights as a preset in $OUT/preset with log.csv, results.json, the sample
   grid and the log. (The full checkpoint with the optimizer's moments is 3x
   the weights and over the 16 MiB a returned file may have.)
3. Here: `python scripts/gpu_zoo.py finish DIR` scores DIR/preset on all
   10,000 test images (as `keras_flows.train` does), writes it as a preset
   in runs/gpu_finish with the GPU run's figures (steps, time, hardware,
   command) and, when its bits/dim beat the published preset's, republishes
   keras_flows/pretrained/NAME and the manifest. The next GPU run starts from
   there.

End to end on CPU with a tiny budget:
    python scripts/gpu_zoo.py --dir /tmp/g prepare --limit 256 --test-images 64
    OUT=/tmp/g/out python scripts/gpu_zoo.py --dir /tmp/g device --minutes 0.1 \
        --bench jax --bench-steps 2 --batch-size 16
and the same with `--preset residual_flow_mnist` beside `--dir`.
"""

import argparse
import glob
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRESET = "glow_cifar10"
DATASETS = ("mnist", "cifar10")
LIMIT = 64 * 2**20  # bytes one device call carries, the checkout included
WHEELS = ["keras==3.15.1", "namex==0.1.0", "optree==0.20.0"]
COLUMNS = 100


def preset_source(preset):
    """The zoo config and the dataset name a published image preset was trained with."""
    path = ROOT / "keras_flows" / "pretrained" / preset / "metadata.json"
    if not path.is_file():
        published = sorted(p.name for p in path.parents[1].iterdir() if p.is_dir())
        raise SystemExit(f"--preset {preset!r}: no such published preset; expected one of "
                         f"{', '.join(published)}.")
    with open(path) as f:
        metadata = json.load(f)
    if metadata.get("dataset") not in DATASETS or "config" not in metadata:
        raise SystemExit(f"--preset {preset!r} was trained on {metadata.get('dataset')!r}; "
                         f"this script continues presets trained on {' or '.join(DATASETS)}.")
    return metadata["config"], metadata["dataset"]


def encode(images):
    """Lossless WebP of a grid of COLUMNS images (the last row padded); images
    (n, h, w, 3) are RGB, (n, h, w) or (n, h, w, 1) grey."""
    from PIL import Image

    n, h, w = images.shape[:3]
    c = images.size // (n * h * w)
    rows = -(-n // COLUMNS)
    grid = np.zeros((rows * COLUMNS, h, w, c), np.uint8)
    grid[:n] = images.reshape(n, h, w, c)
    grid = grid.reshape(rows, COLUMNS, h, w, c).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * h, COLUMNS * w, c)
    buffer = io.BytesIO()
    Image.fromarray(grid if c == 3 else grid[..., 0]).save(
        buffer, "WEBP", lossless=True, quality=100, method=4)
    return buffer.getvalue()


def decode(path, n, shape):
    """The first `n` images of a grid from `encode`, each of `shape` (h, w[, c])."""
    from PIL import Image

    h, w = shape[:2]
    grid = np.asarray(Image.open(path).convert("RGB" if shape[-1:] == [3] else "L"))
    grid = grid.reshape(grid.shape[0], grid.shape[1], -1)
    rows, c = grid.shape[0] // h, grid.shape[2]
    images = grid.reshape(rows, h, COLUMNS, w, c).transpose(0, 2, 1, 3, 4)
    return images.reshape(rows * COLUMNS, *shape)[:n]


def checkout_bytes():
    """Bytes of what every device call sends: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names
               if n and (ROOT / n.decode()).is_file())


def size(path):
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def prepare(args):
    gpu = ROOT / args.dir
    wheels = gpu / "wheels"
    if args.wheels and not wheels.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux2014_x86_64", "-d", str(wheels), *WHEELS],
                       check=True)
    data = np.load(args.data)
    x, y = data["x_train"][:args.limit], data["y_train"][:args.limit]
    images = json.dumps({"dataset": args.dataset, "shape": x.shape[1:]})
    bounds = np.linspace(0, len(x), args.parts + 1).astype(int)
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = gpu / f"part{k}"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        (part / "images.json").write_text(images)
        (part / f"train_{start}_{stop}.webp").write_bytes(encode(x[start:stop]))
        np.save(part / f"train_{start}_{stop}_labels.npy", y[start:stop])
        if k == 0:
            n = args.test_images
            (part / f"test_0_{n}.webp").write_bytes(encode(data["x_test"][:n]))
            np.save(part / f"test_0_{n}_labels.npy", data["y_test"][:n])
    base = checkout_bytes()
    print(f"the checkout sends {base / 2**20:.1f} MiB with every call")
    for k in range(args.parts):
        carry = [f"{args.dir}/part{k}"] + ([f"{args.dir}/wheels"] if k == 0 and args.wheels else [])
        total = base + sum(size(ROOT / c) for c in carry)
        print(f"call {k}: carry {json.dumps(carry)}  ({total / 2**20:.1f} MiB)")
        if total > LIMIT:
            raise SystemExit(f"call {k} would carry {total / 2**20:.1f} MiB, over the 64 MiB "
                             f"limit: use more --parts.")


def unpack(gpu, dataset):
    """Decodes every carried part into gpu/data once; returns the training and test arrays."""
    out = gpu / "data"
    out.mkdir(exist_ok=True)
    for path in sorted(gpu.glob("part*/*.webp")):
        with open(path.parent / "images.json") as f:
            images = json.load(f)
        if images["dataset"] != dataset:
            raise SystemExit(f"{path.parent} holds {images['dataset']} images, but the "
                             f"preset was trained on {dataset}: prepare again with the "
                             "same --preset.")
        target = out / (path.stem + ".npy")
        if not target.exists():
            start, stop = map(int, path.stem.split("_")[1:])
            np.save(target, decode(path, stop - start, images["shape"]))
            shutil.copy(path.with_name(path.stem + "_labels.npy"), out)

    def gather(split):
        stems = sorted((p.stem for p in out.glob(f"{split}_*_*.npy")
                        if not p.stem.endswith("labels")),
                       key=lambda s: int(s.split("_")[1]))
        if not stems:
            return None, None
        return (np.concatenate([np.load(out / f"{s}.npy") for s in stems]),
                np.concatenate([np.load(out / f"{s}_labels.npy") for s in stems]))

    return gather("train") + gather("test")


def device(args):
    gpu = (ROOT / args.dir).resolve()
    out = pathlib.Path(os.environ.get("OUT", gpu / "out"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    wheels = sorted(glob.glob(str(gpu / "wheels" / "*.whl")))
    if wheels and importlib.util.find_spec("keras") is None:
        site = gpu / "site"
        if not (site / "keras").is_dir():
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                            "--no-deps", "--no-compile", "--target", str(site), *wheels],
                           check=True)
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    x_train, y_train, x_test, y_test = unpack(gpu, args.dataset)
    print(f"unpacked {0 if x_train is None else len(x_train)} training and "
          f"{0 if x_test is None else len(x_test)} test images", flush=True)
    for backend in filter(None, args.bench.split(",")):
        with open(out / "bench.jsonl", "a") as log:
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "glow_throughput.py"),
                            "--batch-sizes", args.bench_batch_sizes,
                            "--steps", str(args.bench_steps), "--repeats", "3"],
                           env=dict(env, KERAS_BACKEND=backend), stdout=log, check=False)
        print(f"bench {backend}: done", flush=True)
    if not args.minutes:
        return
    np.savez(gpu / "data" / f"{args.dataset}.npz", x_train=x_train, y_train=y_train,
             x_test=x_test, y_test=y_test)
    run = ROOT / "runs" / f"gpu_{args.preset}_{len(x_train)}"
    command = [sys.executable, "-m", "keras_flows.train", args.config, "--out",
               str(run.relative_to(ROOT)), "--data",
               os.path.relpath(gpu / "data" / f"{args.dataset}.npz", ROOT),
               "--init", args.init or args.preset,
               "--epochs", "1000", "--max-minutes", str(args.minutes),
               "--eval-images", str(min(500, len(x_test))),
               "--set", f"dataset.batch_size={args.batch_size}",
               "--preset", str(out / "preset")]
    with open(out / "train.log", "w") as log:
        code = subprocess.run(command, cwd=ROOT, env=dict(env, KERAS_BACKEND=args.backend),
                              stdout=log, stderr=subprocess.STDOUT).returncode
    for name in ("log.csv", "results.json"):
        if (run / name).exists():
            shutil.copy(run / name, out)
    grids = sorted(run.glob("samples_epoch_*.png"), key=os.path.getmtime)
    if grids:
        shutil.copy(grids[-1], out / "samples.png")
    print((out / "train.log").read_text()[-3000:])
    if code:
        raise SystemExit(f"training exited with {code}")


def finish(args):
    import keras_flows as kf
    from keras_flows.metrics import mean_bits_per_dim
    from keras_flows.train import save_preset

    source = pathlib.Path(args.run)
    with open(source / "results.json") as f:
        results = json.load(f)
    with open(ROOT / args.config) as f:
        config = json.load(f)
    batch_size = re.search(r"dataset\.batch_size=(\d+)", results["command"])
    if batch_size:  # the config the preset records is the one it was trained with
        config["dataset"]["batch_size"] = int(batch_size[1])
    flow = kf.Flow.from_preset(str(source / "preset"))
    _, _, x_test, y_test = kf.datasets.load_arrays(args.dataset, path=args.data)
    labels = y_test if config["model_config"].get("num_classes") is not None else None
    results.update(
        test_bits_per_dim=round(mean_bits_per_dim(flow, x_test, labels, num_samples=1), 4),
        test_bits_per_dim_midpoint=round(mean_bits_per_dim(flow, x_test, labels), 4),
        test_images=len(x_test),
        evaluate_command="python scripts/gpu_zoo.py finish " + " ".join(
            sys.argv[2:] if args.argv is None else args.argv))
    out = ROOT / "runs" / "gpu_finish"
    shutil.rmtree(out, ignore_errors=True)
    save_preset(flow, config, results, str(out), x_test, labels)
    with open(ROOT / "keras_flows" / "presets" / "manifest.json") as f:
        old = json.load(f)[args.preset]["test_bits_per_dim"]
    new = results["test_bits_per_dim"]
    print(f"{args.preset}: published {old:.4f} bits/dim, this run {new:.4f} on {len(x_test)} "
          f"test images ({results['test_bits_per_dim_midpoint']:.4f} at bin midpoints)")
    if len(x_test) != 10000:
        print(f"not republished: scored on {len(x_test)} test images, not 10,000")
    elif new < old:
        for name in ("config.json", "model.weights.h5", "metadata.json"):
            shutil.copy(out / name, ROOT / "keras_flows" / "pretrained" / args.preset / name)
        subprocess.run([sys.executable, "scripts/update_manifest.py"], cwd=ROOT, check=True)
        print(f"republished keras_flows/pretrained/{args.preset}; paste the table above into README.md")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=".gpu", help="the carried folder, in the checkout")
    parser.add_argument("--preset", default=PRESET,
                        help="the published MNIST or CIFAR-10 preset to continue")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", help="the preset's dataset as .npz (default: KERAS_FLOWS_DATA's, "
                   "../shared/datasets', else keras_flows.datasets.download)")
    p.add_argument("--parts", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="only the first N training images")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--no-wheels", dest="wheels", action="store_false",
                   help="skip downloading the wheels (they are only needed on the device)")
    p = sub.add_parser("device")
    p.add_argument("--bench", default="", help="backends to time, e.g. jax,torch")
    p.add_argument("--bench-batch-sizes", default="64,256")
    p.add_argument("--bench-steps", type=int, default=50)
    p.add_argument("--minutes", type=float, default=0.0)
    p.add_argument("--backend", default="jax")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init", default=None,
                   help="the preset (name or folder) to start from; default --preset")
    p = sub.add_parser("finish")
    p.add_argument("run", help="the folder the device call's $OUT came back to")
    p.add_argument("--data", help="the dataset's .npz (default: as for prepare)")
    args = parser.parse_args(argv)
    args.config, args.dataset = preset_source(args.preset)
    if getattr(args, "data", "unset") is None:
        sys.path.insert(0, str(ROOT))
        import keras_flows as kf

        args.data = str(kf.datasets.npz_file(args.dataset,
                                             [ROOT.parent / "shared" / "datasets"]))
    args.argv = argv
    {"prepare": prepare, "device": device, "finish": finish}[args.step](args)


if __name__ == "__main__":
    main()
