"""Inference in slices of a batch, with no gradient graph."""

import keras
from keras import ops

from keras_flows.utils.backend import is_concrete, no_grad

BATCH_SIZE = 256  # rows per slice in `log_prob`, `bits_per_dim`, `encode`, `decode`, `sample`


def batched(fn, inputs, batch_size=BATCH_SIZE):
    """`fn(*inputs)` computed `batch_size` rows at a time, with no gradients.

    `inputs` is a list of tensors, lists of tensors or `None`, all with the
    same number of rows; the outputs (a tensor or a list of tensors) are
    concatenated along the rows and returned with their gradients stopped,
    so that the same call behaves alike on every backend. While tracing
    (`jit`, export), `fn` runs once on the whole batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
    leaves = [t for t in keras.tree.flatten(inputs) if t is not None]
    rows = leaves[0].shape[0] if leaves else None
    with no_grad():
        if rows is None or rows <= batch_size or not is_concrete(leaves[0]):
            out = fn(*inputs)
        else:
            parts = [fn(*[_rows(item, start, start + batch_size) for item in inputs])
                     for start in range(0, rows, batch_size)]
            out = (ops.concatenate(parts, axis=0) if not isinstance(parts[0], (list, tuple))
                   else [ops.concatenate(p, axis=0) for p in zip(*parts)])
    if isinstance(out, (list, tuple)):
        return [ops.stop_gradient(t) for t in out]
    return ops.stop_gradient(out)


def _rows(item, start, stop):
    if item is None:
        return None
    if isinstance(item, (list, tuple)):
        return [None if t is None else t[start:stop] for t in item]
    return item[start:stop]
