"""Glow (Kingma & Dhariwal 2018)."""

import keras

from keras_flows.bijectors import (ActNorm, AdditiveCoupling, AffineCoupling, Chain,
                                   InvertibleConv1x1, RandomPermutation, Reverse, Squeeze)
from keras_flows.models.image_flow import ImageFlow


@keras.saving.register_keras_serializable(package="keras_flows")
class Glow(ImageFlow):
    """Glow: L levels of squeeze and K steps of flow, with factor-out.

    step = coupling o permutation o ActNorm, where the permutation is a
    (LU) invertible 1x1 convolution, a channel reversal or a fixed shuffle,
    and the coupling is affine (exp(s) = sigmoid(h + 2), or with
    `scale="bounded_sigmoid"` m + (1 - m) sigmoid(h + 2), m = e^-scale_bound)
    or additive, with Glow's conv conditioner (3x3, 1x1, zero-initialised
    3x3). After each level but the last, half the channels are factored out
    with a learned prior conditioned on the rest; the top prior is learned,
    and class-conditional when `num_classes` is given (Glow's y_cond).
    Pixels are dequantized and scaled to [-0.5, 0.5) inside the model.

    The defaults are the paper's CIFAR-10 model (L=3, K=32, 512 channels,
    affine coupling, LU 1x1 convolutions: 3.35 bits/dim reported); smaller
    sizes train on a CPU (see zoo/).

    Args:
        image_shape: (height, width, channels), channels 1 or 3.
        levels: L; height and width must be divisible by 2^L.
        steps_per_level: K.
        hidden_channels: width of the coupling networks.
        coupling: "affine" or "additive".
        scale: the affine coupling's scale: "sigmoid" (Glow's; its inverse
            is unbounded and can overflow when sampling) or
            "bounded_sigmoid" (inverse expansion at most e^scale_bound per
            coupling; see `AffineCoupling`).
        scale_bound: B of "bounded_sigmoid".
        permutation: "conv" (1x1 convolution), "reverse" or "shuffle".
        lu: LU-decompose the 1x1 convolutions.
        n_bits: bits per pixel value modelled (5 for Glow's CelebA-HQ).
        num_classes: for a class-conditional prior, or None.
        class_loss_weight: Glow's `weight_y`: weight of the classification
            loss on the top latent, in bits (needs `num_classes`; 0 = none).
        seed: seed of the random initial rotations and shuffles.
        prior_scale_bound: B bounding the split priors' log-scales,
            log sigma = B tanh(a / B), or None (unbounded, the paper's); see
            `SplitPrior`.
        remat: gradient checkpointing in training: None, "step" (each
            ActNorm, permutation and coupling step recomputed in the
            backward pass: the least memory) or "level" (see `MultiScale`).
        dtype: e.g. "mixed_bfloat16": bfloat16 compute, float32 variables,
            log-dets and log-densities summed in float32.

    Reference: arXiv:1807.03039.
    """

    preset_family = "glow"

    def __init__(self, image_shape, levels=3, steps_per_level=32, hidden_channels=512,
                 coupling="affine", permutation="conv", lu=True, n_bits=8,
                 num_classes=None, seed=None, scale="sigmoid", scale_bound=3.0, **kwargs):
        if coupling not in ("affine", "additive"):
            raise ValueError(f"`coupling` must be 'affine' or 'additive'; got {coupling!r}.")
        if permutation not in ("conv", "reverse", "shuffle"):
            raise ValueError("`permutation` must be 'conv', 'reverse' or 'shuffle'; got "
                             f"{permutation!r}.")
        if scale not in ("sigmoid", "bounded_sigmoid"):
            raise ValueError("`scale` must be 'sigmoid' or 'bounded_sigmoid'; got "
                             f"{scale!r}.")
        self.scale = scale
        self.scale_bound = float(scale_bound)
        self.steps_per_level = int(steps_per_level)
        self.hidden_channels = int(hidden_channels)
        self.coupling = coupling
        self.permutation = permutation
        self.lu = bool(lu)
        kwargs.pop("preprocessing", None)
        super().__init__(image_shape, levels, n_bits=n_bits, preprocessing="scale",
                         num_classes=num_classes, seed=seed, **kwargs)

    def _make_level(self, index, input_shape, last, dtype):
        h, w = input_shape[0], input_shape[1]
        if h % 2 or w % 2:
            raise ValueError(f"Level {index} gets {h}x{w} images, which cannot be squeezed: "
                             f"height and width must be divisible by 2^levels.")
        steps = [Squeeze(dtype=dtype, name=f"squeeze_{index}")]
        for k in range(self.steps_per_level):
            name = f"{index}_{k}"
            seed = self.seed + index * 1000 + k
            if self.permutation == "conv":
                permutation = InvertibleConv1x1(lu=self.lu, seed=seed, dtype=dtype,
                                                name=f"conv1x1_{name}")
            elif self.permutation == "reverse":
                permutation = Reverse(dtype=dtype, name=f"reverse_{name}")
            else:
                permutation = RandomPermutation(seed=seed, dtype=dtype, name=f"shuffle_{name}")
            if self.coupling == "affine":
                coupling = AffineCoupling(hidden_channels=self.hidden_channels,
                                          scale=self.scale, scale_bound=self.scale_bound,
                                          dtype=dtype, name=f"coupling_{name}")
            else:
                coupling = AdditiveCoupling(hidden_channels=self.hidden_channels,
                                            dtype=dtype, name=f"coupling_{name}")
            steps.append(Chain([ActNorm(dtype=dtype, name=f"actnorm_{name}"), permutation,
                                coupling], dtype=dtype, name=f"step_{name}"))
        return Chain(steps, dtype=dtype, name=f"level_{index}")

    def get_config(self):
        config = super().get_config()
        del config["preprocessing"], config["alpha"]
        config.update(steps_per_level=self.steps_per_level,
                      hidden_channels=self.hidden_channels, coupling=self.coupling,
                      permutation=self.permutation, lu=self.lu, scale=self.scale,
                      scale_bound=self.scale_bound)
        return config
