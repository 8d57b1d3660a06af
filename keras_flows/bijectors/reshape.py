"""Shape-changing bijectors for images: `Squeeze` (space to depth)."""

import keras
from keras import ops

from keras_flows.bijectors.base import Bijector


@keras.saving.register_keras_serializable(package="keras_flows")
class Squeeze(Bijector):
    """Space-to-depth: each 2x2 block of pixels becomes one pixel with 4x the
    channels, `(B, H, W, C) -> (B, H/2, W/2, 4C)`.

    Forward:  z[b, i, j, 4c + 2p + q] = x[b, 2i + p, 2j + q, c],  p, q in {0, 1}
    Inverse:  the same assignment read the other way (depth to space).
    Log-det:  0 in both directions (a permutation of the entries).

    Channels are ordered as in Glow's `squeeze2d`: the four values of one input
    channel are adjacent. `H` and `W` must be even.

    Reference: Dinh, Sohl-Dickstein & Bengio 2017, "RealNVP" (squeezing
    operation), arXiv:1605.08803; Kingma & Dhariwal 2018, "Glow",
    arXiv:1807.03039.
    """

    def build(self, input_shape):
        self.compute_output_shape(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "Squeeze acts on images: expected input shape (batch, H, W, C); "
                f"got {tuple(input_shape)}."
            )
        batch, height, width, channels = input_shape
        for name, size in (("height", height), ("width", width)):
            if size is not None and size % 2:
                raise ValueError(
                    f"Squeeze needs an even image {name}; got input shape "
                    f"{tuple(input_shape)}."
                )
        half = lambda d: None if d is None else d // 2  # noqa: E731
        return (batch, half(height), half(width),
                None if channels is None else 4 * channels)

    def inverse_output_shape(self, z_shape):
        if len(z_shape) != 4:
            raise ValueError(
                "Squeeze's inverse acts on images: expected latent shape "
                f"(batch, H, W, 4C); got {tuple(z_shape)}."
            )
        batch, height, width, channels = z_shape
        if channels is not None and channels % 4:
            raise ValueError(
                "Squeeze's inverse needs a channel count divisible by 4; got "
                f"latent shape {tuple(z_shape)}."
            )
        double = lambda d: None if d is None else 2 * d  # noqa: E731
        return (batch, double(height), double(width),
                None if channels is None else channels // 4)

    def _zero(self, x):
        return ops.zeros((ops.shape(x)[0],), dtype=x.dtype)

    def _forward(self, x, context=None, training=False):
        _, height, width, channels = ops.shape(x)
        h, w = height // 2, width // 2
        z = ops.reshape(x, (-1, h, 2, w, 2, channels))
        z = ops.transpose(z, (0, 1, 3, 5, 2, 4))
        return ops.reshape(z, (-1, h, w, 4 * channels)), self._zero(x)

    def _inverse(self, z, context=None, training=False):
        _, h, w, channels = ops.shape(z)
        c = channels // 4
        x = ops.reshape(z, (-1, h, w, c, 2, 2))
        x = ops.transpose(x, (0, 1, 4, 2, 5, 3))
        return ops.reshape(x, (-1, 2 * h, 2 * w, c)), self._zero(z)
