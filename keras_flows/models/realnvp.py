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
    """Multi-scale RealNVP for images (`RealNVP(image_shape=...)`).

    Each scale but the last: 3 affine couplings with alternating checkerboard
    masks, a squeeze, 3 affine couplings with alternating channel masks, then
    half the channels are factored out. The last scale: 4 checkerboard
    couplings. Pixels are dequantized and mapped through the logit transform
    (alpha = 0.05) inside the model. Couplings use soft-clamped scales
    s = 3 tanh(h / 3) and an ActNorm after each (the paper uses batch norm
    and ResNet conditioners; `hidden_channels` sets the conditioner width).
    Factored-out halves get Glow-style learned priors.

    The paper's CIFAR-10 model has 3 scales (3.49 bits/dim reported).

    Args:
        image_shape: (height, width, channels), channels 1 or 3.
        levels: number of scales; height and width divisible by 2^(levels-1).
        hidden_channels: width of the coupling networks.
        n_bits: bits per pixel value modelled.
        num_classes: for a class-conditional top prior, or None.

    Reference: arXiv:1605.08803.
    """

    def __init__(self, image_shape, levels=3, hidden_channels=64, n_bits=8,
                 num_classes=None, seed=None, **kwargs):
        self.hidden_channels = int(hidden_channels)
        for key in ("preprocessing", "event_shape"):
            kwargs.pop(key, None)
        kwargs.setdefault("alpha", 0.05)
        super().__init__(image_shape, levels, n_bits=n_bits, preprocessing="logit",
                         num_classes=num_classes, seed=seed, **kwargs)

    def _coupling(self, mask, reverse, name):
        return [AffineCoupling(hidden_channels=self.hidden_channels, mask=mask,
                               reverse=reverse, dtype=self.dtype_policy, name=name),
                ActNorm(dtype=self.dtype_policy, name=f"actnorm_{name}")]

    def _make_level(self, index, input_shape, last):
        layers = []
        for k in range(4 if last else 3):
            layers += self._coupling("checkerboard", k % 2 == 1, f"checker_{index}_{k}")
        if not last:
            if input_shape[0] % 2 or input_shape[1] % 2:
                raise ValueError(f"Scale {index} gets {input_shape[0]}x{input_shape[1]} "
                                 "images, which cannot be squeezed.")
            layers.append(Squeeze(dtype=self.dtype_policy, name=f"squeeze_{index}"))
            for k in range(3):
                layers += self._coupling("channel", k % 2 == 1, f"channel_{index}_{k}")
        return Chain(layers, dtype=self.dtype_policy, name=f"scale_{index}")

    def get_config(self):
        config = super().get_config()
        del config["preprocessing"]
        config["hidden_channels"] = self.hidden_channels
        return config
