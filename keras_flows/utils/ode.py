"""ODE solvers in `keras.ops`: Euler, classic Runge-Kutta 4 and Dormand-Prince 5(4).

`odeint` solves dy/dt = f(t, y) from t0 to t1 (forwards or backwards) for a
state `y` that is a tensor or a tuple/list of tensors, such as `(z, log_det)`,
and traces under `jit` on JAX, TensorFlow and PyTorch.

Gradients are taken by backpropagating through the solver's own steps
(discretize-then-optimize): the gradient is that of the discrete map the solver
computed, not an adjoint ODE solved backwards in time. The adaptive step sizes
are held fixed for the gradient (`stop_gradient` on the step-size controller),
so the gradient is exact for the grid the forward pass chose; only the last,
clipped step depends on t1 (and the first stages on t0), which gives the
gradient with respect to a learnable end time.

Why not the adjoint method (solve an adjoint ODE backwards, "optimise then
discretise", Chen et al. 2018)? Its gradient is that of the exact ODE, not of
what the solver computed, so it is off by the solver's error, and it solves
the ODE a second time backwards, which is unstable for many dynamics; for
continuous normalizing flows discretise-then-optimise trains as well or
better in less time (Onken & Ruthotto 2020, arXiv:2005.13420), and it is
Diffrax's default (`RecursiveCheckpointAdjoint`). The adjoint's advantage,
memory independent of the steps, is mostly had here by checkpointing: on
JAX a gradient keeps one state per step and recomputes each step's stages
(see `odeint`). An adjoint would also need `f`'s variables as explicit
inputs of a custom gradient (`keras.ops.custom_gradient` differentiates its
arguments), not the closure `odeint` takes.
"""

import math

import keras
from keras import ops

from keras_flows.utils.backend import fori_loop, is_concrete

METHODS = ("dopri5", "rk4", "euler")

# Dormand & Prince (1980), the tableau of their RK5(4)7M. The 7th stage is
# f(t + h, y5): first-same-as-last (FSAL), the next step's first stage.
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# b5 - b4 over the seven stages; the 4th-order weights are
# (5179/57600, 0, 7571/16695, 393/640, -92097/339200, 187/2100, 1/40).
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525,
         -1 / 40)

_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


def odeint(f, y0, t0, t1, method="dopri5", steps=None, rtol=1e-5, atol=1e-5,
           max_steps=1000):
    """Solves dy/dt = f(t, y), y(t0) = y0, and returns `(y(t1), stats)`.

    Methods:
    - `"euler"`: y += h f(t, y), `steps` equal steps; global error O(h).
    - `"rk4"`: the classic Runge-Kutta method, `steps` equal steps, four
      evaluations of f per step; global error O(h^4).
    - `"dopri5"`: Dormand-Prince 5(4) with local extrapolation (the 5th-order
      solution is kept) and FSAL, six new evaluations per attempted step. A
      step is accepted when the RMS, over every component of every tensor of
      the state (batch included), of err / (atol + rtol max(|y|, |y_new|)) is
      at most 1; the next step is h 0.9 norm^(-1/5), the factor clipped to
      [0.2, 10] (to at most 1 after a rejection). The first step comes from
      the heuristic of Hairer, Norsett & Wanner (1993, II.4), two evaluations.

    `t1 < t0` integrates backwards. Time is a scalar in the dtype of the
    first tensor of `y0`; float64 states stay float64.

    Bounded work. `dopri5` makes at most `max_steps` attempts (accepted or
    rejected steps). If t1 is not reached by then, on eager (concrete) inputs
    a `RuntimeError` names `max_steps` and the time reached; while traced
    (`jax.jit`, `tf.function`, a JAX gradient), where nothing can raise, the
    state reached is returned with `stats["converged"]` False: check it.

    Differentiation: by backpropagating through the steps (see the module
    docstring). So that this also works on JAX, whose `while_loop` cannot be
    reverse-differentiated, `dopri5` runs a bounded loop
    (`utils.backend.fori_loop`, a `scan` on JAX) whose iterations are
    `ops.cond`s that skip the work once t1 is reached. What a skipped
    iteration costs in a gradient, per backend:
    - JAX: the loop is ceil(sqrt(max_steps)) chunks of ceil(sqrt(max_steps))
      checkpointed iterations (`keras.remat`), and a chunk after t1 is
      skipped whole. The backward pass keeps one state (y and its last
      derivative) per iteration and recomputes each attempt's stages, so
      a gradient's memory is `max_steps` states plus one attempt's
      residuals, and its time grows with the attempts made. (Without the
      checkpoint, the scan kept every residual of an attempt, zeros for a
      skipped one, for all `max_steps` iterations: FFJORD's 2-D example
      took 15 s a step and 9 GB at max_steps=1000, against 26 ms and 0.9 GB
      now; `benchmarks/ode_gradient.py`.)
    - TensorFlow: the loop is flat. Run as a graph (Keras's default for
      these models) its gradient keeps what the attempts made; compiled by
      XLA (`jit_compile=True`) it keeps residuals for all `max_steps`
      iterations, so choose `max_steps` near what the solve needs.
    - PyTorch: a Python loop; skipped iterations keep nothing.
    Fixed-step methods loop over `steps` and keep each step's residuals. The
    loops are bounded, so a gradient also compiles under XLA on TensorFlow.

    Args:
        f: callable `f(t, y)` returning dy/dt with the structure of `y`.
        y0: the initial state: a tensor, or a tuple or list of tensors.
        t0, t1: start and end times (Python floats or scalar tensors).
        method: `"dopri5"`, `"rk4"` or `"euler"`.
        steps: the number of equal steps of `"euler"` and `"rk4"` (a positive
            int, required there); not accepted by `"dopri5"`.
        rtol, atol: `"dopri5"`'s relative and absolute tolerances.
        max_steps: `"dopri5"`'s bound on attempted steps, a positive int.

    Returns:
        `(y1, stats)`: the state at t1 with `y0`'s structure, and a dict with
        `nfe` (evaluations of f), `steps` (accepted steps), `rejected`
        (rejected steps) and `converged` (t1 reached). Python ints and True
        for the fixed-step methods, scalar tensors (int32, bool) for
        `"dopri5"`, whose `stats` also hold `t`, the time reached.

    Example:
        >>> y1, stats = odeint(lambda t, y: -y, ops.ones((3,)), 0.0, 1.0)
        >>> # y1 ~ exp(-1); stats["nfe"] function evaluations.

    Reference: Dormand & Prince 1980, doi:10.1016/0771-050X(80)90013-3;
    Hairer, Norsett & Wanner 1993, Solving ODEs I, II.4.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
    is_single = not isinstance(y0, (tuple, list))
    container = tuple if is_single else type(y0)
    y0 = tuple(ops.convert_to_tensor(y) for y in ((y0,) if is_single else y0))
    if not y0:
        raise ValueError("`y0` must hold at least one tensor.")
    dtype = keras.backend.standardize_dtype(y0[0].dtype)
    t0, t1 = _as_time(t0, dtype), _as_time(t1, dtype)

    def func(t, y):
        dy = f(t, y[0] if is_single else container(y))
        dy = (dy,) if is_single else tuple(dy)
        if len(dy) != len(y):
            raise ValueError(f"`f` returned {len(dy)} tensors for a state of {len(y)}.")
        return dy

    if method == "dopri5":
        if steps is not None:
            raise ValueError("`steps` is for the fixed-step methods; `dopri5` "
                             "chooses its steps from `rtol` and `atol`.")
        if not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f"`max_steps` must be a positive int; got {max_steps!r}.")
        y1, stats = _dopri5(func, y0, t0, t1, float(rtol), float(atol), max_steps)
    else:
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
            raise ValueError(f"`{method}` needs `steps`, a positive int; got {steps!r}.")
        y1, stats = _fixed(func, y0, t0, t1, method, steps)
    return (y1[0] if is_single else container(y1)), stats


def _as_time(t, dtype):
    if isinstance(t, (int, float)):
        return ops.convert_to_tensor(t, dtype=dtype)  # no float32 rounding
    return ops.cast(ops.convert_to_tensor(t), dtype)


def _combine(y, dt, coefficients, ks):
    """y + dt sum_j c_j k_j, component by component (zero weights skipped)."""
    out = []
    for i, yi in enumerate(y):
        dti = ops.cast(dt, yi.dtype)
        total = None
        for c, k in zip(coefficients, ks):
            if c != 0.0:
                term = c * k[i]
                total = term if total is None else total + term
        out.append(yi if total is None else yi + dti * total)
    return tuple(out)


def _fixed(func, y0, t0, t1, method, steps):
    h = (t1 - t0) / steps

    def step(i, y):
        t = t0 + ops.cast(i, h.dtype) * h
        if method == "euler":
            return _combine(y, h, (1.0,), (func(t, y),))
        k1 = func(t, y)
        k2 = func(t + 0.5 * h, _combine(y, 0.5 * h, (1.0,), (k1,)))
        k3 = func(t + 0.5 * h, _combine(y, 0.5 * h, (1.0,), (k2,)))
        k4 = func(t + h, _combine(y, h, (1.0,), (k3,)))
        return _combine(y, h, (1 / 6, 1 / 3, 1 / 3, 1 / 6), (k1, k2, k3, k4))

    y1 = tuple(fori_loop(0, steps, step, y0))
    stages = 1 if method == "euler" else 4
    return y1, {"nfe": stages * steps, "steps": steps, "rejected": 0, "converged": True}


def _rms(tensors):
    """Root mean square over every component of every tensor, in the first's dtype."""
    dtype = tensors[0].dtype
    total = sum(ops.sum(ops.square(ops.cast(e, dtype))) for e in tensors)
    count = sum(ops.cast(ops.size(e), dtype) for e in tensors)
    return ops.sqrt(total / count)


def _scaled(values, scales):
    return tuple(v / s for v, s in zip(values, scales))


def _dopri5(func, y0, t0, t1, rtol, atol, max_steps):
    sg = ops.stop_gradient
    direction = ops.sign(t1 - t0)
    span = ops.abs(sg(t1) - sg(t0))
    zero = ops.zeros_like(span)

    # Initial step: Hairer, Norsett & Wanner (1993), II.4, with h0 = 0.01 d0 / d1
    # probed by one Euler step; all without gradient.
    k1 = func(t0, y0)
    y0s, k1s = tuple(sg(y) for y in y0), tuple(sg(k) for k in k1)
    scale0 = tuple(atol + rtol * ops.abs(y) for y in y0s)
    d0, d1 = _rms(_scaled(y0s, scale0)), _rms(_scaled(k1s, scale0))
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = ops.where(small, 1e-6 + zero, 0.01 * d0 / ops.where(small, 1.0 + zero, d1))
    h0 = ops.minimum(h0, span)
    y_probe = _combine(y0s, sg(direction) * h0, (1.0,), (k1s,))
    k_probe = tuple(sg(k) for k in func(sg(t0) + direction * h0, y_probe))
    d2 = _rms(_scaled(tuple(a - b for a, b in zip(k_probe, k1s)), scale0))
    d2 = d2 / ops.where(h0 > 0, h0, 1.0 + zero)
    d12 = ops.maximum(d1, d2)
    h1 = ops.where(d12 <= 1e-15, ops.maximum(1e-6 + zero, h0 * 1e-3),
                   ops.exp(0.2 * ops.log(0.01 / ops.where(d12 > 0, d12, 1.0 + zero))))
    h = ops.minimum(ops.minimum(100.0 * h0, h1), span)

    def remaining(t):
        return direction * (t1 - t)

    def attempt(state):
        t, h, y, k1, nfe, accepted, rejected = state
        left = remaining(t)
        last = h >= sg(left)
        h_step = ops.where(last, left, h)  # differentiable in t (and t1) when clipped
        dt = direction * h_step
        ks = [k1]
        for a, c in zip(_DP_A[1:], _DP_C[1:]):
            ks.append(func(t + c * dt, _combine(y, dt, a, ks)))
        y_new = _combine(y, dt, _DP_B, ks)
        t_new = ops.where(last, t1, t + dt)
        k7 = func(t_new, y_new)
        err = _combine(tuple(ops.zeros_like(yi) for yi in y), sg(dt), _DP_E,
                       [tuple(sg(ki) for ki in k) for k in ks + [k7]])
        scale = tuple(atol + rtol * ops.maximum(ops.abs(sg(a)), ops.abs(sg(b)))
                      for a, b in zip(y, y_new))
        norm = _rms(_scaled(err, scale))
        accept = norm <= 1.0
        # norm^(-1/5) as exp(-log(norm)/5): a float64 power on every backend.
        factor = _SAFETY * ops.exp(-0.2 * ops.log(ops.where(norm > 0, norm, 1.0 + zero)))
        factor = ops.where(norm > 0, factor, _MAX_FACTOR + zero)
        factor = ops.minimum(ops.maximum(factor, _MIN_FACTOR + zero),
                             ops.where(accept, _MAX_FACTOR + zero, 1.0 + zero))
        h_next = sg(h_step) * factor
        # A rejected last step keeps its size clipped to what is left: fine.
        one = ops.ones_like(nfe)
        zero_i = ops.zeros_like(nfe)
        return (ops.where(accept, t_new, t), h_next,
                tuple(ops.where(accept, a, b) for a, b in zip(y_new, y)),
                tuple(ops.where(accept, a, b) for a, b in zip(k7, k1)),
                nfe + 6 * one,
                accepted + ops.where(accept, one, zero_i),
                rejected + ops.where(accept, zero_i, one))

    def body(_, state):
        t, _, _, _, _, accepted, rejected = state
        go = (remaining(t) > 0) & (accepted + rejected < max_steps)
        return ops.cond(go, lambda: attempt(state), lambda: state)

    counter = ops.zeros((), "int32")
    state = (t0, sg(h), y0, k1, counter + 2, counter, counter)
    if keras.backend.backend() == "jax":
        # Checkpointed chunks (see the docstring). Not on TensorFlow: XLA
        # cannot differentiate a loop inside a cond.
        body = keras.remat(body)
        chunk = math.isqrt(max_steps - 1) + 1

        def chunk_body(_, state):
            return ops.cond(remaining(state[0]) > 0,
                            lambda: fori_loop(0, chunk, body, state), lambda: state)

        state = fori_loop(0, -(-max_steps // chunk), chunk_body, state)
    else:
        state = fori_loop(0, max_steps, body, state)
    t, _, y1, _, nfe, accepted, rejected = state
    stats = {"nfe": nfe, "steps": accepted, "rejected": rejected,
             "converged": remaining(t) <= 0, "t": t}
    if is_concrete(t):
        check_converged(stats, t1, max_steps)
    return tuple(y1), stats


def check_converged(stats, t1, max_steps):
    """Raises `odeint`'s `RuntimeError` if a dopri5 solve, with concrete
    `stats`, stopped at `max_steps` before `t1`: for a solve that ran
    compiled, where nothing could raise."""
    if not bool(ops.convert_to_numpy(stats["converged"])):
        raise RuntimeError(
            f"odeint(method='dopri5') reached t = {float(ops.convert_to_numpy(stats['t'])):.6g} "
            f"of t1 = {float(ops.convert_to_numpy(t1)):.6g} in max_steps={max_steps} "
            f"attempted steps ({int(ops.convert_to_numpy(stats['steps']))} accepted); raise "
            "`max_steps` or loosen `rtol`/`atol`.")
