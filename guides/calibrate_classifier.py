"""Calibrate a Keras image classifier: temperature, scalar and generalized maps.

    nice -n 10 python guides/calibrate_classifier.py                 # CIFAR-10
    nice -n 10 python guides/calibrate_classifier.py --dataset mnist
    python guides/calibrate_classifier.py --fast                      # a smoke run

Trains a small CNN on part of the real training split (`cifar10.npz` or
`mnist.npz` in the folder named by KERAS_FLOWS_DATA, by default
`../shared/datasets` beside the repository), long enough to be overconfident,
holds out 5,000 other training images as the calibration split, fits the three
`keras_flows.calibration.Calibrator` kinds on the classifier's softmax outputs
there, and prints NLL, Brier score and ECE (15 equal-width confidence bins) on
the test split before and after each. Writes a reliability diagram of the four
(uncalibrated and the three maps) to `--figures`. Runs on the backend named by
KERAS_BACKEND.
"""

import argparse
import os
import pathlib
import platform
import time

import numpy as np
import keras

import keras_flows as kf
from keras_flows import calibration

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(dataset):
    # KERAS_FLOWS_DATA's copy, else ../shared/datasets', else downloaded once.
    try:
        path = kf.datasets.npz_file(dataset, [ROOT.parent / "shared" / "datasets"])
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    with np.load(path) as f:
        x_train, y_train, x_test, y_test = (
            f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    if x_train.ndim == 3:  # MNIST: add the channel axis
        x_train, x_test = x_train[..., None], x_test[..., None]
    return (x_train.astype("float32") / 255, y_train.reshape(-1).astype("int64"),
            x_test.astype("float32") / 255, y_test.reshape(-1).astype("int64"))


def classifier(input_shape, num_classes):
    """A small CNN with no regularisation: trained to fit, it becomes overconfident."""
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("cifar10", "mnist"), default="cifar10")
    parser.add_argument("--train-size", type=int, default=5000,
                        help="training images for the classifier (after the held-out split)")
    parser.add_argument("--calibration-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--figures", default=str(ROOT / "benchmarks"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true",
                        help="1,000 training, 1,000 calibration and 1,000 test images, 1 epoch")
    args = parser.parse_args()
    if args.fast:
        args.train_size, args.calibration_size, args.epochs = 1000, 1000, 1

    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = load(args.dataset)
    if args.calibration_size + args.train_size > len(x_train):
        raise SystemExit(f"--train-size + --calibration-size exceed the {len(x_train)} "
                         "training images.")
    # The CIFAR-10 file is sorted by class: split on a seeded permutation.
    order = np.random.default_rng(args.seed).permutation(len(x_train))
    held = order[:args.calibration_size]
    fit = order[args.calibration_size:args.calibration_size + args.train_size]
    if args.fast:
        x_test, y_test = x_test[::10], y_test[::10]

    model = classifier(x_train.shape[1:], 10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.time()
    model.fit(x_train[fit], y_train[fit], batch_size=128, epochs=args.epochs, verbose=2)
    train_seconds = time.time() - start
    val_probs = model.predict(x_train[held], batch_size=500, verbose=0)
    test_probs = model.predict(x_test, batch_size=500, verbose=0)

    panels = {"uncalibrated": test_probs}
    rows = [("uncalibrated", calibration.metrics(test_probs, y_test), "", 0.0)]
    for kind in calibration.KINDS:
        start = time.time()
        cal = calibration.Calibrator(kind).fit(val_probs, y_train[held])
        seconds = time.time() - start
        panels[kind] = cal(test_probs)
        rows.append((kind, calibration.metrics(panels[kind], y_test),
                     f"{len(cal.history)} steps", seconds))
        if kind == "temperature":
            temperature = float(np.exp(keras.ops.convert_to_numpy(cal.bijector.log_a)))

    figures = pathlib.Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    figure = figures / f"calibration_{args.dataset}{'_fast' if args.fast else ''}.png"
    calibration.reliability_diagram(panels, y_test, figure)

    print(f"\n{args.dataset}: CNN trained on {len(fit)} images for {args.epochs} epochs "
          f"({train_seconds:.0f} s); calibrated on {len(held)} held-out training images; "
          f"scored on {len(y_test)} test images. Backend {keras.backend.backend()}, "
          f"{platform.machine()}, {os.cpu_count()} CPU cores. Fitted temperature "
          f"T = {temperature:.3f}.\n")
    print("| calibration | test NLL (nats) | Brier | ECE (15 bins) | accuracy | fit |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, m, steps, seconds in rows:
        fit_text = f"{steps}, {seconds:.1f} s" if steps else "—"
        print(f"| {name} | {m['nll']:.4f} | {m['brier']:.4f} | {m['ece']:.4f} | "
              f"{m['accuracy']:.4f} | {fit_text} |")
    print(f"\nReliability diagrams: {figure}")


if __name__ == "__main__":
    main()
