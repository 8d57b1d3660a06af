"""Train an image flow from a config in zoo/ and report its test bits/dim.

    python -m keras_flows.train zoo/glow_mnist_small.json --out runs/glow_mnist \
        --data ../shared/datasets/mnist.npz --max-minutes 20

Checkpoints go to OUT/backup every `checkpoint_every` steps and after every
epoch; running the same command again resumes from the last one (see
`keras_flows.callbacks.Checkpoint`). Each epoch writes a sample grid and
logs the test bits/dim at bin midpoints (OUT/log.csv); the end writes
OUT/model.keras and OUT/results.json with the full test split's bits/dim
(one uniform-dequantization draw per image, the papers' figure, and at bin
midpoints), parameter count, steps, wall-clock time, machine and command.
`--init PRESET` starts from a preset's weights (the optimizer starts afresh:
keep a warmup) and counts its steps and time in the totals; `--preset DIR`
writes the result as a preset.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import keras
from keras import ops

import keras_flows as kf
from keras_flows.callbacks import Checkpoint, NaNGuard, SampleGrid, TimeBudget, Warmup
from keras_flows.metrics import mean_bits_per_dim


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
    parser.add_argument("--data", help="local .npz or image folder (else KERAS_FLOWS_DATA "
                                       "or tensorflow-datasets)")
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
    args = parser.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    for item in args.set:
        _override(config, item, parser)
    data, train = config["dataset"], config["training"]
    # The budget given on the command line is the one the metadata records.
    for key in ("epochs", "steps_per_epoch", "max_minutes"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    keras.utils.set_random_seed(train.get("seed", 0))
    if train.get("mixed_precision"):
        keras.mixed_precision.set_global_policy(train["mixed_precision"])
    os.makedirs(args.out, exist_ok=True)

    conditional = config["model_config"].get("num_classes") is not None
    _, _, x_test, y_test = kf.datasets.load_arrays(data["name"], path=args.data)
    labels = y_test.astype("int32") if conditional else None
    previous = None
    if args.evaluate_only:
        flow = keras.saving.load_model(os.path.join(args.out, "model.keras"))
        history, seconds = None, 0.0
    else:
        flow = getattr(kf, config["model"])(**config["model_config"])
        if args.init:
            previous = _initialize(flow, args.init, config["model"])
        train_ds, _ = kf.datasets.load(data["name"], batch_size=data["batch_size"],
                                       path=args.data, flip=data.get("flip", False),
                                       seed=train.get("seed", 0), with_labels=conditional,
                                       drop_remainder=True)
        optimizer = keras.optimizers.Adamax(
            Warmup(train["learning_rate"], train.get("warmup_steps", 1)),
            clipnorm=train.get("clipnorm"))
        flow.compile(optimizer=optimizer, jit_compile=train.get("jit_compile", "auto"))
        print(f"{config['model']}: {flow.count_params():,} parameters, "
              f"backend {keras.backend.backend()}")

        # A seeded random subset: test files may be sorted by class.
        subset = np.random.default_rng(0).permutation(len(x_test))[:args.eval_images]
        callbacks = [
            Checkpoint(os.path.join(args.out, "backup"),
                       save_freq=train.get("checkpoint_every", "epoch"), delete_checkpoint=False),
            NaNGuard(),
            SampleGrid(args.out, x_test[subset],
                       labels=None if labels is None else labels[subset]),
            keras.callbacks.CSVLogger(os.path.join(args.out, "log.csv"), append=True),
        ]
        if train.get("max_minutes"):
            callbacks.append(TimeBudget(train["max_minutes"] * 60))
        start = time.time()
        history = flow.fit(train_ds, epochs=train["epochs"],
                           steps_per_epoch=train.get("steps_per_epoch"),
                           callbacks=callbacks, shuffle=False, verbose=2)
        seconds = time.time() - start
    bpd = mean_bits_per_dim(flow, x_test, labels, num_samples=1)
    midpoint = mean_bits_per_dim(flow, x_test, labels)
    results_path = os.path.join(args.out, "results.json")
    if args.evaluate_only:
        with open(results_path) as f:
            results = json.load(f)
    else:
        flow.save(os.path.join(args.out, "model.keras"))
        results = {}
    results.update({
        "model": config["model"], "config": args.config, "dataset": data["name"],
        "parameters": int(flow.count_params()),
        "optimizer_steps": int(ops.convert_to_numpy(flow.optimizer.iterations))
                           + (0 if previous is None else previous["optimizer_steps"]),
        **({} if history is None else {
            "epochs_run_now": len(history.history.get("loss", [])),
            "train_seconds_now": round(seconds, 1)}),
        **({} if previous is None else {
            "initialized_from": previous,
            "train_seconds_total": round(seconds + previous["train_seconds"], 1)}),
        "test_bits_per_dim": round(bpd, 4),
        "test_bits_per_dim_midpoint": round(midpoint, 4),
        "test_images": int(len(x_test)),
        "evaluation": "test_bits_per_dim: one uniform dequantization draw per image "
                      "(seeded); _midpoint: bin midpoints",
        "backend": keras.backend.backend(),
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "date": time.strftime("%Y-%m-%d"),
        ("evaluate_command" if args.evaluate_only else "command"):
            "python -m keras_flows.train " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"test bits/dim {bpd:.4f} (uniform dequantization), {midpoint:.4f} (bin "
          f"midpoints), {results['optimizer_steps']} steps")
    if args.preset:
        save_preset(flow, config, results, args.preset, x_test, labels)
        print(f"wrote the preset {args.preset}")
    return results


def _initialize(flow, preset, model):
    """Copies a preset's weights into `flow`; returns what the preset's metadata
    says of its training (for the new metadata)."""
    from keras_flows.presets import _files

    source = getattr(kf, model).from_preset(preset)
    try:
        flow.set_weights(source.get_weights())
    except ValueError as error:
        raise SystemExit(f"--init {preset}: its weights do not fit the config's model "
                         f"(the architectures differ): {error}")
    with open(_files(preset, None, load_weights=False)[1]["metadata.json"]) as f:
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
