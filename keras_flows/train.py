"""Train an image flow from a config in zoo/ and report its test bits/dim.

    python -m keras_flows.train zoo/glow_mnist_small.json --out runs/glow_mnist \
        --data ../shared/datasets/mnist.npz --max-minutes 20

Training resumes exactly: OUT/backup holds atomic checkpoints (see
`keras_flows.callbacks.Checkpoint`) of the whole state: weights, optimizer and
metric variables, the random generators' states, the position in the data,
the log rows and the time so far. They are written every `checkpoint_every`
steps, at every epoch's end and when `--max-minutes` runs out. After a stop, a
crash or a SIGKILL at any moment, running the same command again continues
from the newest readable checkpoint and ends with the same weights as an
uninterrupted run (bit for bit on CPU). The data order is a function of the
seed alone: pass p over the N training images visits them in the order
`numpy.random.default_rng([seed, p]).permutation(N)` (with `flip`, mirroring
those where the same generator's next N uniforms are below 1/2), in
N // batch_size batches; epochs of `steps_per_epoch` batches (one pass by
default) take the next batches of that stream.

Each completed epoch writes a sample grid and a row of OUT/log.csv (train
loss, test bits/dim at bin midpoints of `--eval-images` test images, training
seconds so far, and for FFJORD the mean function evaluations of the ODE
solves per training step, `nfe_per_step`, the forward solves' sum over
blocks); an epoch cut by `--max-minutes` writes neither. The end
writes OUT/model.keras and OUT/results.json with the full test split's
bits/dim (one uniform-dequantization draw per image, the papers' figure, and
at bin midpoints), parameter count, epochs, steps, training time (this run's
and, over all runs, the time that trained the kept steps), machine and
command. The data comes from `--data`, else KERAS_FLOWS_DATA, else (MNIST,
Fashion-MNIST, CIFAR-10) a download kept in the cache. `--init
PRESET` starts from a preset's weights (the optimizer starts afresh: keep a
warmup) and counts its steps and time in the totals; `--preset DIR` writes
the result as a preset. `--distribution mirrored` (TensorFlow) or
`data_parallel` (JAX), or the config's `training.distribution`, trains on every
local device with each global batch split evenly between them, with the
results of one device (see `keras_flows.distribute` and
guides/distributed_training.md); `ddp` (PyTorch) does the same with one process
per device under `torchrun`, of which the first writes every file. Errors (a bad
config, a missing data file, a full disk) end with one line and exit code 1;
`--verbose` shows the traceback.
"""

import argparse
import contextlib
import csv
import errno
import inspect
import io
import json
import math
import os
import sys
import time

import numpy as np
import keras
from keras import ops

import keras_flows as kf
from keras_flows import distribute
from keras_flows.callbacks import Checkpoint, NaNGuard, SampleGrid, Warmup
from keras_flows.metrics import mean_bits_per_dim
from keras_flows.utils.backend import device_description


def _override(config, item, parser):
    key, sep, value = item.partition("=")
    if not sep:
        parser.error(f"--set takes KEY=VALUE; got {item!r}.")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if not isinstance(node.get(part), dict):
            parser.error(f"--set {key}: the config has no section {part!r}.")
        node = node[part]
    try:
        node[leaf] = json.loads(value)
    except json.JSONDecodeError:
        node[leaf] = value


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a JSON config from zoo/")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--data", help="local .npz or image folder (else KERAS_FLOWS_DATA, "
                        "else a download kept in the cache)")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--steps-per-epoch", type=int, help="override steps per epoch")
    parser.add_argument("--max-minutes", type=float, help="stop training after this long")
    parser.add_argument("--eval-images", type=int, default=2000,
                        help="random test images scored after each epoch (default 2000)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="score OUT/model.keras on the test split; no training")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set model_config.levels=2 "
                             "(VALUE is JSON, else a string); repeatable")
    parser.add_argument("--init", metavar="PRESET",
                        help="start from a preset's weights (a built-in name, directory or "
                             "URL), e.g. to train a published model further")
    parser.add_argument("--preset", metavar="DIR",
                        help="also write the trained model as a preset (config.json, "
                             "model.weights.h5, metadata.json with the figures)")
    parser.add_argument("--distribution", choices=list(distribute.DISTRIBUTIONS),
                        help="data-parallel training: 'mirrored' (TensorFlow's "
                             "MirroredStrategy), 'data_parallel' (JAX's DataParallel), 'ddp' "
                             "(PyTorch, one process per device under torchrun) or 'none' "
                             "(default: the config's training.distribution, else none)")
    parser.add_argument("--verbose", action="store_true",
                        help="show the traceback of an error, not only its message")
    args = parser.parse_args(argv)
    try:
        return _run(args, parser, argv)
    except (OSError, ValueError, FloatingPointError) as error:
        if args.verbose:
            raise
        raise SystemExit(f"error: {error}") from None


def _run(args, parser, argv):
    config = _read_config(args.config)
    for item in args.set:
        _override(config, item, parser)
    data, train = config["dataset"], config["training"]
    # The budget given on the command line is the one the metadata records.
    for key in ("epochs", "steps_per_epoch", "max_minutes", "distribution"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    keras.utils.set_random_seed(train.get("seed", 0))
    if train.get("mixed_precision"):
        keras.mixed_precision.set_global_policy(train["mixed_precision"])
    os.makedirs(args.out, exist_ok=True)

    conditional = config["model_config"].get("num_classes") is not None
    x_train, y_train, x_test, y_test = _load_data(data["name"], args.data)
    labels = y_test if conditional else None
    previous, progress = None, {}
    if args.evaluate_only:
        flow = keras.saving.load_model(os.path.join(args.out, "model.keras"))
    else:
        with distribute.scope(train.get("distribution", "none")):
            flow = _build(config, args.config)
            if args.init:
                previous = _initialize(flow, args.init, config["model"])
            progress = _train(flow, config, args, x_train, y_train if conditional else None,
                              x_test, labels)
    bpd = mean_bits_per_dim(flow, x_test, labels, num_samples=1)
    midpoint = mean_bits_per_dim(flow, x_test, labels)
    writes = distribute.process_group()[0] == 0   # under "ddp", the first process
    results_path = os.path.join(args.out, "results.json")
    if args.evaluate_only:
        with open(results_path) as f:
            results = json.load(f)
    else:
        if writes:
            flow.save(os.path.join(args.out, "model.keras"))
        results = {}
    if previous is not None:
        progress["train_seconds_total"] = round(
            progress["train_seconds_total"] + previous["train_seconds"], 1)
    results.update({
        "model": config["model"], "config": args.config, "dataset": data["name"],
        "parameters": int(flow.count_params()),
        "optimizer_steps": int(ops.convert_to_numpy(flow.optimizer.iterations))
                           + (0 if previous is None else previous["optimizer_steps"]),
        **progress,
        **({} if previous is None else {"initialized_from": previous}),
        "test_bits_per_dim": round(bpd, 4),
        "test_bits_per_dim_midpoint": round(midpoint, 4),
        "test_images": int(len(x_test)),
        "evaluation": "test_bits_per_dim: one uniform dequantization draw per image "
                      "(seeded); _midpoint: bin midpoints",
        "backend": keras.backend.backend(),
        "hardware": device_description(),
        "date": time.strftime("%Y-%m-%d"),
        ("evaluate_command" if args.evaluate_only else "command"):
            "python -m keras_flows.train " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    if not writes:
        return results
    _write_atomic(results_path, json.dumps(results, indent=2))
    print(f"test bits/dim {bpd:.4f} (uniform dequantization), {midpoint:.4f} (bin "
          f"midpoints), {results['optimizer_steps']} steps")
    if args.preset:
        save_preset(flow, config, results, args.preset, x_test, labels)
        print(f"wrote the preset {args.preset}")
    return results


def _train(flow, config, args, x_train, y_train, x_test, labels):
    """Trains `flow` from OUT/backup's newest checkpoint (or afresh) to the
    config's last epoch or `max_minutes`; returns the totals for results.json."""
    data, train = config["dataset"], config["training"]
    flow.compile(optimizer=optimizer(train), jit_compile=train.get("jit_compile", "auto"))
    index, processes = distribute.process_group()
    writes = index == 0   # under "ddp", the first process writes; the others train
    if writes:
        print(f"{config['model']}: {flow.count_params():,} parameters, "
              f"backend {keras.backend.backend()}"
              + (f", {processes} processes" if processes > 1 else ""))
    classes = getattr(flow, "num_classes", None)
    if y_train is not None and not 0 <= y_train.min() <= y_train.max() < classes:
        raise ValueError(f"The training labels must be in [0, {classes}) (model_config."
                         f"num_classes); got {y_train.min()} to {y_train.max()}.")
    batch_size = int(data["batch_size"])
    if not 0 < batch_size <= len(x_train):
        raise ValueError(f"{args.config}: dataset.batch_size must be in [1, {len(x_train)}] "
                         f"(the training images); got {batch_size}.")
    spec = {"seed": int(train.get("seed", 0)), "batch_size": batch_size,
            "flip": bool(data.get("flip", False)), "train_images": len(x_train),
            "steps_per_epoch": int(train.get("steps_per_epoch") or len(x_train) // batch_size)}
    steps_per_epoch, total = spec["steps_per_epoch"], spec["steps_per_epoch"] * train["epochs"]
    every = train.get("checkpoint_every", "epoch")
    every = steps_per_epoch if every == "epoch" else every
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"{args.config}: training.checkpoint_every must be a number of "
                         f"steps > 0 or \"epoch\"; got {every!r}.")
    checkpoint = Checkpoint(os.path.join(args.out, "backup"))
    if os.path.exists(os.path.join(checkpoint.directory, "latest.weights.h5")):
        raise ValueError(f"{checkpoint.directory} holds a checkpoint of an earlier keras_flows "
                         "(latest.weights.h5), which cannot be resumed exactly; move it "
                         "away to start afresh.")
    state = checkpoint.restore(flow) or {"step": 0, "seconds": 0.0, "rows": [], "data": spec}
    if state["data"] != spec:
        raise ValueError(f"{checkpoint.last} continues a run with data settings "
                         f"{state['data']}, not {spec}: rerun with the same config and "
                         f"options, or train into a new --out.")
    if writes:
        _write_log(args.out, state["rows"])

    # A seeded random subset: test files may be sorted by class.
    subset = np.random.default_rng(0).permutation(len(x_test))[:args.eval_images]
    guard = NaNGuard()
    grid = SampleGrid(args.out, x_test[subset], labels=None if labels is None else labels[subset])
    grid.set_model(flow)
    batches = _batches(x_train, y_train, batch_size, spec["seed"], spec["flip"], state["step"])
    budget = 60 * train.get("max_minutes") if train.get("max_minutes") else math.inf
    start, first, seconds = time.time(), state["step"], state["seconds"]
    counts_nfe = callable(getattr(flow, "nfe", None))
    nfe = []   # this epoch's, since the start or the resume
    while state["step"] < total:
        if state["step"] % steps_per_epoch == 0:
            flow.reset_metrics()
            nfe = []
        logs = flow.train_on_batch(distribute.split_batch(flow, next(batches)),
                                   return_dict=True)
        if counts_nfe:
            nfe.append(sum(flow.nfe()))
        guard.on_train_batch_end(state["step"] % steps_per_epoch, logs)
        state["step"] += 1
        epoch, done = divmod(state["step"], steps_per_epoch)
        if done == 0:
            logs = {"loss": distribute.mean_over_processes(float(logs["loss"]))}
            if counts_nfe:
                logs["nfe_per_step"] = round(float(np.mean(nfe)), 2)
            state["seconds"] = seconds + time.time() - start
            if writes:
                grid.on_epoch_end(epoch - 1, logs)
                state["rows"].append({"epoch": epoch - 1, **logs,
                                      "wall_clock_seconds": round(state["seconds"], 1)})
                checkpoint.save(flow, state)
                _write_log(args.out, state["rows"])
                print(f"epoch {epoch}/{train['epochs']}: loss {logs['loss']:.4f}, test "
                      f"bits/dim {logs['test_bits_per_dim']:.4f}, {state['seconds']:.0f} s")
        # Every process stops at the same step: the first one's clock decides
        # (one all-reduce a step under "ddp", only when there is a time limit).
        stop = budget < math.inf and distribute.mean_over_processes(
            float(time.time() - start > budget and writes)) > 0
        if done and (stop or state["step"] % every == 0) and writes:
            state["seconds"] = seconds + time.time() - start
            checkpoint.save(flow, state)
        if stop:
            if writes:
                print(f"--max-minutes reached at step {done} of epoch {epoch + 1}"
                      if done else f"--max-minutes reached after epoch {epoch}")
            break
    return {"epochs": state["step"] // steps_per_epoch,
            "epochs_run_now": state["step"] // steps_per_epoch - first // steps_per_epoch,
            "train_seconds_now": round(time.time() - start, 1),
            "train_seconds_total": round(seconds + time.time() - start, 1)}


def optimizer(train):
    """Adamax for a config's `training` section: the learning rate warms up
    linearly over `warmup_steps`, and gradients are clipped either to a
    global norm, `global_clipnorm` (all gradients scaled by one factor when
    their joint norm exceeds it, as torch's `clip_grad_norm_`), or each to its
    own norm, `clipnorm`. On PyTorch the global clip is cheaper: Keras clips
    each variable with its own small operations, 22 ms a step for the
    CIFAR-10 Glow's 270 variables on a 2-core CPU against 1.2 ms for the
    global norm (benchmarks/README.md, "Clipping the global norm")."""
    return keras.optimizers.Adamax(
        Warmup(train["learning_rate"], train.get("warmup_steps", 1)),
        clipnorm=train.get("clipnorm"), global_clipnorm=train.get("global_clipnorm"))


def _batches(x, y, batch_size, seed, flip, step):
    """Training batches from global step `step` on. Pass p over the data visits the
    images in the order `numpy.random.default_rng([seed, p]).permutation(N)`
    (mirroring, with `flip`, those where the same generator's next N uniforms are
    below 1/2) in `N // batch_size` batches; the last partial batch is dropped."""
    per_pass = len(x) // batch_size
    while True:
        rng = np.random.default_rng([seed, step // per_pass])
        order, mirror = rng.permutation(len(x)), rng.random(len(x)) < 0.5
        for start in range(step % per_pass * batch_size, per_pass * batch_size, batch_size):
            index = order[start:start + batch_size]
            images = x[index]
            if flip:
                images = np.where(mirror[start:start + batch_size, None, None, None],
                                  images[:, :, ::-1], images)
            yield images if y is None else {"x": images, "context": y[index]}
            step += 1


def _write_log(directory, rows):
    """OUT/log.csv: one row per completed epoch (the checkpoint's rows)."""
    path = os.path.join(directory, "log.csv")
    if not rows:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, ["epoch", *sorted({k for row in rows for k in row} - {"epoch"})])
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, text.getvalue())


def _write_atomic(path, text):
    """Writes `text` to `path` through a temporary file renamed over it."""
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        full = " (the disk is full)" if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise OSError(f"Could not write {path}{full}: {error.strerror or error}.") from error


def _read_config(path):
    """The training config at `path`, with a clear error for a bad file."""
    expected = "expected a JSON training config such as zoo/glow_mnist_small.json"
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"The training config {path} does not exist; {expected}.") from None
    except IsADirectoryError:
        raise ValueError(f"The training config {path} is a folder; {expected}.") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"The training config {path} is not valid JSON ({error}); "
                         f"{expected}.") from None
    for key in REQUIRED:
        node = config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"The training config {path} has no {key!r}; {expected} "
                                 f"(with {', '.join(REQUIRED)}).")
            node = node[part]
        if key == "dataset.name" and node not in kf.datasets.IMAGE_DATASETS:
            raise ValueError(
                f"{path}: dataset.name {node!r} is not an image dataset; expected one of "
                f"{', '.join(kf.datasets.IMAGE_DATASETS)} (2-D toy configs train with "
                "guides/train_2d_density.py).")
    if config["training"].get("clipnorm") and config["training"].get("global_clipnorm"):
        raise ValueError(f"{path}: training sets both clipnorm and global_clipnorm; "
                         "set one (global_clipnorm clips all gradients by one factor).")
    return config


REQUIRED = ("model", "model_config", "dataset.name", "dataset.batch_size", "training.epochs",
            "training.learning_rate")


def _build(config, path):
    """The config's model, with a clear error for an unknown name or bad arguments."""
    name = config["model"]
    models = sorted(n for n, c in vars(kf).items() if isinstance(c, type)
                    and issubclass(c, keras.Model) and c is not kf.ImageFlow
                    and "image_shape" in inspect.signature(c).parameters)
    if name not in models:
        raise ValueError(f"{path}: unknown model {name!r}; expected an image flow: "
                         f"{', '.join(models)}.")
    try:
        return getattr(kf, name)(**config["model_config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: model_config does not fit {name}: {error}") from None


def _load_data(name, path):
    """The dataset's arrays (`--data`, else KERAS_FLOWS_DATA, else downloaded once),
    with an error naming `--data`."""
    try:
        return kf.datasets.load_arrays(name, path=path)
    except (OSError, ValueError) as error:
        raise ValueError(f"--data {path}: {error}" if path else
                         f"{error} (or pass --data a .npz or an image folder)") from None


def _initialize(flow, preset, model):
    """Copies a preset's weights into `flow`; returns what the preset's metadata
    says of its training (for the new metadata)."""
    from keras_flows.presets import preset_files

    source = getattr(kf, model).from_preset(preset)
    try:
        flow.set_weights(source.get_weights())
    except ValueError as error:
        raise SystemExit(f"--init {preset}: its weights do not fit the config's model "
                         f"(the architectures differ): {error}")
    with open(preset_files(preset, None, load_weights=False)[1]["metadata.json"]) as f:
        metadata = json.load(f)
    steps = metadata.get("optimizer_steps", 0)
    seconds = metadata.get("train_seconds_total", metadata.get("train_seconds_now", 0.0))
    print(f"starting from {preset}: {steps:,} optimizer steps, {seconds / 60:.0f} min")
    return {"preset": preset, "optimizer_steps": steps, "train_seconds": seconds,
            "test_bits_per_dim": metadata.get("test_bits_per_dim"),
            "command": metadata.get("command")}


CHECK_IMAGES = 256


def check_subset(num_test):
    """Indices of the test images whose bits/dim a preset records for its tests."""
    return np.random.default_rng(0).permutation(num_test)[:CHECK_IMAGES]


def save_preset(flow, config, results, directory, x_test, labels=None):
    """Writes `flow` as a preset whose metadata holds the run's measured figures."""
    subset = check_subset(len(x_test))
    check = mean_bits_per_dim(flow, x_test[subset],
                              None if labels is None else labels[subset])
    flow.save_to_preset(
        directory, description=config.get("description", config["model"]),
        preprocessing=f"uniform dequantization, {getattr(flow, 'preprocessing', '')}, "
                      f"{getattr(flow, 'n_bits', 8)} bits",
        training=config["training"], **results,
        check={"images": f"{CHECK_IMAGES} test images: numpy default_rng(0).permutation"
                         f"({len(x_test)})[:{CHECK_IMAGES}]",
               "bits_per_dim_midpoint": round(check, 5)})


if __name__ == "__main__":
    main()
