"""FFJORD (Grathwohl et al. 2019): continuous normalizing flows on vectors and images."""

import contextlib

import keras

from keras_flows.bijectors.composition import Chain
from keras_flows.bijectors.continuous import TRACES, ContinuousFlow
from keras_flows.models.flow import Flow
from keras_flows.models.image_flow import ImageFlow
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

    A fixed-step solver ("rk4", "euler") integrates the trace along its own
    discrete path, which is not exactly the log-det of the discrete map: a
    model trained with few steps can learn to exploit that error and score
    below the data's entropy (8 RK4 steps on 8gaussians: 1.88 nats against
    an entropy of 2.83). Train with dopri5 or enough steps, and evaluate with
    a converged solve (`ffjord_moons` is scored with 16 RK4 steps, within
    0.001 nats of dopri5 at 1e-7).

    `FFJORD(image_shape=...)` builds the multi-scale image model instead:
    see `ImageFFJORD`.

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

    def __new__(cls, *args, **kwargs):
        if cls is FFJORD and kwargs.get("image_shape") is not None:
            return ImageFFJORD(*args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

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


@keras.saving.register_keras_serializable(package="keras_flows")
class ImageFFJORD(ImageFlow):
    """The multi-scale FFJORD for images (Grathwohl et al. 2019).

    x -> dequantize -> logit -> [level_1] -> split -> ... -> [level_L],
    level = (ActNorm, ContinuousFlow) x `blocks_per_level`, then a squeeze
    (all levels but the last); each continuous flow's vector field is 3x3
    `ConcatSquashConv2D` layers of `hidden_channels` with `activation`
    (`layers.VectorField` on images). After each level but the last, half
    the channels are factored out with a learned prior (see `ImageFlow`).

    The trace is Hutchinson's in training and at inference (`eval_trace`),
    where its probes come from each block's fixed `eval_seed`: `log_prob`
    and `bits_per_dim` are deterministic, unbiased estimates (the exact trace
    needs H W C vector-Jacobian products per evaluation of f; set
    `eval_trace="exact"` for tiny images).

    Args:
        image_shape: (height, width, channels), channels 1 or 3; height and
            width divisible by 2^(levels - 1).
        levels: L.
        blocks_per_level: continuous flows per level.
        hidden_channels: channels of each vector field's hidden layers.
        num_layers: hidden layers per vector field.
        activation, solver, rtol, atol, steps, max_steps, trace, noise,
        eval_trace, kinetic_energy, jacobian_norm, end_time, learn_end_time:
            those of `ContinuousFlow`.
        n_bits, num_classes, seed, and the rest: those of `ImageFlow`;
            preprocessing is the logit transform with `alpha`.

    Reference: Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019,
    arXiv:1810.01367 (MNIST 0.99 and CIFAR-10 3.40 bits/dim).
    """

    preset_family = "ffjord"

    def __init__(self, image_shape, levels=2, blocks_per_level=2, hidden_channels=64,
                 num_layers=3, activation="softplus", solver="dopri5", rtol=1e-5, atol=1e-5,
                 steps=None, max_steps=1000, trace="hutchinson", noise="rademacher",
                 eval_trace="hutchinson", kinetic_energy=0.0, jacobian_norm=0.0,
                 end_time=1.0, learn_end_time=True, n_bits=8, num_classes=None, seed=None,
                 **kwargs):
        for name, value in (("blocks_per_level", blocks_per_level), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        self.blocks_per_level = blocks_per_level
        self.hidden_channels = int(hidden_channels)
        self.num_layers = num_layers
        self.block_config = dict(
            activation=activation, solver=solver, rtol=rtol, atol=atol, steps=steps,
            max_steps=max_steps, trace=trace, noise=noise, eval_trace=eval_trace,
            kinetic_energy=kinetic_energy, jacobian_norm=jacobian_norm, end_time=end_time,
            learn_end_time=learn_end_time)
        for key in ("preprocessing", "event_shape"):
            kwargs.pop(key, None)
        kwargs.setdefault("alpha", 0.05)
        super().__init__(image_shape, levels, n_bits=n_bits, preprocessing="logit",
                         num_classes=num_classes, seed=seed, **kwargs)

    def _make_level(self, index, input_shape, last, dtype):
        def block(k):
            return ContinuousFlow(
                hidden_units=(self.hidden_channels,) * self.num_layers,
                eval_seed=1000 * index + k, seed=self.seed + 1000 * index + k,
                dtype=dtype, name=f"cnf_{index}_{k}", **self.block_config)

        return self._normalized_blocks(index, input_shape, last, block,
                                       self.blocks_per_level, dtype)

    def nfe(self):
        """Function evaluations of each continuous flow's last solve (Python ints)."""
        return [int(keras.ops.convert_to_numpy(b.nfe)) for level in self.multiscale.levels
                for b in level.bijectors if isinstance(b, ContinuousFlow)]

    def get_config(self):
        config = super().get_config()
        del config["preprocessing"]
        config.update(blocks_per_level=self.blocks_per_level,
                      hidden_channels=self.hidden_channels, num_layers=self.num_layers,
                      **self.block_config)
        return config
