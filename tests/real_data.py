"""Where the tests find the real MNIST and CIFAR-10, as a user's code would:
`$KERAS_FLOWS_DATA`, else `../shared/datasets` beside the checkout, else
`keras_flows.datasets.download` (once, into the cache; offline and with no
copy, one line that says what to set)."""

import pathlib

import keras_flows as kf

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets"


def dataset_file(name):
    """The path of `<name>.npz` (keys x_train, y_train, x_test, y_test)."""
    return kf.datasets.npz_file(name, [SHARED])
