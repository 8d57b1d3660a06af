"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017), for vectors and images."""

import keras

from keras_flows.bijectors import ActNorm, AffineCoupling, BatchNorm, Chain, Squeeze
from keras_flows.models.flow import Flow
from keras_flows.models.image_flow import ImageFlow


@keras.saving.register_keras_serializable(package="keras_flows")
class RealNVP(Flow):
    """Affine couplings on alternating halves, optionally with batch norm.

    f = C_n o [BN] o ... o C_1, C_i affine couplings (odd ones transform the
    first half, even ones the second), each followed by a `BatchNorm`
    bijector when `batch_norm=True` (the paper's choice).
    log p(x) = log N(f(x); 0, I) + sum_i log|det J_i|.

    Args:
        event_shape: shape of one data vector, `(D,)`.
        num_layers: number of coupling layers.
        hidden_units: hidden sizes of each coupling's MLP.
        activation: MLP activation.
        batch_norm: insert a `BatchNorm` bijector after each coupling.
        context_shape: shape of a conditioning vector, or None.
        base: base distribution (N(0, I) by default).

    `RealNVP(image_shape=...)` builds the multi-scale image model instead:
    see `ImageRealNVP`.

    Reference: arXiv:1605.08803.
    """

    preset_family = "realnvp"

    def __new__(cls, *args, **kwargs):
        if cls is RealNVP and kwargs.get("image_shape") is not None:
            return ImageRealNVP(*args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, event_shape, num_layers=8, hidden_units=(64, 64),
                 activation="relu", batch_norm=False, context_shape=None, base=None,
                 **kwargs):
        self.num_layers = int(num_layers)
        self.hidden_units = tuple(hidden_units)
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        dtype = kwargs.get("dtype")
        layers = []
        for i in range(self.num_layers):
            layers.append(AffineCoupling(hidden_units, activation, reverse=i % 2 == 1,
                                         context_shape=context_shape, dtype=dtype,
                                         name=f"coupling_{i}"))
            if self.batch_norm and i < self.num_layers - 1:
                layers.append(BatchNorm(dtype=dtype, name=f"batch_norm_{i}"))
        super().__init__(Chain(layers, dtype=dtype, name="chain"), event_shape,
                         base=base, context_shape=context_shape, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["bijector"]
        config.update(num_layers=self.num_layers, hidden_units=list(self.hidden_units),
                      activation=self.activation, batch_norm=self.batch_norm)
        return config


@keras.saving.register_keras_serializable(package="keras_flows")
class ImageRealNVP(ImageFlow):
    """Multi-scale RealNVP for images (`RealNVP(image_shape=...)`), as in
    Dinh, Sohl-Dickstein & Bengio 2017.

    x -> dequantize -> logit -> scale_1 -> split -> ... -> scale_L

    Pixels are dequantized and mapped through the logit transform
    y = logit(alpha + (1 - 2 alpha) x / 2^n_bits), alpha = 0.05, inside the
    model, its log-det counted. Each scale but the last: 3 affine couplings
    with alternating checkerboard masks, a squeeze (2x2 patches to channels),
    3 affine couplings with alternating channel masks, then half the channels
    are factored out. The last scale: 4 checkerboard couplings.

    Each coupling (kept part x_a, transformed part x_b; for a checkerboard
    mask m, x_a = x * m and only the positions 1 - m change):

        z_b = x_b * exp(s) + t,   s = a_c * tanh(h),   (h, t) = ResNet(x_a)

    with a learned per-channel scale a_c (starting at 1), log-det sum(s).
    The `ResNet` conditioner has `num_blocks` pre-activation residual blocks
    (batch norm, ReLU, 3x3 conv, twice, plus the skip) and a zero-initialised
    output conv, so a new coupling is the identity. Its width is
    `hidden_channels * 2^l` for the checkerboard couplings of scale l and
    doubles after the squeeze for the channel couplings: the number of
    feature maps doubles after each squeeze, as the spatial size halves.

    With `normalization="batch"` (the paper's choice) every coupling is
    followed by a `BatchNorm` bijector, z = (x - m) / sqrt(v + eps) * exp(g)
    + beta, log-det H W sum_c (g_c - log(v_c + eps) / 2): batch statistics
    while training, the moving averages under `training=False` (`log_prob`,
    `bits_per_dim`, `encode`, `decode`), so inference-mode scores are a fixed
    function of each image, independent of the rest of its batch. With
    `normalization="actnorm"` it is Glow's `ActNorm` instead (data-dependent
    start), which behaves identically in training and inference.

    log p(x) = log p_top(z_L) + sum_l log p(z_l | h_l) + sum log|det J|,
    reported as bits/dim on the [0, 2^n_bits) scale.

    The defaults are the paper's CIFAR-10 model (Section 4.1): 8 residual
    blocks with 64 feature maps, downscaling only once (`levels=2`: one
    squeeze; 3.49 bits/dim reported on the test set). Its other datasets
    recurse until the last scale is 4x4 with 4 blocks of 32 feature maps
    (`levels=4` for 32x32 images). What differs from the paper:
    - the factored-out halves and the top latent get Glow-style learned
      Gaussian priors (`SplitPrior`, `TopPrior`) instead of the paper's unit
      Gaussian: at the start they are N(0, I), and they only add flexibility;
    - no weight normalization in the conditioners (Keras 3 has no wrapper;
      batch norm in every block conditions them), and so no L2 penalty on its
      scale parameters; the paper trained with Adam (lr 1e-3, batch 64);
    - `BatchNorm` uses the current batch's statistics while training, not
      the paper's running average over recent batches (its Appendix E);
      inference uses moving averages (`momentum`).

    Args:
        image_shape: (height, width, channels), channels 1 or 3.
        levels: number of scales; height and width divisible by 2^(levels-1).
        hidden_channels: feature maps of the first scale's coupling networks.
        num_blocks: residual blocks per coupling network.
        normalization: "batch" (BatchNorm bijectors, the paper) or "actnorm".
        n_bits: bits per pixel value modelled.
        num_classes: for a class-conditional top prior, or None.
        seed: seed of the dequantization noise and anything random at build.
        momentum: decay of the moving statistics of the `BatchNorm` bijectors
            (the ResNets' batch norms use 0.9 too). 0.9 rather than Keras'
            0.99, so that the inference-mode statistics catch up with the
            training-mode ones within tens of steps, not hundreds.

    Example:
        flow = RealNVP(image_shape=(28, 28, 1), levels=2, hidden_channels=32,
                       num_blocks=2)

    Reference: Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803.
    """

    preset_family = "realnvp"

    def __init__(self, image_shape, levels=2, hidden_channels=64, num_blocks=8,
                 normalization="batch", n_bits=8, num_classes=None, seed=None,
                 momentum=0.9, **kwargs):
        self.hidden_channels = int(hidden_channels)
        self.num_blocks = int(num_blocks)
        if normalization not in ("batch", "actnorm"):
            raise ValueError("`normalization` must be 'batch' or 'actnorm'; got "
                             f"{normalization!r}.")
        self.normalization = normalization
        self.momentum = float(momentum)
        for key in ("preprocessing", "event_shape"):
            kwargs.pop(key, None)
        kwargs.setdefault("alpha", 0.05)
        super().__init__(image_shape, levels, n_bits=n_bits, preprocessing="logit",
                         num_classes=num_classes, seed=seed, **kwargs)

    def _coupling(self, mask, reverse, width, name, dtype):
        norm = (BatchNorm(self.momentum, dtype=dtype, name=f"batch_norm_{name}")
                if self.normalization == "batch"
                else ActNorm(dtype=dtype, name=f"actnorm_{name}"))
        return [AffineCoupling(hidden_channels=width, num_blocks=self.num_blocks,
                               scale="learned_tanh", mask=mask, reverse=reverse,
                               dtype=dtype, name=name),
                norm]

    def _make_level(self, index, input_shape, last, dtype):
        width = self.hidden_channels * 2**index
        layers = []
        for k in range(4 if last else 3):
            layers += self._coupling("checkerboard", k % 2 == 1, width,
                                     f"checker_{index}_{k}", dtype)
        if not last:
            if input_shape[0] % 2 or input_shape[1] % 2:
                raise ValueError(f"Scale {index} gets {input_shape[0]}x{input_shape[1]} "
                                 "images, which cannot be squeezed.")
            layers.append(Squeeze(dtype=dtype, name=f"squeeze_{index}"))
            for k in range(3):
                layers += self._coupling("channel", k % 2 == 1, 2 * width,
                                         f"channel_{index}_{k}", dtype)
        return Chain(layers, dtype=dtype, name=f"scale_{index}")

    def get_config(self):
        config = super().get_config()
        del config["preprocessing"]
        config.update(hidden_channels=self.hidden_channels, num_blocks=self.num_blocks,
                      normalization=self.normalization, momentum=self.momentum)
        return config
