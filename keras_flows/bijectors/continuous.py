"""Continuous normalizing flows: an ODE as a bijector (Neural ODE, FFJORD, RNODE)."""

import math

import keras
from keras import ops

from keras_flows.bijectors.base import (Bijector, deserialize_sublayers, per_example,
                                       serialize_sublayers, sum_except_batch)
from keras_flows.layers.concat_squash import VectorField
from keras_flows.utils.backend import compiled_on_jax, is_concrete, vjp
from keras_flows.utils.ode import METHODS, check_converged, odeint
from keras_flows.utils.random import fixed_probe

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")


@keras.saving.register_keras_serializable(package="keras_flows")
class ContinuousFlow(Bijector):
    """A continuous normalizing flow on vectors or images: the time-T map of an ODE.

    Forward:  z = z(T), solving dz/dt = f(t, z; c) from z(0) = x.
    Inverse:  x = z(0), solving the same ODE backwards from z(T) = z.
    Log-det:  forward  log|det dz/dx| = int_0^T tr(df/dz(t, z(t))) dt,
              inverse the negative (the same integral, solved backwards).

    This is the instantaneous change of variables (Chen et al. 2018):
    d log p(z(t)) / dt = -tr(df/dz), so
    log p_x(x) = log p_z(z(T)) + int_0^T tr(df/dz) dt. The log-det is
    integrated beside z in one augmented state (z, log_det[, regularisers]),
    by `utils.ode.odeint` over s in [0, 1] with t = s T, so that
    dz/ds = T f(sT, z) and the learnable end time T enters the dynamics
    (its gradient is exact for the solver's grid).

    The trace:
    - `"exact"`: tr(J) = sum_i e_i^T J e_i, D vector-Jacobian products per
      evaluation of f: for small D.
    - `"hutchinson"` (FFJORD): eps^T J eps with one probe eps (Rademacher or
      standard normal, `noise`), an unbiased estimate, E[eps^T J eps] =
      tr(J), with one vector-Jacobian product. The probe is drawn once per
      solve, with `keras.random` from the layer's `SeedGenerator`, and held
      fixed for the whole solve: a probe redrawn at every evaluation of f
      makes the dynamics noisy and the adaptive solver stall (torchdiffeq
      issue #120).
    `trace` is used when `training=True`. With `training=False` (inference,
    evaluation, `Flow.log_prob`) `eval_trace` is used, `"exact"` by default,
    so that log-densities are exact and deterministic; for large D set
    `eval_trace="hutchinson"`, and the probes are then drawn from the fixed
    integer seed `eval_seed` (with NumPy when the batch size is known,
    `utils.random.fixed_probe`): the same estimate every call for the same
    batch, on every backend (still an estimate, unbiased over seeds).

    Regularisers (RNODE, Finlay et al. 2020), only with `training=True` and
    a positive coefficient, each added with `add_loss` as its coefficient
    times the batch mean of an integral solved in the augmented state:
    - kinetic energy  int_0^T ||f(t, z(t))||^2 dt;
    - Jacobian norm   int_0^T ||df/dz||_F^2 dt, with ||df/dz||_F^2 estimated
      by ||eps^T df/dz||^2 for the Hutchinson trace's probe, and exact
      (sum_i ||e_i^T df/dz||^2, from the products the exact trace already
      computes) with the exact trace.
    As with any Keras layer, the losses are reset by the next `__call__` of
    the layer or of the model holding it (`Flow` calls `forward` inside its
    own call); calls of `forward`/`inverse` outside one accumulate them.

    Solvers (`utils.ode.odeint`): `"dopri5"` (adaptive, `rtol`, `atol`,
    at most `max_steps` attempted steps), or `"rk4"`/`"euler"` with `steps`
    equal steps. Gradients backpropagate through the solver's steps. The
    number of function evaluations of the last solve is kept in the
    non-trainable variable `nfe` (each evaluation of the augmented dynamics
    is one evaluation of f and its vector-Jacobian products). On JAX an
    eager inference solve (`training=False`: `Flow.log_prob`, `sample`)
    runs compiled by `utils.backend.compiled_on_jax`, once per input shape:
    called eagerly, JAX would compile the solver's loop again at every call.

    `exact_inverse = True`: the inverse is the reverse solve of the same ODE,
    exact up to the solver's error: with dopri5 a few `rtol`/`atol` (local
    tolerances) relative to the state; with rk4/euler O(h^4)/O(h), h = 1/steps
    (in units of T). `inverse(forward(x))` is x within that error, not to
    float precision.

    Args:
        vector_field: a layer `field(z, t, context=None)` returning f of z's
            shape (e.g. `layers.VectorField`), or None to build a
            `VectorField(hidden_units, activation, context_dim)`.
        hidden_units, activation: those of the default `VectorField` (refused
            when `vector_field` is given).
        solver: "dopri5", "rk4" or "euler".
        rtol, atol, max_steps: dopri5's tolerances and bound on attempts.
        steps: the number of steps of "rk4" and "euler" (refused by dopri5).
        trace: "exact" or "hutchinson", in training.
        noise: Hutchinson probes, "rademacher" or "gaussian".
        eval_trace: "exact" or "hutchinson", with `training=False`.
        eval_seed: integer seed of the probes with `training=False`.
        kinetic_energy: coefficient (>= 0) of the kinetic-energy loss.
        jacobian_norm: coefficient (>= 0) of the Jacobian Frobenius loss.
        end_time: initial end time T > 0; T = softplus(w) for a weight w.
        learn_end_time: whether w is trainable.
        context_shape: `(K,)` for a conditional flow (the context is
            concatenated to z at the input of the default vector field).
        seed: seed of the training probes' `SeedGenerator` (None: random).

    Example:
        >>> cnf = ContinuousFlow(hidden_units=(64, 64), trace="hutchinson",
        ...                      kinetic_energy=0.01, jacobian_norm=0.01)
        >>> z, log_det = cnf.forward(x)

    References: Chen, Rubanova, Bettencourt & Duvenaud 2018, arXiv:1806.07366;
    Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019 (FFJORD),
    arXiv:1810.01367; Finlay, Jacobsen, Nurbekyan & Oberman 2020 (RNODE),
    arXiv:2002.02798.
    """

    exact_inverse = True

    def __init__(self, vector_field=None, hidden_units=None, activation=None,
                 solver="dopri5", rtol=1e-5, atol=1e-5, steps=None, max_steps=1000,
                 trace="exact", noise="rademacher", eval_trace="exact", eval_seed=0,
                 kinetic_energy=0.0, jacobian_norm=0.0, end_time=1.0, learn_end_time=True,
                 context_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        _check_choice("solver", solver, METHODS)
        _check_choice("trace", trace, TRACES)
        _check_choice("eval_trace", eval_trace, TRACES)
        _check_choice("noise", noise, NOISES)
        if solver == "dopri5":
            if steps is not None:
                raise ValueError("`steps` is for solver='rk4' or 'euler'; dopri5 chooses "
                                 f"its steps from `rtol` and `atol`. Got steps={steps!r}.")
            for name, value in (("rtol", rtol), ("atol", atol)):
                if not (isinstance(value, (int, float)) and value > 0):
                    raise ValueError(f"`{name}` must be a positive number; got {value!r}.")
            if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
                raise ValueError(f"`max_steps` must be a positive integer; got {max_steps!r}.")
        elif isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"solver={solver!r} needs `steps`, a positive integer; got "
                             f"{steps!r}.")
        for name, value in (("kinetic_energy", kinetic_energy),
                            ("jacobian_norm", jacobian_norm)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}.")
        if not (isinstance(end_time, (int, float)) and math.isfinite(end_time)
                and end_time > 0):
            raise ValueError(f"`end_time` must be a finite number > 0; got {end_time!r}.")
        self.solver = solver
        self.rtol, self.atol = float(rtol), float(atol)
        self.steps = None if steps is None else int(steps)
        self.max_steps = int(max_steps)
        self.trace = trace
        self.noise = noise
        self.eval_trace = eval_trace
        self.eval_seed = int(eval_seed)
        self.kinetic_energy = float(kinetic_energy)
        self.jacobian_norm = float(jacobian_norm)
        self.end_time = float(end_time)
        self.learn_end_time = bool(learn_end_time)
        self.context_shape = None if context_shape is None else tuple(context_shape)
        if self.context_shape is not None and len(self.context_shape) != 1:
            raise ValueError(f"`context_shape` must be (K,) for a vector context; got "
                             f"{self.context_shape}.")
        self.seed = None if seed is None else int(seed)
        if vector_field is None:
            self.hidden_units = tuple(int(u) for u in (hidden_units or (64, 64, 64)))
            self.activation = activation or "tanh"
            vector_field = VectorField(
                self.hidden_units, self.activation,
                context_dim=None if self.context_shape is None else self.context_shape[0],
                dtype=self.dtype_policy, name="vector_field")
        else:
            if hidden_units is not None or activation is not None:
                raise ValueError("`hidden_units` and `activation` configure the default "
                                 "vector field; leave them None when passing "
                                 "`vector_field`.")
            self.hidden_units = self.activation = None
            if not isinstance(vector_field, keras.layers.Layer):
                vector_field = keras.saving.deserialize_keras_object(vector_field)
        self.vector_field = vector_field
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def build(self, input_shape):
        if len(input_shape) not in (2, 4) or None in tuple(input_shape[1:]):
            raise ValueError("ContinuousFlow expects vectors (batch, D) or images (batch, "
                             "height, width, channels) of known size; got input shape "
                             f"{tuple(input_shape)}.")
        if len(input_shape) == 4 and self.context_shape is not None:
            raise ValueError("ContinuousFlow conditions only vectors on a context; got "
                             f"images of shape {tuple(input_shape)} and context_shape "
                             f"{self.context_shape}.")
        if not self.vector_field.built:
            self.vector_field.build(input_shape)
        # T = softplus(w): w = log(expm1(T)) = T + log(-expm1(-T)), stable for large T.
        start = self.end_time + math.log(-math.expm1(-self.end_time))
        self.end_time_weight = self.add_weight(
            name="end_time", shape=(), trainable=self.learn_end_time, initializer="zeros")
        # Assigned, not `Constant(start)`, which rounds to float32 first.
        self.end_time_weight.assign(ops.convert_to_tensor(start, self.variable_dtype))
        self.nfe = self.add_weight(name="nfe", shape=(), dtype="int32", trainable=False,
                                   initializer="zeros")

    def time(self):
        """The end time T = softplus(w), a scalar tensor."""
        return ops.softplus(ops.convert_to_tensor(self.end_time_weight))

    def _forward(self, x, context=None, training=False):
        return self._solve(x, context, training, 0.0, 1.0)

    def _inverse(self, z, context=None, training=False):
        return self._solve(z, context, training, 1.0, 0.0)

    def _probes(self, z, training):
        """The cotangents of the trace: the basis (exact) or one fixed probe."""
        method = self.trace if training else self.eval_trace
        if method == "exact":
            event = tuple(z.shape[1:])
            eye = ops.eye(math.prod(event), dtype=z.dtype)
            ones = ops.ones_like(z)
            return [ones * ops.reshape(eye[i], event) for i in range(math.prod(event))]
        seed = self.seed_generator if training else self.eval_seed
        if not training and None not in z.shape:
            return [fixed_probe(tuple(z.shape), z.dtype, seed, self.noise)]
        if self.noise == "gaussian":
            return [keras.random.normal(ops.shape(z), dtype=z.dtype, seed=seed)]
        bits = keras.random.randint(ops.shape(z), 0, 2, seed=seed)
        return [2.0 * ops.cast(bits, z.dtype) - 1.0]

    def _solve(self, y, context, training, s0, s1):
        if training:
            (z, log_det, *integrals), stats = self._integrate(y, context, True, s0, s1)
        else:
            # Inference on JAX: the solver compiles once per shape, not per call.
            key = (s0, s1, self.solver, self.rtol, self.atol, self.steps, self.max_steps,
                   self.eval_trace, self.eval_seed, self.noise)
            (z, log_det, *integrals), stats = compiled_on_jax(
                self, key, lambda y, c: self._integrate(y, c, False, s0, s1), y, context)
            # `odeint` checks a solve that ran eagerly; compiled on JAX it could not.
            if (self.solver == "dopri5" and keras.backend.backend() == "jax"
                    and is_concrete(stats["converged"])):
                check_converged(stats, s1, self.max_steps)
        self.nfe.assign(ops.cast(stats["nfe"], "int32"))
        # Backwards in s the integrals come out negated: the inverse log-det is
        # -int tr dt, as it should be; the regularisers are the integrals.
        sign = 1.0 if s1 > s0 else -1.0
        on = [c for c in (self.kinetic_energy, self.jacobian_norm) if training and c > 0]
        for coefficient, integral in zip(on, integrals):
            self.add_loss(coefficient * sign * ops.mean(integral))
        return z, log_det

    def _integrate(self, y, context, training, s0, s1):
        """`odeint`'s `(state, stats)` for the augmented state (z, log-det
        [, kinetic energy][, Jacobian norm]) from s0 to s1."""
        dtype = y.dtype
        time = ops.cast(self.time(), dtype)
        probes = self._probes(y, training)
        kinetic = bool(training) and self.kinetic_energy > 0
        frobenius = bool(training) and self.jacobian_norm > 0

        def dynamics(s, state):
            def field(z):
                return self.vector_field(z, s * time, context)

            f, products = vjp(field, state[0], probes)
            trace = sum(sum_except_batch(g * e) for g, e in zip(products, probes))
            out = [time * f, time * trace]
            if kinetic:
                out.append(time * sum_except_batch(ops.square(f)))
            if frobenius:
                out.append(time * sum(sum_except_batch(ops.square(g)) for g in products))
            return out

        zeros = per_example(y, 0.0)
        state = [y, zeros] + [zeros] * (int(kinetic) + int(frobenius))
        return odeint(dynamics, state, s0, s1, method=self.solver, steps=self.steps,
                      rtol=self.rtol, atol=self.atol, max_steps=self.max_steps)

    def get_config(self):
        config = super().get_config()
        default = self.hidden_units is not None
        config.update(
            solver=self.solver, rtol=self.rtol, atol=self.atol, steps=self.steps,
            max_steps=self.max_steps, trace=self.trace, noise=self.noise,
            eval_trace=self.eval_trace, eval_seed=self.eval_seed,
            kinetic_energy=self.kinetic_energy, jacobian_norm=self.jacobian_norm,
            end_time=self.end_time, learn_end_time=self.learn_end_time,
            context_shape=None if self.context_shape is None else list(self.context_shape),
            seed=self.seed,
            hidden_units=list(self.hidden_units) if default else None,
            activation=self.activation if default else None,
            **serialize_sublayers(vector_field=None if default else self.vector_field))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_sublayers(config, "vector_field"))


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}; got {value!r}.")
