"""Input checks with messages that say what was wrong and what was expected."""

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
