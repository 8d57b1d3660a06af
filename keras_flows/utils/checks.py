"""Input checks with messages that say what was wrong and what was expected."""

import math

import numpy as np
from keras import ops

from keras_flows.utils.backend import is_concrete


def check_event(x, event_shape, name="x", finite=True):
    """Raises unless `x` has shape `(batch, *event_shape)` (and, with
    `finite`, only finite values)."""
    shape = tuple(x.shape)
    if len(shape) != len(event_shape) + 1 or any(
        s is not None and s != e for s, e in zip(shape[1:], event_shape)
    ):
        raise ValueError(
            f"`{name}` must have shape (batch, {', '.join(map(str, event_shape))}); "
            f"got {shape}."
        )
    if finite:
        check_finite(x, name)


def check_finite(x, name="x"):
    """Raises if a concrete `x` holds NaN or inf (skipped while tracing)."""
    if not is_concrete(x):
        return
    values = ops.convert_to_numpy(x) if not isinstance(x, np.ndarray) else x
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            where = np.argwhere(bad)[0]
            raise ValueError(
                f"`{name}` contains {int(bad.sum())} NaN or inf value(s), the "
                f"first at index {tuple(int(i) for i in where)}; expected finite "
                "numbers."
            )


def check_sample_args(n, temperature):
    """Raises unless `n` is a positive integer and `temperature` a finite
    number >= 0 (0 decodes the base's mode); tensors being traced pass."""
    if is_concrete(n) and not (_is_integer(n) and int(n) > 0):
        raise ValueError(f"`n` must be a positive integer (the number of samples); got {n!r}.")
    if is_concrete(temperature):
        value = _scalar(temperature)
        if value is None or not math.isfinite(value) or value < 0:
            raise ValueError(f"`temperature` must be a finite number >= 0 (1 samples the "
                             f"model, 0 its base's mode); got {temperature!r}.")


def check_pixels(values, name="images"):
    """Raises unless `values` (numpy) are pixel values in [0, 256).

    Floats in [0, 1] with fractional values are images scaled to [0, 1], the
    most common mistake; they would otherwise score about 0 bits/dim.
    """
    if values.size == 0:
        return
    low, high = float(values.min()), float(values.max())
    if low < 0 or high >= 256:
        raise ValueError(f"`{name}` must hold pixel values in [0, 256) (uint8 range); got "
                         f"values in [{low:g}, {high:g}].")
    if high <= 1 and np.issubdtype(values.dtype, np.floating) and np.any(values != np.floor(values)):
        raise ValueError(f"`{name}` look scaled to [0, 1] (values in [{low:g}, {high:g}]); "
                         "image flows take pixel values in [0, 256): pass the uint8 "
                         "images, or multiply by 255.")


def check_labels(values, num_classes, name="context"):
    """Raises unless `values` (numpy) are integer class labels in [0, num_classes)."""
    if values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.integer):
        if not np.issubdtype(values.dtype, np.number) or np.any(values != np.round(values)):
            raise ValueError(f"`{name}` must hold integer class labels in [0, {num_classes}); "
                             f"got non-integer values of dtype {values.dtype}.")
    low, high = values.min(), values.max()
    if low < 0 or high >= num_classes:
        raise ValueError(f"`{name}` must hold class labels in [0, {num_classes}); got labels "
                         f"in [{low:g}, {high:g}].")


def to_numpy(x):
    """A numpy array of a concrete tensor, array, list or range."""
    return np.asarray(ops.convert_to_numpy(x) if hasattr(x, "shape") else x)


def _is_integer(value):
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, (float, str)):
        return False
    try:
        array = np.asarray(ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return False
    return array.ndim == 0 and np.issubdtype(array.dtype, np.integer)


def _scalar(value):
    if isinstance(value, bool):
        return None
    try:
        array = np.asarray(value if isinstance(value, (int, float, np.number))
                           else ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None
    if array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
        return None
    return float(array)
