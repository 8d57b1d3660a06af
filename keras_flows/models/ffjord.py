"""FFJORD (Grathwohl et al. 2019): a continuous normalizing flow on vectors."""

import contextlib

import keras

from keras_flows.bijectors.composition import Chain
from keras_flows.bijectors.continuous import TRACES, ContinuousFlow
from keras_flows.models.flow import Flow
from keras_flows.utils.inference import BATCH_SIZE


@keras.saving.register_keras_serializable(package="keras_flows")
class FFJORD(Flow):
    """FFJORD: `num_blocks` continuous flows from data to a standard normal.

    Each block is a `ContinuousFlow`: z = z(T) for dz/dt = f(t, z; c), f a
    `VectorField` of concat-squash layers, with

        log p(x | c) = log N(z; 0, I) + sum over blocks of int_0^T tr(df/dz) dt.

    In training (`fit`) the trace is `trace`: Hutchinson's estimate with one
    probe held fixed per solve (FFJORD), or the exact trace (D
    vector-Jacobian products; better for D up to ~10). The RNODE
    regularisers (`kinetic_energy`, `jacobian_norm`) are added to the loss
    only in training. Inference (`log_prob`, `evaluate`, `predict`,
    `sample`) uses `eval_trace`, exact by default, so it is deterministic;
    `log_prob(x, trace=...)` chooses for one call (a Hutchinson estimate at
    inference draws its probes from each block's fixed `eval_seed`).

    Vectors only: image FFJORD (multi-scale, convolutional concat-squash)
    is not here.

    Args:
        event_shape: `(D,)`.
        hidden_units: hidden sizes of each block's vector field.
        num_blocks: number of continuous flows in the chain.
        activation: activation of the vector fields.
        solver, rtol, atol, steps, max_steps: the ODE solver (see
            `ContinuousFlow`).
        trace: "hutchinson" or "exact", in training.
        noise: "rademacher" or "gaussian" Hutchinson probes.
        eval_trace: "exact" or "hutchinson", at inference.
        kinetic_energy, jacobian_norm: RNODE coefficients (>= 0).
        end_time: initial end time T of each block.
        learn_end_time: whether T is trained.
        context_shape: `(K,)` for a conditional flow p(x | c), or None.
        seed: seed of the training probes (block i gets seed + i).
        base: base distribution (N(0, I) by default).

    Example:
        >>> flow = FFJORD(event_shape=(2,), hidden_units=[64, 64, 64], solver="dopri5",
        ...               rtol=1e-5, atol=1e-5, trace="hutchinson", kinetic_energy=0.01)
        >>> flow.compile(optimizer="adam"); flow.fit(x, epochs=10)
        >>> flow.log_prob(x, trace="exact"); flow.sample(1000, seed=0)

    References: Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019,
    arXiv:1810.01367; Chen et al. 2018, arXiv:1806.07366; Finlay et al.
    2020 (RNODE), arXiv:2002.02798.
    """

    preset_family = "ffjord"

    def __init__(self, event_shape, hidden_units=(64, 64, 64), num_blocks=1,
                 activation="tanh", solver="dopri5", rtol=1e-5, atol=1e-5, steps=None,
                 max_steps=1000, trace="hutchinson", noise="rademacher", eval_trace="exact",
                 kinetic_energy=0.0, jacobian_norm=0.0, end_time=1.0, learn_end_time=True,
                 context_shape=None, seed=None, base=None, **kwargs):
        if len(tuple(event_shape)) != 1:
            raise ValueError(f"FFJORD here models vectors: `event_shape` must be (D,); got "
                             f"{tuple(event_shape)}.")
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"`num_blocks` must be a positive integer; got {num_blocks!r}.")
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.num_blocks = num_blocks
        self.seed = None if seed is None else int(seed)
        self.block_config = dict(
            activation=activation, solver=solver, rtol=rtol, atol=atol, steps=steps,
            max_steps=max_steps, trace=trace, noise=noise, eval_trace=eval_trace,
            kinetic_energy=kinetic_energy, jacobian_norm=jacobian_norm, end_time=end_time,
            learn_end_time=learn_end_time)
        dtype = kwargs.get("dtype")
        context_shape = None if context_shape is None else tuple(context_shape)
        blocks = [ContinuousFlow(hidden_units=self.hidden_units, context_shape=context_shape,
                                 seed=None if self.seed is None else self.seed + i,
                                 dtype=dtype, name=f"cnf_{i}", **self.block_config)
                  for i in range(num_blocks)]
        super().__init__(Chain(blocks, dtype=dtype, name="chain"), event_shape, base=base,
                         context_shape=context_shape, **kwargs)

    @property
    def blocks(self):
        return self.bijector.bijectors

    def log_prob(self, x, context=None, trace=None, batch_size=BATCH_SIZE):
        """log p(x | context) per example, with `trace` ("exact" or
        "hutchinson") for this call, or each block's `eval_trace` if None."""
        with self._eval_trace(trace):
            return super().log_prob(x, context, batch_size=batch_size)

    @contextlib.contextmanager
    def _eval_trace(self, trace):
        if trace is None:
            yield
            return
        if trace not in TRACES:
            raise ValueError(f"`trace` must be one of {TRACES} or None; got {trace!r}.")
        saved = [block.eval_trace for block in self.blocks]
        try:
            for block in self.blocks:
                block.eval_trace = trace
            yield
        finally:
            for block, value in zip(self.blocks, saved):
                block.eval_trace = value

    def nfe(self):
        """Function evaluations of each block's last solve (Python ints)."""
        return [int(keras.ops.convert_to_numpy(block.nfe)) for block in self.blocks]

    def get_config(self):
        config = super().get_config()
        del config["bijector"]
        config.update(hidden_units=list(self.hidden_units), num_blocks=self.num_blocks,
                      seed=self.seed, **self.block_config)
        return config
