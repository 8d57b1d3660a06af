"""Residual Flows (Chen et al. 2019) and i-ResNet (Behrmann et al. 2019), for
vectors and images."""

import keras

from keras_flows.bijectors.composition import Chain
from keras_flows.bijectors.normalization import ActNorm
from keras_flows.bijectors.residual import ResidualBlock
from keras_flows.models.flow import Flow
from keras_flows.models.image_flow import ImageFlow


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

    `ResidualFlow(image_shape=...)` builds the multi-scale image model
    instead: see `ImageResidualFlow`.

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

    def __new__(cls, *args, **kwargs):
        if cls is ResidualFlow and kwargs.get("image_shape") is not None:
            return ImageResidualFlow(*args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

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


@keras.saving.register_keras_serializable(package="keras_flows")
class ImageResidualFlow(ImageFlow):
    """The multi-scale Residual Flow for images (Chen et al. 2019).

    x -> dequantize -> logit -> [level_1] -> split -> ... -> [level_L],
    level = (ActNorm, ResidualBlock) x `blocks_per_level`, then a squeeze
    (all levels but the last), each block z = h + g(h) with g three
    spectrally normalised convolutions (3x3, 1x1, 3x3; `hidden_channels`
    wide) and LipSwish, Lip(g) <= `lipschitz` < 1. After each level but the
    last, half the channels are factored out with a learned prior (see
    `ImageFlow`), so 28x28x1 runs at 28x28x1, 14x14x2 and 7x7x4 with 3 levels.

    The log-det of every block is the Russian-roulette power series, in
    training (with the Neumann-series gradient) and at inference, where the
    probes and the number of terms come from each block's fixed `eval_seed`:
    `log_prob` and `bits_per_dim` are then deterministic, unbiased estimates
    (the exact log-det of an image block needs H W C vector-Jacobian
    products; set `eval_log_det="exact"` for tiny images). Sampling inverts
    each block by fixed-point iteration to `inverse_atol`.

    Args:
        image_shape: (height, width, channels), channels 1 or 3; height and
            width divisible by 2^(levels - 1).
        levels: L.
        blocks_per_level: residual blocks per level.
        hidden_channels: width of each block's convolutions.
        lipschitz, series_terms, geometric_p, max_terms, noise,
        power_iterations, inverse_atol, inverse_max_iterations, log_det,
        eval_log_det: those of `ResidualBlock`.
        n_bits, num_classes, seed, and the rest: those of `ImageFlow`;
        preprocessing is the logit transform with `alpha`.

    Reference: Chen, Behrmann, Duvenaud & Jacobsen 2019, arXiv:1906.02735.
    """

    preset_family = "residual_flow"

    def __init__(self, image_shape, levels=3, blocks_per_level=4, hidden_channels=64,
                 lipschitz=0.98, log_det="series", eval_log_det="series", series_terms=2,
                 geometric_p=0.5, max_terms=64, noise="rademacher", power_iterations=1,
                 inverse_atol=1e-5, inverse_max_iterations=1000, n_bits=8,
                 num_classes=None, seed=None, **kwargs):
        if isinstance(blocks_per_level, bool) or not isinstance(blocks_per_level, int) or \
                blocks_per_level < 1:
            raise ValueError(f"`blocks_per_level` must be a positive integer; got "
                             f"{blocks_per_level!r}.")
        self.blocks_per_level = blocks_per_level
        self.hidden_channels = int(hidden_channels)
        self.block_config = dict(
            lipschitz=lipschitz, log_det=log_det, eval_log_det=eval_log_det,
            series_terms=series_terms, geometric_p=geometric_p, max_terms=max_terms,
            noise=noise, power_iterations=power_iterations, inverse_atol=inverse_atol,
            inverse_max_iterations=inverse_max_iterations)
        for key in ("preprocessing", "event_shape"):
            kwargs.pop(key, None)
        kwargs.setdefault("alpha", 0.05)
        super().__init__(image_shape, levels, n_bits=n_bits, preprocessing="logit",
                         num_classes=num_classes, seed=seed, **kwargs)

    def _make_level(self, index, input_shape, last, dtype):
        def block(k):
            return ResidualBlock(
                hidden_units=(self.hidden_channels, self.hidden_channels),
                seed=self.seed + 1000 * index + 10 * k, dtype=dtype,
                name=f"residual_{index}_{k}", **self.block_config)

        return self._normalized_blocks(index, input_shape, last, block,
                                       self.blocks_per_level, dtype)

    def get_config(self):
        config = super().get_config()
        del config["preprocessing"]
        config.update(blocks_per_level=self.blocks_per_level,
                      hidden_channels=self.hidden_channels, **self.block_config)
        return config
