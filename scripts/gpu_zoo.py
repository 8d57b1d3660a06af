"""Continue training the CIFAR-10 Glow preset on a lent GPU machine.

The GPU machine has JAX and PyTorch but no Keras and no network, and each call
to it carries at most 64 MiB (the checkout included); ignored paths it leaves
in the checkout stay there while the machine is warm. So the work is three
steps:

1. Here: `python scripts/gpu_zoo.py prepare [--parts 3]` writes .gpu/ (ignored):
   .gpu/wheels (Keras and the two dependencies the GPU image lacks, for
   CPython 3.12), .gpu/part{k}/ (the k-th slice of CIFAR-10's training images
   as a lossless WebP grid with its labels; part0 also holds the first
   `--test-images` test images) and prints the `carry` list of each call.
2. On the device, one call per part, back to back (the machine stays warm
   30 s): call k carries its paths and runs
       python3 scripts/gpu_zoo.py device [--bench jax,torch] [--minutes M]
   which installs the wheels (once), unpacks the parts carried so far,
   optionally times a Glow step on each backend (benchmarks/glow_throughput.py,
   to $OUT/bench.jsonl), and with --minutes trains zoo/glow_cifar10_small.json
   on every unpacked image, starting from the published preset (`--init
   glow_cifar10`: fresh Adamax with its warmup), for M minutes, then writes the
   weights as a preset in $OUT/preset with log.csv, results.json, the sample
   grid and the log. (The full checkpoint with the optimizer's moments is 3x
   the weights and over the 16 MiB a returned file may have.)
3. Here: `python scripts/gpu_zoo.py finish DIR` scores DIR/preset on all
   10,000 test images (as `keras_flows.train` does), writes it as a preset
   in runs/gpu_finish with the GPU run's figures (steps, time, hardware,
   command) and, when its bits/dim beat the published preset's, republishes
   keras_flows/pretrained/glow_cifar10 and the manifest. The next GPU run starts from
   there.

End to end on CPU with a tiny budget:
    python scripts/gpu_zoo.py prepare --limit 256 --test-images 64 --dir /tmp/g
    OUT=/tmp/g/out python scripts/gpu_zoo.py device --dir /tmp/g --minutes 0.1 \
        --bench jax --bench-steps 2 --batch-size 16
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
CONFIG = "zoo/glow_cifar10_small.json"
PRESET = "glow_cifar10"
LIMIT = 64 * 2**20  # bytes one device call carries, the checkout included
WHEELS = ["keras==3.15.1", "namex==0.1.0", "optree==0.20.0"]
COLUMNS = 100


def encode(images):
    """Lossless WebP of a grid of COLUMNS images (the last row padded)."""
    from PIL import Image

    n, h, w, c = images.shape
    rows = -(-n // COLUMNS)
    grid = np.zeros((rows * COLUMNS, h, w, c), np.uint8)
    grid[:n] = images
    grid = grid.reshape(rows, COLUMNS, h, w, c).transpose(0, 2, 1, 3, 4)
    buffer = io.BytesIO()
    Image.fromarray(grid.reshape(rows * h, COLUMNS * w, c)).save(
        buffer, "WEBP", lossless=True, quality=100, method=4)
    return buffer.getvalue()


def decode(path, n, h=32, w=32):
    from PIL import Image

    grid = np.asarray(Image.open(path).convert("RGB"))
    rows = grid.shape[0] // h
    images = grid.reshape(rows, h, COLUMNS, w, 3).transpose(0, 2, 1, 3, 4)
    return images.reshape(rows * COLUMNS, h, w, 3)[:n]


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
    bounds = np.linspace(0, len(x), args.parts + 1).astype(int)
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = gpu / f"part{k}"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
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


def unpack(gpu):
    """Decodes every carried part into gpu/data once; returns the training and test arrays."""
    out = gpu / "data"
    out.mkdir(exist_ok=True)
    for path in sorted(gpu.glob("part*/*.webp")):
        target = out / (path.stem + ".npy")
        if not target.exists():
            start, stop = map(int, path.stem.split("_")[1:])
            np.save(target, decode(path, stop - start))
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
    x_train, y_train, x_test, y_test = unpack(gpu)
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
    np.savez(gpu / "data" / "cifar10.npz", x_train=x_train, y_train=y_train,
             x_test=x_test, y_test=y_test)
    run = ROOT / "runs" / f"gpu_glow_{len(x_train)}"
    command = [sys.executable, "-m", "keras_flows.train", CONFIG, "--out",
               str(run.relative_to(ROOT)), "--data",
               os.path.relpath(gpu / "data" / "cifar10.npz", ROOT), "--init", args.init,
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
    with open(ROOT / CONFIG) as f:
        config = json.load(f)
    batch_size = re.search(r"dataset\.batch_size=(\d+)", results["command"])
    if batch_size:  # the config the preset records is the one it was trained with
        config["dataset"]["batch_size"] = int(batch_size[1])
    flow = kf.Glow.from_preset(str(source / "preset"))
    x_test = np.load(args.data)["x_test"]
    results.update(
        test_bits_per_dim=round(mean_bits_per_dim(flow, x_test, num_samples=1), 4),
        test_bits_per_dim_midpoint=round(mean_bits_per_dim(flow, x_test), 4),
        test_images=len(x_test),
        evaluate_command="python scripts/gpu_zoo.py finish " + " ".join(
            sys.argv[2:] if args.argv is None else args.argv))
    out = ROOT / "runs" / "gpu_finish"
    shutil.rmtree(out, ignore_errors=True)
    save_preset(flow, config, results, str(out), x_test)
    with open(ROOT / "keras_flows" / "presets" / "manifest.json") as f:
        old = json.load(f)[PRESET]["test_bits_per_dim"]
    new = results["test_bits_per_dim"]
    print(f"{PRESET}: published {old:.4f} bits/dim, this run {new:.4f} on {len(x_test)} "
          f"test images ({results['test_bits_per_dim_midpoint']:.4f} at bin midpoints)")
    if len(x_test) != 10000:
        print(f"not republished: scored on {len(x_test)} test images, not 10,000")
    elif new < old:
        for name in ("config.json", "model.weights.h5", "metadata.json"):
            shutil.copy(out / name, ROOT / "keras_flows" / "pretrained" / PRESET / name)
        subprocess.run([sys.executable, "scripts/update_manifest.py"], cwd=ROOT, check=True)
        print(f"republished keras_flows/pretrained/{PRESET}; paste the table above into README.md")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=".gpu", help="the carried folder, in the checkout")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", help="cifar10.npz (default: KERAS_FLOWS_DATA's, "
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
    p.add_argument("--init", default=PRESET)
    p = sub.add_parser("finish")
    p.add_argument("run", help="the folder the device call's $OUT came back to")
    p.add_argument("--data", help="cifar10.npz (default: as for prepare)")
    args = parser.parse_args(argv)
    if getattr(args, "data", "unset") is None:
        sys.path.insert(0, str(ROOT))
        import keras_flows as kf

        args.data = str(kf.datasets.npz_file("cifar10", [ROOT.parent / "shared" / "datasets"]))
    args.argv = argv
    {"prepare": prepare, "device": device, "finish": finish}[args.step](args)


if __name__ == "__main__":
    main()
