"""The divergence (trace of the Jacobian) of a row-wise map, for continuous flows.

A continuous normalizing flow integrates d log p / dt = -tr(df/dz) beside
dz/dt = f(t, z) (Chen et al. 2018); FFJORD replaces the trace by Hutchinson's
unbiased estimate (Grathwohl et al. 2019).
"""

import math

import numpy as np
from keras import ops

from keras_flows.utils.backend import vjp

DIVERGENCE_METHODS = ("exact", "hutchinson")


def divergence(f, x, method="exact", noise=None):
    """`(f(x), div)`: f's value and the trace of df/dx, one per example.

    `f` acts row by row: `x` has shape (B, *event) and the output of example b
    depends on `x[b]` alone (the Jacobian is block-diagonal over the batch),
    with the shape of `x`. Both methods evaluate `f` once and differentiate
    through `backend.vjp`, whose graph is kept, so `div` can be
    differentiated again (the training gradient of a continuous flow).

    - `"exact"`: tr(J) = sum_i (e_i^T J) e_i with one vector-Jacobian
      product per dimension, D = prod(event) of them, e_i set in every row.
      Cost D backward passes: for small D.
    - `"hutchinson"`: eps^T J eps with the given probes, unbiased for
      E[eps eps^T] = I (Rademacher or standard normal). `noise` has the shape
      of `x` (one probe), or (K, *x.shape) for K probes averaged. It is passed
      in, not drawn here, so that one probe can be held fixed for a whole ODE
      solve (as FFJORD does) and a seed decides it.

    Args:
        f: callable mapping `x` to a tensor of `x`'s shape, row-wise.
        x: tensor of shape (B, *event) with a static event shape.
        method: `"exact"` or `"hutchinson"`.
        noise: the probes for `"hutchinson"` (required there, refused by
            `"exact"`).

    Returns:
        `(y, div)`: y = f(x), and div of shape (B,) in x's dtype.

    Reference: Hutchinson 1990, doi:10.1080/03610919008812866; Grathwohl,
    Chen, Bettencourt, Sutskever & Duvenaud 2019, arXiv:1810.01367.
    """
    if method not in DIVERGENCE_METHODS:
        raise ValueError(f"`method` must be one of {DIVERGENCE_METHODS}; got {method!r}.")
    x = ops.convert_to_tensor(x)
    event_axes = tuple(range(1, len(x.shape)))
    if method == "exact":
        if noise is not None:
            raise ValueError("`noise` is for method='hutchinson'; the exact trace uses none.")
        event = tuple(x.shape[1:])
        if any(d is None for d in event):
            raise ValueError(f"The exact trace needs a static event shape; got {event}.")
        size = math.prod(event)
        eye = np.eye(size)
        ones = ops.ones_like(x)
        basis = [ones * ops.convert_to_tensor(eye[i].reshape(event), dtype=x.dtype)
                 for i in range(size)]
        y, products = vjp(f, x, basis)
        div = sum(ops.sum(g * e, axis=event_axes) for g, e in zip(products, basis))
        return y, div
    if noise is None:
        raise ValueError("method='hutchinson' needs `noise`: probes of x's shape, "
                         "or (K, *x.shape) for K probes.")
    noise = ops.cast(ops.convert_to_tensor(noise), x.dtype)
    if len(noise.shape) not in (len(x.shape), len(x.shape) + 1):
        raise ValueError(f"`noise` must have x's shape {tuple(x.shape)} or one more "
                         f"(leading) axis of probes; got {tuple(noise.shape)}.")
    # Indexing, not `ops.unstack`: JAX compiles one eager slice per index.
    probes = ([noise] if len(noise.shape) == len(x.shape)
              else [noise[i] for i in range(noise.shape[0])])
    y, products = vjp(f, x, probes)
    div = sum(ops.sum(g * e, axis=event_axes) for g, e in zip(products, probes))
    return y, div / len(probes)
