"""Residual Flows (Chen et al. 2019) and i-ResNet (Behrmann et al. 2019) on vectors."""

import keras

from keras_flows.bijectors.composition import Chain
from keras_flows.bijectors.normalization import ActNorm
from keras_flows.bijectors.residual import ResidualBlock
from keras_flows.models.flow import Flow


@keras.saving.register_keras_serializable(package="keras_flows")
class ResidualFlow(Flow):
    """A Residual Flow: `num_blocks` invertible residual blocks to N(0, I).

        z = f_K o ... o f_1 (x),  f_i = ResidualBlock o ActNorm (ActNorm optional),
        log p(x) = log N(z; 0, I) + sum_i log det(I + J_{g_i}) + ActNorm's log-dets,

    each block x + g(x) with g a spectrally normalised MLP with LipSwish
    activations, Lip(g) <= `lipschitz` < 1 (see `bijectors.ResidualBlock`).

    In training (`fit`) each block's log-det is `log_det`: by default the
    Russian-roulette power series with the Neumann-series gradient (unbiased),
    or the exact log-det from the dense Jacobian for small D. Inference
    (`log_prob`, `evaluate`, `predict`) uses `eval_log_det`, exact by default,
    so that log-densities are exact and deterministic; for large D set
    `eval_log_det="series"` (a fixed-seed estimate). Sampling inverts each
    block by fixed-point iteration to `inverse_atol`.

    i-ResNet is the special case `geometric_p=None`: the series truncated
    after `series_terms` terms (biased; i-ResNet used ELU where this uses
    LipSwish).

    Vectors only: the multi-scale convolutional Residual Flow for images is not
    here.

    Args:
        event_shape: `(D,)`.
        num_blocks: number of residual blocks.
        hidden_units: hidden sizes of each block's g.
        lipschitz: the spectral-norm bound c of every dense layer, in (0, 1).
        actnorm: put an `ActNorm` before each block.
        log_det, eval_log_det, series_terms, geometric_p, max_terms, noise,
        power_iterations, inverse_atol, inverse_max_iterations: those of
            `ResidualBlock`.
        seed: seed of the training probes (block i gets seed + i).
        base: base distribution (N(0, I) by default).

    Example:
        >>> flow = ResidualFlow(event_shape=(2,), num_blocks=10, hidden_units=[128, 128],
        ...                     lipschitz=0.97)
        >>> flow.compile(optimizer="adam"); flow.fit(x, epochs=10)
        >>> flow.log_prob(x); flow.sample(1000, seed=0)

    References: Chen, Behrmann, Duvenaud & Jacobsen 2019, arXiv:1906.02735;
    Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen 2019, arXiv:1811.00995.
    """

    preset_family = "residual_flow"

    def __init__(self, event_shape, num_blocks=4, hidden_units=(64, 64), lipschitz=0.97,
                 actnorm=True, log_det="series", eval_log_det="exact", series_terms=2,
                 geometric_p=0.5, max_terms=64, noise="rademacher", power_iterations=1,
                 inverse_atol=1e-6, inverse_max_iterations=1000, seed=None, base=None,
                 **kwargs):
        if len(tuple(event_shape)) != 1:
            raise ValueError(f"ResidualFlow here models vectors: `event_shape` must be (D,); "
                             f"got {tuple(event_shape)}.")
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"`num_blocks` must be a positive integer; got {num_blocks!r}.")
        self.num_blocks = num_blocks
        self.actnorm = bool(actnorm)
        self.seed = None if seed is None else int(seed)
        self.block_config = dict(
            hidden_units=[int(u) for u in hidden_units], lipschitz=lipschitz,
            log_det=log_det, eval_log_det=eval_log_det, series_terms=series_terms,
            geometric_p=geometric_p, max_terms=max_terms, noise=noise,
            power_iterations=power_iterations, inverse_atol=inverse_atol,
            inverse_max_iterations=inverse_max_iterations)
        dtype = kwargs.get("dtype")
        layers = []
        for i in range(num_blocks):
            if self.actnorm:
                layers.append(ActNorm(dtype=dtype, name=f"actnorm_{i}"))
            layers.append(ResidualBlock(seed=None if self.seed is None else self.seed + i,
                                        dtype=dtype, name=f"residual_{i}",
                                        **self.block_config))
        super().__init__(Chain(layers, dtype=dtype, name="chain"), event_shape, base=base,
                         **kwargs)

    @property
    def blocks(self):
        """The `ResidualBlock`s, in order from data to latent."""
        return [b for b in self.bijector.bijectors if isinstance(b, ResidualBlock)]

    def get_config(self):
        config = super().get_config()
        del config["bijector"], config["context_shape"]
        config.update(num_blocks=self.num_blocks, actnorm=self.actnorm, seed=self.seed,
                      **self.block_config)
        return config
